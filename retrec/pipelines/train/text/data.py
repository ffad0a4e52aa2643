"""The judged training set that the text families (dense, sparse, multi-vector, re-ranker) train on, and the
hard-negative miners they share: BM25 and the zero-shot MiniLM over the corpus, merged.

Family-neutral: a change here changes every text trainer, and nothing family-specific belongs here.

Example::

    ts = training_set("../shared/data/scifact", DenseTrainConfig())   # train split + dev split or held-out share
    miners, query_vectors, query_ids = build_miners(ts, DenseTrainConfig(), progress=False)
    miners.candidates(ts.query_ids[0], depth=50, exclude=ts.positives[ts.query_ids[0]])
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrec.data.beir import RetrievalData, load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.index.dense_retriever import encode_corpus
from retrec.models.text_encoder import zero_shot_bundle
from retrec.pipelines.train.loop import LoopConfig
from retrec.pipelines.train.text.config import ContrastiveOptions, RerankerTrainConfig, TextTrainingOptions
from retrec.pipelines.train.text.teachers import BM25Member, DenseMember
from retrec.process_env import cache_dir
from retrec.runtime.onnx_encoder import OnnxEncoder

log = logging.getLogger("retrec.train.text")


@dataclass
class TrainingSet:
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]  # training queries with at least one judged-relevant document
    positives: dict[str, np.ndarray]  # query id → corpus rows judged relevant
    dev_ids: list[str]
    dev_qrels: dict[str, dict[str, int]]
    query_texts: dict[str, str]
    qrels_rows: dict[str, dict[int, int]]
    dev_source: str = "split"  # "split": the collection's dev split; "held-out": training queries set aside


def prepare(train: RetrievalData, dev: RetrievalData | None,
            cfg: ContrastiveOptions | RerankerTrainConfig) -> TrainingSet:
    """Judged queries of the train split; a seeded share held out as dev when there is no dev split."""
    doc_ids, doc_texts = train.doc_texts(with_title=True)
    row = {d: i for i, d in enumerate(doc_ids)}
    qrels_rows: dict[str, dict[int, int]] = {}
    for q, docs in train.qrels_dict().items():
        qrels_rows[q] = {row[d]: r for d, r in docs.items() if d in row}
    texts = train.query_texts()
    judged = sorted(q for q, rel in qrels_rows.items() if any(r > 0 for r in rel.values()) and q in texts)
    if not judged:
        raise ValueError("no training query has a relevant document in the corpus")
    if dev is not None:
        dev_qrels = dev.qrels_dict()
        texts = {**texts, **dev.query_texts()}
        dev_ids = sorted(q for q in dev_qrels if q in texts)
    else:
        n_dev = min(cfg.dev_max_queries, round(cfg.dev_fraction * len(judged)))
        if len(judged) - n_dev < cfg.batch_size:
            n_dev = 0
        held = set(np.random.default_rng(cfg.seed).permutation(judged)[:n_dev].tolist())
        dev_ids = sorted(held)
        dev_qrels = {q: {doc_ids[r]: v for r, v in qrels_rows[q].items()} for q in dev_ids}
        judged = [q for q in judged if q not in held]
    positives = {q: np.array(sorted(r for r, v in qrels_rows[q].items() if v > 0), dtype=np.int64) for q in judged}
    return TrainingSet(doc_ids, doc_texts, judged, positives, dev_ids, dev_qrels, texts, qrels_rows,
                       "split" if dev is not None else "held-out")


def training_set(data: str | Path, cfg: ContrastiveOptions | RerankerTrainConfig) -> TrainingSet:
    """A BEIR folder's train split prepared for training, with its dev split when the folder has one."""
    train = load_retrieval_data(data, split="train")
    has_dev = any((Path(data) / "qrels" / f"dev.{ext}").is_file() for ext in ("tsv", "parquet"))
    dev = load_retrieval_data(data, split="dev") if has_dev else None
    return prepare(train, dev, cfg)


@dataclass
class Miners:
    bm25: BM25Member
    dense: DenseMember

    def candidates(self, query_id: str, depth: int, exclude: np.ndarray) -> np.ndarray:
        """Union of both miners' top-``depth`` corpus rows, judged-relevant rows removed, BM25 order first."""
        merged = np.concatenate([self.bm25.top(query_id, depth), self.dense.top(query_id, depth)])
        _, first = np.unique(merged, return_index=True)
        merged = merged[np.sort(first)]
        return merged[~np.isin(merged, exclude)]


def build_miners(ts: TrainingSet, cfg: ContrastiveOptions | RerankerTrainConfig,
                 progress: bool) -> tuple[Miners, np.ndarray, list[str]]:
    """BM25 and zero-shot dense members over the corpus; returns also the query vectors for clustering."""
    log.info("mining hard negatives with BM25 and the zero-shot encoder")
    bm25 = BM25Index.build(ts.doc_ids, ts.doc_texts)
    encoder = OnnxEncoder(zero_shot_bundle())
    qids = ts.query_ids + ts.dev_ids
    qvec = encoder.encode_queries([ts.query_texts[q] for q in qids])
    dvec = encode_corpus(encoder, ts.doc_texts, cache=cache_dir() / "embeddings", progress=progress)
    depth = max(cfg.negative_depth, cfg.dev_candidates)
    miners = Miners(BM25Member(bm25, ts.query_texts, depth=depth), DenseMember(qvec, qids, dvec, depth=depth))
    return miners, qvec[: len(ts.query_ids)], qids


def text_loop_config(cfg: TextTrainingOptions, monitor: str) -> LoopConfig:
    """The loop of a text-model trainer (``retrec train dense|reranker``): its budget, schedule and checkpoints,
    a per-step curve, dev scored at the start and as the budget allows; the exported weights are the best on
    ``monitor`` among the evaluated ones, the starting model's included (never silently worse than the start), and
    with ``dev_gate`` the start unless their gain over it is significant (:mod:`retrec.pipelines.train.dev_gate`)."""
    return LoopConfig(lr=cfg.lr, epochs=cfg.epochs, max_minutes=cfg.max_minutes, max_steps=cfg.max_steps,
                      lr_schedule=cfg.lr_schedule, warmup_fraction=cfg.warmup_fraction, grad_clip=1.0,
                      checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, reseed_steps=True, eval_at_start=True,
                      eval_every=cfg.eval_every, eval_share=cfg.eval_share, monitor=monitor, keep_best=True,
                      dev_gate=cfg.dev_gate, keep_freed_memory=cfg.keep_freed_memory,
                      memory_ceiling_gb=cfg.memory_ceiling_gb or None)


def dev_candidates(ts: TrainingSet, miners: Miners, depth: int) -> dict[str, np.ndarray]:
    return {q: miners.candidates(q, depth, np.empty(0, dtype=np.int64)) for q in ts.dev_ids}
