"""What the bi-encoder trainers share (dense, multi-vector, sparse): TAS-Balanced steps from one recipe.

A step is a batch of training queries with one positive and one mined negative each (:class:`Step`), planned per
epoch from a generator seeded by (seed, epoch): topic-clustered or random batches, negatives by balanced margin
sampling over the teacher's scores. :func:`contrastive_inputs` builds what every such trainer starts from (base
model, training set, miners, teacher, topic clusters), :class:`ContrastiveAdapter` the optimizer and the epoch
plan, :func:`run_metrics` the manifest's dev metrics. A family module adds its model, loss and export.

Example::

    base, ts, miners, teacher, labels = contrastive_inputs("../shared/data/scifact", DenseTrainConfig(), True, "dense")
    steps = plan_epoch(0, ts, DenseTrainConfig(), labels, miners, teacher)
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrec.bundle import load_bundle
from retrec.kinds import RERANKER_MODEL
from retrec.models.precision import resolve_device
from retrec.models.text_encoder import BaseModel, resolve_base_model
from retrec.pipelines.train.loop import TorchAdapter, TrainRun
from retrec.pipelines.train.text.config import ContrastiveOptions
from retrec.pipelines.train.text.data import Miners, TrainingSet, build_miners, training_set
from retrec.pipelines.train.text.pseudo_queries import with_pseudo_queries
from retrec.pipelines.train.text.tas_sampling import (
    balanced_margin_pick,
    graded_pick,
    random_batches,
    topic_batches,
    topic_clusters,
)
from retrec.pipelines.train.text.teachers import CrossEncoderMember, LabelMember, ScoreTableMember, Teacher
from retrec.runtime.tokenizer import TextTokenizer

log = logging.getLogger("retrec.train.dense")


DEV_METRIC = "dev_nDCG@10"  # what the exported weights are chosen by


def build_teacher(cfg: ContrastiveOptions, miners: Miners, ts: TrainingSet) -> Teacher:
    labels = (LabelMember(ts.qrels_rows), cfg.label_weight)
    if cfg.teacher == "ensemble":
        return Teacher([(miners.bm25, 1.0), (miners.dense, 1.0), labels])
    path = Path(cfg.teacher)
    if path.is_dir():  # a model/reranker bundle: it scores each training query's candidates once, up front
        return Teacher([(cross_encoder_member(path, cfg, miners, ts), 1.0), labels])
    if not path.is_file():
        raise ValueError(f"teacher must be 'ensemble', a model/reranker bundle folder or a Parquet file of "
                         f"(query_id, doc_id, score); {path} does not exist")
    return Teacher([(ScoreTableMember(path, {d: i for i, d in enumerate(ts.doc_ids)}), 1.0), labels])


def cross_encoder_member(bundle: Path, cfg: ContrastiveOptions, miners: Miners, ts: TrainingSet) -> CrossEncoderMember:
    """The re-ranker's scores of every training query's positives and mined candidates (the pool balanced
    sampling draws negatives from), with the int8 model when the bundle has one."""
    from retrec.runtime.reranker import OnnxReranker

    manifest = load_bundle(bundle, kind=RERANKER_MODEL)
    variant = "int8" if "int8" in manifest.config.get("variants", {}) else "fp32"
    scorer = OnnxReranker(manifest, variant=variant)
    pool = {q: np.union1d(ts.positives[q], miners.candidates(q, cfg.negative_depth, ts.positives[q]))
            for q in ts.query_ids}
    total = sum(len(v) for v in pool.values())
    log.info("dense: teacher %s (%s) scores %d (query, document) pairs", manifest.name, variant, total)
    started = time.perf_counter()

    def report(done: int, of: int) -> None:
        log.info("dense: teacher scored %d/%d queries (%.0f s)", done, of, time.perf_counter() - started)

    return CrossEncoderMember(scorer, ts.query_texts, ts.doc_texts, pool, progress=report)


@dataclass
class Step:
    queries: list[str]
    positives: np.ndarray  # corpus row per query
    negatives: np.ndarray


def plan_epoch(epoch: int, ts: TrainingSet, cfg: ContrastiveOptions, labels: np.ndarray | None, miners: Miners,
               teacher: Teacher) -> list[Step]:
    """Every batch of one epoch with its positives and negatives, from a generator seeded by (seed, epoch)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    n = len(ts.query_ids)
    if cfg.sampling == "topic" and labels is not None:
        batches = topic_batches(labels, cfg.batch_size, cfg.clusters_per_batch, rng)
    else:
        batches = random_batches(n, cfg.batch_size, rng)
    steps = []
    for batch in batches:
        if len(batch) < 2:
            continue
        qids = [ts.query_ids[i] for i in batch]
        pos, neg = [], []
        for q in qids:
            rows = ts.positives[q]
            p = rows[graded_pick(np.array([ts.qrels_rows[q][int(r)] for r in rows]), rng)]
            if cfg.negatives == "bm25":
                cands = miners.bm25.top(q, cfg.negative_depth)
                cands = cands[~np.isin(cands, ts.positives[q])]
            else:
                cands = miners.candidates(q, cfg.negative_depth, ts.positives[q])
            if cands.size == 0:  # tiny corpora: any other document
                cands = np.setdiff1d(np.arange(len(ts.doc_ids)), ts.positives[q])
            if cfg.negatives == "balanced":
                margins = teacher.scores(q, np.array([p]))[0] - teacher.scores(q, cands)
                pick = balanced_margin_pick(margins, cfg.margin_bins, rng)
            else:
                pick = int(rng.integers(cands.size))
            pos.append(p)
            neg.append(int(cands[pick]))
        steps.append(Step(qids, np.array(pos, dtype=np.int64), np.array(neg, dtype=np.int64)))
    return steps


def tensors(tokenizer: TextTokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    feeds = tokenizer(texts, max_length)
    return torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])


def judged_mask(step: Step, ts: TrainingSet) -> torch.Tensor:
    """``[queries, positives + negatives]``: True where another query's positive or negative is judged relevant
    (any grade > 0) to this query — not a negative for it, so the losses leave the pair out. Its sum per batch
    goes into the training curve (``judged_negatives``)."""
    docs = np.concatenate([step.positives, step.negatives])
    mask = torch.tensor([[ts.qrels_rows.get(qid, {}).get(int(doc), 0) > 0 for doc in docs] for qid in step.queries])
    mask.fill_diagonal_(False)  # the query's own positive
    return mask


def run_metrics(run: TrainRun, ts: TrainingSet, start_key: str) -> dict[str, Any]:
    """The manifest metrics of a bi-encoder run: dev nDCG@10 of the exported weights and of the start
    (``start_key``), the gain, the best step, the splits' sizes, steps and seconds."""
    devs = [c[DEV_METRIC] for c in run.curve if c.get(DEV_METRIC) is not None]
    state = run.state
    start = devs[0] if devs else None
    exported = state.best if devs and state.best_step >= 0 else (devs[-1] if devs else None)
    return {DEV_METRIC: exported, start_key: start,
            "dev_gain": None if start is None or exported is None else round(exported - start, 6),
            "improved_on_start": None if not devs else state.best_step > 0, "best_step": state.best_step,
            "dev_queries": len(ts.dev_ids), "dev_source": ts.dev_source, "train_queries": len(ts.query_ids),
            "steps": state.step, "epochs_completed": state.epoch, "train_seconds": round(state.seconds, 1),
            "dev_seconds": round(state.eval_seconds, 1)}


class ContrastiveAdapter(TorchAdapter):
    """What the bi-encoder adapters share (dense, multi-vector): an epoch of the shared sampling, AdamW, gradient
    checkpointing of the BERT; subclasses set ``model`` and call :meth:`_optimize`."""

    ts: TrainingSet
    cfg: ContrastiveOptions
    miners: Miners
    teacher: Teacher
    labels: np.ndarray | None

    def _optimize(self, groups: list[dict[str, Any]] | None = None) -> None:
        """AdamW over the model's parameters, or over ``groups`` (a group's ``lr_scale`` multiplies the schedule)."""
        if self.cfg.grad_checkpoint:  # peak RSS at 100k judgements 8.2 → 2.4 GiB, steps ~1.4x slower (RESULTS.md)
            self.model.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.optimizer = torch.optim.AdamW(groups if groups is not None else self.model.parameters(), lr=self.cfg.lr,
                                           weight_decay=self.cfg.weight_decay)

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.ts.query_ids) / self.cfg.batch_size)

    def batches(self, epoch: int) -> list[Step]:
        return plan_epoch(epoch, self.ts, self.cfg, self.labels, self.miners, self.teacher)


def contrastive_inputs(
    data: str | Path, cfg: ContrastiveOptions, progress: bool, what: str, ts: TrainingSet | None = None,
) -> tuple[BaseModel, TrainingSet, Miners, Teacher, np.ndarray | None]:
    """What every bi-encoder trainer starts from: the base model (a bad folder refused before any work), the
    training set (``data``'s judged queries, unless ``ts`` is given), the miners, the teacher and the topic
    clusters of the training queries (None: random batches)."""
    resolve_device(cfg.device)  # a GPU that is not there is refused before any work
    base = resolve_base_model(cfg.base_model)
    ts = ts if ts is not None else training_set(data, cfg)
    log.info("%s: %d training queries (%d judgements), %d dev queries (%s), %d documents", what, len(ts.query_ids),
             sum(len(v) for v in ts.qrels_rows.values()), len(ts.dev_ids), ts.dev_source, len(ts.doc_ids))
    if cfg.pseudo_queries > 0:
        judged = len(ts.query_ids)
        ts = with_pseudo_queries(ts, cfg.pseudo_queries, cfg.seed)
        log.info("%s: %d pseudo-queries from corpus sentences", what, len(ts.query_ids) - judged)
    miners, qvec, _ = build_miners(ts, cfg, progress)
    log.info("%s: teacher %s", what, cfg.teacher)
    teacher = build_teacher(cfg, miners, ts)
    per_cluster = cfg.queries_per_cluster or 4 * cfg.batch_size
    labels = topic_clusters(qvec, max(1, round(len(ts.query_ids) / per_cluster)), cfg.seed) \
        if cfg.sampling == "topic" else None
    return base, ts, miners, teacher, labels
