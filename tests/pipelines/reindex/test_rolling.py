"""retrec reindex --rolling: shard by shard to a compatible encoder — each step a verified version in the old
space with per-shard stamps, then the new space; resumable; incompatible encoders and changed corpora refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrec.bundle import BundleError, load_bundle, read_manifest
from retrec.data.beir import corpus_texts
from retrec.data.corpus import read_corpus
from retrec.index.faiss_index import FaissIndex
from retrec.pipelines.reindex.checks import CURRENT
from retrec.pipelines.reindex.job import ReindexConfig, reindex
from retrec.runtime.onnx_encoder import OnnxEncoder
from tests.tiny_models import tiny_dense_encoder, with_version


@pytest.fixture(scope="module")
def encoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rolling-encoders")
    old = tiny_dense_encoder(root / "old")
    return {"old": old, "new": tiny_dense_encoder(root / "new", compatible_with=old, extra_dims=4),
            "other": with_version(tiny_dense_encoder(root / "other", seed=7), "enc-v7")}


def _cfg(data: Path, out: Path, model: Path, **kw: object) -> ReindexConfig:
    return ReindexConfig(kind="dense", data=data, out=out, model=model, local=True, progress=False, part_size=64,
                         **kw)  # type: ignore[arg-type]


def test_rolling_moves_shard_by_shard_then_to_the_new_space(tiny_data: Path, encoders: dict[str, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "versions"
    base = reindex(_cfg(tiny_data, out, encoders["old"], shards=3)).version
    seen: list[Path] = []
    result = reindex(_cfg(tiny_data, out, encoders["new"], rolling=True, eval_data=tiny_data), on_version=seen.append)
    steps = result.report["rolling"]["steps"]
    assert [s["step"] for s in steps] == ["shard 1/3", "shard 2/3", "shard 3/3", "new space"]
    assert [s["space"] for s in steps] == ["old"] * 3 + ["new"] and len(seen) == 4 and seen[-1] == result.version
    assert (out / CURRENT).resolve() == result.version and not (out / ".reindex").exists()
    assert all(s["verify"]["sample_self_hits"] > 0 for s in steps)
    # the tiny upgrade keeps the old encoder's first dimensions: every old-space step scores as the base did
    assert len({round(s["nDCG@10"], 6) for s in steps[:3]}) == 1

    new, old = load_bundle(encoders["new"]), load_bundle(encoders["old"])
    first = read_manifest(seen[0])
    assert first.config["encoder"]["name"] == "tiny-dense" and first.dims["dim"] == 16
    assert [s["name"] for s in first.config["shard_encoders"]] == ["tiny-dense-new", "tiny-dense", "tiny-dense"]
    assert FaissIndex.load(seen[0], encoder=new).query_prefix == 16  # the new encoder searches its old space
    ids, base_vectors = FaissIndex.load(base).encoded_documents()  # type: ignore[misc]
    _, mixed = FaissIndex.load(seen[0]).encoded_documents()  # type: ignore[misc]
    assert np.allclose(dict(zip(ids, base_vectors))[ids[0]], dict(zip(ids, mixed))[ids[0]], atol=1e-5)
    final = read_manifest(result.version)
    assert final.config["encoder"]["name"] == "tiny-dense-new" and final.dims["dim"] == 20
    assert "shard_encoders" not in final.config
    docs, texts = corpus_texts(read_corpus(tiny_data))
    got = FaissIndex.load(result.version, encoder=new).search(OnnxEncoder(encoders["new"]).encode_queries(texts[:3]), 5)
    assert all(d in {doc for doc, _ in h} for d, h in zip(docs[:3], got))
    with pytest.raises(BundleError, match="records no compatibility"):
        FaissIndex.load(result.version, encoder=old)  # the old encoder cannot read the new space
    with pytest.raises(ValueError, match="nothing to roll"):
        reindex(_cfg(tiny_data, out, encoders["new"], rolling=True))


def test_a_killed_roll_resumes_and_refusals_name_the_fix(tiny_data: Path, encoders: dict[str, Path],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "versions"
    reindex(_cfg(tiny_data, out, encoders["old"], shards=2))

    def killed(version: Path) -> None:
        raise RuntimeError("killed after the first step")

    with pytest.raises(RuntimeError, match="killed"):
        reindex(_cfg(tiny_data, out, encoders["new"], rolling=True), on_version=killed)
    assert [s["name"] for s in read_manifest(out / CURRENT).config["shard_encoders"]] == ["tiny-dense-new",
                                                                                          "tiny-dense"]
    resumed = reindex(_cfg(tiny_data, out, encoders["new"], rolling=True)).report["rolling"]
    assert [s["step"] for s in resumed["steps"]] == ["shard 2/2", "new space"]  # shard 1 is not redone

    other = tmp_path / "other-versions"
    reindex(_cfg(tiny_data, other, encoders["old"], shards=2))
    with pytest.raises(BundleError, match="compatible-with"):
        reindex(_cfg(tiny_data, other, encoders["other"], rolling=True))
    with pytest.raises(ValueError, match="keeps the current version's 2 shards"):
        reindex(_cfg(tiny_data, other, encoders["new"], rolling=True, shards=3))
    with pytest.raises(ValueError, match="needs --model"):
        reindex(ReindexConfig(kind="dense", data=tiny_data, out=other, rolling=True, local=True))
    with pytest.raises(ValueError, match="has none"):
        reindex(_cfg(tiny_data, tmp_path / "empty", encoders["new"], rolling=True))

    from typer.testing import CliRunner

    from retrec.cli import app

    args = ["reindex", "dense", "--data", str(tiny_data), "--out", str(other), "--local", "--rolling"]
    refused = CliRunner().invoke(app, [*args, "--model", str(encoders["other"])])
    assert refused.exit_code == 2 and "records no compatibility" in refused.output
    done = CliRunner().invoke(app, [*args, "--model", str(encoders["new"])])
    assert done.exit_code == 0 and "shard 2/2" in done.output and "new space" in done.output, done.output
