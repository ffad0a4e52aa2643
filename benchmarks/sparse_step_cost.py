"""Cost of one SPLADE training step's encoder work, side by side: forward + backward over documents of a collection.

    python benchmarks/sparse_step_cost.py --data ../shared/data/scifact --documents 64 --threads 1

Arms (each on the same documents, the calibrated start, bf16 autocast where the CPU has it, one warm-up pass):
- ``autograd``: the head through plain autograd — the ``[chunk, seq, vocabulary]`` products kept for the backward
  pass, masked and max-pooled (the trainer before stop 32), MiniLM's attention dropout 0.1;
- ``pooled``: :class:`retrec.models.splade.MaxPooledProduct` (the products never kept), attention dropout 0.1;
- ``pooled+no-attn-dropout``: the trainer's default at stop 32 (SDPA's fused attention kernel);
- ``pooled+no-attn-dropout+checkpointing``: the same with gradient checkpointing (``--grad-checkpoint``);
- ``pooled+no-attn-dropout+eager-attention``: the unfused attention (the trainer's default on CPU since stop 33).
Prints a table and one JSON line (the fastest of ``--repeats`` passes, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from retrec.data.beir import load_retrieval_data
from retrec.models.precision import autocast, resolve_precision
from retrec.models.splade import SpladeEncoder
from retrec.models.text_encoder import set_attention_dropout
from retrec.runtime.tokenizer import load_tokenizer, minilm_dir


def autograd_forward(model: SpladeEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference: every product kept by autograd (what MaxPooledProduct computes without keeping them)."""
    keep = model.pooled_positions(ids, mask).bool().unsqueeze(-1)
    pooled = model.logits(ids, mask).masked_fill(~keep, float("-inf")).amax(dim=1)
    return torch.log1p(torch.relu(pooled.float())) * model.allowed


def one_pass(model: SpladeEncoder, chunks: list[tuple[torch.Tensor, torch.Tensor]], precision: str,
             reference: bool) -> tuple[float, float]:
    start = time.perf_counter()
    with autocast(precision):
        parts = [(autograd_forward(model, i, m) if reference else model(i, m)) for i, m in chunks]
    middle = time.perf_counter()
    torch.cat(parts).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return middle - start, time.perf_counter() - middle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/scifact"))
    ap.add_argument("--documents", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=8, help="documents per forward pass (the trainer's --doc-chunk)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, texts = load_retrieval_data(args.data, split="test").doc_texts(with_title=True)
    texts = texts[: args.documents]
    tokenizer = load_tokenizer(minilm_dir())
    precision = resolve_precision("auto")
    chunks = [(torch.from_numpy(f["input_ids"]), torch.from_numpy(f["attention_mask"]))
              for _, f in tokenizer.batches(texts, args.max_length, args.chunk)]
    arms = {"autograd": (True, 0.1, False, "sdpa"), "pooled": (False, 0.1, False, "sdpa"),
            "pooled+no-attn-dropout": (False, 0.0, False, "sdpa"),
            "pooled+no-attn-dropout+checkpointing": (False, 0.0, True, "sdpa"),
            "pooled+no-attn-dropout+eager-attention": (False, 0.0, False, "eager")}
    results = {}
    for name, (reference, dropout, checkpointing, attention) in arms.items():
        torch.manual_seed(0)
        model = SpladeEncoder.from_pretrained(attn_implementation=attention)
        model.calibrate(tokenizer, texts[:32], start_terms=200, max_length=args.max_length, batch_size=args.chunk)
        model.train()
        set_attention_dropout(model.bert, dropout)
        if checkpointing:
            model.bert.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        one_pass(model, chunks, precision, reference)  # warm-up
        times = [one_pass(model, chunks, precision, reference) for _ in range(args.repeats)]
        forward, backward = (min(t[k] for t in times) for k in (0, 1))
        results[name] = {"forward_s": round(forward, 2), "backward_s": round(backward, 2),
                         "total_s": round(forward + backward, 2)}
        print(f"{name:40s} forward {forward:6.2f} s  backward {backward:6.2f} s  "
              f"({results['autograd']['total_s'] / (forward + backward):.2f}x)", flush=True)
    print(json.dumps({"documents": len(texts), "threads": args.threads, "precision": precision, "arms": results}))


if __name__ == "__main__":
    main()
