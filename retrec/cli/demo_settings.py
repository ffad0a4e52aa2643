"""What ``retrec demo`` trains and says: small, quick configurations, and the commands to go further."""

from __future__ import annotations

from retrec.pipelines.train.seq.bert4rec import BERT4RecTrainConfig
from retrec.pipelines.train.seq.config import OneRecTrainConfig, SASRecTrainConfig
from retrec.pipelines.train.text.config import MultivectorTrainConfig, SparseTrainConfig
from retrec.pipelines.train.text.dense import DenseTrainConfig

# Small and quick: the demo shows the pipeline end to end, it makes no claims. Its text trainers run a few steps
# scored on 20 dev queries, too few for the dev gate to call any gain significant: the gate is off here, so the demo
# shows (and serves) what training made; the product's commands keep it on.
DEMO_BERT4REC = BERT4RecTrainConfig(max_len=20, hidden=64, layers=2, heads=2, batch_size=16, lr=1e-3, epochs=40,
                            patience=40, eval_users=300, max_minutes=1.5, warmup_steps=20, negatives=1024)
DEMO_SASREC = SASRecTrainConfig(max_len=20, hidden=64, layers=2, heads=2, batch_size=16, epochs=40, patience=5,
                                eval_users=300, max_minutes=1.5, warmup_steps=20, negatives=1024)
DEMO_ONEREC = OneRecTrainConfig(max_len=20, hidden=32, layers=1, heads=2, batch_size=32, epochs=20, patience=20,
                                eval_users=200, max_minutes=1.0, warmup_steps=10)
DEMO_DENSE = DenseTrainConfig(batch_size=16, epochs=1, max_steps=8, max_minutes=2.0, max_query_length=32,
                              max_doc_length=128, dev_max_queries=20, dev_candidates=10, quantize=False,
                              checkpoint_every=1_000, dev_gate=False)
DEMO_MULTIVECTOR = MultivectorTrainConfig(batch_size=16, epochs=1, max_steps=8, max_minutes=2.0, max_doc_length=128,
                                          dev_max_queries=20, dev_candidates=10, quantize=False, pca_documents=200,
                                          checkpoint_every=1_000, dev_gate=False)
# Learned sparse as the product ships it, inference-free (documents encoded, a query its tokens by IDF) with the
# lexical channel, so it starts from word-piece BM25 plus the head's expansions: 8 steps at 3e-5 without FLOPS
# (measured on the English default collection, 2026-12-07: start 0.683 → 0.748 test nDCG@10, ~450 terms a
# document; at 1e-4 0.820 with ~1,350 terms; the siamese mode starts at 0.157 and 4-16 steps did not lift it).
DEMO_SPARSE = SparseTrainConfig(batch_size=16, epochs=1, max_steps=8, max_minutes=2.0, max_doc_length=128, lr=3e-5,
                                mode="inference-free", dev_max_queries=20, dev_candidates=10, quantize=False,
                                calibration_documents=64, lambda_q=0.0, lambda_d=0.0, checkpoint_every=1_000,
                                dev_gate=False)


NEXT = """Go further (docs/quickstart.md):
  retrec data fetch scifact                      # a real collection (where the network allows)
  retrec eval --data scifact                     # BM25 + zero-shot dense fused: the product default
  retrec train dense --data scifact --out artifacts/tasb-scifact
  retrec eval --data scifact --model artifacts/tasb-scifact
  retrec serve --config configs/serve.yaml       # docs/serving.md"""
