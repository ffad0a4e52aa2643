"""``retrec train dense``: a TAS-Balanced bi-encoder fine-tuned from the packaged MiniLM, exported to ONNX.

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

Checkpoints (model + optimizer + progress) go to ``<out>.ckpt/``; ``resume=True`` continues from them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from retrec.bundle import write_manifest
from retrec.data.beir import RetrievalData, load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.index.dense_retriever import encode_corpus
from retrec.models.dense_losses import in_batch_cross_entropy, in_batch_margin_mse, margin_mse
from retrec.models.text_encoder import KIND, EncoderConfig, TextEncoder, encode_texts, export_onnx, zero_shot_bundle
from retrec.pipelines.dense_teachers import BM25Member, DenseMember, LabelMember, ScoreTableMember, Teacher
from retrec.pipelines.lr_schedule import budget_progress, check_schedule, scheduled_lr
from retrec.pipelines.metrics import evaluate_run
from retrec.pipelines.tas_sampling import balanced_margin_pick, random_batches, topic_batches, topic_clusters
from retrec.process_env import cache_dir
from retrec.runtime.onnx_encoder import OnnxEncoder
from retrec.runtime.tokenizer import TextTokenizer, load_tokenizer

log = logging.getLogger("retrec.train.dense")
SAMPLINGS = ("random", "topic")
NEGATIVES = ("bm25", "balanced")


@dataclass
class DenseTrainConfig:
    batch_size: int = 32
    epochs: int = 6
    max_minutes: float | None = 30.0  # wall-clock budget for the training loop (dev evaluation included)
    lr: float = 3e-5
    lr_schedule: str = "linear"
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    max_query_length: int = 64
    max_doc_length: int = 256
    similarity: str = "cosine"  # cosine (normalised embeddings) | dot
    scale: float = 20.0  # logit scale of cosine scores in the cross-entropy
    sampling: str = "topic"  # random | topic (TAS)
    queries_per_cluster: int = 0  # 0: 4 × batch_size
    clusters_per_batch: int = 1
    negatives: str = "balanced"  # bm25 (one uniform BM25 hard negative) | balanced (margin bins over BM25 ∪ dense)
    negative_depth: int = 50  # candidates per query from each miner
    margin_bins: int = 10
    teacher: str = "ensemble"  # ensemble (BM25 + zero-shot dense) | path to a Parquet (query_id, doc_id, score)
    label_weight: float = 1.0  # the judgements' weight as a teacher member
    distill_weight: float = 0.0  # 0: labels only (the default: distilling the ensemble did not help, see RESULTS)
    inbatch_weight: float = 1.0
    dev_fraction: float = 0.05  # of the training queries held out for dev nDCG@10 (when there is no dev split)
    dev_max_queries: int = 100
    dev_candidates: int = 15  # per dev query from each miner; the dev metric re-ranks their union
    checkpoint_every: int = 20
    seed: int = 0
    quantize: bool = True
    max_steps: int | None = None  # hard cap (tests, smoke runs)

    def __post_init__(self) -> None:
        check_schedule(self.lr_schedule)
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"unknown sampling {self.sampling!r}; choose one of {', '.join(SAMPLINGS)}")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"unknown negatives {self.negatives!r}; choose one of {', '.join(NEGATIVES)}")
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be cosine or dot, got {self.similarity!r}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (in-batch negatives)")


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


def prepare(train: RetrievalData, dev: RetrievalData | None, cfg: DenseTrainConfig) -> TrainingSet:
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
    return TrainingSet(doc_ids, doc_texts, judged, positives, dev_ids, dev_qrels, texts, qrels_rows)


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


def build_miners(ts: TrainingSet, cfg: DenseTrainConfig, progress: bool) -> tuple[Miners, np.ndarray, list[str]]:
    """BM25 and zero-shot dense members over the corpus; returns also the query vectors for clustering."""
    bm25 = BM25Index.build(ts.doc_ids, ts.doc_texts)
    encoder = OnnxEncoder(zero_shot_bundle())
    qids = ts.query_ids + ts.dev_ids
    qvec = encoder.encode_queries([ts.query_texts[q] for q in qids])
    dvec = encode_corpus(encoder, ts.doc_texts, cache=cache_dir() / "embeddings", progress=progress)
    depth = max(cfg.negative_depth, cfg.dev_candidates)
    miners = Miners(BM25Member(bm25, ts.query_texts, depth=depth), DenseMember(qvec, qids, dvec, depth=depth))
    return miners, qvec[: len(ts.query_ids)], qids


def build_teacher(cfg: DenseTrainConfig, miners: Miners, ts: TrainingSet) -> Teacher:
    labels = (LabelMember(ts.qrels_rows), cfg.label_weight)
    if cfg.teacher == "ensemble":
        return Teacher([(miners.bm25, 1.0), (miners.dense, 1.0), labels])
    path = Path(cfg.teacher)
    if not path.is_file():
        raise ValueError(f"teacher must be 'ensemble' or a Parquet file of (query_id, doc_id, score); "
                         f"{path} does not exist")
    return Teacher([(ScoreTableMember(path, {d: i for i, d in enumerate(ts.doc_ids)}), 1.0), labels])


@dataclass
class Step:
    queries: list[str]
    positives: np.ndarray  # corpus row per query
    negatives: np.ndarray


def plan_epoch(epoch: int, ts: TrainingSet, cfg: DenseTrainConfig, labels: np.ndarray | None, miners: Miners,
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
            p = ts.positives[q][rng.integers(len(ts.positives[q]))]
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


def step_loss(model: TextEncoder, tokenizer: TextTokenizer, step: Step, ts: TrainingSet, teacher: Teacher,
              cfg: DenseTrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    q = model(*_tensors(tokenizer, [ts.query_texts[x] for x in step.queries], cfg.max_query_length))
    docs = np.concatenate([step.positives, step.negatives])
    d = model(*_tensors(tokenizer, [ts.doc_texts[i] for i in docs], cfg.max_doc_length))
    scores = q @ d.T
    # Another query's positive or negative that is judged relevant to this query is not a negative.
    mask = torch.tensor([[int(doc) in ts.qrels_rows.get(qid, {}) and ts.qrels_rows[qid][int(doc)] > 0
                          for doc in docs] for qid in step.queries])
    mask.fill_diagonal_(False)
    scale = cfg.scale if cfg.similarity == "cosine" else 1.0
    ce = in_batch_cross_entropy(scores, scale, mask)
    parts = {"ce": float(ce.detach())}
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
             cfg: DenseTrainConfig) -> float | None:
    """nDCG@10 of the model re-ranking the miners' candidates of the dev queries (torch, eval mode)."""
    if not cands:
        return None
    was = model.training
    model.eval()
    docs = np.unique(np.concatenate(list(cands.values())))
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


def _save_checkpoint(path: Path, model: TextEncoder, opt: torch.optim.Optimizer, state: dict,
                     curve: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "last.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "state": {k: torch.tensor(v) for k, v in state.items()}}, tmp)
    tmp.replace(path / "last.pt")
    (path / "curve.json").write_text(json.dumps(curve))


def train_dense(
    data: str | Path, out: str | Path, cfg: DenseTrainConfig | None = None, *, resume: bool = False,
    progress: bool = True, command: str | None = None, name: str | None = None,
) -> Path:
    """Train on ``data``'s train split (dev split when present), write a ``model/dense`` bundle to ``out``."""
    cfg = cfg or DenseTrainConfig()
    out = Path(out)
    ckpt_dir = out.with_name(out.name + ".ckpt")
    train = load_retrieval_data(data, split="train")
    dev = load_retrieval_data(data, split="dev") if (Path(data) / "qrels" / "dev.tsv").is_file() else None
    ts = prepare(train, dev, cfg)
    miners, qvec, _ = build_miners(ts, cfg, progress)
    teacher = build_teacher(cfg, miners, ts)
    per_cluster = cfg.queries_per_cluster or 4 * cfg.batch_size
    labels = topic_clusters(qvec, max(1, round(len(ts.query_ids) / per_cluster)), cfg.seed) \
        if cfg.sampling == "topic" else None
    dev_cands = dev_candidates(ts, miners, cfg.dev_candidates)

    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer()
    model = TextEncoder.from_pretrained(pooling="mean", normalize=cfg.similarity == "cosine").train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(ts.query_ids) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps,
                                                                                 cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_fraction * total_steps)

    state = {"epoch": 0, "batch": 0, "step": 0, "seconds": 0.0}
    curve: list[dict] = []
    if resume and (ckpt_dir / "last.pt").is_file():
        ckpt = torch.load(ckpt_dir / "last.pt", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = {k: v.item() for k, v in ckpt["state"].items()}
        curve = json.loads((ckpt_dir / "curve.json").read_text())
        log.warning("resumed from %s at step %d", ckpt_dir, state["step"])
    elif not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    if not curve:
        curve.append({"step": 0, "epoch": 0, "seconds": 0.0, "dev_nDCG@10": dev_ndcg(model, tokenizer, ts, dev_cands,
                                                                                      cfg)})
    started = time.perf_counter() - state["seconds"]

    def elapsed() -> float:
        return time.perf_counter() - started

    def out_of_budget() -> bool:
        return (cfg.max_minutes is not None and elapsed() > 60 * cfg.max_minutes) or state["step"] >= total_steps

    columns = [TextColumn("[bold]dense[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn()]
    window: list[float] = []
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("train", total=total_steps, completed=int(state["step"]), epoch=0, loss=0.0)
        while state["epoch"] < cfg.epochs and not out_of_budget():
            epoch = int(state["epoch"]) + 1
            plan = plan_epoch(epoch, ts, cfg, labels, miners, teacher)
            bar.update(task, epoch=epoch)
            for b in range(int(state["batch"]), len(plan)):
                progress_now = budget_progress(elapsed(), cfg.max_minutes, state["step"], total_steps)
                lr = scheduled_lr(cfg.lr, int(state["step"]), progress_now, cfg.lr_schedule, warmup)
                for group in opt.param_groups:
                    group["lr"] = lr
                torch.manual_seed(cfg.seed * 1_000_003 + int(state["step"]))  # dropout, reproducible on resume
                loss, parts = step_loss(model, tokenizer, plan[b], ts, teacher, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                state.update(step=state["step"] + 1, batch=b + 1, seconds=elapsed())
                window = [*window, float(loss.detach())][-20:]
                bar.update(task, advance=1, loss=sum(window) / len(window))
                curve.append({"step": int(state["step"]), "epoch": epoch, "lr": lr, "loss": float(loss.detach()),
                              **parts, "seconds": round(state["seconds"], 1)})
                if state["step"] % cfg.checkpoint_every == 0:
                    _save_checkpoint(ckpt_dir, model, opt, state, curve)
                if out_of_budget():
                    break
            if state["batch"] >= len(plan):
                state.update(epoch=epoch, batch=0)
            dev = dev_ndcg(model, tokenizer, ts, dev_cands, cfg)
            state["seconds"] = elapsed()
            curve.append({"step": int(state["step"]), "epoch": epoch, "seconds": round(state["seconds"], 1),
                          "dev_nDCG@10": dev})
            mean_loss = sum(window) / max(len(window), 1)
            bar.console.print(f"epoch {epoch}: step {state['step']}/{total_steps} loss {mean_loss:.4f} "
                              f"dev nDCG@10 {dev if dev is None else round(dev, 4)} ({state['seconds'] / 60:.1f} min)")
            _save_checkpoint(ckpt_dir, model, opt, state, curve)
    model.eval()
    return export_bundle(model, tokenizer, ts, cfg, curve, state, teacher, out, command,
                         name or f"{Path(data).name}-dense")


def onnx_max_abs_diff(model: TextEncoder, tokenizer: TextTokenizer, bundle: Path, texts: list[str],
                      max_length: int) -> float:
    """Largest absolute difference between torch and ONNX Runtime embeddings of ``texts``."""
    torch_vecs = encode_texts(model, tokenizer, texts, max_length)
    onnx_vecs = OnnxEncoder(bundle).encode(texts, max_length=max_length)
    return float(np.abs(torch_vecs - onnx_vecs).max())


def export_bundle(model: TextEncoder, tokenizer: TextTokenizer, ts: TrainingSet, cfg: DenseTrainConfig,
                  curve: list[dict], state: dict, teacher: Teacher, out: Path, command: str | None,
                  name: str) -> Path:
    if out.exists():
        shutil.rmtree(out)
    enc_cfg = EncoderConfig(pooling="mean", normalize=cfg.similarity == "cosine", similarity=cfg.similarity,
                            max_query_length=cfg.max_query_length, max_doc_length=cfg.max_doc_length)
    manifest = export_onnx(model, out, tokenizer=tokenizer, name=name, config=enc_cfg, quantize=cfg.quantize,
                           command=command)
    sample = [ts.doc_texts[i] for i in range(0, len(ts.doc_texts), max(1, len(ts.doc_texts) // 32))][:32]
    diff = onnx_max_abs_diff(model, tokenizer, out, sample, cfg.max_doc_length)
    if diff > 1e-4:
        raise RuntimeError(f"ONNX export differs from torch by {diff:.2e} (> 1e-4) on corpus documents")
    (out / "training_curve.json").write_text(json.dumps(curve, indent=1))
    devs = [c["dev_nDCG@10"] for c in curve if c.get("dev_nDCG@10") is not None]
    metrics = {"dev_nDCG@10": devs[-1] if devs else None, "dev_nDCG@10_zero_shot": devs[0] if devs else None,
               "dev_queries": len(ts.dev_ids), "train_queries": len(ts.query_ids), "steps": int(state["step"]),
               "epochs_completed": int(state["epoch"]), "train_seconds": round(state["seconds"], 1),
               "onnx_max_abs_diff": diff}
    config = {**manifest.config, "train": asdict(cfg), "teacher": teacher.description}
    write_manifest(out, kind=KIND, name=manifest.name, version=manifest.version, config=config, dims=manifest.dims,
                   metrics=metrics, command=manifest.command)
    return out
