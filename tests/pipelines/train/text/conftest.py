"""Fixtures shared by the text trainers' tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer, 32-wide BERT with the packaged MiniLM's tokenizer, saved as an HF folder."""
    import shutil

    from transformers import BertConfig, BertModel

    from retrec.runtime.tokenizer import TOKENIZER_FILES, minilm_dir

    folder = tmp_path_factory.mktemp("base") / "tiny-bert"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(minilm_dir() / name, folder / name)
    return folder
