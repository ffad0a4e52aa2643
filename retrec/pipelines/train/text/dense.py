"""``retrec train dense``: a TAS-Balanced bi-encoder fine-tuned from MiniLM (or ``base_model``), exported to ONNX.

Flow: collection (train split) → zero-shot MiniLM embeddings of queries and corpus (ONNX, cached) and a
BM25 index → hard-negative candidates from both → a teacher (ensemble of normalised BM25, zero-shot dense
and the judgements, or your own Parquet scores) → batches from topic clusters of the queries, negatives by
balanced margin sampling → loss = in-batch cross-entropy on the judgements + ``distill_weight`` ×
(pairwise Margin-MSE + ``inbatch_weight`` × in-batch Margin-MSE against the teacher) → ONNX bundle.

Each TAS-B part can be switched off, which is how the ablation in ``benchmarks/dense_tasb_ablation.py``
runs: ``sampling="random"``, ``negatives="bm25"`` (one uniform BM25 hard negative), ``distill_weight=0``.

Bundle (kind ``model/dense``, read by :class:`retrec.runtime.onnx_encoder.OnnxEncoder`)::

    <out>/encoder.onnx, encoder-int8.onnx, tokenizer/, manifest.json (config, dev metrics, ONNX parity)
    <out>/training_curve.json        loss and dev nDCG@10 over steps

The base encoder is the packaged all-MiniLM-L6-v2 unless ``base_model`` names a local
sentence-transformers/HF folder (BERT architecture); the manifest records its name and revision
(``config.base_model``, ``config.base_model_revision``). The miners and the ensemble teacher always use
the packaged MiniLM. Training runs in :func:`retrec.pipelines.train.loop.run_training`; checkpoints
(model + optimizer + progress) go to ``<out>.ckpt/`` and ``resume=True`` continues from them.

Example::

    train_dense("../shared/data/scifact", "artifacts/scifact-dense", DenseTrainConfig(max_minutes=30))
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrec.bundle import Publication, load_bundle
from retrec.index.dense_retriever import encode_corpus
from retrec.index.generic import encoding_identity
from retrec.models.compat import CompatHead, influence_loss, old_space
from retrec.models.dense_losses import in_batch_cross_entropy, in_batch_margin_mse, margin_mse
from retrec.models.precision import autocast, model_device
from retrec.models.text_encoder import (
    KIND,
    BaseModel,
    EncoderConfig,
    TextEncoder,
    embed_grouped,
    encode_texts,
    write_onnx_files,
)
from retrec.pipelines.train.dev_gate import dev_result
from retrec.pipelines.train.loop import TrainRun, run_training
from retrec.pipelines.train.text.config import DenseTrainConfig
from retrec.pipelines.train.text.contrastive import (
    DEV_METRIC,
    ContrastiveAdapter,
    Step,
    contrastive_inputs,
    judged_mask,
    run_metrics,
    tensors,
)
from retrec.pipelines.train.text.data import (
    Miners,
    TrainingSet,
    dev_candidates,
    text_loop_config,
)
from retrec.pipelines.train.text.pseudo_queries import corpus_training_set
from retrec.pipelines.train.text.teachers import (
    Teacher,
)
from retrec.process_env import cache_dir
from retrec.runtime.onnx_encoder import OnnxEncoder
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger("retrec.train.dense")
__all__ = ["DenseTrainConfig", "OldSpace", "train_dense"]
HEAD_LR_SCALE = 30.0  # the compatibility head's weights are new: ~1e-3 at the default 3e-5 (BT² trains it fresh)


@dataclass(frozen=True)
class OldSpace:
    """What ``--compatible-with`` trains against: the old encoder's identity and its frozen vectors of the
    training corpus (normalised, row = document)."""

    docs: np.ndarray
    record: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.docs.shape[1])

    @classmethod
    def of(cls, bundle: str | Path, ts: TrainingSet, progress: bool) -> OldSpace:
        manifest = load_bundle(bundle, kind=KIND)
        if manifest.config.get("similarity") != "cosine":
            raise ValueError(f"--compatible-with {bundle}: its similarity is {manifest.config.get('similarity')!r}; "
                             "only cosine encoders can be matched")
        encoder = OnnxEncoder(bundle)
        log.info("compatible with %s@%s: its vectors of %d documents", manifest.name, manifest.version,
                 len(ts.doc_texts))
        docs = encode_corpus(encoder, ts.doc_texts, cache=cache_dir() / "embeddings", progress=progress)
        return cls(docs, {"name": manifest.name, "version": manifest.version, "dim": int(docs.shape[1]),
                          "identity": encoding_identity(encoder)})


def compat_loss(q: torch.Tensor, d: torch.Tensor, docs: np.ndarray, old: OldSpace, mask: torch.Tensor,
                scale: float, mode: str) -> tuple[torch.Tensor, dict[str, float]]:
    """The influence loss: new queries (their old-space part) against the old vectors of the batch's documents;
    in bt2 mode also against the new documents' old-space part, so that part of a new index is searchable with
    the old one (a half re-encoded index compares like with like)."""
    qo = old_space(q, old.dim)
    influence = influence_loss(qo, torch.from_numpy(old.docs[docs]).to(q.device), scale, mask)
    parts = {"influence": float(influence.detach())}
    if mode != "bt2":
        return influence, parts
    prefix = influence_loss(qo, old_space(d, old.dim), scale, mask)
    parts["old_space_new_docs"] = float(prefix.detach())
    return (influence + prefix) / 2, parts


def step_loss(model: TextEncoder, tokenizer: TextTokenizer, step: Step, ts: TrainingSet, teacher: Teacher,
              cfg: DenseTrainConfig, precision: str = "fp32",
              old: OldSpace | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    docs = np.concatenate([step.positives, step.negatives])
    with autocast(precision, model_device(model)):
        q = model(*tensors(tokenizer, [ts.query_texts[x] for x in step.queries], cfg.max_query_length))
        d = embed_grouped(model, tokenizer, [ts.doc_texts[i] for i in docs], cfg.max_doc_length, cfg.doc_chunk)
    q, d = q.float(), d.float()  # the losses in fp32
    scores = q @ d.T
    judged = judged_mask(step, ts).to(scores.device)
    mask = judged if cfg.mask_judged else torch.zeros_like(judged)
    scale = cfg.scale if cfg.similarity == "cosine" else 1.0
    ce = in_batch_cross_entropy(scores, scale, mask)
    parts = {"ce": float(ce.detach()), "judged_negatives": float(judged.sum())}
    loss = ce
    if cfg.margin_weight > 0:
        target = torch.from_numpy(np.stack([teacher.scores(qid, docs) for qid in step.queries])).to(scores.device)
        if cfg.similarity == "dot":
            target = target * scale
        pair = margin_mse(scores, target)
        inbatch = in_batch_margin_mse(scores, target, mask)
        loss = loss + cfg.margin_weight * (pair + cfg.inbatch_weight * inbatch)
        parts.update(margin_mse=float(pair.detach()), inbatch_mse=float(inbatch.detach()))
    if old is not None and cfg.compat_weight > 0:
        compat, extra = compat_loss(q, d, docs, old, mask, scale, cfg.compat_mode)
        loss = loss + cfg.compat_weight * compat
        parts.update(extra)
    return loss, parts


def dev_ndcg(model: TextEncoder, tokenizer: TextTokenizer, ts: TrainingSet, cands: dict[str, np.ndarray],
             cfg: DenseTrainConfig, precision: str = "fp32") -> dict[str, Any]:
    """nDCG@10 of the model re-ranking the miners' candidates of the dev queries (torch, eval mode, the
    training precision), and each query's (:func:`~retrec.pipelines.train.dev_gate.dev_result`)."""
    if not cands:
        return {DEV_METRIC: None}
    was = model.training
    model.eval()
    docs = np.unique(np.concatenate(list(cands.values())))
    with autocast(precision, model_device(model)):
        dvec = encode_texts(model, tokenizer, [ts.doc_texts[i] for i in docs], cfg.max_doc_length)
        qvec = encode_texts(model, tokenizer, [ts.query_texts[q] for q in cands], cfg.max_query_length)
    model.train(was)
    where = {int(r): i for i, r in enumerate(docs)}
    run = {}
    for qi, (q, rows) in enumerate(cands.items()):
        s = dvec[[where[int(r)] for r in rows]] @ qvec[qi]
        run[q] = {ts.doc_ids[int(r)]: float(v) for r, v in zip(rows, s)}
    return dev_result({q: ts.dev_qrels[q] for q in cands}, run, DEV_METRIC)


def onnx_max_abs_diff(model: TextEncoder, tokenizer: TextTokenizer, bundle: Any, texts: list[str],
                      max_length: int) -> float:
    """Largest absolute difference between torch and ONNX Runtime embeddings of ``texts``.

    ``bundle``: a bundle folder or its (draft) :class:`~retrec.bundle.Manifest`.
    """
    torch_vecs = encode_texts(model, tokenizer, texts, max_length)
    onnx_vecs = OnnxEncoder(bundle).encode(texts, max_length=max_length)
    return float(np.abs(torch_vecs - onnx_vecs).max())


class DenseAdapter(ContrastiveAdapter):
    """TAS-B steps for :func:`~retrec.pipelines.train.loop.run_training`; exports the ONNX bundle."""

    name = "dense"

    def __init__(self, ts: TrainingSet, cfg: DenseTrainConfig, miners: Miners, teacher: Teacher,
                 labels: np.ndarray | None, base: BaseModel, bundle_name: str, progress: bool = False) -> None:
        self.ts, self.cfg, self.miners, self.teacher, self.labels = ts, cfg, miners, teacher, labels
        self.base, self.bundle_name = base, bundle_name
        self.place(cfg.device, cfg.precision)
        self.dev_cands = dev_candidates(ts, miners, cfg.dev_candidates)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(base.folder)
        self.model = TextEncoder.from_pretrained(base.folder, pooling=base.pooling,
                                                 normalize=cfg.similarity == "cosine").train()
        self.old = OldSpace.of(cfg.compatible_with, ts, progress) if cfg.compatible_with else None
        width = self.model.dim
        if self.old is not None and cfg.compat_mode == "bt2":
            self.model.head = CompatHead(width, cfg.extra_dims).train()
        if self.old is not None and self.old.dim > self.model.dim:
            hint = "bct keeps the encoder's width" if cfg.compat_mode == "bct" else "add --extra-dims"
            raise ValueError(f"--compatible-with: the old space is {self.old.dim} wide, the new encoder "
                             f"{self.model.dim} ({hint})")
        self.model.to(self.device)
        if self.model.head is None:
            self._optimize()
        else:  # the head's weights are new: a higher rate than the fine-tuned encoder's
            self._optimize([{"params": list(self.model.bert.parameters())},
                            {"params": list(self.model.head.parameters()), "lr_scale": HEAD_LR_SCALE,
                             "weight_decay": 0.0}])

    def step(self, batch: Step) -> tuple[torch.Tensor, dict[str, float]]:
        return step_loss(self.model, self.tokenizer, batch, self.ts, self.teacher, self.cfg, self.precision,
                         self.old)

    def evaluate(self) -> dict[str, float | None]:
        return dev_ndcg(self.model, self.tokenizer, self.ts, self.dev_cands, self.cfg, self.precision)

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        cfg, ts = self.cfg, self.ts
        self.model.cpu()  # export and parity on the CPU
        enc_cfg = EncoderConfig(pooling=self.base.pooling, normalize=cfg.similarity == "cosine",
                                similarity=cfg.similarity, max_query_length=cfg.max_query_length,
                                max_doc_length=cfg.max_doc_length, base_model=self.base.name)
        config, dims = write_onnx_files(self.model, pub.path, tokenizer=self.tokenizer, config=enc_cfg,
                                        quantize=cfg.quantize)
        fields: dict[str, Any] = {"kind": KIND, "name": self.bundle_name, "dims": dims}
        sample = [ts.doc_texts[i] for i in range(0, len(ts.doc_texts), max(1, len(ts.doc_texts) // 32))][:32]
        diff = onnx_max_abs_diff(self.model, self.tokenizer, pub.draft(**fields, config=config), sample,
                                 cfg.max_doc_length)
        if diff > 1e-4:  # raised inside the publication: nothing is published
            raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> 1e-4) on corpus documents")
        metrics = {**run_metrics(run, ts, "dev_nDCG@10_zero_shot"), "onnx_max_abs_diff": diff}
        config = {**config, "base_model_revision": self.base.revision, "train": asdict(cfg),
                  "train_precision": self.precision,
                  "teacher": self.teacher.description}
        if self.old is not None:  # what this encoder's old-space part searches (retrec/models/compat.py)
            config["compat"] = {"mode": cfg.compat_mode, "old": self.old.record, "old_dim": self.old.dim,
                                "extra_dims": cfg.extra_dims if cfg.compat_mode == "bt2" else 0}
        return {**fields, "config": config, "metrics": metrics}


def train_dense(
    data: str | Path, out: str | Path, cfg: DenseTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, command: str | None = None, name: str | None = None,
) -> Path:
    """Train on ``data``'s train split (dev split when present), or with ``cfg.adapt`` on pseudo-queries from its
    corpus alone; write a ``model/dense`` bundle to ``out``."""
    cfg = cfg or DenseTrainConfig()
    if cfg.compatible_with:  # a bad old bundle is refused before any work
        load_bundle(cfg.compatible_with, kind=KIND)
    ts = None
    if cfg.adapt:  # the corpus alone: pseudo-queries, their documents as positives (GPL-style)
        ts = corpus_training_set(data, cfg.adapt_queries, cfg.adapt_dev_queries, cfg.seed)
        log.info("dense: --adapt: %d pseudo-queries from the corpus, %d held out for dev; no query or judgement "
                 "of the collection is read", len(ts.query_ids), len(ts.dev_ids))
    base, ts, miners, teacher, labels = contrastive_inputs(data, cfg, progress, "dense", ts)
    adapter = DenseAdapter(ts, cfg, miners, teacher, labels, base, name or f"{Path(data).name}-dense",
                           progress=progress)
    return run_training(adapter, text_loop_config(cfg, DEV_METRIC), out, resume=resume, progress=progress,
                        command=command)
