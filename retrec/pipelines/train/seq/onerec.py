"""``retrec train onerec``: semantic IDs, then an encoder–decoder trained to generate the next session.

Flow: interactions → leave-one-out sequences and the held-out validation users (:func:`prepare`, BERT4Rec's: no
test item is ever trained on) → item vectors (co-occurrence PPMI + SVD of the training histories, or a trained
sequence model's item table) → balanced residual k-means semantic IDs (:mod:`retrec.models.semantic_ids`) →
examples ``(history, next session)`` at up to ``cuts`` positions of every training window (one causal encoder
pass serves all cuts of a window) → :class:`OneRec` trained with
teacher forcing (token cross-entropy + the experts' load-balancing loss) on the shared loop (budget, cosine decay,
checkpoints, ``--resume``, early stopping on the validation NDCG@10 of the beam-searched list) → bundle:

    <out>/manifest.json          kind "model/onerec", configs, metrics (expert load, ONNX agreement)
    <out>/encoder.onnx           history code tokens [B, T, depth] (+ item rows, --item-inputs) → memory, padding
    <out>/decoder_step.onnx      memory, padding, tokens [B, n] → next-token log-probabilities [B, vocab]
    <out>/semantic_ids.parquet   item_id, codes
    <out>/reward.safetensors     the reward model of the DPO rounds (``--dpo-rounds``; seq/onerec_dpo.py)
    <out>/training_curve.json    loss, validation NDCG@10 / HR@10, expert shares per epoch

Example::

    train_onerec("../shared/data/beauty", "artifacts/onerec-beauty")           # the defaults
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrec.bundle import Publication
from retrec.data.interactions import load_interactions, user_sequences
from retrec.kinds import ONEREC_MODEL
from retrec.models.onerec import BOS, PAD, OneRec, OneRecConfig, export_onnx
from retrec.models.precision import autocast, resolve_device
from retrec.models.semantic_ids import cooccurrence_vectors, semantic_ids
from retrec.pipelines.train.loop import TorchAdapter, TrainRun, run_training
from retrec.pipelines.train.seq.config import OneRecTrainConfig
from retrec.pipelines.train.seq.data import (
    PreparedData,
    batch_count,
    length_batches,
    loop_config,
    prepare,
    resolve_defaults,
    windows,
)
from retrec.pipelines.train.seq.generation import generate, list_metrics
from retrec.runtime.onerec import IDS_FILE, OneRecRecommender, write_semantic_ids
from retrec.runtime.semantic_ids import CodeTree
from retrec.tables import EmbeddingTable

log = logging.getLogger("retrec.train.onerec")
REWARD_FILE = "reward.safetensors"  # the preference-alignment reward model (retrec/models/reward.py)
__all__ = ["OneRecTrainConfig", "train_onerec"]


def default_codes(items: int, levels: int) -> int:
    """The smallest power of two ``K`` with ``K^levels >= 16 x items``, clamped to 4..1024.

    Fine codes won on Amazon Beauty (54,542 items, 2 levels; validation NDCG@10 at equal epochs rose with K from 256
    to 1024: first-level groups of ~50 items rather than ~200): sharing a prefix helps a rare item less than a
    coarse group's ambiguity costs the beam."""
    return int(min(1024, max(4, 2 ** math.ceil(math.log2(max(2.0, (16 * items) ** (1 / levels)))))))


def item_vectors(cfg: OneRecTrainConfig, prep: PreparedData) -> np.ndarray:
    """What the semantic IDs cluster: co-occurrence vectors, or a sequence model bundle's item rows."""
    n = len(prep.item_keys)
    if cfg.ids_from == "cooccurrence":
        return cooccurrence_vectors(prep.train, n, dim=64, seed=cfg.seed)
    from retrec.runtime.sequence_recommender import SequenceRecommender

    source = SequenceRecommender.load(cfg.ids_from)
    position = {item: i for i, item in enumerate(source.item_ids)}
    rows = np.array([position.get(k, -1) for k in prep.item_keys])
    vectors = np.random.default_rng(cfg.seed).normal(scale=1e-3, size=(n, source.matrix.shape[1] - 1))
    vectors[rows >= 0] = source.matrix[rows[rows >= 0], :-1]  # the output-bias column dropped
    if (missing := int((rows < 0).sum())):
        log.warning("%d of %d items are not in %s: random vectors", missing, n, cfg.ids_from)
    return vectors.astype(np.float32)


class OneRecAdapter(TorchAdapter):
    name = "onerec"

    def __init__(self, prep: PreparedData, cfg: OneRecTrainConfig, codes: np.ndarray) -> None:
        assert cfg.max_len is not None, "resolve_defaults() first"
        self.prep, self.cfg, self.codes = prep, cfg, codes
        self.tree = CodeTree(codes)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.place(cfg.device, cfg.precision)
        self.model = OneRec(OneRecConfig(
            level_sizes=self.tree.sizes.tolist(), max_len=cfg.max_len, session=cfg.session, hidden=cfg.hidden,
            layers=cfg.layers, heads=cfg.heads, experts=cfg.experts, top_k=cfg.top_k,
            dropout=cfg.dropout, items=len(prep.item_keys) if cfg.item_inputs else 0)).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.windows = [w for w in windows(prep.train, cfg.max_len + cfg.session) if len(w) >= 2]
        self.lengths = np.array([len(w) for w in self.windows])
        self.load_sum = np.zeros((cfg.layers, cfg.experts))
        self.aux_sum, self.steps_seen = 0.0, 0
        log.info("onerec: %d training windows, %d items, codes per level %s, on %s (%s)", len(self.windows),
                 len(prep.item_keys), self.tree.sizes.tolist(), self.device, self.precision)

    def steps_per_epoch(self) -> int:
        return batch_count(len(self.windows), self.cfg.batch_size)

    def batches(self, epoch: int) -> list[np.ndarray]:
        return length_batches(self.lengths, self.cfg.batch_size, self.gen)

    def tensors(self, batch: np.ndarray) -> tuple[torch.Tensor, ...]:
        """A batch of windows → history tokens ``[W, T, depth]``; its examples (up to ``cuts`` per window: history
        ``w[:t]``, session ``w[t:t + session]``) → their window ``[N]``, memory padding ``[N, T]``, decoder inputs and
        targets ``[N, n]``."""
        cfg, tree = self.cfg, self.tree
        assert cfg.max_len is not None
        chunk = [self.windows[i] for i in batch]
        t_max = min(cfg.max_len, max(len(w) - 1 for w in chunk))
        history = tree.history_tokens([w[:t_max] for w in chunk], t_max, cfg.item_inputs)
        window, cut = [], []
        for i, w in enumerate(chunk):
            cuts = np.arange(1, min(len(w) - 1, cfg.max_len) + 1)
            if len(cuts) > cfg.cuts:
                cuts = np.sort(cuts[torch.randperm(len(cuts), generator=self.gen)[:cfg.cuts].numpy()])
            window += [i] * len(cuts)
            cut += cuts.tolist()
        sessions = [chunk[i][t:t + cfg.session] for i, t in zip(window, cut)]
        target = np.full((len(sessions), max(len(x) for x in sessions) * tree.depth), PAD, np.int64)
        for j, x in enumerate(sessions):
            target[j, :len(x) * tree.depth] = tree.tokens(x).reshape(-1)
        inputs = np.concatenate([np.full((len(sessions), 1), BOS), target[:, :-1]], axis=1)
        hidden = np.arange(t_max)[None, :] >= np.array(cut)[:, None]  # a cut sees its history only
        return tuple(torch.from_numpy(a).to(self.device) for a in (history, np.array(window), hidden, inputs, target))

    def step(self, batch: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        history, window, hidden, inputs, target = self.tensors(batch)
        real = target != PAD
        with autocast(self.precision, self.device):
            memory, padding = self.model.encode(history)
            logp = self.model.decode(memory, padding[window] | hidden, inputs, real, index=window)
        token_nll = -logp.float().gather(-1, target[..., None]).squeeze(-1)
        weight = real.float()
        if self.cfg.first_weight != 1.0:
            weight[:, :self.tree.depth] *= self.cfg.first_weight
        nll = (token_nll * weight).sum() / weight.sum()
        aux = self.model.aux_loss()
        self.load_sum += np.array(self.model.expert_load())
        self.aux_sum, self.steps_seen = self.aux_sum + float(aux.detach()), self.steps_seen + 1
        return nll + self.cfg.aux_weight * aux, {"nll": float(nll.detach()), "aux": float(aux.detach())}

    def expert_shares(self) -> np.ndarray:
        """Mean share of routed slots per decoder layer and expert since the last evaluation."""
        return self.load_sum / max(self.steps_seen, 1)

    def evaluate(self) -> dict[str, float | None]:
        lists = generate(self.model, self.tree, self.prep.valid_history, max(10, self.cfg.list_beam))
        metrics = list_metrics(lists, self.prep.valid_target, len(self.prep.item_keys))
        shares = self.expert_shares()
        out: dict[str, float | None] = {
            "valid_NDCG@10": metrics["NDCG@10"], "valid_HR@10": metrics["HR@10"],
            "aux": self.aux_sum / max(self.steps_seen, 1) if self.steps_seen else None,
            "expert_share_min": float(shares.min()) if self.steps_seen else None,
            "expert_share_max": float(shares.max()) if self.steps_seen else None}
        self.last_shares = shares.round(4).tolist()
        self.load_sum[:], self.aux_sum, self.steps_seen = 0.0, 0.0, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": self.gen.get_state()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        super().load_state_dict(checkpoint)
        self.gen.set_state(checkpoint["rng"])

    def export(self, pub: Publication, run: TrainRun) -> dict[str, Any]:
        model, prep, cfg = self.model.cpu().eval(), self.prep, self.cfg
        rounds: list[dict[str, Any]] = []
        if cfg.dpo_rounds:  # preference alignment of the best weights, then the export
            from safetensors.torch import save_file

            from retrec.pipelines.train.seq.onerec_dpo import align, train_reward

            reward = train_reward(prep, cfg)
            rounds = align(model, self.tree, prep, cfg, reward)
            save_file({k: v.contiguous() for k, v in reward.state_dict().items()}, str(pub.path / REWARD_FILE))
        export_onnx(model, pub.path)
        write_semantic_ids(pub.path / IDS_FILE, prep.item_keys, self.codes)
        mcfg = model.cfg
        bundle = {"kind": ONEREC_MODEL, "name": self.name,
                  "config": {"model": mcfg.to_json(), "train": asdict(cfg)},
                  "dims": {"hidden": mcfg.hidden, "depth": mcfg.depth, "vocab": mcfg.vocab, "max_len": mcfg.max_len,
                           "session": mcfg.session, "beam": cfg.beam, "list_beam": cfg.list_beam,
                           "items": len(prep.item_keys)}}
        metrics = {"valid_NDCG@10": rounds[-1]["valid_NDCG@10_after"] if rounds else run.state.best,
                   "valid_NDCG@10_before_dpo": run.state.best, "best_epoch": run.state.best_epoch,
                   "epochs_run": run.state.epoch,
                   "train_seconds": round(run.state.seconds, 1), "device": self.device, "precision": self.precision,
                   "codes_per_level": self.tree.sizes.tolist(),
                   "expert_share": getattr(self, "last_shares", None), "dpo": rounds}
        metrics.update(onnx_agreement(model, self.tree, pub.draft(**bundle), prep.valid_history[:200], cfg.beam,
                                      cfg.list_beam))
        return {**bundle, "metrics": {**metrics, **prep.stats}}


def onnx_agreement(model: OneRec, tree: CodeTree, draft: Any, histories: list[np.ndarray], beam: int,
                   list_beam: int) -> dict[str, float]:
    """Share of users whose top-10 list and whose best session are the same through ONNX Runtime as through torch."""
    if not histories:
        return {"onnx_top10_identical": 1.0, "onnx_top_session_identical": 1.0}
    runtime = OneRecRecommender(draft, threads=1)
    same_list = np.mean([np.array_equal(a, b) for a, b in zip(
        generate(model, tree, histories, max(10, list_beam)), runtime.generate_rows(histories, max(10, list_beam), 1))])
    same_session = np.mean([np.array_equal(a[:1], b[:1]) for a, b in zip(
        generate(model, tree, histories, beam, model.cfg.session),
        runtime.generate_rows(histories, beam, model.cfg.session))])
    return {"onnx_top10_identical": float(same_list), "onnx_top_session_identical": float(same_session)}


def train_onerec(
    data: str | Path, out: str | Path, cfg: OneRecTrainConfig | None = None, resume: bool = False,
    progress: bool = True, command: str | None = None,
) -> Path:
    """Train on ``data``'s interactions and write a ``model/onerec`` bundle to ``out``."""
    cfg = cfg or OneRecTrainConfig()
    loop = replace(loop_config(cfg), stop_within_epoch=True)  # rejects a bad configuration before any work
    resolve_device(cfg.device)  # and a GPU that is not there
    seqs = user_sequences(load_interactions(data))
    cfg = resolve_defaults(cfg, seqs)  # type: ignore[assignment]
    table = EmbeddingTable(1, admit_threshold=cfg.admit_threshold, seed=cfg.seed,
                           initial_capacity=2 * max(16, len({i for s in seqs.items for i in s})))
    prep = prepare(seqs, table, cfg.eval_users, cfg.valid_fraction, cfg.seed)
    codes_per_level = cfg.codes or default_codes(len(prep.item_keys), cfg.levels)
    cfg = replace(cfg, codes=codes_per_level)
    log.info("onerec: semantic ids from %s, %d levels of %d codes", cfg.ids_from, cfg.levels, codes_per_level)
    codes = semantic_ids(item_vectors(cfg, prep), cfg.levels, codes_per_level, seed=cfg.seed)
    return run_training(OneRecAdapter(prep, cfg, codes), loop, out, resume=resume, progress=progress,
                        command=command)
