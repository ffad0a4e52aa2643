"""Tiny model bundles for tests: built in a second, no training, no download.

Example::

    encoder = tiny_dense_encoder(tmp_path / "encoder")      # model/dense, dim 16, MiniLM's tokenizer
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrec.bundle import read_manifest, write_manifest

DIM = 16


def tiny_dense_encoder(out: Path, dim: int = DIM, seed: int = 0, *, compatible_with: Path | None = None,
                       extra_dims: int = 0) -> Path:
    """A ``model/dense`` bundle: masked mean of random token embeddings (ONNX), MiniLM's tokenizer.

    ``compatible_with`` (a tiny encoder of the same ``dim`` and ``seed``): a BT²-style upgrade of it — the same
    first ``dim`` columns plus ``extra_dims`` new ones, recording compatibility (version ``enc-v2``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from retrec.runtime.tokenizer import load_tokenizer

    tok = load_tokenizer()
    out.mkdir(parents=True)
    tok.save(out / "tokenizer")
    vocab = tok._base.get_vocab_size()
    table = np.random.default_rng(seed).standard_normal((vocab, dim)).astype(np.float32)
    config: dict = {}
    if compatible_with is not None:
        old = read_manifest(compatible_with)
        table = np.hstack([table, np.random.default_rng(seed + 1).standard_normal((vocab, extra_dims))
                           ]).astype(np.float32)
        config = {"compat": {"mode": "bt2", "old": {"name": old.name, "version": old.version, "dim": dim},
                             "old_dim": dim, "extra_dims": extra_dims}}
        dim += extra_dims
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["safe"]),
        helper.make_node("Div", ["total", "safe"], ["embeddings"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "t"]),
                        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["b", dim])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([2], np.int64), "axis2"),
                     numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                     numpy_helper.from_array(np.ones((1, 1), np.float32), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "model.onnx"))
    write_manifest(out, kind="model/dense", name="tiny-dense-new" if config else "tiny-dense",
                   version="enc-v2" if config else "enc-v1", dims={"dim": dim},
                   config={"variants": {"fp32": "model.onnx"}, "similarity": "cosine", "max_query_length": 32,
                           "max_doc_length": 64, "tokenizer": "tokenizer", "output": "embeddings", **config})
    return out


def with_version(directory: Path, version: str) -> Path:
    """Rewrite a bundle's manifest with another version string (everything else kept)."""
    m = read_manifest(directory)
    write_manifest(directory, kind=m.kind, name=m.name, version=version, config=m.config, dims=m.dims,
                   metrics=m.metrics, command=m.command)
    return directory


def tiny_reranker(out: Path, seed: int = 0) -> Path:
    """A ``model/reranker`` bundle: a one-layer, 32-wide BERT cross-encoder with random weights, MiniLM's
    tokenizer (exported from torch in about a second)."""
    import torch
    from transformers import BertConfig, BertModel

    from retrec.models.cross_encoder import CrossEncoder, RerankerConfig, export_reranker

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    model = CrossEncoder(bert).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=1.0)
    export_reranker(model, out, name="tiny-reranker", config=RerankerConfig(max_length=64))
    return out


def tiny_multivector_encoder(out: Path, dim: int = 8, seed: int = 0, query_augment: bool = False) -> Path:
    """A ``model/multivector`` bundle: a one-layer, 32-wide BERT token encoder with random weights, MiniLM's
    tokenizer (exported from torch in about a second)."""
    import torch
    from transformers import BertConfig, BertModel

    from retrec.models.token_encoder import MultivectorConfig, TokenEncoder, export_multivector
    from retrec.runtime.tokenizer import load_tokenizer

    torch.manual_seed(seed)
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    config = MultivectorConfig(dim=dim, max_query_length=16, max_doc_length=64, query_augment=query_augment)
    export_multivector(TokenEncoder(bert, dim).eval(), out, tokenizer=load_tokenizer(), config=config,
                       name="tiny-multivector", version=f"mv-{seed}")
    return out


def tiny_sparse_encoder(out: Path, seed: int = 0, mode: str = "siamese") -> Path:
    """A ``model/sparse`` bundle: a one-layer, 32-wide BERT SPLADE encoder with random weights, its head calibrated
    to ~60 terms a text, MiniLM's tokenizer (inference-free: an IDF query table over a few sentences)."""
    import torch
    from transformers import BertConfig, BertModel

    from retrec.models.splade import SparseConfig, SpladeEncoder, export_sparse, idf_weights
    from retrec.runtime.tokenizer import load_tokenizer, special_ids

    torch.manual_seed(seed)
    tok = load_tokenizer()
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    model = SpladeEncoder(bert, special_ids(tok)).eval()
    sample = ["genes and proteins in cells", "vitamin C prevents scurvy", "serving replicas and shards"]
    model.calibrate(tok, sample, start_terms=60, max_length=32)
    table = idf_weights(tok, sample, 32) if mode == "inference-free" else None
    export_sparse(model, out, tokenizer=tok, config=SparseConfig(mode=mode, max_query_length=16, max_doc_length=64),
                  query_weights=table, name="tiny-sparse", version=f"sparse-{seed}")
    return out


ITEMS = ("i1", "i2", "i3", "i4", "i5", "i6")
HISTORIES = [["i1", "i2", "i3"], ["i2", "i3", "i4"], ["i5", "i1", "i2"], ["i6", "i4", "i3", "i1"]]


def _onnx(out: Path, nodes: list, inputs: list, outputs: list, initializers: dict[str, np.ndarray]) -> None:
    import onnx
    from onnx import helper, numpy_helper

    graph = helper.make_graph(nodes, out.stem, inputs, outputs,
                              initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out))


def tiny_table(out: Path, dim: int = 4, items: tuple[str, ...] = ITEMS, seed: int = 0) -> Path:
    """A ``table/embedding`` snapshot of ``items`` (string ids) with random rows."""
    from retrec.tables import EmbeddingTable

    table = EmbeddingTable(dim)
    table.observe(list(items), now=0.0)
    table.update(list(items), np.random.default_rng(seed).standard_normal((len(items), dim)), now=0.0)
    table.snapshot(out, name="tiny-items")
    return out


def tiny_sequence_recommender(out: Path, kind: str = "model/bert4rec", dim: int = 4, steps: int = 4) -> Path:
    """A ``model/bert4rec`` or ``model/sasrec`` bundle: the user is the sum of its history's rows (ONNX, no torch)."""
    from onnx import TensorProto, helper

    out.mkdir(parents=True)
    tiny_table(out / "items", dim)
    _onnx(out / "user_encoder.onnx", [
        helper.make_node("Not", ["padding"], ["real"]),
        helper.make_node("Cast", ["real"], ["realf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["realf", "axis2"], ["real3"]),
        helper.make_node("Mul", ["history", "real3"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["user"], keepdims=0)],
        [helper.make_tensor_value_info("history", TensorProto.FLOAT, ["b", steps, dim]),
         helper.make_tensor_value_info("padding", TensorProto.BOOL, ["b", steps])],
        [helper.make_tensor_value_info("user", TensorProto.FLOAT, ["b", dim])],
        {"axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64)})
    write_manifest(out, kind=kind, name="tiny-seq", dims={"history_len": steps, "row_dim": dim})
    return out


def tiny_onerec(out: Path, items: tuple[str, ...] = ITEMS, seed: int = 0) -> Path:
    """A ``model/onerec`` bundle: two-level semantic ids; the decoder step scores the next token from the last one
    (a random table, log-softmaxed), the encoder passes the history through (ONNX, no torch)."""
    from onnx import TensorProto, helper

    from retrec.runtime.onerec import IDS_FILE, write_semantic_ids
    from retrec.runtime.semantic_ids import CodeTree

    out.mkdir(parents=True)
    codes = np.array([[i // 2, i % 2] for i in range(len(items))], np.int64)
    write_semantic_ids(out / IDS_FILE, items, codes)
    tree = CodeTree(codes)
    _onnx(out / "encoder.onnx", [
        helper.make_node("Cast", ["history"], ["memory"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["history", "axis2"], ["total"], keepdims=0),
        helper.make_node("Equal", ["total", "zero"], ["padding"])],
        [helper.make_tensor_value_info("history", TensorProto.INT64, ["b", "t", tree.depth])],
        [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["b", "t", tree.depth]),
         helper.make_tensor_value_info("padding", TensorProto.BOOL, ["b", "t"])],
        {"axis2": np.array([2], np.int64), "zero": np.array(0, np.int64)})
    table = np.random.default_rng(seed).standard_normal((tree.vocab, tree.vocab)).astype(np.float32)
    _onnx(out / "decoder_step.onnx", [
        helper.make_node("Gather", ["tokens", "last"], ["previous"], axis=1),
        helper.make_node("Gather", ["table", "previous"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["logp"], axis=-1)],
        [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["b", "t", tree.depth]),
         helper.make_tensor_value_info("padding", TensorProto.BOOL, ["b", "t"]),
         helper.make_tensor_value_info("tokens", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logp", TensorProto.FLOAT, ["b", tree.vocab])],
        {"table": table, "last": np.array(-1, np.int64)})
    write_manifest(out, kind="model/onerec", name="tiny-onerec",
                   dims={"max_len": 4, "session": 2, "beam": 3, "depth": tree.depth, "vocab": tree.vocab},
                   config={"model": {"level_sizes": tree.sizes.tolist()}})
    return out


def tiny_count_recommender(out: Path, model: str = "markov") -> Path:
    """A count-model bundle (``markov``, ``markov-decay`` or ``cooc``) fitted on :data:`HISTORIES`."""
    from retrec.runtime.count_recommender import CountBundle

    out.mkdir(parents=True)
    write_manifest(out, **CountBundle.fit(model, HISTORIES).save(out))
    return out


def tiny_fusion(out: Path) -> Path:
    """A ``model/rec-fusion`` bundle of a Markov and a co-occurrence component."""
    out.mkdir(parents=True)
    for name in ("markov", "cooc"):
        tiny_count_recommender(out / "components" / name, name)
    write_manifest(out, kind="model/rec-fusion", name="tiny-fusion",
                   config={"components": [{"name": "markov", "weight": 0.5, "normalise": "sum"},
                                          {"name": "cooc", "weight": 0.5, "normalise": "sum"}]})
    return out


def tiny_compat_map(out: Path, seed: int = 0) -> Path:
    """A ``model/compat-map`` bundle: a tiny dense encoder (written beside it, ``OUT-new``) and a random orthogonal
    map of its vectors into the space of another tiny encoder (``OUT-old``, its identity recorded)."""
    from safetensors.numpy import save_file

    from retrec.bundle import load_bundle
    from retrec.runtime.compat_map import MAP_FILE, files_digest

    new = load_bundle(tiny_dense_encoder(out.with_name(f"{out.name}-new"), seed=seed + 3))
    old = read_manifest(tiny_dense_encoder(out.with_name(f"{out.name}-old"), seed=seed))
    weight, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((DIM, DIM)))
    out.mkdir(parents=True)
    save_file({"weight": weight.astype(np.float32), "bias": np.zeros(DIM, np.float32)}, str(out / MAP_FILE))
    write_manifest(out, kind="model/compat-map", name="tiny-map", version="map-v1", dims={"dim": DIM},
                   config={"similarity": "cosine", "method": "procrustes",
                           "new": {"name": new.name, "version": new.version, "files_sha256": files_digest(new),
                                   "path": str(Path(new.path).resolve()), "dim": DIM},
                           "compat": {"mode": "map", "old": {"name": old.name, "version": "enc-v0", "dim": DIM},
                                      "old_dim": DIM}})
    return out
