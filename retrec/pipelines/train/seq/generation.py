"""OneRec's torch-side generation, shared by its trainer and its preference alignment (DPO): item sessions
decoded from a model under the semantic-ID trie, and the list metrics of what it generates.

Example::

    lists = generate(model, tree, histories, beam=10)         # item rows [beam, 1] per history, best first
    list_metrics(lists, targets, num_items)                   # {"HR@10": ..., "NDCG@10": ...}
"""

from __future__ import annotations

import numpy as np
import torch

from retrec.models.onerec import OneRec
from retrec.pipelines.eval.ir_metrics import mean_metrics, rec_metrics_from_ranks
from retrec.runtime.semantic_ids import CodeTree, beam_search


def model_history(model: OneRec, tree: CodeTree, histories: list[np.ndarray]) -> np.ndarray:
    """The encoder's input for item-row histories: code tokens, and the rows when the model embeds items."""
    return tree.history_tokens(histories, model.cfg.max_len, model.cfg.items > 0)


@torch.no_grad()
def generate(model: OneRec, tree: CodeTree, histories: list[np.ndarray], beam: int, items: int = 1,
             exclude_seen: bool = True, batch: int = 256) -> list[np.ndarray]:
    """The torch generator: item rows ``[n, items]`` of each history's best ``beam`` sessions, best first."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(histories), batch):
        chunk = histories[start:start + batch]
        memory, padding = model.encode(torch.from_numpy(model_history(model, tree, chunk)).to(device))

        def step(users: np.ndarray, tokens: np.ndarray, memory: torch.Tensor = memory,
                 padding: torch.Tensor = padding) -> np.ndarray:
            u = torch.from_numpy(users).to(device)
            return model.step(memory[u], padding[u], torch.from_numpy(tokens).to(device)).float().cpu().numpy()

        out += beam_search(step, tree, len(chunk), beam, items, chunk if exclude_seen else None)[0]
    model.train(was_training)
    return out


def list_metrics(lists: list[np.ndarray], targets: np.ndarray, num_items: int) -> dict[str, float]:
    """HR@10 / NDCG@10 of each target in its generated list (first items of the beams); absent: last."""
    greater = np.array([int(np.flatnonzero(rows[:, 0] == t)[0]) if (rows[:, 0] == t).any() else num_items
                        for rows, t in zip(lists, targets)])
    return mean_metrics(rec_metrics_from_ranks(greater, np.zeros_like(greater), num_items, (10,)))
