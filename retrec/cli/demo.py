"""``retrec demo``: every capability of the product, end to end, on the embedded default dataset.

The demo is the list :data:`STEPS` of step functions, numbered when run; each capability adds its step there,
so the demo always shows the whole product. Indexes are built, published and opened through the registry of
kinds (as ``retrec index`` / ``retrec eval --index`` do), recommenders evaluated through it (as ``eval-rec``).
It writes ``WORKDIR/data``, ``WORKDIR/runs/bm25.run`` and the bundles ``WORKDIR/bundles/{bm25,encoder,dense,
multivector,muvera,splade,sparse,bert4rec,sasrec,fusion,onerec}`` that the serving step
(:func:`retrec.serving.launch.demo_config`) serves.

Example::

    run_demo(Path("runs/demo"))        # {"bm25": {...}, "dense zero-shot": {...}, ..., "bert4rec": {...}}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retrec.bundle import read_manifest
from retrec.cli.demo_settings import (
    DEMO_BERT4REC,
    DEMO_DENSE,
    DEMO_MULTIVECTOR,
    DEMO_ONEREC,
    DEMO_SASREC,
    DEMO_SPARSE,
    NEXT,
)
from retrec.console import console, metrics_table, rule
from retrec.data.beir import RetrievalData, load_retrieval_data
from retrec.data.interactions import leave_one_out, load_interactions, user_sequences
from retrec.data.synthetic import SyntheticConfig, write_default_dataset
from retrec.data.trec import write_run
from retrec.index.generic import IndexRetriever, index_kind, open_index, publish_index
from retrec.pipelines.eval.hybrid import FusionSpec, fuse_runs
from retrec.pipelines.eval.ir_metrics import RETRIEVAL_MEASURES
from retrec.pipelines.eval.rec import evaluate_recommender
from retrec.pipelines.eval.recommenders import BASELINES, build_recommender, vocabulary_of
from retrec.pipelines.eval.retrieval import evaluate_hits, evaluate_retriever
from retrec.pipelines.eval.retrievers import build_from_texts
from retrec.pipelines.train.seq.bert4rec import train_bert4rec
from retrec.pipelines.train.text.dense import train_dense
from retrec.pipelines.train.text.multivector import train_multivector
from retrec.pipelines.train.text.sparse import train_sparse


@dataclass
class Demo:
    """What the steps share: the work folder and what earlier steps made."""

    workdir: Path
    data_dir: Path | None = None
    collection: RetrievalData | None = None
    retrievers: dict[str, IndexRetriever] = field(default_factory=dict)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    bundles: dict[str, Path] = field(default_factory=dict)

    @property
    def bundle_dir(self) -> Path:
        return self.workdir / "bundles"

    def documents(self) -> tuple[list[str], list[str]]:
        assert self.collection is not None
        return self.collection.doc_texts()


def step_data(demo: Demo, title: str) -> None:
    demo.data_dir = write_default_dataset(demo.workdir / "data", SyntheticConfig(language="english"))
    demo.collection = load_retrieval_data(demo.data_dir, split="test")
    console.print(f"[bold]{title}[/]: generated {demo.data_dir}")


def step_index(demo: Demo, title: str) -> None:
    ids, texts = demo.documents()
    built = build_from_texts(index_kind("bm25"), ids, texts)
    bundle = publish_index(built.index, demo.bundle_dir / "bm25", name="demo-bm25", texts=(ids, texts))
    demo.retrievers["bm25"] = open_index(bundle)  # verified load: checksums, schema, kind
    count = len(demo.retrievers["bm25"].doc_ids or [])
    console.print(f"[bold]{title}[/]: BM25 bundle at {bundle} ({count} documents)")


def step_dense(demo: Demo, title: str) -> None:
    console.print(f"[bold]{title}[/]: TAS-B fine-tuning of MiniLM on the embedded training queries (short budget)")
    assert demo.data_dir is not None
    encoder = train_dense(demo.data_dir, demo.bundle_dir / "encoder", DEMO_DENSE, command="retrec demo")
    ids, texts = demo.documents()
    dense = index_kind("dense")
    trained = build_from_texts(dense, ids, texts, model=encoder, shards=2, cache=None)
    publish_index(trained.index, demo.bundle_dir / "dense", name="demo-dense", texts=(ids, texts),
                  encoder=trained.encoder)
    demo.retrievers["dense zero-shot"] = build_from_texts(dense, ids, texts)  # the kind's default encoder
    demo.retrievers["dense trained"] = trained


def step_multivector(demo: Demo, title: str) -> None:
    console.print(f"[bold]{title}[/]: ColBERT-style token encoder fine-tuned from MiniLM (short budget); exact MaxSim "
                  "and MUVERA (FDEs in FAISS, 100 candidates re-ranked by MaxSim)")
    assert demo.data_dir is not None
    model = train_multivector(demo.data_dir, demo.bundle_dir / "multivector", DEMO_MULTIVECTOR, command="retrec demo")
    start = train_multivector(demo.data_dir, demo.bundle_dir / "multivector-start",
                              replace(DEMO_MULTIVECTOR, max_steps=0), command="retrec demo (the start: no step)",
                              progress=False)
    ids, texts = demo.documents()
    demo.retrievers["maxsim zero-shot start"] = build_from_texts(index_kind("maxsim"), ids, texts, model=start)
    muvera = build_from_texts(index_kind("muvera"), ids, texts, model=model, shards=2)
    publish_index(muvera.index, demo.bundle_dir / "muvera", name="demo-muvera", texts=(ids, texts),
                  encoder=muvera.encoder)
    demo.retrievers["maxsim"] = build_from_texts(index_kind("maxsim"), ids, texts, model=model)
    demo.retrievers["muvera"] = open_index(demo.bundle_dir / "muvera")


def step_sparse(demo: Demo, title: str) -> None:
    console.print(f"[bold]{title}[/]: inference-free SPLADE fine-tuned from MiniLM (short budget: documents encoded, "
                  "a query its tokens by IDF); an inverted index over its uint8 impacts, 2 shards")
    assert demo.data_dir is not None
    model = train_sparse(demo.data_dir, demo.bundle_dir / "splade", DEMO_SPARSE, command="retrec demo")
    start = train_sparse(demo.data_dir, demo.bundle_dir / "splade-start", replace(DEMO_SPARSE, max_steps=0),
                         command="retrec demo (the start: no step)", progress=False)
    ids, texts = demo.documents()
    demo.retrievers["sparse zero-shot start"] = build_from_texts(index_kind("sparse"), ids, texts, model=start)
    built = build_from_texts(index_kind("sparse"), ids, texts, model=model, shards=2)
    publish_index(built.index, demo.bundle_dir / "sparse", name="demo-sparse", texts=(ids, texts),
                  encoder=built.encoder)
    demo.retrievers["sparse"] = open_index(demo.bundle_dir / "sparse")


def step_retrieval(demo: Demo, title: str) -> None:
    assert demo.collection is not None
    runs = {}
    for name, retriever in demo.retrievers.items():
        res = evaluate_retriever(retriever, demo.collection, k=1000, progress=name == "bm25")
        if name == "bm25":
            write_run(demo.workdir / "runs" / "bm25.run", res.run, tag="bm25")
        demo.rows[name] = {**res.metrics, "queries": len(res.per_query)}
        runs[name] = res.run
    # the product's default: BM25 and the trained dense model fused by untuned RRF, as `retrec eval --model` does
    fused = fuse_runs({n: runs[n] for n in ("bm25", "dense trained")}, 1000, FusionSpec(method="rrf"))
    res = evaluate_hits("hybrid (bm25 + dense trained, RRF)", fused, demo.collection.qrels_dict(),
                        RETRIEVAL_MEASURES)
    demo.rows[res.name] = {**res.metrics, "queries": len(res.per_query)}
    console.print(metrics_table(f"{title} — {demo.collection.report.summary()}", demo.rows,
                                [*RETRIEVAL_MEASURES, "queries"]))


def step_upgrade(demo: Demo, title: str) -> None:
    """An encoder upgrade without re-encoding first: a zero-shot MiniLM index of two shards searched by the trained
    encoder's queries through a query-side map (``retrec compat fit``), then ``retrec reindex --rolling`` re-encodes
    it shard by shard, each step scored (nDCG@10 on the test queries)."""
    from retrec.models.text_encoder import zero_shot_bundle
    from retrec.pipelines.reindex.job import ReindexConfig, reindex
    from retrec.pipelines.train.text.compat_map import fit_compat_map

    console.print(f"[bold]{title}[/]: the trained encoder takes over a zero-shot index without re-encoding it "
                  "first — its queries through a map into the old space, then a rolling re-encode, shard by shard")
    assert demo.data_dir is not None and demo.collection is not None
    root, old = demo.workdir / "upgrade", zero_shot_bundle()
    base = reindex(ReindexConfig(kind="dense", data=demo.data_dir, out=root / "dense", model=old, shards=2,
                                 local=True, progress=False)).version
    mapped = fit_compat_map(old, demo.bundle_dir / "encoder", demo.data_dir, root / "encoder-map")
    rows = {"old queries, old index": evaluate_retriever(open_index(base, model=old), demo.collection,
                                                         progress=False).metrics}
    rolled = reindex(ReindexConfig(kind="dense", data=demo.data_dir, out=root / "dense", model=mapped, rolling=True,
                                   eval_data=demo.data_dir, max_drop=1.0, local=True, progress=False))
    rows["new queries (mapped), old index"] = {"nDCG@10": rolled.report["rolling"]["base_nDCG@10"]}
    for step in rolled.report["rolling"]["steps"]:
        rows[f"after {step['step']} re-encoded"] = {"nDCG@10": step["nDCG@10"]}
    console.print(metrics_table(f"{title} — {demo.collection.report.summary()}", rows, ["nDCG@10"]))


def step_bert4rec(demo: Demo, title: str) -> None:
    console.print(f"[bold]{title}[/]: Cloze training on the embedded interactions (short budget)")
    assert demo.data_dir is not None
    demo.bundles["bert4rec"] = train_bert4rec(demo.data_dir, demo.bundle_dir / "bert4rec", DEMO_BERT4REC,
                                              command="retrec demo")


def step_sasrec_fusion(demo: Demo, title: str) -> None:
    from retrec.pipelines.train.seq.rec_fusion import train_fusion
    from retrec.pipelines.train.seq.sasrec import train_sasrec

    console.print(f"[bold]{title}[/]: SASRec (next item at every position, short budget), then its fusion with "
                  "markov-decay, weights chosen on the validation item")
    assert demo.data_dir is not None
    demo.bundles["sasrec"] = train_sasrec(demo.data_dir, demo.bundle_dir / "sasrec", DEMO_SASREC,
                                          command="retrec demo")
    demo.bundles["fusion"] = train_fusion(demo.data_dir, demo.bundle_dir / "fusion",
                                          [str(demo.bundles["sasrec"]), "markov-decay"], command="retrec demo")
    spec = {c["name"]: c["weight"] for c in read_manifest(demo.bundles["fusion"]).config["components"]}
    console.print(f"  fusion weights: {spec}", markup=False, highlight=False)


def step_onerec(demo: Demo, title: str) -> None:
    from retrec.pipelines.train.seq.onerec import train_onerec
    from retrec.runtime.onerec import OneRecRecommender

    console.print(f"[bold]{title}[/]: semantic IDs (co-occurrence, balanced residual k-means), then an "
                  "encoder–decoder with a sparse-MoE decoder generating the next session (short budget)")
    assert demo.data_dir is not None
    demo.bundles["onerec"] = train_onerec(demo.data_dir, demo.bundle_dir / "onerec", DEMO_ONEREC,
                                          command="retrec demo")
    metrics = read_manifest(demo.bundles["onerec"]).metrics
    history = leave_one_out(user_sequences(load_interactions(demo.data_dir))).train[0][-10:]
    session = OneRecRecommender.load(demo.bundles["onerec"]).generate_sessions([[str(i) for i in history]])[0]
    console.print(f"  codes per level {metrics['codes_per_level']}, expert shares {metrics['expert_share']}; "
                  f"a generated session: {session}", markup=False, highlight=False)


def step_online(demo: Demo, title: str) -> None:
    """The online loop in brief (``retrec train online``): events appended to a log, SASRec trained on them as
    they come, the row delta applied by a follower as every serving replica does; a recommendation that changed."""
    import time

    import numpy as np

    from retrec.events import Event, open_log
    from retrec.pipelines.train.seq.online import OnlineConfig, OnlineTrainer
    from retrec.runtime.online_model import DeltaFollower
    from retrec.runtime.sequence_recommender import SequenceRecommender

    console.print(f"[bold]{title}[/]: user actions into an event log, SASRec trained on them online, the row delta "
                  "applied by a follower (as each serving replica does)")
    assert demo.data_dir is not None
    seqs, now, new_item = user_sequences(load_interactions(demo.data_dir)), time.time(), "NEW-ITEM-0001"
    events = [Event(user, item, now - 60, "view") for user, items in zip(seqs.users[:200], seqs.items[:200])
              for item in items[-3:]]
    events += [Event(user, new_item, now - 30, "purchase") for user in seqs.users[:200]]
    log = open_log(demo.workdir / "events")
    log.append(events)
    trainer = OnlineTrainer(demo.bundles["sasrec"], log, demo.workdir / "online",
                            OnlineConfig(sync_s=3600, batch_events=128))
    follower = DeltaFollower(demo.workdir / "online", SequenceRecommender.load)
    history = seqs.items[0][-5:]
    before = [i for i, _ in follower.model.recommend([history], k=5)[0]]
    trainer.run(stop_when_idle=True)  # one delta, at the end of the log
    follower.poll()
    after = [i for i, _ in follower.model.recommend([history], k=5)[0]]
    keys, _ = trainer.table.entries()
    same = np.array_equal(follower.model.table.embed(keys), trainer.table.embed(keys))
    report = trainer.report()
    console.print(f"  {len(events)} events, {report['examples']} training examples, delta {follower.seq} applied; "
                  f"rows identical to the trainer's: {same}; {new_item} in the catalogue: "
                  f"{new_item in follower.model.item_ids}\n  a user's top 5 before: {before}\n  after: {after}",
                  markup=False, highlight=False)


def step_recommendation(demo: Demo, title: str) -> None:
    assert demo.data_dir is not None
    loo = leave_one_out(user_sequences(load_interactions(demo.data_dir)))
    vocab = vocabulary_of(loo)
    rec_rows = {}
    for name in [*BASELINES, *(str(p) for p in demo.bundles.values())]:
        res = evaluate_recommender(build_recommender(name, loo, vocab), loo, vocab, protocol="full")
        rec_rows[Path(name).name] = res.metrics
    demo.rows.update(rec_rows)
    console.print(metrics_table(f"{title} — leave-one-out, full ranking over {len(vocab)} items",
                                rec_rows, ["HR@10", "NDCG@10", "MRR", "users"]))


def step_serving(demo: Demo, title: str) -> None:
    """The Ray Serve app on 127.0.0.1 answers a search and a recommendation; while it runs, ``retrec reindex``
    builds a new dense version of an edited corpus (only the edited documents encoded) and the admin endpoint
    swaps it in; a search then names the new version. Then the app shuts down."""
    import json
    import os
    import secrets

    from retrec.serving.launch import demo_round_trip

    assert demo.collection is not None and demo.data_dir is not None
    query = demo.collection.queries.column("text")[0].as_py()
    history = [str(i) for i in leave_one_out(user_sequences(load_interactions(demo.data_dir))).train[0]][-10:]
    console.print(f"[bold]{title}[/]: Ray Serve app on 127.0.0.1 (free port), real HTTP requests; then a reindex "
                  "of an edited corpus while it runs, and a swap")
    os.environ[DEMO_ADMIN_KEYS] = secrets.token_hex(16)  # the demo's admin key, for this process and its Ray
    try:
        exchanges = demo_round_trip(demo.bundle_dir, query, history, admin_keys_env=DEMO_ADMIN_KEYS,
                                    then=lambda url: reindex_and_swap(demo, url, query))
    finally:
        os.environ.pop(DEMO_ADMIN_KEYS, None)
    for exchange in exchanges:
        method, body = exchange["request"]
        console.print(f"  {method} {json.dumps(body)}")
        console.print(f"  → {json.dumps(exchange['response'])[:400]}", markup=False, highlight=False)


DEMO_ADMIN_KEYS = "RETREC_DEMO_ADMIN_KEYS"


def reindex_and_swap(demo: Demo, url: str, query: str) -> list[dict]:
    """1% of the corpus edited, ``retrec reindex`` of it from the served dense version, the swap, a search."""
    import httpx
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrec.pipelines.reindex.checks import swap_server
    from retrec.pipelines.reindex.job import ReindexConfig, reindex

    assert demo.collection is not None
    rows = demo.collection.corpus.to_pylist()
    for row in rows[::100]:  # 1% of the documents
        row["text"] = f"{row['text']} (revised)"
    edited = demo.workdir / "data-edited"
    edited.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=demo.collection.corpus.schema), edited / "corpus.parquet")
    result = reindex(ReindexConfig(kind="dense", data=edited, out=demo.bundle_dir / "dense-versions",
                                   model=demo.bundle_dir / "encoder", base=str(demo.bundle_dir / "dense"), shards=2,
                                   progress=False))
    plan = result.report["plan"]
    console.print(f"  reindex: {plan['encode']} edited documents encoded, {plan['reused']} reused → "
                  f"{result.version.name} (current)", markup=False, highlight=False)
    swapped = swap_server(url, "dense", result.version, demo.bundle_dir, key_env=DEMO_ADMIN_KEYS)
    body = {"query": query, "k": 3, "retriever": "dense"}
    with httpx.Client(base_url=url, timeout=30.0) as client:
        after = client.post("/v1/search", json=body).json()
    relative = f"{result.version.parent.name}/{result.version.name}"
    return [{"request": ["POST /v1/admin/indexes", {"retriever": "dense", "path": relative}], "response": swapped},
            {"request": ["POST /v1/search", body], "response": after}]


STEPS: list[tuple[str, Callable[[Demo, str], Any]]] = [
    ("data", step_data),
    ("index", step_index),
    ("dense", step_dense),
    ("multi-vector", step_multivector),
    ("learned sparse", step_sparse),
    ("retrieval", step_retrieval),
    ("encoder upgrade", step_upgrade),
    ("BERT4Rec", step_bert4rec),
    ("SASRec and fusion", step_sasrec_fusion),
    ("OneRec", step_onerec),
    ("online learning", step_online),
    ("recommendation", step_recommendation),
    ("serving", step_serving),
]


MARKER = ".retrec-demo"
# what the demo writes under its work folder
WRITES = ("data", "data-edited", "bundles", "runs", "events", "online", "upgrade")


def _fresh_workdir(workdir: Path) -> None:
    """Start from a clean work folder: what an earlier demo wrote there (:data:`WRITES`) is removed when the folder
    holds the demo's marker (or, from before the marker, its run file and bundles); any other non-empty folder
    is refused, so the demo never deletes what it did not write."""
    import shutil

    if workdir.is_dir() and any(workdir.iterdir()):
        legacy = (workdir / "runs" / "bm25.run").is_file() and (workdir / "bundles").is_dir()
        if not ((workdir / MARKER).is_file() or legacy):
            raise FileExistsError(f"{workdir}: not empty and not written by retrec demo; choose another --workdir")
        for name in WRITES:
            entry = workdir / name
            if entry.is_symlink() or entry.is_file():
                entry.unlink()
            elif entry.is_dir():
                shutil.rmtree(entry)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("written by retrec demo; its data, bundles and runs are replaced by the next run\n")


def run_demo(workdir: Path) -> dict[str, dict[str, float]]:
    """Run every step of :data:`STEPS` in order, numbered from 1, each timed; ends with the whole run's time and
    the commands to go further; returns the evaluation rows."""
    rule("retrec demo — embedded default dataset")
    demo = Demo(Path(workdir))
    _fresh_workdir(demo.workdir)
    started, times = time.perf_counter(), []
    for number, (name, step) in enumerate(STEPS, start=1):
        began = time.perf_counter()
        step(demo, f"{number}. {name}")
        times.append(f"{name} {time.perf_counter() - began:.0f} s")
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    rule(f"done in {minutes} min {seconds:02d} s")
    console.print("steps: " + ", ".join(times), markup=False, highlight=False)
    console.print(NEXT, markup=False, highlight=False)
    return demo.rows
