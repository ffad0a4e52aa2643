"""``retrec demo``: every capability of the product, end to end, on the embedded dataset.

Each capability adds its step here, so the demo always shows the whole product.
"""

from __future__ import annotations

from pathlib import Path

from retrec.console import console, metrics_table
from retrec.data.beir import load_retrieval_data
from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
from retrec.data.synthetic import write_default_dataset
from retrec.data.trec import write_run
from retrec.index.bm25_index import BM25Index
from retrec.index.dense_retriever import DenseRetriever
from retrec.models.text_encoder import zero_shot_bundle
from retrec.pipelines.evaluate import evaluate_retriever
from retrec.pipelines.evaluate_rec import evaluate_recommender
from retrec.pipelines.metrics import RETRIEVAL_MEASURES
from retrec.pipelines.recommenders import BUILDERS, build_recommender, vocabulary_of
from retrec.pipelines.train_bert4rec import TrainConfig, train_bert4rec
from retrec.pipelines.train_dense import DenseTrainConfig, train_dense
from retrec.process_env import cache_dir
from retrec.runtime.onnx_encoder import OnnxEncoder

# Small and quick: the demo shows the pipeline end to end, it makes no claims.
DEMO_BERT4REC = TrainConfig(max_len=20, mask_prob=0.2, hidden=64, layers=2, heads=2, batch_size=16, lr=1e-3,
                            epochs=40, patience=5, eval_users=300, max_minutes=2.0)
DEMO_DENSE = DenseTrainConfig(batch_size=16, epochs=1, max_steps=8, max_minutes=2.0, max_query_length=32,
                              max_doc_length=128, dev_max_queries=20, dev_candidates=10, quantize=False,
                              checkpoint_every=1_000)


def run_demo(workdir: Path) -> dict[str, dict[str, float]]:
    console.rule("retrec demo — embedded default dataset")
    data_dir = write_default_dataset(workdir / "data")
    console.print(f"[bold]1. data[/]: generated {data_dir}")

    collection = load_retrieval_data(data_dir, split="test")
    ids, texts = collection.doc_texts()
    bundle = BM25Index.build(ids, texts).save(workdir / "bundles" / "bm25", name="demo-bm25")
    index = BM25Index.load(bundle)  # verified load: checksums, schema, kind
    console.print(f"[bold]2. index[/]: BM25 bundle at {bundle} ({len(index.doc_ids)} documents)")

    console.print("[bold]3. dense[/]: TAS-B fine-tuning of MiniLM on the embedded training queries (short budget)")
    encoder_bundle = train_dense(data_dir, workdir / "bundles" / "encoder", DEMO_DENSE, command="retrec demo")
    dense = DenseRetriever.build(OnnxEncoder(encoder_bundle), ids, texts, factory="Flat", shards=2)
    dense.save(workdir / "bundles" / "dense", name="demo-dense")
    zero_shot = DenseRetriever.build(OnnxEncoder(zero_shot_bundle()), ids, texts, factory="Flat",
                                     cache=cache_dir() / "embeddings")

    result = evaluate_retriever(index, collection, k=1000)
    write_run(workdir / "runs" / "bm25.run", result.run, tag="bm25")
    rows = {"bm25": {**result.metrics, "queries": len(result.per_query)}}
    for name, retriever in (("dense zero-shot", zero_shot), ("dense trained", dense)):
        res = evaluate_retriever(retriever, collection, k=1000, progress=False)
        rows[name] = {**res.metrics, "queries": len(res.per_query)}
    console.print(metrics_table(f"4. retrieval — {collection.report.summary()}", rows,
                                [*RETRIEVAL_MEASURES, "queries"]))

    console.print("[bold]5. BERT4Rec[/]: Cloze training on the embedded interactions (short budget)")
    b4r = train_bert4rec(data_dir, workdir / "bundles" / "bert4rec", DEMO_BERT4REC, command="retrec demo")
    loo = leave_one_out(user_sequences(load_interactions(data_dir)))
    vocab = vocabulary_of(loo)
    rec_rows = {}
    for name in [*BUILDERS, str(b4r)]:
        res = evaluate_recommender(build_recommender(name, loo, vocab), loo, vocab, protocol="full")
        rec_rows[Path(name).name] = res.metrics
    console.print(metrics_table(f"6. recommendation — leave-one-out, full ranking over {len(vocab)} items",
                                rec_rows, ["HR@10", "NDCG@10", "MRR", "users"]))
    serving_step(workdir, collection.queries.column("text")[0].as_py(), [str(i) for i in loo.train[0]][-10:])
    console.rule("done")
    return {**rows, **rec_rows}


def serving_step(workdir: Path, query: str, history: list[str]) -> None:
    """Last step: the Ray Serve app on 127.0.0.1 answers a search and a recommendation, then shuts down."""
    import json

    from retrec.serving.launch import demo_round_trip

    console.print("[bold]7. serving[/]: Ray Serve app on 127.0.0.1 (free port), real HTTP requests")
    for exchange in demo_round_trip(workdir / "bundles", query, history):
        method, body = exchange["request"]
        console.print(f"  {method} {json.dumps(body)}")
        console.print(f"  → {json.dumps(exchange['response'])[:400]}", markup=False, highlight=False)
