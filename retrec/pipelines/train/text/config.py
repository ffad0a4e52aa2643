"""The configs of the text trainers (``retrec train dense|multivector|sparse|reranker``): one place per option.

``TextTrainingOptions`` holds what every text trainer takes (budget, schedule, device, precision, dev evaluation),
``ContrastiveOptions`` what the bi-encoder families share (TAS-B sampling, mined negatives, the teacher), and each
family's config adds its own. Each field carries its default, its ``--help`` text and, for a ``Literal`` type,
its choices; ``retrec train`` generates its options from these dataclasses. No torch here, so ``retrec --help``
stays light.

Example::

    cfg = DenseTrainConfig(batch_size=16, max_steps=8, base_model="models/my-minilm")
    DenseTrainConfig(sampling="clusters")   # ValueError: unknown sampling 'clusters'; choose one of topic, random
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from retrec.pipelines.train.lr_schedule import Schedule
from retrec.pipelines.train.options import DEVICE_HELP, PRECISION_HELP, check_choices, option


@dataclass
class TextTrainingOptions:
    """The options every text-model trainer shares: budget, schedule, device, precision, dev split, checkpoints,
    export and the base model (``retrec train dense|multivector|sparse|reranker``)."""

    data_help: ClassVar[str] = "BEIR folder (train qrels; dev qrels used for evaluation when present)"

    epochs: int = option(6, "passes over the training queries")
    max_minutes: float | None = option(30.0, "training time budget, dev evaluation included "
                                             "(the schedule warms up and decays over it)")
    lr: float = option(3e-5, "peak learning rate (AdamW)")
    lr_schedule: Schedule = option(  # noqa: RUF009 (a Literal alias)
        "linear", "decay after the warm-up, over the budget (time or steps)")
    warmup_fraction: float = option(0.1, "share of the budget (time or steps) spent in linear warm-up")
    weight_decay: float = option(0.01, "AdamW weight decay")
    device: str = option("auto", DEVICE_HELP)
    precision: Literal["auto", "bf16", "fp32"] = option("auto", PRECISION_HELP)
    grad_checkpoint: bool = option(True, "recompute each layer's activations in the backward pass: a quarter of "
                                         "the peak memory, steps ~1.4x slower",
                                   flag="--grad-checkpoint/--no-grad-checkpoint")
    keep_freed_memory: bool = option(True, "glibc: during training, reuse the memory a step frees instead of "
                                           "returning it to the system (no page faults per step: ~1.3x faster "
                                           "steps on CPU), up to --memory-ceiling-gb",
                                     flag="--keep-freed-memory/--release-freed-memory")
    memory_ceiling_gb: float = option(3.0, "with --keep-freed-memory: past this resident size (GiB) after a step, "
                                           "the kept free memory goes back to the system (0: no ceiling)")
    dev_fraction: float = option(0.2, "at most this share of the training queries is held out for dev nDCG@10 "
                                 "when there is no dev split")
    dev_max_queries: int = option(200, "held-out dev queries (fewer when dev_fraction caps them)")
    dev_candidates: int = option(15, "per dev query from each miner; the dev metric re-ranks their union")
    checkpoint_every: int = option(20, "steps between checkpoints in OUT.ckpt/ (and at every epoch end)")
    eval_every: int = option(0, "steps between dev evaluations inside an epoch (0: at the end of each epoch or of "
                             "the budget); the exported model is the best evaluated, the starting model included")
    eval_share: float = option(0.15, "most of the elapsed time dev evaluations may take (a due one that would "
                                     "exceed it is skipped; the start's and the last always run)")
    dev_gate: bool = option(True, "export the trained weights only when their dev gain over the start is "
                                  "significant (paired bootstrap, one-sided 95% lower bound above 0); else the start",
                            flag="--dev-gate/--no-dev-gate")
    seed: int = option(0, "random seed (batches, negatives, dropout, new weights)")
    quantize: bool = option(True, "also write the int8 model", flag="--int8/--no-int8")
    max_steps: int | None = option(None, "hard cap on optimizer steps (smoke runs)")
    base_model: str | None = option(None, "local sentence-transformers/HF folder (BERT architecture) to "
                                          "fine-tune; default: the packaged all-MiniLM-L6-v2")


@dataclass
class ContrastiveOptions(TextTrainingOptions):
    """Bi-encoder training over the shared sampling: queries in topic-aware batches, each with a judged positive
    and a hard negative drawn by balanced margins, in-batch cross-entropy plus optional distillation
    (``retrec train dense`` and ``retrec train multivector``)."""

    batch_size: int = option(32, "queries per batch (in-batch negatives: at least 2)")
    max_query_length: int = option(64, "query tokens kept (training and the bundle's default)")
    max_doc_length: int = option(256, "document tokens kept (training and the bundle's default)")
    doc_chunk: int = option(8, "documents per forward pass, grouped by length (less padding, smaller blocks to "
                               "reuse; 0: the whole batch)")
    scale: float = option(20.0, "logit scale of the scores in the cross-entropy")
    sampling: Literal["topic", "random"] = option("topic", "topic (TAS query clusters) | random")
    queries_per_cluster: int = option(0, "topic clusters' mean size (0: 4 x batch size)")
    clusters_per_batch: int = option(1, "topic clusters drawn per batch")
    negatives: Literal["balanced", "bm25"] = option(
        "balanced", "balanced (margin bins over BM25+dense) | bm25 (one uniform BM25 hard negative)")
    negative_depth: int = option(50, "candidates per query from each miner")
    mask_judged: bool = option(True, "leave out of the losses every in-batch or hard negative judged relevant to "
                                     "the query (any grade > 0)", flag="--mask-judged/--no-mask-judged")
    margin_bins: int = option(10, "teacher-margin bins of balanced sampling")
    teacher: str = option("ensemble", "ensemble (BM25 + zero-shot dense + labels) | a model/reranker bundle "
                                      "folder (`retrec train reranker`) | PATH.parquet "
                                      "(query_id, doc_id, score)")
    label_weight: float = option(1.0, "the judgements' weight as a teacher member")
    distill_weight: float = option(0.0, "weight of the Margin-MSE terms (0: labels only)")
    inbatch_weight: float = option(1.0, "weight of in-batch Margin-MSE within the distillation term")
    pseudo_queries: float = option(0.0, "pseudo-queries per judged training query, mixed into the batches: a "
                                        "sentence of a corpus document as the query, the document as its "
                                        "positive (retrec/pipelines/train/text/pseudo_queries.py)")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.batch_size < 2:
            raise ValueError("batch_size must be at least 2 (in-batch negatives)")
        if self.doc_chunk < 0:
            raise ValueError("doc_chunk must be 0 (whole batch) or positive")
        if self.pseudo_queries < 0:
            raise ValueError("pseudo_queries must be >= 0")


@dataclass
class DenseTrainConfig(ContrastiveOptions):
    """Train a TAS-Balanced bi-encoder from the packaged MiniLM or --base-model; writes an ONNX bundle (model/dense)."""

    similarity: Literal["cosine", "dot"] = option("cosine", "cosine (normalised embeddings) | dot")
    compatible_with: str | None = option(None, "a model/dense bundle whose index the new encoder must search: "
                                               "trained with BCT's influence loss against its frozen document "
                                               "vectors (retrec/models/compat.py)")
    compat_mode: Literal["bt2", "bct"] = option("bt2", "with --compatible-with: bt2 (extra dimensions and a "
                                                       "learned orthonormal basis; the old space is the first "
                                                       "dimensions) | bct (the output is the old space)")
    extra_dims: int = option(32, "bt2: dimensions added to the encoder's width")
    compat_weight: float = option(1.0, "weight of the influence loss (new queries against the old documents)")
    adapt: bool = option(False, "domain adaptation without queries (GPL-style): train on pseudo-queries from the "
                                "corpus (a sentence of a document, the document its positive) with the teacher's "
                                "margins; the collection's queries and judgements are never read, dev is held-out "
                                "pseudo-queries (retrec/pipelines/train/text/pseudo_queries.py)",
                         flag="--adapt/--no-adapt")
    adapt_queries: int = option(2000, "--adapt: training pseudo-queries (one per document drawn)")
    adapt_dev_queries: int = option(200, "--adapt: held-out pseudo-queries for the dev metric and its gate")
    adapt_distill_weight: float = option(1.0, "--adapt: weight of the Margin-MSE terms against the teacher "
                                              "(replaces --distill-weight: the teacher is the signal)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.extra_dims < 0 or self.compat_weight < 0:
            raise ValueError("extra_dims and compat_weight must be >= 0")
        if self.adapt and self.pseudo_queries > 0:
            raise ValueError("--adapt trains on pseudo-queries alone; --pseudo-queries adds them beside judged "
                             "queries (give one)")
        if self.adapt_queries < 2 or self.adapt_dev_queries < 0 or self.adapt_distill_weight < 0:
            raise ValueError("adapt_queries must be >= 2, adapt_dev_queries and adapt_distill_weight >= 0")
        if self.compatible_with is not None and self.similarity != "cosine":
            raise ValueError("--compatible-with needs cosine similarity (the old space is compared normalised)")

    @property
    def margin_weight(self) -> float:
        """The Margin-MSE terms' weight: ``adapt_distill_weight`` with ``adapt``, else ``distill_weight``."""
        return self.adapt_distill_weight if self.adapt else self.distill_weight


@dataclass
class MultivectorTrainConfig(ContrastiveOptions):
    """Train a ColBERT-style token encoder (MaxSim) from the packaged MiniLM or --base-model; writes an ONNX bundle
    (model/multivector) for `retrec index muvera|maxsim`."""

    epochs: int = option(10, "passes over the training queries (10 did better than 6 on SciFact's dev queries: "
                             "benchmarks/RESULTS.md; the best evaluated weights are exported)")
    max_minutes: float | None = option(40.0, "training time budget, dev evaluation included (sized for 10 epochs "
                                             "of SciFact on 2 cores)")
    dim: int = option(128, "token vector dimension (a projection of the base model's states, initialised by PCA "
                           "of the corpus's token states)")
    max_query_length: int = option(32, "query tokens kept (with --query-augment: every query padded to it)")
    scale: float = option(1.0, "logit scale of MaxSim scores (sums over query tokens) in the cross-entropy")
    query_augment: bool = option(False, "pad queries with [MASK] tokens to --max-query-length (ColBERT)",
                                 flag="--query-augment/--no-query-augment")
    skip_punctuation: bool = option(True, "documents leave punctuation tokens out of MaxSim (ColBERT's skip-list)",
                                    flag="--skip-punctuation/--keep-punctuation")
    pca_documents: int = option(1000, "corpus documents whose token states initialise the projection (PCA)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dim < 1 or self.pca_documents < 1:
            raise ValueError("dim and pca_documents must be positive")


@dataclass
class SparseTrainConfig(ContrastiveOptions):
    """Train a SPLADE learned sparse encoder (inference-free by default, or siamese) from the packaged MiniLM or
    --base-model; writes an ONNX bundle (model/sparse) for `retrec index sparse`."""

    mode: Literal["siamese", "inference-free"] = option(
        "inference-free", "inference-free (documents only; a query's tokens weighted by the corpus IDF, IDF-aware "
                          "FLOPS; no model at query time and better on SciFact: benchmarks/RESULTS.md) | siamese "
                          "(queries encoded by the model)")
    query_weights: Literal["idf", "learned"] = option(
        "idf", "inference-free query table: the corpus IDF, or learned from it during training (its own rate: 100x "
               "--lr, no decay)")
    lexical: Literal["auto", "on", "off"] = option(
        "auto", "add each document term's BM25 saturated frequency to its learned weight (a lexical channel in the "
                "encoder); auto: on for inference-free, whose IDF-weighted queries then start as BM25, off for "
                "siamese")
    epochs: int = option(20, "passes over the training queries (the best evaluated weights are exported; on "
                             "SciFact the time budget ends training first)")
    lr: float = option(1e-4, "peak learning rate (AdamW; 1e-4 did better than 3e-5 on SciFact's dev queries: "
                             "benchmarks/RESULTS.md)")
    max_minutes: float | None = option(37.0, "training time budget, dev evaluations included (sized so that on "
                                             "SciFact with one thread the whole command, mining and export "
                                             "included, fits in 45 minutes)")
    scale: float | None = option(None, "logit scale of the sparse dot products in the cross-entropy (default: 1 "
                                       "siamese; 0.2 inference-free, whose IDF-weighted queries weigh ~3x more: "
                                       "at 1 its cross-entropy is a hard max that drops every expansion; "
                                       "benchmarks/RESULTS.md)")
    lambda_q: float = option(0.03, "FLOPS weight on the query vectors (siamese; at the start of SciFact training "
                                   "FLOPS(queries) ~2 and FLOPS(documents) ~9 against a cross-entropy ~3)")
    lambda_d: float = option(0.01, "FLOPS weight on the document vectors")
    flops_warmup_steps: int = option(50, "steps over which the FLOPS weights grow quadratically from 0")
    start_terms: int = option(200, "terms the median corpus document has at the start (the head's calibration "
                                   "on --calibration-documents documents)")
    calibration_documents: int = option(256, "corpus documents the head is calibrated on")
    doc_top_k: int = option(0, "keep a document's k largest weights in the bundle's output (0: every non-zero)")
    head_lr_scale: float = option(1.0, "the SPLADE head's (transform and per-term bias: new weights) learning "
                                       "rate as a multiple of --lr")
    attention_dropout: float = option(0.0, "dropout on the attention probabilities during training (MiniLM's own "
                                           "is 0.1; SDPA then leaves its fused kernel, the unfused attention adds "
                                           "a random draw per map: benchmarks/sparse_step_cost.py)")
    grad_checkpoint: bool = option(False, "recompute each layer's activations in the backward pass (the sparse "
                                          "head keeps no [batch, seq, vocabulary] block, so the peak memory stays "
                                          "moderate without it; steps ~1.2x slower with it)",
                                   flag="--grad-checkpoint/--no-grad-checkpoint")

    @property
    def logit_scale(self) -> float:
        """The cross-entropy's logit scale: ``scale``, or its default for the mode."""
        return self.scale if self.scale is not None else (0.2 if self.mode == "inference-free" else 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.lambda_q, self.lambda_d) < 0 or self.flops_warmup_steps < 0 or self.doc_top_k < 0:
            raise ValueError("lambda_q, lambda_d, flops_warmup_steps and doc_top_k must be >= 0")
        if self.start_terms < 1 or self.calibration_documents < 1:
            raise ValueError("start_terms and calibration_documents must be positive")
        if self.head_lr_scale <= 0 or (self.scale is not None and self.scale <= 0):
            raise ValueError("head_lr_scale and scale must be positive")
        if not 0.0 <= self.attention_dropout < 1.0:
            raise ValueError("attention_dropout must be in [0, 1)")
        if self.query_weights == "learned" and self.mode != "inference-free":
            raise ValueError("query_weights 'learned' is the inference-free query table; siamese queries are encoded")


@dataclass
class RerankerTrainConfig(TextTrainingOptions):
    """Train a cross-encoder re-ranker from the packaged MiniLM or --base-model; writes an ONNX bundle
    (model/reranker) for `retrec eval --rerank` and `retrec train dense --teacher`."""

    batch_size: int = option(8, "queries per step")
    group_size: int = option(8, "pairs per query in a step: one judged positive (drawn by grade) and "
                                "group_size - 1 mined negatives; the loss is cross-entropy over the group")
    lr: float = option(5e-5, "peak learning rate (AdamW)")
    max_length: int = option(256, "tokens of a (query, document) pair (training and the bundle's default)")
    pooling: Literal["segments", "mean", "cls"] = option(
        "segments", "what the score reads: segments (the cosine of the query's and the document's mean token states, "
        "plus a head over the mean of all tokens: starts where the bi-encoder base ranks) | mean | [CLS] (a head)")
    chunk: int = option(16, "pairs per forward pass, grouped by length (0: the whole step)")
    negative_depth: int = option(30, "candidates per query from each miner (BM25, zero-shot dense); documents "
                                     "judged relevant to the query are never its negatives")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2 (a positive and a negative)")
        if self.chunk < 0:
            raise ValueError("chunk must be 0 (whole step) or positive")
