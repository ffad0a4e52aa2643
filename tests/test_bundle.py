from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrec.bundle import BundleError, load_bundle, write_manifest


def _bundle(tmp_path: Path) -> Path:
    root = tmp_path / "b"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (root / "sub" / "vocab.json").write_text('{"a": 1}')
    write_manifest(root, kind="model/test", name="t", config={"x": 1}, dims={"dim": 8}, metrics={"m": 0.5})
    return root


def test_round_trip_records_everything(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    m = load_bundle(root, kind="model/test")
    assert set(m.files) == {"weights.bin", "sub/vocab.json"}
    assert m.dims == {"dim": 8} and m.config == {"x": 1} and m.metrics == {"m": 0.5}
    assert m.schema_version == 1 and m.created and m.command
    assert m.file("sub/vocab.json").read_text() == '{"a": 1}'


def test_one_changed_byte_is_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    data = bytearray((root / "weights.bin").read_bytes())
    data[100] ^= 0x01
    (root / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"checksum mismatch for weights\.bin"):
        load_bundle(root)


def test_missing_and_extra_files_are_refused(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (root / "sub" / "vocab.json").unlink()
    with pytest.raises(BundleError, match=r"sub/vocab\.json listed in the manifest is missing"):
        load_bundle(root)
    root2 = _bundle(tmp_path / "2")
    (root2 / "stray.txt").write_text("x")
    with pytest.raises(BundleError, match="files not in the manifest"):
        load_bundle(root2)


def test_wrong_kind_schema_and_no_manifest(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    with pytest.raises(BundleError, match="kind is 'model/test', expected 'index/bm25'"):
        load_bundle(root, kind="index/bm25")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_bundle(root)
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)
