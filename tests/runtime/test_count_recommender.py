"""The Markov bundle: the same scores as the fitted-by-name baseline, a round trip, forged files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from retrec.bundle import BundleError, publish, write_manifest
from retrec.runtime.count_recommender import COUNTS_FILE, CountBundle
from retrec.runtime.count_scoring import MarkovRecommender

HISTORIES = [["a", "b", "c"], ["b", "c", "d"], ["a", "c"], ["d", "a", "b"]]


def _bundle(path: Path) -> Path:
    rec = CountBundle.fit("markov", HISTORIES)
    with publish(path) as pub:
        pub.set_manifest(**rec.save(pub.path))
    return path


def test_scores_equal_the_count_baseline_and_survive_a_round_trip(tmp_path: Path) -> None:
    fitted = CountBundle.fit("markov", HISTORIES)
    assert fitted.item_ids == ["a", "b", "c", "d"]
    index = {item: i for i, item in enumerate(fitted.item_ids)}
    baseline = MarkovRecommender(4).fit([[index[i] for i in h] for h in HISTORIES])
    np.testing.assert_allclose(fitted.score([["b"], ["d", "a"]]), baseline.score([[1], [3, 0]]), rtol=1e-6)
    loaded = CountBundle.load(_bundle(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.score([["b"], ["x", "a"]]), fitted.score([["b"], ["a"]]))
    assert loaded.recommend([["b"]], k=1)[0][0][0] == "c"  # b → c twice, never anything else


def test_unknown_history_items_are_counted(tmp_path: Path) -> None:
    from retrec.runtime.recommender import SkipReport

    report = SkipReport()
    top = CountBundle.fit("markov", HISTORIES).recommend([["b", "zz"]], k=2, report=report)
    assert report.unknown_items == 1 and report.examples == ["zz"]
    assert top[0][0][0] == "c"  # "zz" skipped: the last known item (b) decides


def test_forged_counts_are_refused(tmp_path: Path) -> None:
    path = _bundle(tmp_path / "m")
    arrays = load_file(str(path / COUNTS_FILE))
    arrays["indices"] = arrays["indices"] + 100  # points outside the catalogue
    save_file(arrays, str(path / COUNTS_FILE))
    from retrec.bundle import read_manifest

    m = read_manifest(path)
    write_manifest(path, kind=m.kind, name=m.name, config=m.config, dims=m.dims)  # re-signed: only the check is left
    with pytest.raises(BundleError, match="does not match"):
        CountBundle.load(path)


def test_cooc_bundle_round_trip_and_forged_parameters(tmp_path: Path) -> None:
    fitted = CountBundle.fit("cooc", HISTORIES)
    with publish(tmp_path / "c") as pub:
        pub.set_manifest(**fitted.save(pub.path))
    loaded = CountBundle.load(tmp_path / "c")
    assert loaded.kind == "model/cooc" and loaded.model.window == 20
    np.testing.assert_array_equal(loaded.score([["a", "b"]]), fitted.score([["a", "b"]]))
    from retrec.bundle import read_manifest

    m = read_manifest(tmp_path / "c")
    write_manifest(tmp_path / "c", kind=m.kind, name=m.name, config={**m.config, "window": 10**9}, dims=m.dims)
    with pytest.raises(BundleError, match="window must be"):
        CountBundle.load(tmp_path / "c")
    with pytest.raises(ValueError, match="unknown count model"):
        CountBundle.fit("ease", HISTORIES)
