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
the packaged MiniLM. Training runs in :func:`retrec.pipelines.train_loop.run_training`; checkpoints
(model + optimizer + progress) go to ``<out>.ckpt/`` and ``resume=True`` continues from them.

Example::

    train_dense("../shared/data/scifact", "artifacts/scifact-dense", DenseTrainConfig(max_minutes=30))
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrec.bundle import Publication, load_bundle
from retrec.kinds import RERANKER_MODEL
from retrec.models.dense_losses import in_batch_cross_entropy, in_batch_margin_mse, margin_mse
from retrec.models.precision import autocast, resolve_precision
from retrec.models.text_encoder import (
    KIND,
    BaseModel,
    EncoderConfig,
    TextEncoder,
    embed_grouped,
    encode_texts,
    resolve_base_model,
    write_onnx_files,
)
from retrec.pipelines.dense_teachers import (
    CrossEncoderMember,
    LabelMember,
    ScoreTableMember,
    Teacher,
)
from retrec.pipelines.metrics import evaluate_run
from retrec.pipelines.pseudo_queries import with_pseudo_queries
from retrec.pipelines.tas_sampling import (
    balanced_margin_pick,
    graded_pick,
    random_batches,
    topic_batches,
    topic_clusters,
)
from retrec.pipelines.train_config import ContrastiveOptions, DenseTrainConfig
from retrec.pipelines.train_loop import TorchAdapter, TrainRun, run_training, text_loop_config
from retrec.pipelines.training_set import Miners, TrainingSet, build_miners, training_set
from retrec.runtime.onnx_encoder import OnnxEncoder
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger("retrec.train.dense")
__all__ = ["DenseTrainConfig", "train_dense"]
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


def _tensors(tokenizer: TextTokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def step_loss(model: TextEncoder, tokenizer: TextTokenizer, step: Step, ts: TrainingSet, teacher: Teacher,
              cfg: DenseTrainConfig, precision: str = "fp32") -> tuple[torch.Tensor, dict[str, float]]:
    docs = np.concatenate([step.positives, step.negatives])
    with autocast(precision):
        q = model(*_tensors(tokenizer, [ts.query_texts[x] for x in step.queries], cfg.max_query_length))
        d = embed_grouped(model, tokenizer, [ts.doc_texts[i] for i in docs], cfg.max_doc_length, cfg.doc_chunk)
    q, d = q.float(), d.float()  # the losses in fp32
    scores = q @ d.T
    judged = judged_mask(step, ts)
    mask = judged if cfg.mask_judged else torch.zeros_like(judged)
    scale = cfg.scale if cfg.similarity == "cosine" else 1.0
    ce = in_batch_cross_entropy(scores, scale, mask)
    parts = {"ce": float(ce.detach()), "judged_negatives": float(judged.sum())}
    loss = ce
    if cfg.distill_weight > 0:
        target = torch.from_numpy(np.stack([teacher.scores(qid, docs) for qid in step.queries]))
        if cfg.similarity == "dot":
            target = target * scale
        pair = margin_mse(scores, target)
        inbatch = in_batch_margin_mse(scores, target, mask)
        loss = loss + cfg.distill_weight * (pair + cfg.inbatch_weight * inbatch)
        parts.update(margin_mse=float(pair.detach()), inbatch_mse=float(inbatch.detach()))
    return loss, parts


def dev_candidates(ts: TrainingSet, miners: Miners, depth: int) -> dict[str, np.ndarray]:
    return {q: miners.candidates(q, depth, np.empty(0, dtype=np.int64)) for q in ts.dev_ids}


def dev_ndcg(model: TextEncoder, tokenizer: TextTokenizer, ts: TrainingSet, cands: dict[str, np.ndarray],
             cfg: DenseTrainConfig, precision: str = "fp32") -> float | None:
    """nDCG@10 of the model re-ranking the miners' candidates of the dev queries (torch, eval mode, the
    training precision)."""
    if not cands:
        return None
    was = model.training
    model.eval()
    docs = np.unique(np.concatenate(list(cands.values())))
    with autocast(precision):
        dvec = encode_texts(model, tokenizer, [ts.doc_texts[i] for i in docs], cfg.max_doc_length)
        qvec = encode_texts(model, tokenizer, [ts.query_texts[q] for q in cands], cfg.max_query_length)
    model.train(was)
    where = {int(r): i for i, r in enumerate(docs)}
    run = {}
    for qi, (q, rows) in enumerate(cands.items()):
        s = dvec[[where[int(r)] for r in rows]] @ qvec[qi]
        run[q] = {ts.doc_ids[int(r)]: float(v) for r, v in zip(rows, s)}
    mean, _ = evaluate_run({q: ts.dev_qrels[q] for q in cands}, run, ["nDCG@10"])
    return mean["nDCG@10"]


def onnx_max_abs_diff(model: TextEncoder, tokenizer: TextTokenizer, bundle: Any, texts: list[str],
                      max_length: int) -> float:
    """Largest absolute difference between torch and ONNX Runtime embeddings of ``texts``.

    ``bundle``: a bundle folder or its (draft) :class:`~retrec.bundle.Manifest`.
    """
    torch_vecs = encode_texts(model, tokenizer, texts, max_length)
    onnx_vecs = OnnxEncoder(bundle).encode(texts, max_length=max_length)
    return float(np.abs(torch_vecs - onnx_vecs).max())


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


class DenseAdapter(ContrastiveAdapter):
    """TAS-B steps for :func:`~retrec.pipelines.train_loop.run_training`; exports the ONNX bundle."""

    name = "dense"

    def __init__(self, ts: TrainingSet, cfg: DenseTrainConfig, miners: Miners, teacher: Teacher,
                 labels: np.ndarray | None, base: BaseModel, bundle_name: str) -> None:
        self.ts, self.cfg, self.miners, self.teacher, self.labels = ts, cfg, miners, teacher, labels
        self.base, self.bundle_name = base, bundle_name
        self.precision = resolve_precision(cfg.precision)
        log.info("dense: %s training", self.precision)
        self.dev_cands = dev_candidates(ts, miners, cfg.dev_candidates)
        torch.manual_seed(cfg.seed)
        self.tokenizer = load_tokenizer(base.folder)
        self.model = TextEncoder.from_pretrained(base.folder, pooling=base.pooling,
                                                 normalize=cfg.similarity == "cosine").train()
        self._optimize()

    def step(self, batch: Step) -> tuple[torch.Tensor, dict[str, float]]:
        return step_loss(self.model, self.tokenizer, batch, self.ts, self.teacher, self.cfg, self.precision)

    def evaluate(self) -> dict[str, float | None]:
        return {DEV_METRIC: dev_ndcg(self.model, self.tokenizer, self.ts, self.dev_cands, self.cfg, self.precision)}

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        cfg, ts = self.cfg, self.ts
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
        return {**fields, "config": config, "metrics": metrics}


def contrastive_inputs(data: str | Path, cfg: ContrastiveOptions, progress: bool, what: str
                       ) -> tuple[BaseModel, TrainingSet, Miners, Teacher, np.ndarray | None]:
    """What every bi-encoder trainer starts from: the base model (a bad folder refused before any work), the
    training set, the miners, the teacher and the topic clusters of the training queries (None: random batches)."""
    base = resolve_base_model(cfg.base_model)
    ts = training_set(data, cfg)
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


def train_dense(
    data: str | Path, out: str | Path, cfg: DenseTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, command: str | None = None, name: str | None = None,
) -> Path:
    """Train on ``data``'s train split (dev split when present), write a ``model/dense`` bundle to ``out``."""
    cfg = cfg or DenseTrainConfig()
    base, ts, miners, teacher, labels = contrastive_inputs(data, cfg, progress, "dense")
    adapter = DenseAdapter(ts, cfg, miners, teacher, labels, base, name or f"{Path(data).name}-dense")
    return run_training(adapter, text_loop_config(cfg, DEV_METRIC), out, resume=resume, progress=progress,
                        command=command)
