"""`retrec train reranker`: a cross-encoder re-ranker trained on a BEIR collection's judgements.

Pipeline: BEIR train split → BM25 and the zero-shot dense encoder mine candidates (the dense trainer's
miners) → each step takes ``batch_size`` queries, each with one judged positive (drawn by grade) and
``group_size - 1`` negatives drawn from its candidates; documents judged relevant to the query (any grade > 0)
are never its negatives → cross-entropy of the positive over its group (localized contrastive estimation,
Gao et al. 2021) → ONNX bundle (``model/reranker``), verified against torch.

Dev: the union of both miners' top ``dev_candidates`` per dev query, re-ranked by the model, nDCG@10; the
first stage's own nDCG@10 on the same candidates (zero-shot dense order) is recorded beside it. The exported
weights are the best evaluated. The start is evaluated too, so a run that learns nothing says so. The bundle
also records ``first_stage_weight``: the mix of the model's and the first stage's scores
(:func:`retrec.runtime.reranker.interpolate`) that scored best on dev, from 0 (the model alone) to 1 (the first
stage's order kept), which re-ranking applies wherever it has the first stage's scores.

Example::

    retrec train reranker --data ../shared/data/scifact --out artifacts/scifact-reranker
    retrec eval --data ../shared/data/scifact --retriever dense --rerank artifacts/scifact-reranker --depth 100
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from retrec.bundle import Publication
from retrec.models.cross_encoder import (
    KIND,
    CrossEncoder,
    RerankerConfig,
    score_pairs,
    write_reranker_files,
)
from retrec.models.precision import autocast, model_device, resolve_device
from retrec.models.text_encoder import BaseModel, resolve_base_model
from retrec.pipelines.eval.rerank import sweep_first_stage_weight
from retrec.pipelines.train.dev_gate import dev_result
from retrec.pipelines.train.loop import TorchAdapter, TrainRun, run_training
from retrec.pipelines.train.text.config import RerankerTrainConfig
from retrec.pipelines.train.text.data import (
    Miners,
    TrainingSet,
    build_miners,
    dev_candidates,
    text_loop_config,
    training_set,
)
from retrec.pipelines.train.text.tas_sampling import graded_pick, random_batches
from retrec.runtime.reranker import OnnxReranker
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger("retrec.train.reranker")
__all__ = ["RerankerTrainConfig", "train_reranker"]
DEV_METRIC = "dev_nDCG@10"


@dataclass
class Group:
    queries: list[str]
    docs: np.ndarray  # [queries, group_size] corpus rows; column 0 the positive


def plan_epoch(epoch: int, ts: TrainingSet, cfg: RerankerTrainConfig, miners: Miners) -> list[Group]:
    """Every step of one epoch, from a generator seeded by (seed, epoch)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    steps = []
    for batch in random_batches(len(ts.query_ids), cfg.batch_size, rng):
        qids = [ts.query_ids[i] for i in batch]
        rows = []
        for q in qids:
            pos = ts.positives[q]
            p = pos[graded_pick(np.array([ts.qrels_rows[q][int(r)] for r in pos]), rng)]
            cands = miners.candidates(q, cfg.negative_depth, pos)  # judged-relevant rows are left out
            if cands.size == 0:  # tiny corpora: any other document
                cands = np.setdiff1d(np.arange(len(ts.doc_ids)), pos)
            n = cfg.group_size - 1
            neg = rng.choice(cands, size=n, replace=cands.size < n)
            rows.append(np.concatenate([[p], neg]))
        steps.append(Group(qids, np.array(rows, dtype=np.int64)))
    return steps


def step_loss(model: CrossEncoder, tokenizer: TextTokenizer, group: Group, ts: TrainingSet,
              cfg: RerankerTrainConfig, precision: str = "fp32") -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of each query's positive over its group; pairs scored in length-grouped passes."""
    pairs = [(ts.query_texts[q], ts.doc_texts[int(d)]) for q, row in zip(group.queries, group.docs) for d in row]
    chunk = cfg.chunk if 0 < cfg.chunk < len(pairs) else len(pairs)
    positions, parts = [], []
    with autocast(precision, model_device(model)):
        for rows, feeds in tokenizer.pair_batches(pairs, cfg.max_length, chunk):
            positions.append(rows)
            parts.append(model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                                        "token_type_ids"))))
    scores = torch.cat(parts).float()
    scores = scores[torch.from_numpy(np.argsort(np.concatenate(positions))).to(scores.device)]
    scores = scores.view(len(group.queries), -1)
    loss = nn.functional.cross_entropy(scores, torch.zeros(len(group.queries), dtype=torch.long, device=scores.device))
    accuracy = float((scores.argmax(dim=1) == 0).float().mean())
    return loss, {"ce": float(loss.detach()), "group_accuracy": accuracy}


def dev_scores(model: CrossEncoder, tokenizer: TextTokenizer, ts: TrainingSet, cands: dict[str, np.ndarray],
               cfg: RerankerTrainConfig, precision: str = "fp32") -> dict[str, np.ndarray]:
    """The model's scores of each dev query's candidates (torch, eval mode)."""
    was = model.training
    model.eval()
    pairs = [(ts.query_texts[q], ts.doc_texts[int(r)]) for q, rows in cands.items() for r in rows]
    with autocast(precision, model_device(model)):
        scores = score_pairs(model, tokenizer, pairs, cfg.max_length)
    model.train(was)
    bounds = np.cumsum([0, *(len(rows) for rows in cands.values())])
    return {q: scores[bounds[i]:bounds[i + 1]] for i, q in enumerate(cands)}


def candidates_result(ts: TrainingSet, cands: dict[str, np.ndarray], scores: dict[str, np.ndarray]
                      ) -> dict[str, Any]:
    """nDCG@10 of the dev candidates ordered by ``scores``, and each query's (the dev gate's input)."""
    if not cands:
        return {DEV_METRIC: None}
    run = {q: {ts.doc_ids[int(r)]: float(s) for r, s in zip(rows, scores[q])} for q, rows in cands.items()}
    return dev_result({q: ts.dev_qrels[q] for q in cands}, run, DEV_METRIC)


def candidates_ndcg(ts: TrainingSet, cands: dict[str, np.ndarray], scores: dict[str, np.ndarray]) -> float | None:
    """nDCG@10 of the dev candidates ordered by ``scores``."""
    return candidates_result(ts, cands, scores)[DEV_METRIC]


def first_stage_scores(miners: Miners, cands: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The zero-shot dense scores of the dev candidates: the first stage re-ranking has to beat."""
    return {q: miners.dense.corpus_scores(q)[rows] for q, rows in cands.items()}


def choose_first_stage_weight(ts: TrainingSet, cands: dict[str, np.ndarray], model: dict[str, np.ndarray],
                              first: dict[str, np.ndarray]) -> tuple[float, float | None]:
    """The weight of the first stage in the mix (:func:`~retrec.pipelines.eval.rerank.sweep_first_stage_weight`) that
    scores best on the dev candidates, and that dev nDCG@10."""
    if not cands:
        return 0.0, None
    docs = {q: [ts.doc_ids[int(r)] for r in rows] for q, rows in cands.items()}
    weight, table = sweep_first_stage_weight(docs, model, first, {q: ts.dev_qrels[q] for q in cands})
    return weight, table[weight]


class RerankerAdapter(TorchAdapter):
    """Cross-encoder steps for :func:`~retrec.pipelines.train.loop.run_training`; exports the ONNX bundle."""

    name = "reranker"

    def __init__(self, ts: TrainingSet, cfg: RerankerTrainConfig, miners: Miners, base: BaseModel,
                 bundle_name: str) -> None:
        self.ts, self.cfg, self.miners, self.base, self.bundle_name = ts, cfg, miners, base, bundle_name
        self.place(cfg.device, cfg.precision)
        log.info("reranker: %s training", self.precision)
        self.dev_cands = dev_candidates(ts, miners, cfg.dev_candidates)
        self.first_scores = first_stage_scores(miners, self.dev_cands)
        self.first_stage = candidates_ndcg(ts, self.dev_cands, self.first_scores)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(base.folder)
        self.model = CrossEncoder.from_pretrained(base.folder, pooling=cfg.pooling).train().to(self.device)
        if cfg.grad_checkpoint:
            self.model.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.ts.query_ids) / self.cfg.batch_size)

    def batches(self, epoch: int) -> list[Group]:
        return plan_epoch(epoch, self.ts, self.cfg, self.miners)

    def step(self, batch: Group) -> tuple[torch.Tensor, dict[str, float]]:
        return step_loss(self.model, self.tokenizer, batch, self.ts, self.cfg, self.precision)

    def evaluate(self) -> dict[str, Any]:
        if not self.dev_cands:
            return {DEV_METRIC: None}
        scores = dev_scores(self.model, self.tokenizer, self.ts, self.dev_cands, self.cfg, self.precision)
        return candidates_result(self.ts, self.dev_cands, scores)

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        cfg, ts = self.cfg, self.ts
        weight, interpolated = 0.0, None
        if self.dev_cands:  # the exported (best) weights' dev scores, mixed with the first stage's
            scores = dev_scores(self.model, self.tokenizer, ts, self.dev_cands, cfg, self.precision)
            weight, interpolated = choose_first_stage_weight(ts, self.dev_cands, scores, self.first_scores)
            log.info("reranker: first-stage weight %.1f (dev nDCG@10 %.4f; the model alone %s, the first stage "
                     "alone %s)", weight, interpolated or 0.0, candidates_ndcg(ts, self.dev_cands, scores),
                     self.first_stage)
        self.model.cpu()  # export and parity on the CPU
        rcfg = RerankerConfig(pooling=cfg.pooling, max_length=cfg.max_length, base_model=self.base.name)
        config, dims = write_reranker_files(self.model, pub.path, tokenizer=self.tokenizer, config=rcfg,
                                            quantize=cfg.quantize)
        config["first_stage_weight"] = weight
        fields: dict[str, Any] = {"kind": KIND, "name": self.bundle_name, "dims": dims}
        q = ts.query_texts[ts.query_ids[0]]
        step = max(1, len(ts.doc_texts) // 32)
        sample = [(q, ts.doc_texts[i]) for i in range(0, len(ts.doc_texts), step)][:32]
        torch_scores = score_pairs(self.model, self.tokenizer, sample, cfg.max_length)
        onnx_scores = OnnxReranker(pub.draft(**fields, config=config)).score_pairs(sample)
        diff = float(np.abs(torch_scores - onnx_scores).max())
        if diff > 1e-3:  # raised inside the publication: nothing is published
            raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> 1e-3) on corpus documents")
        devs = [c[DEV_METRIC] for c in run.curve if c.get(DEV_METRIC) is not None]
        state = run.state
        exported = state.best if devs and state.best_step >= 0 else (devs[-1] if devs else None)
        metrics = {DEV_METRIC: exported, "dev_nDCG@10_start": devs[0] if devs else None,
                   "dev_nDCG@10_first_stage": self.first_stage, "dev_nDCG@10_interpolated": interpolated,
                   "beats_first_stage": None if exported is None or self.first_stage is None
                   else max(exported, interpolated or exported) > self.first_stage + 1e-9,
                   "best_step": state.best_step, "dev_queries": len(ts.dev_ids), "dev_source": ts.dev_source,
                   "train_queries": len(ts.query_ids), "steps": state.step, "epochs_completed": state.epoch,
                   "train_seconds": round(state.seconds, 1), "dev_seconds": round(state.eval_seconds, 1),
                   "onnx_max_abs_diff": diff}
        config = {**config, "base_model_revision": self.base.revision, "train": asdict(cfg),
                  "train_precision": self.precision}
        return {**fields, "config": config, "metrics": metrics}


def train_reranker(
    data: str | Path, out: str | Path, cfg: RerankerTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, command: str | None = None, name: str | None = None,
) -> Path:
    """Train on ``data``'s train split (dev split when present), write a ``model/reranker`` bundle to ``out``."""
    cfg = cfg or RerankerTrainConfig()
    resolve_device(cfg.device)  # a GPU that is not there is refused before any work
    base = resolve_base_model(cfg.base_model)
    ts = training_set(data, cfg)
    log.info("reranker: %d training queries, %d dev queries (%s), %d documents", len(ts.query_ids),
             len(ts.dev_ids), ts.dev_source, len(ts.doc_ids))
    miners, _, _ = build_miners(ts, cfg, progress)
    adapter = RerankerAdapter(ts, cfg, miners, base, name or f"{Path(data).name}-reranker")
    log.info("reranker: first stage (zero-shot dense) dev nDCG@10 on the candidates %s", adapter.first_stage)
    return run_training(adapter, text_loop_config(cfg, DEV_METRIC), out, resume=resume, progress=progress,
                        command=command)
