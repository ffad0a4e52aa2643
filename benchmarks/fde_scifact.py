"""MUVERA FDEs on real token vectors (issue 16, acceptance 1 "reported", and a first look at acceptance 2):
zero-shot MiniLM token states of SciFact, exact brute-force MaxSim against FDE inner products.

    python benchmarks/fde_scifact.py --data ../shared/data/scifact [--max-doc-length 180] [--json out.json]

Token vectors: the packaged all-MiniLM-L6-v2's last hidden states (no training, no projection), every non-padding
token, L2-normalised — the token encoder issue 16 trains is not there yet, so these figures describe the FDE, not
a multi-vector model. Reports, over the 300 test queries and all 5,183 documents: the Pearson correlation of FDE
inner products with exact MaxSim (over all pairs, and per query on average), the share of exact MaxSim's top 10
found in the FDE top 100, and nDCG@10 of exact MaxSim, FDE alone and FDE top 100 re-ranked by exact MaxSim.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from retrec.data.beir import load_retrieval_data
from retrec.models.text_encoder import TextEncoder
from retrec.pipelines.eval.retrieval import evaluate_hits
from retrec.runtime.fde import FDEConfig, encode_documents, encode_queries
from retrec.runtime.tokenizer import load_tokenizer


@torch.inference_mode()
def token_vectors(bert: torch.nn.Module, texts: list[str], max_length: int) -> list[np.ndarray]:
    tokenizer = load_tokenizer()
    out: list[np.ndarray] = [np.zeros((0, 384), np.float16)] * len(texts)
    for positions, feeds in tokenizer.batches(texts, max_length, 32):
        ids = torch.from_numpy(feeds["input_ids"])
        mask = torch.from_numpy(feeds["attention_mask"])
        hidden = bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        hidden = torch.nn.functional.normalize(hidden, dim=-1).numpy()
        for row, i in enumerate(positions):
            out[i] = hidden[row, : int(mask[row].sum())].astype(np.float16)
    return out


def exact_maxsim(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    """``[queries, documents]`` brute-force MaxSim."""
    offsets = np.cumsum([0] + [len(d) for d in docs])[:-1]
    all_tokens = np.concatenate(docs).astype(np.float32)
    scores = np.zeros((len(queries), len(docs)), dtype=np.float32)
    for qi, q in enumerate(queries):
        sims = q.astype(np.float32) @ all_tokens.T  # [q tokens, all document tokens]
        scores[qi] = np.maximum.reduceat(sims, offsets, axis=1).sum(axis=0)
    return scores


def top_hits(scores: np.ndarray, ids: list[str], k: int) -> list[list[tuple[str, float]]]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(ids[j], float(scores[i, j])) for j in row] for i, row in enumerate(order)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/scifact"))
    ap.add_argument("--max-doc-length", type=int, default=180)
    ap.add_argument("--max-query-length", type=int, default=32)
    ap.add_argument("--repetitions", type=int, default=20)
    ap.add_argument("--simhash-bits", type=int, default=5)
    ap.add_argument("--projection-dim", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_retrieval_data(args.data, split="test")
    doc_ids, texts = data.doc_texts(with_title=True)
    qids, qtexts = list(data.query_texts()), list(data.query_texts().values())
    bert = TextEncoder.from_pretrained().bert
    t0 = time.perf_counter()
    docs = token_vectors(bert, texts, args.max_doc_length)
    queries = token_vectors(bert, qtexts, args.max_query_length)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = exact_maxsim(queries, docs)
    exact_s = time.perf_counter() - t0
    cfg = FDEConfig(dim=384, repetitions=args.repetitions, simhash_bits=args.simhash_bits,
                    projection_dim=args.projection_dim)
    t0 = time.perf_counter()
    doc_fde = encode_documents(docs, cfg)
    fde_s = time.perf_counter() - t0
    approx = encode_queries(queries, cfg) @ doc_fde.T
    pearson_all = float(np.corrcoef(approx.ravel(), exact.ravel())[0, 1])
    pearson_q = float(np.mean([np.corrcoef(approx[i], exact[i])[0, 1] for i in range(len(queries))]))
    exact_top10 = np.argsort(-exact, axis=1)[:, :10]
    fde_top = np.argsort(-approx, axis=1)[:, : args.candidates]
    recall = float(np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact_top10, fde_top)]))
    reranked = np.full_like(exact, -np.inf)
    for i, cand in enumerate(fde_top):
        reranked[i, cand] = exact[i, cand]
    qrels = data.qrels_dict()
    ndcg = {name: evaluate_hits(name, dict(zip(qids, top_hits(s, doc_ids, 10))), qrels).metrics["nDCG@10"]
            for name, s in (("exact MaxSim", exact), ("FDE only", approx), ("FDE top-k + MaxSim", reranked))}
    result = {"benchmark": "fde_scifact", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "fde": cfg.to_json(), "fde_dim": cfg.output_dim, "documents": len(docs), "queries": len(queries),
              "doc_tokens_mean": float(np.mean([len(d) for d in docs])), "pearson_all_pairs": pearson_all,
              "pearson_per_query_mean": pearson_q, f"exact_top10_in_fde_top{args.candidates}": recall,
              "nDCG@10": ndcg, "seconds": {"token_encoding": encode_s, "exact_maxsim": exact_s,
                                           "document_fdes": fde_s}}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
