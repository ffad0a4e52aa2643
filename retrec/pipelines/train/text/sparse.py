"""``retrec train sparse``: a SPLADE encoder fine-tuned from MiniLM, exported to ONNX (``model/sparse``).

Flow (the dense trainer's sampling, another score): collection (train split) → BM25 + zero-shot dense miners and
the ensemble teacher (:mod:`retrec.pipelines.train.text.dense`) → topic-aware batches, one judged positive and one
balanced-margin hard negative per query → sparse vectors of the queries and documents → dot product of every
query with every in-batch document → in-batch cross-entropy (judged-relevant negatives masked) + FLOPS
regularisation ``λ_q · FLOPS(queries) + λ_d · FLOPS(documents)``, its weights growing quadratically over the
first ``flops_warmup_steps`` steps (SPLADE) + optional Margin-MSE distillation → ONNX bundle, verified against
torch (same non-zero terms, weights within 1e-4).

A step's cost is mostly MiniLM's: the head's ``[chunk, seq, vocabulary]`` products are never kept for the
backward pass (:class:`~retrec.models.splade.MaxPooledProduct`), attention dropout is off, the attention is the
unfused one on CPU (the backward pass of SDPA's fused CPU kernel costs more than the whole unfused attention) and
gradient checkpointing is off by default — 3.2× cheaper steps on one CPU thread than plain autograd with MiniLM's
dropout, 1.5× cheaper than the same with SDPA (benchmarks/sparse_step_cost.py).

The head starts calibrated on a corpus sample (:meth:`~retrec.models.splade.SpladeEncoder.calibrate`): documents
begin with ``start_terms`` terms. ``--mode inference-free`` (the default): a query is its tokens weighted by the
corpus IDF (the bundle's table), documents are encoded by the model, and the documents' FLOPS is taken on their
IDF-weighted vectors (the inference-free paper's IDF-aware penalty: frequent terms, whose postings are long, cost the
most);
``--lexical auto`` (on for inference-free) adds BM25's saturated term frequency of each document's own terms to
its vector, so training starts from word-piece BM25 plus the head's expansions. ``--mode siamese`` encodes the
queries with the model too.

Example::

    retrec train sparse --data ../shared/data/scifact --out artifacts/scifact-sparse
    retrec eval --data ../shared/data/scifact --retriever sparse --model artifacts/scifact-sparse
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from retrec.bundle import Publication
from retrec.models.dense_losses import in_batch_cross_entropy, in_batch_margin_mse, margin_mse
from retrec.models.precision import autocast
from retrec.models.splade import (
    KIND,
    SparseConfig,
    SpladeEncoder,
    flops,
    idf_weights,
    mean_pooled_length,
    sparse_vectors,
    write_sparse_files,
)
from retrec.models.text_encoder import BaseModel, set_attention_dropout
from retrec.pipelines.train.dev_gate import dev_result
from retrec.pipelines.train.loop import TrainRun, run_training
from retrec.pipelines.train.text.config import SparseTrainConfig
from retrec.pipelines.train.text.contrastive import (
    ContrastiveAdapter,
    Step,
    contrastive_inputs,
    judged_mask,
    run_metrics,
)
from retrec.pipelines.train.text.data import Miners, TrainingSet, dev_candidates, text_loop_config
from retrec.pipelines.train.text.teachers import Teacher
from retrec.runtime.sparse_encoder import OnnxSparseEncoder
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger("retrec.train.sparse")
__all__ = ["SparseTrainConfig", "train_sparse"]
DEV_METRIC = "dev_nDCG@10"
DEV_DEPTH = 100  # documents ranked per dev query over the whole corpus


def model_config(cfg: SparseTrainConfig, base: BaseModel) -> SparseConfig:
    """What the bundle records about its encoder, from the training options."""
    return SparseConfig(mode=cfg.mode, max_query_length=cfg.max_query_length, max_doc_length=cfg.max_doc_length,
                        doc_top_k=cfg.doc_top_k, base_model=base.name)


def encode_grouped(model: SpladeEncoder, tokenizer: TextTokenizer, texts: list[str], max_length: int,
                   chunk: int) -> torch.Tensor:
    """``[texts, vocabulary]`` weights with gradients, forward passes of ``chunk`` texts grouped by length."""
    size = chunk if 0 < chunk < len(texts) else max(1, len(texts))
    positions, parts = [], []
    for rows, feeds in tokenizer.batches(texts, max_length, size):
        parts.append(model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])))
        positions.append(rows)
    weights = torch.cat(parts)
    return weights[torch.from_numpy(np.argsort(np.concatenate(positions))).to(weights.device)]


def query_table_vectors(tokenizer: TextTokenizer, texts: list[str], table: torch.Tensor,
                        max_length: int) -> torch.Tensor:
    """Inference-free query vectors ``[texts, vocabulary]``: each distinct token weighted by ``table``."""
    out = torch.zeros(len(texts), table.shape[0], device=table.device)
    for row, ids in enumerate(tokenizer.encode(texts, max_length)):
        terms = torch.as_tensor(sorted(set(ids)), dtype=torch.long, device=table.device)
        out[row, terms] = table[terms]
    return out


def idf_flops_scale(docs: torch.Tensor, idf: torch.Tensor) -> float:
    """The factor that makes the IDF-aware FLOPS of ``docs`` equal their plain FLOPS: the IDF weights (~4 on a
    typical term) would otherwise make the documents' penalty ~17x the siamese one at the same λ_d (SciFact), and
    the documents collapse to ~20 terms."""
    weighted = float(flops(docs * idf))
    return float(flops(docs)) / weighted if weighted > 0 else 1.0


def csr_rows(vectors: list[tuple[np.ndarray, np.ndarray]], vocabulary: int) -> sp.csr_matrix:
    """``(term ids, weights)`` pairs as the rows of a ``[texts, vocabulary]`` CSR matrix."""
    indptr = np.cumsum([0] + [len(ids) for ids, _ in vectors])
    indices = np.concatenate([np.asarray(ids, np.int64) for ids, _ in vectors] + [np.zeros(0, np.int64)])
    data = np.concatenate([np.asarray(w, np.float32) for _, w in vectors] + [np.zeros(0, np.float32)])
    return sp.csr_matrix((data, indices, indptr), shape=(len(vectors), vocabulary))


def flops_weight(step: int, warmup: int) -> float:
    """SPLADE's quadratic warm-up of the FLOPS weights: ``min(1, (step / warmup)²)``."""
    return 1.0 if warmup <= 0 else min(1.0, (step / warmup) ** 2)


class SparseAdapter(ContrastiveAdapter):
    """SPLADE contrastive steps for :func:`~retrec.pipelines.train.loop.run_training`; exports the ONNX bundle."""

    name = "sparse"

    def __init__(self, ts: TrainingSet, cfg: SparseTrainConfig, miners: Miners, teacher: Teacher,
                 labels: np.ndarray | None, base: BaseModel, bundle_name: str) -> None:
        self.ts, self.cfg, self.miners, self.teacher, self.labels = ts, cfg, miners, teacher, labels
        self.base, self.bundle_name = base, bundle_name
        self.mcfg = model_config(cfg, base)
        self.place(cfg.device, cfg.precision)
        self.dev_cands = dev_candidates(ts, miners, cfg.dev_candidates)
        self.steps_done = 0
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(base.folder)
        # on CPU the unfused attention makes a step 1.5x cheaper than SDPA's fused kernel, whose backward pass is
        # slow there (benchmarks/sparse_step_cost.py); on a GPU the fused kernel
        self.model = SpladeEncoder.from_pretrained(
            base.folder, attn_implementation="sdpa" if self.device.startswith("cuda") else "eager").to(self.device)
        set_attention_dropout(self.model.bert, cfg.attention_dropout)
        sample = np.random.default_rng(cfg.seed).permutation(len(ts.doc_texts))[: cfg.calibration_documents]
        head = self.model.calibrate(self.tokenizer, [ts.doc_texts[i] for i in sample], cfg.start_terms,
                                    max_length=cfg.max_doc_length, batch_size=8)
        log.info("sparse (%s): %s training; head calibrated on %d documents: scale %.3g, threshold %.3g",
                 cfg.mode, self.precision, len(sample), head["scale"], head["threshold"])
        self.head = head
        if cfg.lexical == "on" or (cfg.lexical == "auto" and cfg.mode == "inference-free"):
            self.model.enable_lexical(mean_pooled_length(self.model, self.tokenizer, ts.doc_texts,
                                                         cfg.max_doc_length))
            self.head = {**head, "lexical": self.model.lexical}
            log.info("sparse: lexical channel on (BM25 saturation, %s)", self.model.lexical)
        self.idf = torch.from_numpy(idf_weights(self.tokenizer, ts.doc_texts, cfg.max_doc_length)) \
            if cfg.mode == "inference-free" else None
        self.idf_flops_scale = 1.0
        if self.idf is not None:  # the IDF weighting moves the penalty between terms, not its size at the start
            starts = sparse_vectors(self.model, self.tokenizer, [ts.doc_texts[i] for i in sample[:32]],
                                    cfg.max_doc_length, batch_size=8)
            starts_matrix = torch.from_numpy(csr_rows(starts, self.model.vocabulary).toarray())
            self.idf_flops_scale = idf_flops_scale(starts_matrix, self.idf)
            self.head = {**self.head, "idf_flops_scale": self.idf_flops_scale}
            log.info("sparse: IDF-aware FLOPS scaled by %.3g (its start value equals the plain FLOPS)",
                     self.idf_flops_scale)
        groups: list[dict[str, Any]] = []
        if self.idf is not None:
            self.idf = self.idf.to(self.device)
        if self.idf is not None and cfg.query_weights == "learned":  # a model parameter: kept with the best weights
            self.model.query_table = torch.nn.Parameter(self.idf.clone())
            groups.append({"params": [self.model.query_table], "lr_scale": 100.0, "weight_decay": 0.0})
        self.model.train()
        head = [self.model.transform.weight, self.model.transform.bias, self.model.bias]
        own = head + [p for g in groups for p in g["params"]]
        rest = [p for p in self.model.parameters() if all(p is not h for h in own)]
        self._optimize([{"params": rest}, {"params": head, "lr_scale": cfg.head_lr_scale}, *groups])

    def query_weights(self) -> torch.Tensor | None:
        """The inference-free query weights now: the learned table (non-negative) or the corpus IDF."""
        learned = getattr(self.model, "query_table", None)
        return torch.relu(learned) if learned is not None else self.idf

    def queries(self, texts: list[str]) -> torch.Tensor:
        table = self.query_weights()
        if table is not None:
            return query_table_vectors(self.tokenizer, texts, table, self.cfg.max_query_length)
        return encode_grouped(self.model, self.tokenizer, texts, self.cfg.max_query_length, 0)

    def step(self, batch: Step) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, ts = self.cfg, self.ts
        docs = np.concatenate([batch.positives, batch.negatives])
        with autocast(self.precision, self.device):
            q = self.queries([ts.query_texts[x] for x in batch.queries])
            d = encode_grouped(self.model, self.tokenizer, [ts.doc_texts[i] for i in docs], cfg.max_doc_length,
                               cfg.doc_chunk)
        q, d = q.float(), d.float()
        scores = q @ d.T
        judged = judged_mask(batch, ts).to(scores.device)
        mask = judged if cfg.mask_judged else torch.zeros_like(judged)
        ce = in_batch_cross_entropy(scores, cfg.logit_scale, mask)
        warm = flops_weight(self.steps_done, cfg.flops_warmup_steps)
        doc_flops = flops(d * self.idf) * self.idf_flops_scale if self.idf is not None else flops(d)
        query_flops = flops(q) if self.idf is None else torch.zeros((), device=scores.device)
        loss = ce + warm * (cfg.lambda_q * query_flops + cfg.lambda_d * doc_flops)
        parts = {"ce": float(ce.detach()), "flops_q": float(query_flops.detach()),
                 "flops_d": float(doc_flops.detach()), "terms_q": float((q > 0).sum(1).float().mean()),
                 "terms_d": float((d > 0).sum(1).float().mean()), "judged_negatives": float(judged.sum())}
        if cfg.distill_weight > 0:
            target = torch.from_numpy(np.stack([self.teacher.scores(qid, docs) for qid in batch.queries]))
            target = target.to(scores.device)
            pair, inbatch = margin_mse(scores, target), in_batch_margin_mse(scores, target, mask)
            loss = loss + cfg.distill_weight * (pair + cfg.inbatch_weight * inbatch)
            parts.update(margin_mse=float(pair.detach()), inbatch_mse=float(inbatch.detach()))
        self.steps_done += 1
        return loss, parts

    @torch.inference_mode()
    def dev_run(self) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
        """The dev queries ranked by the sparse dot product, and the mean terms per text. Over the whole corpus
        when it is at most twice the miners' candidate documents (about the same encoding cost; re-ranking only
        the candidates hides a weak model's false positives elsewhere: SciFact inference-free dev 0.652 on
        candidates, test 0.575 over the corpus), else the candidates re-ranked."""
        cands, ts = self.dev_cands, self.ts
        rows = np.unique(np.concatenate(list(cands.values())))
        whole = len(ts.doc_texts) <= 2 * len(rows)
        if whole:
            rows = np.arange(len(ts.doc_texts))
        with autocast(self.precision, self.device):
            docs = sparse_vectors(self.model, self.tokenizer, [ts.doc_texts[i] for i in rows], self.cfg.max_doc_length,
                                  self.cfg.doc_top_k)
            queries = self.query_vectors([ts.query_texts[q] for q in cands])
        vocabulary = self.model.vocabulary
        scores = (csr_rows(queries, vocabulary) @ csr_rows(docs, vocabulary).T).toarray()
        where = {int(r): i for i, r in enumerate(rows)}
        run = {}
        for i, (q, cand) in enumerate(cands.items()):
            if whole:  # documents sharing no term with the query are not retrieved (as in the index)
                ranked = [j for j in np.argsort(-scores[i], kind="stable")[:DEV_DEPTH] if scores[i, j] > 0]
            else:
                ranked = [where[int(r)] for r in cand]
            run[q] = {ts.doc_ids[int(rows[j])]: float(scores[i, j]) for j in ranked}
        terms = {"dev_terms_per_document": float(np.mean([len(i) for i, _ in docs])),
                 "dev_terms_per_query": float(np.mean([len(i) for i, _ in queries]))}
        return run, terms

    def query_vectors(self, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.idf is None:
            return sparse_vectors(self.model, self.tokenizer, texts, self.cfg.max_query_length)
        table = self.query_weights()
        assert table is not None
        dense = query_table_vectors(self.tokenizer, texts, table.detach(), self.cfg.max_query_length).numpy()
        return [(np.flatnonzero(r > 0), r[r > 0]) for r in dense]

    def evaluate(self) -> dict[str, Any]:
        if not self.dev_cands:
            return {DEV_METRIC: None}
        run, terms = self.dev_run()
        return {**dev_result({q: self.ts.dev_qrels[q] for q in run}, run, DEV_METRIC), **terms}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        super().load_state_dict(checkpoint)
        self.steps_done = int(checkpoint.get("steps_done", 0))

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        cfg, ts = self.cfg, self.ts
        self.model.cpu()  # export and parity on the CPU
        learned = self.query_weights()
        table = learned.detach().cpu().numpy().copy() if learned is not None else None
        config, dims = write_sparse_files(self.model, pub.path, tokenizer=self.tokenizer, config=self.mcfg,
                                          query_weights=table, quantize=cfg.quantize)
        fields: dict[str, Any] = {"kind": KIND, "name": self.bundle_name, "dims": dims}
        sample = [ts.doc_texts[i] for i in range(0, len(ts.doc_texts), max(1, len(ts.doc_texts) // 16))][:16]
        queries = [ts.query_texts[q] for q in ts.query_ids[:16]]
        onnx = OnnxSparseEncoder(pub.draft(**fields, config={**config, "doc_top_k": 0}))  # full vectors compared
        vocabulary = self.model.vocabulary
        diff = parity(self.model, self.tokenizer, sample, cfg.max_doc_length, onnx.encode_documents(sample),
                      vocabulary)
        if self.idf is None:
            diff = max(diff, parity(self.model, self.tokenizer, queries, cfg.max_query_length,
                                    onnx.encode_queries(queries), vocabulary))
        evaluated = [c for c in run.curve if "dev_terms_per_document" in c]
        terms = {k: v for k, v in evaluated[-1].items() if k.startswith("dev_terms")} if evaluated else {}
        metrics = {**run_metrics(run, ts, "dev_nDCG@10_start"), "onnx_max_abs_diff": diff, **terms}
        config = {**config, "base_model_revision": self.base.revision,
                  "train": {**asdict(cfg), "scale": cfg.logit_scale}, "head": self.head,
                  "train_precision": self.precision, "teacher": self.teacher.description}
        return {**fields, "config": config, "metrics": metrics}


def parity(model: SpladeEncoder, tokenizer: TextTokenizer, texts: list[str], max_length: int,
           got: list[tuple[np.ndarray, np.ndarray]], vocabulary: int) -> float:
    """Largest weight difference between torch and the ONNX bundle on ``texts`` (full vectors, a term missing on
    one side counting as 0, so a weight at the ReLU's edge cannot fail it); RuntimeError (nothing is published)
    above 1e-4."""
    expected = sparse_vectors(model, tokenizer, texts, max_length)
    diff = 0.0
    for (gi, gw), (ei, ew) in zip(got, expected):
        a, b = np.zeros(vocabulary, np.float32), np.zeros(vocabulary, np.float32)
        a[gi], b[ei] = gw, ew
        diff = max(diff, float(np.abs(a - b).max()))
    if diff > 1e-4:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> 1e-4) on corpus texts")
    return diff


def train_sparse(
    data: str | Path, out: str | Path, cfg: SparseTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, command: str | None = None, name: str | None = None,
) -> Path:
    """Train on ``data``'s train split (dev split when present), write a ``model/sparse`` bundle to ``out``."""
    cfg = cfg or SparseTrainConfig()
    base, ts, miners, teacher, labels = contrastive_inputs(data, cfg, progress, "sparse")
    adapter = SparseAdapter(ts, cfg, miners, teacher, labels, base, name or f"{Path(data).name}-sparse")
    return run_training(adapter, text_loop_config(cfg, DEV_METRIC), out, resume=resume, progress=progress,
                        command=command)
