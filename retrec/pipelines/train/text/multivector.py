"""``retrec train multivector``: a ColBERT-style token encoder fine-tuned from MiniLM, exported to ONNX.

Flow (the dense trainer's sampling, another score): collection (train split) → BM25 + zero-shot dense miners and
the ensemble teacher (:mod:`retrec.pipelines.train.text.dense`) → topic-aware batches, one judged positive and one
balanced-margin hard negative per query → MaxSim of every query against every in-batch document
(:func:`retrec.models.token_encoder.maxsim_scores`) → in-batch cross-entropy (judged-relevant negatives masked)
+ ``distill_weight`` × Margin-MSE against the teacher on MaxSim per query token → ONNX bundle
(``model/multivector``), verified against torch.

The projection (hidden → ``dim``) starts as the PCA of the base model's token states over ``pca_documents``
corpus documents, so the fresh model's MaxSim is close to the base model's full-width token MaxSim; dev
nDCG@10 (MaxSim re-ranking the miners' candidates) is measured at the start and the best evaluated weights are
exported (the start's included).

Example::

    retrec train multivector --data ../shared/data/scifact --out artifacts/scifact-multivector
    retrec eval --data ../shared/data/scifact --retriever muvera --model artifacts/scifact-multivector
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrec.bundle import Publication
from retrec.models.dense_losses import in_batch_cross_entropy, in_batch_margin_mse, margin_mse
from retrec.models.precision import autocast, model_device
from retrec.models.text_encoder import BaseModel
from retrec.models.token_encoder import (
    KIND,
    MultivectorConfig,
    TokenEncoder,
    encode_documents,
    encode_queries,
    maxsim_scores,
    pca_projection,
    token_vectors,
    write_multivector_files,
)
from retrec.pipelines.train.dev_gate import dev_result
from retrec.pipelines.train.loop import TrainRun, run_training
from retrec.pipelines.train.text.config import MultivectorTrainConfig
from retrec.pipelines.train.text.contrastive import (
    ContrastiveAdapter,
    Step,
    contrastive_inputs,
    judged_mask,
    run_metrics,
)
from retrec.pipelines.train.text.data import Miners, TrainingSet, dev_candidates, text_loop_config
from retrec.pipelines.train.text.teachers import Teacher
from retrec.runtime.fde import maxsim
from retrec.runtime.token_encoder import OnnxTokenEncoder
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer, punctuation_ids

log = logging.getLogger("retrec.train.multivector")
__all__ = ["MultivectorTrainConfig", "train_multivector"]
DEV_METRIC = "dev_nDCG@10"


def model_config(cfg: MultivectorTrainConfig, base: BaseModel) -> MultivectorConfig:
    """What the bundle records about its encoder, from the training options."""
    return MultivectorConfig(dim=cfg.dim, max_query_length=cfg.max_query_length, max_doc_length=cfg.max_doc_length,
                             query_augment=cfg.query_augment, skip_punctuation=cfg.skip_punctuation,
                             base_model=base.name)


def step_loss(model: TokenEncoder, tokenizer: TextTokenizer, step: Step, ts: TrainingSet, teacher: Teacher,
              cfg: MultivectorTrainConfig, mcfg: MultivectorConfig, skip: np.ndarray,
              precision: str = "fp32") -> tuple[torch.Tensor, dict[str, float]]:
    """In-batch cross-entropy over MaxSim (judged-relevant negatives masked) + optional Margin-MSE distillation."""
    docs = np.concatenate([step.positives, step.negatives])
    with autocast(precision, model_device(model)):
        q, qmask = encode_queries(model, tokenizer, [ts.query_texts[x] for x in step.queries], mcfg)
        d, keep = encode_documents(model, tokenizer, [ts.doc_texts[i] for i in docs], mcfg, skip, cfg.doc_chunk)
    scores = maxsim_scores(q.float(), qmask.float(), d.float(), keep)  # [B, 2B], the losses in fp32
    judged = judged_mask(step, ts).to(scores.device)
    mask = judged if cfg.mask_judged else torch.zeros_like(judged)
    ce = in_batch_cross_entropy(scores, cfg.scale, mask)
    parts = {"ce": float(ce.detach()), "judged_negatives": float(judged.sum())}
    loss = ce
    if cfg.distill_weight > 0:  # per query token, MaxSim is a mean cosine: the teacher's scale
        per_token = scores / qmask.float().sum(dim=1, keepdim=True).clamp(min=1.0)
        target = torch.from_numpy(np.stack([teacher.scores(qid, docs) for qid in step.queries])).to(scores.device)
        pair = margin_mse(per_token, target)
        inbatch = in_batch_margin_mse(per_token, target, mask)
        loss = loss + cfg.distill_weight * (pair + cfg.inbatch_weight * inbatch)
        parts.update(margin_mse=float(pair.detach()), inbatch_mse=float(inbatch.detach()))
    return loss, parts


@torch.inference_mode()
def dev_ndcg(model: TokenEncoder, tokenizer: TextTokenizer, ts: TrainingSet, cands: dict[str, np.ndarray],
             mcfg: MultivectorConfig, skip: np.ndarray, precision: str = "fp32") -> dict[str, Any]:
    """nDCG@10 of MaxSim re-ranking the miners' candidates of the dev queries (torch, eval mode), and each
    query's (the dev gate's input)."""
    if not cands:
        return {DEV_METRIC: None}
    rows = np.unique(np.concatenate(list(cands.values())))
    where = {int(r): i for i, r in enumerate(rows)}
    with autocast(precision, model_device(model)):  # token_vectors runs the model in eval mode and restores its mode
        docs = token_vectors(model, tokenizer, [ts.doc_texts[i] for i in rows], mcfg, skip, query=False)
        queries = token_vectors(model, tokenizer, [ts.query_texts[q] for q in cands], mcfg, skip, query=True)
    run = {q: {ts.doc_ids[int(r)]: maxsim(qv, docs[where[int(r)]]) for r in cand}
           for qv, (q, cand) in zip(queries, cands.items())}
    return dev_result({q: ts.dev_qrels[q] for q in cands}, run, DEV_METRIC)


class MultivectorAdapter(ContrastiveAdapter):
    """MaxSim contrastive steps for :func:`~retrec.pipelines.train.loop.run_training`; exports the ONNX bundle."""

    name = "multivector"

    def __init__(self, ts: TrainingSet, cfg: MultivectorTrainConfig, miners: Miners, teacher: Teacher,
                 labels: np.ndarray | None, base: BaseModel, bundle_name: str) -> None:
        self.ts, self.cfg, self.miners, self.teacher, self.labels = ts, cfg, miners, teacher, labels
        self.base, self.bundle_name = base, bundle_name
        self.mcfg = model_config(cfg, base)
        self.place(cfg.device, cfg.precision)
        self.dev_cands = dev_candidates(ts, miners, cfg.dev_candidates)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(base.folder)
        self.skip = np.asarray(punctuation_ids(self.tokenizer) if cfg.skip_punctuation else [], dtype=np.int64)
        self.model = TokenEncoder.from_pretrained(base.folder, dim=cfg.dim)
        rng = np.random.default_rng(cfg.seed)
        sample = rng.permutation(len(ts.doc_texts))[: cfg.pca_documents]
        log.info("multivector: %s training; projection %d -> %d from the PCA of %d documents' token states",
                 self.precision, self.model.bert.config.hidden_size, cfg.dim, len(sample))
        self.model.init_projection(pca_projection(self.model.bert, self.tokenizer,
                                                  [ts.doc_texts[i] for i in sample], cfg.dim, cfg.max_doc_length))
        self.model.train().to(self.device)
        self._optimize()

    def step(self, batch: Step) -> tuple[torch.Tensor, dict[str, float]]:
        return step_loss(self.model, self.tokenizer, batch, self.ts, self.teacher, self.cfg, self.mcfg, self.skip,
                         self.precision)

    def evaluate(self) -> dict[str, Any]:
        return dev_ndcg(self.model, self.tokenizer, self.ts, self.dev_cands, self.mcfg, self.skip, self.precision)

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        cfg, ts = self.cfg, self.ts
        self.model.cpu()  # export and parity on the CPU
        config, dims = write_multivector_files(self.model, pub.path, tokenizer=self.tokenizer, config=self.mcfg,
                                               quantize=cfg.quantize)
        fields: dict[str, Any] = {"kind": KIND, "name": self.bundle_name, "dims": dims}
        sample = [ts.doc_texts[i] for i in range(0, len(ts.doc_texts), max(1, len(ts.doc_texts) // 16))][:16]
        queries = [ts.query_texts[q] for q in ts.query_ids[:16]]
        onnx = OnnxTokenEncoder(pub.draft(**fields, config=config))
        diff = 0.0
        for texts, query in ((sample, False), (queries, True)):
            expected = token_vectors(self.model, self.tokenizer, texts, self.mcfg, self.skip, query=query)
            got = onnx.encode_queries(texts) if query else onnx.encode_documents(texts)
            if [g.shape for g in got] != [e.shape for e in expected]:
                raise RuntimeError("ONNX export keeps other tokens than torch")
            diff = max(diff, *(float(np.abs(g - e).max()) for g, e in zip(got, expected)))
        if diff > 1e-4:  # raised inside the publication: nothing is published
            raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> 1e-4) on corpus texts")
        metrics = {**run_metrics(run, ts, "dev_nDCG@10_start"), "onnx_max_abs_diff": diff}
        config = {**config, "base_model_revision": self.base.revision, "train": asdict(cfg),
                  "train_precision": self.precision, "teacher": self.teacher.description}
        return {**fields, "config": config, "metrics": metrics}


def train_multivector(
    data: str | Path, out: str | Path, cfg: MultivectorTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, command: str | None = None, name: str | None = None,
) -> Path:
    """Train on ``data``'s train split (dev split when present), write a ``model/multivector`` bundle to ``out``."""
    cfg = cfg or MultivectorTrainConfig()
    base, ts, miners, teacher, labels = contrastive_inputs(data, cfg, progress, "multivector")
    adapter = MultivectorAdapter(ts, cfg, miners, teacher, labels, base, name or f"{Path(data).name}-multivector")
    return run_training(adapter, text_loop_config(cfg, DEV_METRIC), out, resume=resume, progress=progress,
                        command=command)
