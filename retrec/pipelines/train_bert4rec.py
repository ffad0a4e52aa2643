"""``retrec train bert4rec``: Cloze training on leave-one-out sequences, early stopping, ONNX bundle.

Flow: interactions → per-user time-ordered sequences → leave-one-out (train / valid / test) → item
ids admitted to a collisionless :class:`EmbeddingTable` (raw ids in, rows out) → BERT4Rec trained on
the train parts with the Cloze task → best-on-validation weights → bundle:

    <out>/manifest.json            kind "model/bert4rec", configs, metrics, checksums
    <out>/user_encoder.onnx        history table rows [B, T, d+1] + padding → user vector [B, d+1]
    <out>/items/                   frozen table snapshot: raw ids → rows [e, bias] (table/embedding)
    <out>/training_curve.json      loss and validation NDCG@10 per epoch

Checkpoints (model + optimizer + progress, loaded with ``weights_only=True``) live beside the bundle
in ``<out>.ckpt/`` so an interrupted run resumes with ``--resume``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file

from retrec.bundle import write_manifest
from retrec.data.interactions import Sequences, load_interactions, user_sequences
from retrec.kinds import BERT4REC_MODEL
from retrec.models.bert4rec import BERT4Rec, BERT4RecConfig, export_user_encoder
from retrec.pipelines.lr_schedule import budget_progress, check_schedule, scheduled_lr
from retrec.pipelines.metrics import mean_metrics, rec_metrics_from_ranks, target_ranks
from retrec.tables import EmbeddingTable

log = logging.getLogger("retrec.train.bert4rec")
KIND = BERT4REC_MODEL


@dataclass
class TrainConfig:
    max_len: int = 50
    mask_prob: float = 0.2
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    loss: str = "ce"  # "ce": Cloze cross-entropy over all items; "sampled": sampled softmax
    negatives: int = 256  # for loss="sampled"
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine | linear: decay to 0 over the budget (time or epochs)
    warmup_steps: int = 0
    weight_decay: float = 0.01
    epochs: int = 200
    patience: int = 8
    eval_users: int = 10_000  # validation users held out for early stopping (at most)
    valid_fraction: float = 0.2  # ... as a fraction of the evaluable users
    max_minutes: float | None = None
    admit_threshold: int = 1
    seed: int = 0


@dataclass
class PreparedData:
    item_keys: list[str]  # raw item id of each row
    train: list[np.ndarray]  # row sequences used for training
    eval_users: list[str]
    valid_history: list[np.ndarray]
    valid_target: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)


def prepare(seqs: Sequences, table: EmbeddingTable, valid_users: int = 10_000, valid_fraction: float = 0.2,
            seed: int = 0) -> PreparedData:
    """Admit every item to the table and split by time, never training on a test item.

    Every user's last item is the test item. A seeded subset of users (``valid_fraction`` of the
    evaluable ones, at most ``valid_users``) is held out for early stopping: they train on all but
    their last two items and are validated on the second-to-last. All other users train on all but
    their last item, so that the model has seen the same kind of history at test time as in training.
    """
    flat = [i for items in seqs.items for i in items]
    table.observe(flat, now=0.0)
    keys, rows = table.entries()
    order = np.argsort(rows)
    raw = table.raw_ids(keys[order])
    if not np.array_equal(rows[order], np.arange(len(rows))):
        raise RuntimeError("embedding table rows are not compact; cannot map them onto model rows")
    row_of = dict(zip(raw, range(len(raw))))
    encoded, skipped = [], 0
    for items in seqs.items:
        r = np.array([row_of.get(i, -1) for i in items], dtype=np.int64)
        skipped += int((r < 0).sum())
        encoded.append(r[r >= 0])
    evaluable = np.flatnonzero([len(r) >= 3 for r in encoded])
    n_valid = min(valid_users, round(valid_fraction * len(evaluable)))
    held = set(np.random.default_rng(seed).permutation(evaluable)[:n_valid].tolist())
    train, users, v_hist, v_tgt = [], [], [], []
    for i, (user, r) in enumerate(zip(seqs.users, encoded)):
        if i in held:
            train.append(r[:-2])
            users.append(user)
            v_hist.append(r[:-2])
            v_tgt.append(r[-2])
        elif len(r) >= 3:
            train.append(r[:-1])
        elif len(r):
            train.append(r)  # too short to be evaluated: no test item to protect
    return PreparedData(raw, train, users, v_hist, np.array(v_tgt, np.int64),
                        {"items": len(raw), "users": len(seqs), "validation_users": len(users),
                         "skipped_not_admitted": skipped})


def windows(sequences: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Training windows: the last ``max_len`` items, and earlier non-overlapping chunks of long sequences."""
    out = []
    for s in sequences:
        end = len(s)
        while end > 0:
            out.append(s[max(0, end - max_len):end])
            end -= max_len
            if end < 2:
                break
    return out


def length_batches(lengths: np.ndarray, batch_size: int, gen: torch.Generator, pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of similar length: shuffle, sort within pools of ``pool`` batches, shuffle batches.

    Each batch is padded only to its own longest sequence, which cuts the transformer's work on
    short-sequence data (Beauty averages 8.8 items against a window of 50).
    """
    order = torch.randperm(len(lengths), generator=gen).numpy()
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start:start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


def left_pad(seqs: list[np.ndarray], length: int, pad: int) -> torch.Tensor:
    batch = np.full((len(seqs), length), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            batch[i, length - len(s):] = s
    return torch.from_numpy(batch)


def cloze_batch(rows: torch.Tensor, model: BERT4Rec, p: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Mask each real position with probability ``p`` (at least one per sequence: the last)."""
    real = rows != model.pad
    masked = (torch.rand(rows.shape, generator=gen) < p) & real
    none = ~masked.any(dim=1)
    masked[none, -1] = real[none, -1]
    inputs = rows.masked_fill(masked, model.mask)
    return inputs, masked, rows[masked]


def loss_fn(model: BERT4Rec, hidden: torch.Tensor, targets: torch.Tensor, cfg: TrainConfig,
            gen: torch.Generator) -> torch.Tensor:
    if cfg.loss == "ce":
        return F.cross_entropy(model.logits(hidden), targets)
    if cfg.loss == "sampled":  # uniform negatives shared by the batch, positives' own logit first
        n = model.cfg.num_items
        neg = torch.randint(0, n, (cfg.negatives,), generator=gen)
        emb = model.item_matrix()
        pos_logit = (hidden * emb[targets]).sum(-1) + model.bias[targets]
        neg_logit = hidden @ emb[neg].T + model.bias[neg]
        neg_logit = neg_logit.masked_fill(neg[None, :] == targets[:, None], -1e9)
        logits = torch.cat([pos_logit[:, None], neg_logit], dim=1)
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long))
    raise ValueError(f"unknown loss {cfg.loss!r}; choose 'ce' or 'sampled'")


@torch.no_grad()
def validate(model: BERT4Rec, histories: list[np.ndarray], targets: np.ndarray, batch_size: int = 512) -> dict:
    """Full-ranking metrics of the held-out item, seen items excluded (torch path, for early stopping)."""
    model.eval()
    greater, ties = [], []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        rows = left_pad([np.append(h[-(model.cfg.max_len - 1):], model.mask) for h in chunk],
                        model.cfg.max_len, model.pad)
        scores = model.score_last(rows).numpy().astype(np.float64)
        for i, h in enumerate(chunk):
            scores[i, h] = -np.inf
        g, t = target_ranks(scores, targets[start:start + batch_size])
        greater.append(g)
        ties.append(t)
    model.train()
    per_user = rec_metrics_from_ranks(np.concatenate(greater), np.concatenate(ties), model.cfg.num_items, (10,))
    return mean_metrics(per_user)


def _save_checkpoint(path: Path, model: BERT4Rec, opt: torch.optim.Optimizer, state: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "last.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "state": {k: torch.tensor(v) for k, v in state.items()}}, tmp)
    tmp.replace(path / "last.pt")


def train_bert4rec(
    data: str | Path, out: str | Path, cfg: TrainConfig | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None,
) -> Path:
    cfg = cfg or TrainConfig()
    out = Path(out)
    ckpt_dir = out.with_name(out.name + ".ckpt")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    seqs = user_sequences(load_interactions(data))
    table = EmbeddingTable(cfg.hidden + 1, admit_threshold=cfg.admit_threshold, seed=cfg.seed,
                           initial_capacity=2 * max(16, len({i for s in seqs.items for i in s})))
    prep = prepare(seqs, table, cfg.eval_users, cfg.valid_fraction, cfg.seed)
    model_cfg = BERT4RecConfig(num_items=len(prep.item_keys), max_len=cfg.max_len, hidden=cfg.hidden,
                               layers=cfg.layers, heads=cfg.heads, dropout=cfg.dropout,
                               attention_dropout=cfg.dropout)
    model = BERT4Rec(model_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_windows = windows(prep.train, cfg.max_len)
    lengths = np.array([len(w) for w in train_windows])
    v_hist, v_tgt = prep.valid_history, prep.valid_target

    check_schedule(cfg.lr_schedule)  # reject an unknown schedule before any work
    state = {"epoch": 0, "best": -1.0, "best_epoch": -1, "bad_epochs": 0, "seconds": 0.0, "step": 0}
    curve: list[dict] = []
    if resume and (ckpt_dir / "last.pt").is_file():
        ckpt = torch.load(ckpt_dir / "last.pt", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = {"step": 0, **{k: v.item() for k, v in ckpt["state"].items()}}
        curve = json.loads((ckpt_dir / "curve.json").read_text())
        gen.manual_seed(cfg.seed + int(state["epoch"]))
        log.warning("resumed from %s at epoch %d", ckpt_dir, state["epoch"])
    elif not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter() - state["seconds"]
    columns = [TextColumn("[bold]bert4rec[/] epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f} best NDCG@10 {task.fields[best]:.4f}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=None, epoch=0, loss=0.0, best=max(state["best"], 0.0))
        while state["epoch"] < cfg.epochs:
            epoch = int(state["epoch"]) + 1
            batches = length_batches(lengths, cfg.batch_size, gen)
            bar.update(task, completed=0, total=len(batches), epoch=epoch)
            model.train()
            total, count = 0.0, 0
            for b, idx in enumerate(batches):
                progress = budget_progress(time.perf_counter() - started, cfg.max_minutes,
                                           epoch - 1 + b / len(batches), cfg.epochs)
                lr = scheduled_lr(cfg.lr, int(state["step"]), progress, cfg.lr_schedule, cfg.warmup_steps)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = [train_windows[i] for i in idx]
                rows = left_pad(batch, max(len(w) for w in batch), model.pad)
                inputs, masked, targets = cloze_batch(rows, model, cfg.mask_prob, gen)
                hidden = model(inputs)[masked]
                loss = loss_fn(model, hidden, targets, cfg, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                state["step"] += 1
                total += loss.item()
                count += 1
                bar.update(task, advance=1, loss=total / count)
            metrics = validate(model, v_hist, v_tgt)
            state["epoch"] = epoch
            state["seconds"] = time.perf_counter() - started
            curve.append({"epoch": epoch, "loss": total / max(count, 1), "lr": lr, "valid_NDCG@10": metrics["NDCG@10"],
                          "valid_HR@10": metrics["HR@10"], "seconds": round(state["seconds"], 1)})
            if metrics["NDCG@10"] > state["best"]:
                state.update(best=metrics["NDCG@10"], best_epoch=epoch, bad_epochs=0)
                weights = {k: v.contiguous() for k, v in model.state_dict().items()}
                save_file(weights, str(ckpt_dir / "best.safetensors"))
            else:
                state["bad_epochs"] += 1
            bar.update(task, best=state["best"])
            bar.console.print(f"epoch {epoch}: loss {curve[-1]['loss']:.4f} valid NDCG@10 {metrics['NDCG@10']:.4f} "
                              f"HR@10 {metrics['HR@10']:.4f} ({state['seconds'] / 60:.1f} min)")
            (ckpt_dir / "curve.json").write_text(json.dumps(curve))
            _save_checkpoint(ckpt_dir, model, opt, state)
            if state["bad_epochs"] >= cfg.patience:
                log.warning("early stop at epoch %d (best %d)", epoch, state["best_epoch"])
                break
            if cfg.max_minutes is not None and state["seconds"] > 60 * cfg.max_minutes:
                log.warning("time budget of %.1f min reached at epoch %d", cfg.max_minutes, epoch)
                break

    model.load_state_dict(load_file(str(ckpt_dir / "best.safetensors")))
    model.eval()
    return export_bundle(model, prep, table, cfg, curve, state, out, command)


def onnx_parity(model: BERT4Rec, bundle_dir: Path, item_keys: list[str], histories: list[np.ndarray],
                k: int = 10) -> float:
    """Fraction of users whose top-``k`` through the ONNX runtime equals torch's, in the same order."""
    from retrec.runtime.sequence_recommender import SequenceRecommender

    if not histories:
        return 1.0
    runtime = SequenceRecommender.load(bundle_dir)
    snapshot_row = runtime.table.lookup(item_keys)  # model row → snapshot row
    with torch.no_grad():
        rows = left_pad([np.append(h[-(model.cfg.max_len - 1):], model.mask) for h in histories],
                        model.cfg.max_len, model.pad)
        torch_scores = model.score_last(rows).numpy()
    ort_scores = runtime.score_rows([snapshot_row[h] for h in histories])
    same = 0
    for i in range(len(histories)):
        top_torch = snapshot_row[np.argsort(-torch_scores[i], kind="stable")[:k]]
        top_ort = np.argsort(-ort_scores[i], kind="stable")[:k]
        same += int(np.array_equal(top_torch, top_ort))
    return same / len(histories)


def export_bundle(model: BERT4Rec, prep: PreparedData, table: EmbeddingTable, cfg: TrainConfig, curve: list[dict],
                  state: dict, out: Path, command: str | None) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with torch.no_grad():
        rows = model.table_rows().numpy()
    table.update(prep.item_keys, rows, now=0.0)
    table.snapshot(out / "items", name="bert4rec-items")
    export_user_encoder(model, out / "user_encoder.onnx")
    (out / "training_curve.json").write_text(json.dumps(curve, indent=1))
    metrics = {"valid_NDCG@10": state["best"], "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "train_seconds": round(state["seconds"], 1)}
    dims = {"hidden": model.cfg.hidden, "row_dim": model.cfg.hidden + 1, "items": model.cfg.num_items,
                         "max_len": model.cfg.max_len}
    config = {"model": model.cfg.to_json(), "train": asdict(cfg)}
    write_manifest(out, kind=KIND, name="bert4rec", config=config, dims=dims, metrics=metrics, command=command)
    metrics["onnx_top10_identical"] = onnx_parity(model, out, prep.item_keys, prep.valid_history[:1000])
    write_manifest(out, kind=KIND, name="bert4rec", config=config, dims=dims, metrics={**metrics, **prep.stats},
                   command=command)
    return out
