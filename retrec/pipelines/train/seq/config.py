"""The configs of the sequence trainers (``retrec train bert4rec|sasrec|onerec``): one place per option.

``SequenceOptions`` holds what every sequential recommender trainer takes (split, budget, schedule, device,
precision), ``SequenceTrainOptions`` what the item-softmax families (BERT4Rec, SASRec) share, and each family's
config adds its own. Each field carries its default, its ``--help`` text and, for a ``Literal`` type, its
choices; ``retrec train`` generates its options from these dataclasses. No torch here.

Example::

    BERT4RecTrainConfig(loss="sampled", negatives=128)
    SASRecTrainConfig(max_len=50, device="cpu")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from retrec.pipelines.train.lr_schedule import Schedule
from retrec.pipelines.train.options import DEVICE_HELP, check_choices, option

INTERACTIONS_HELP = "interactions: folder or file (Parquet, sequential, MovieLens)"
CPU_ONLY_HELP = "cpu (counting runs in numpy: auto means cpu, cuda is refused)"


@dataclass
class SequenceOptions:
    """The options of every sequential recommender trainer (``retrec train bert4rec|sasrec|onerec``).

    Defaults are the best recipe measured on Amazon Beauty (benchmarks/RESULTS.md): a sampled softmax over 8,192
    uniform negatives shared by the batch (the full softmax reached the same test NDCG@10 with 5× slower steps),
    cosine decay over the budget. ``max_len`` left unset is
    derived from the data (the 99th percentile of sequence lengths rounded up to 10, from 10 up to
    :meth:`max_len_cap`: 200, the paper's settings, Beauty 50 and MovieLens 200; BERT4Rec's default layout 50).
    """

    data_help: ClassVar[str] = INTERACTIONS_HELP

    max_len: int | None = option(None, "sequence length (default: from the data, the 99th percentile of "
                                       "sequence lengths rounded up to 10, 10..200; BERT4Rec's pre-LN layout "
                                       "10..50)")
    hidden: int = option(64, "transformer width")
    layers: int = option(2, "transformer layers")
    heads: int = option(2, "attention heads")
    dropout: float = option(0.2, "dropout (hidden and attention)")
    batch_size: int = option(128, "training windows per batch")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    lr_schedule: Schedule = option(  # noqa: RUF009 (a Literal alias)
        "cosine", "decay to 0 over the budget (time, epochs or steps)")
    warmup_steps: int = option(200, "linear learning-rate warm-up steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    epochs: int = option(200, "at most this many epochs")
    max_steps: int | None = option(None, "optimizer-step budget: the learning rate decays over the smallest of the "
                                         "time, epoch and step budgets, and training ends with the epoch that "
                                         "reaches it")
    patience: int = option(20, "epochs without validation gain before stopping")
    eval_users: int = option(10_000, "at most this many users held out for early stopping")
    valid_fraction: float = option(0.2, "share of the evaluable users held out for early stopping")
    max_minutes: float | None = option(45.0, "training time budget (the learning rate decays over it)")
    admit_threshold: int = option(1, "occurrences before an item gets a table row")
    seed: int = option(0, "random seed")
    device: str = option("auto", DEVICE_HELP)
    precision: Literal["auto", "bf16", "fp32"] = option(
        "fp32", "fp32 | bf16 (autocast: matrix products in bf16) | auto (bf16 where the hardware runs it natively)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.max_len is not None and self.max_len < 2:
            raise ValueError("max_len must be at least 2")

    def max_len_cap(self) -> int:
        """The most positions a data-derived ``max_len`` takes."""
        return 200


@dataclass
class SequenceTrainOptions(SequenceOptions):
    """The options of the next-item trainers scored against the item table (``retrec train bert4rec|sasrec``)."""

    loss: Literal["sampled", "ce", "gbce"] = option(
        "sampled", "sampled (softmax over --negatives uniform negatives shared by the batch) | ce (over all items) "
                   "| gbce (gSASRec's generalised binary cross-entropy over --negatives, calibrated by --gbce-t)")
    negatives: int = option(8192, "negatives per batch for --loss sampled|gbce")
    gbce_t: float = option(0.75, "gBCE calibration t (0: plain BCE, 1: fully calibrated)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.negatives < 1 or not 0.0 <= self.gbce_t <= 1.0:
            raise ValueError("negatives must be positive and gbce_t in [0, 1]")


@dataclass
class BERT4RecTrainConfig(SequenceTrainOptions):
    """Train BERT4Rec (Cloze) with early stopping on the validation item; writes an ONNX bundle (model/bert4rec)."""

    mask_prob: float | None = option(None, "Cloze mask probability (default: from the data, the paper's 0.6 for "
                                           "short sequences (median under 20 items, e.g. Beauty), else 0.2)")
    mask_last: float = option(0.1, "share of the training windows that mask only their last item (the served "
                                   "task: history, then [MASK]; the paper's fine-tuning samples; a small gain "
                                   "on Beauty: benchmarks/RESULTS.md)")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "auto (bf16 autocast where the hardware runs it natively, else fp32) | bf16 | fp32")
    block: Literal["sasrec", "bert"] = option(
        "sasrec", "block layout: sasrec (SASRec's pre-LN blocks: normalised query, feed-forward of width d, a final "
                  "LayerNorm; attention stays bidirectional; ahead of the bert layout on Beauty: "
                  "benchmarks/RESULTS.md) | bert (the paper's post-LN blocks and output head)")
    max_minutes: float | None = option(55.0, "training time budget (the learning rate decays over it; Cloze learns "
                                             "from the masked positions only, so it gets longer than SASRec)")
    patience: int = option(100, "epochs without validation gain before stopping (on Beauty a patience of 20 "
                                "stopped before the decay, while validation kept rising as the rate decayed)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mask_last <= 1.0 or not (self.mask_prob is None or 0.0 <= self.mask_prob <= 1.0):
            raise ValueError("mask_prob and mask_last must be in [0, 1]")

    def max_len_cap(self) -> int:
        """50 positions for the pre-LN layout: over 200 its Cloze training learns order slowly (MovieLens-100k test
        NDCG@10 0.0443 at 200, 0.0791 at 50, where the post-LN layout scores 0.0853 at 200; benchmarks/RESULTS.md);
        long histories become more training windows instead."""
        return 50 if self.block == "sasrec" else 200


@dataclass
class SASRecTrainConfig(SequenceTrainOptions):
    """Train SASRec (causal, next item at every position) with early stopping on the validation item; writes an
    ONNX bundle (model/sasrec)."""

    dropout: float = option(0.5, "dropout (hidden and attention; 0.5 validated best of 0.5, 0.2 and 0.1 on Beauty: "
                                 "benchmarks/RESULTS.md — every position is a target, so it overfits "
                                 "sooner than BERT4Rec)")
    max_steps: int | None = option(10_000, "optimizer-step budget: the learning rate decays over the smallest of "
                                           "the time, epoch and step budgets, and training ends with the epoch "
                                           "that reaches it (Beauty: 31 epochs; MovieLens-100k: 200 epochs first)")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto", "auto (bf16 autocast where the hardware runs it natively, else fp32; on Beauty the same test "
                "quality as fp32 with faster steps: benchmarks/RESULTS.md) | bf16 | fp32")
    block: Literal["sasrec", "bert"] = option(
        "sasrec", "block layout: sasrec (the paper's: normalised query, feed-forward of width d) | bert (BERT4Rec's "
                  "post-LN blocks and output head)")


@dataclass
class OneRecTrainConfig(SequenceOptions):
    """Train OneRec (semantic IDs, encoder–decoder with a sparse-MoE decoder) with early stopping on the validation
    item; writes an ONNX bundle (model/onerec) served by beam search."""

    ids_from: str = option("cooccurrence", "item vectors the semantic IDs cluster: cooccurrence (PPMI + SVD of the "
                                           "training histories, no model needed) | a model/bert4rec or model/sasrec "
                                           "bundle folder (its item table, output bias dropped)")
    levels: int = option(2, "semantic-ID levels before the disambiguating code (on Beauty, at equal epochs, 2 "
                            "levels of 1024 codes validated above 2 of 512, 2 of 256 and 3 of 64: "
                            "benchmarks/RESULTS.md)")
    codes: int | None = option(None, "codes per level (default: from the catalogue, the smallest power of two with "
                                     "codes^levels >= 16 x items, 4..1024; Beauty, 2 levels: 1024)")
    session: int = option(10, "items of the next session the decoder learns to generate (and generates at most)")
    dropout: float = option(0.1, "dropout")
    experts: int = option(4, "decoder feed-forward experts")
    top_k: int = option(2, "experts each token is routed to")
    aux_weight: float = option(0.01, "weight of the experts' load-balancing loss")
    beam: int = option(10, "beam width of session generation (the bundle's default)")
    list_beam: int = option(20, "beam width of a top-k list of next items (validation, /v1/recommend, eval-rec: "
                                "max(k, list_beam) beams; wider than k keeps items a narrow beam prunes early: "
                                "benchmarks/RESULTS.md)")
    cuts: int = option(16, "examples (history, next session) drawn per training window and step: one encoder pass "
                           "over the window serves them all")
    item_inputs: bool = option(True, "the encoder embeds each history item itself besides its semantic-ID tokens "
                                     "(an item table in the encoder; else the code tokens alone)")
    first_weight: float = option(1.0, "loss weight of the session's first item (the next item, what a top-k list "
                                      "ranks) against 1 for each later item")
    batch_size: int = option(128, "training windows per batch")
    eval_users: int = option(3_000, "at most this many users held out for early stopping (beam search each epoch)")
    patience: int = option(10, "epochs without validation gain before stopping")
    max_minutes: float | None = option(50.0, "training time budget (the learning rate decays over it; the reward "
                                             "model and the DPO rounds follow, a few minutes)")
    dpo_rounds: int = option(1, "preference-alignment rounds after training (0: none): beam candidates ranked by a "
                                "reward model fitted on the training histories, DPO on the best and worst")
    dpo_beta: float = option(0.1, "DPO beta")
    dpo_users: int = option(1_000, "training users whose candidate sessions form the preference pairs of a round")
    dpo_candidates: int = option(8, "candidate sessions (beams) per user")
    dpo_session: int = option(5, "items of a candidate session")
    dpo_steps: int = option(100, "DPO steps per round (64 pairs a step)")
    dpo_lr: float = option(1e-5, "DPO learning rate")
    reward_steps: int = option(500, "reward-model steps (256 positions a step)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dpo_rounds < 0 or self.dpo_beta <= 0 or min(self.dpo_users, self.dpo_steps, self.reward_steps) < 1:
            raise ValueError("dpo_rounds must be >= 0, dpo_beta > 0, dpo_users, dpo_steps and reward_steps >= 1")
        if not 1 <= self.dpo_session <= self.session or self.dpo_candidates < 2:
            raise ValueError("dpo_session must be in 1..session and dpo_candidates >= 2")
        if min(self.levels, self.session, self.beam, self.list_beam, self.cuts) < 1 or (
                self.codes is not None and self.codes < 2):
            raise ValueError("levels, session, beam, list_beam and cuts must be >= 1 and codes >= 2")
        if not 1 <= self.top_k <= self.experts:
            raise ValueError("top_k must be in 1..experts")
        if self.first_weight <= 0:
            raise ValueError("first_weight must be positive")


@dataclass
class CountTrainConfig:
    """Fit the count model ({description}) on every history but each user's test item, its parameters chosen on the
    validation item; writes {kind}.

    One config for the three count kinds (markov, markov-decay, cooc); ``{description}`` and ``{kind}`` in the
    first paragraph are filled in per command."""

    data_help: ClassVar[str] = INTERACTIONS_HELP

    device: str = option("auto", CPU_ONLY_HELP)
    precision: Literal["auto", "fp32"] = option("auto", "fp32 (counts and scores in float32; auto means fp32)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.device.startswith("cuda"):
            raise ValueError(f"device {self.device!r}: count models fit on the CPU (numpy); use auto or cpu")


@dataclass
class FusionTrainConfig(CountTrainConfig):
    """Combine recommenders (weights chosen on the validation item, full-ranking NDCG@10); writes
    model/rec-fusion."""

    data_help: ClassVar[str] = "the interactions the components were trained on"

    component: list[str] = dataclasses.field(default_factory=list, metadata={
        "help": "a recommender bundle folder, or markov / markov-decay / cooc (fitted here); two or more"})
    grid_step: float = option(0.05, "step of the weight grid over the simplex")
