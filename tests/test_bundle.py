from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from retrec.bundle import (
    BundleError,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    load_bundle,
    publish,
    write_manifest,
)


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


# ---------------------------------------------------------------- atomic publishing


def _publish_version(target: Path, tag: str, files: int = 3) -> None:
    with publish(target) as pub:
        for i in range(files):
            (pub.path / f"part{i}.bin").write_bytes(tag.encode() * (100 + i))
        pub.set_manifest(kind="model/test", name=tag)


def _siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p != target)


def test_publish_writes_a_verified_version_and_replaces_it(tmp_path: Path) -> None:
    target = tmp_path / "v"
    _publish_version(target, "old")
    assert load_bundle(target).name == "old" and (target / "part0.bin").read_bytes().startswith(b"old")
    _publish_version(target, "new", files=2)
    m = load_bundle(target)
    assert m.name == "new" and set(m.files) == {"part0.bin", "part1.bin"} and m.path == target
    assert _siblings(target) == []  # the old version and the temporary directory are gone


def test_failing_writer_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "v"
    _publish_version(target, "old")
    with pytest.raises(RuntimeError, match="midway"), publish(target) as pub:
        (pub.path / "part0.bin").write_bytes(b"half")
        raise RuntimeError("writer failed midway")
    assert load_bundle(target).name == "old" and _siblings(target) == []
    with pytest.raises(RuntimeError), publish(tmp_path / "fresh") as pub:
        raise RuntimeError("before any file")
    assert not (tmp_path / "fresh").exists() and _siblings(target) == []
    with pytest.raises(BundleError, match="nothing published"), publish(tmp_path / "fresh"):
        pass
    assert not (tmp_path / "fresh").exists()


def test_publish_refuses_what_it_must_not_replace(tmp_path: Path) -> None:
    target = tmp_path / "v"
    _publish_version(target, "old")
    with pytest.raises(FileExistsError, match="not empty"), publish(target, replace=False):
        pass
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a retrec bundle"), publish(other):
        pass
    assert (other / "mine.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    _publish_version(tmp_path / "empty", "first")  # an empty placeholder directory is fine
    assert load_bundle(tmp_path / "empty").name == "first"


def test_fallback_swap_is_recovered_after_a_crash_between_renames(tmp_path: Path) -> None:
    target = tmp_path / "v"
    _publish_version(target, "old")
    target.rename(tmp_path / ".v.old-dead")  # what a writer killed between the two renames leaves
    _publish_version(target, "new")
    assert load_bundle(target).name == "new" and _siblings(target) == []


def test_atomic_write_replaces_whole_files_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "curve.json"
    atomic_write_text(path, "[1]")
    atomic_write_bytes(path, b"[1, 2]")
    assert path.read_text() == "[1, 2]"
    with pytest.raises(ValueError, match="boom"), atomic_open(path) as fh:
        fh.write(b"[1, 2, 3")
        raise ValueError("boom")
    assert path.read_text() == "[1, 2]" and sorted(p.name for p in path.parent.iterdir()) == ["curve.json"]


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "emb.safetensors"
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"v1")
        assert not path.exists()
    with pytest.raises(OSError), atomic_path(path) as tmp:
        tmp.write_bytes(b"v2 partial")
        raise OSError("disk full")
    assert path.read_bytes() == b"v1" and [p.name for p in path.parent.iterdir()] == ["emb.safetensors"]


_KILLED_WRITER = """
import os, sys
from pathlib import Path
import retrec.bundle as b

target, kill_at = Path(sys.argv[1]), int(sys.argv[2])
events = [0]

def tick():
    events[0] += 1
    if events[0] == kill_at:
        os._exit(17)

def counted(fn):
    def wrapper(*args, **kwargs):
        tick()
        out = fn(*args, **kwargs)
        tick()
        return out
    return wrapper

os.fsync, os.rename, os.replace = counted(os.fsync), counted(os.rename), counted(os.replace)
b._exchange, b.shutil.rmtree = counted(b._exchange), counted(b.shutil.rmtree)
with b.publish(target) as pub:
    for i in range(4):
        (pub.path / f"part{i}.bin").write_bytes(b"new" * (100 + i))
        tick()
    pub.set_manifest(kind="model/test", name="new")
print(events[0])
"""


def test_a_writer_killed_at_any_point_leaves_the_old_or_the_new_version(tmp_path: Path) -> None:
    import subprocess
    import sys

    def run(target: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target), str(kill_at)],
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])

    probe = tmp_path / "probe"
    _publish_version(probe, "old")
    done = run(probe, 0)
    assert done.returncode == 0, done.stderr
    total = int(done.stdout)
    assert total > 10 and load_bundle(probe).name == "new"
    seen = set()
    for kill_at in range(1, total + 1):  # every file write, fsync, rename and the swap
        target = tmp_path / f"t{kill_at}" / "v"
        _publish_version(target, "old")
        assert run(target, kill_at).returncode == 17
        manifest = load_bundle(target)  # verifies every checksum: never a mix of versions
        assert manifest.name in ("old", "new")
        assert (target / "part0.bin").read_bytes().startswith(manifest.name.encode())
        seen.add(manifest.name)
        _publish_version(target, "next")  # the next writer is not blocked by the leftovers
        assert load_bundle(target).name == "next"
    assert seen == {"old", "new"}


# ---------------------------------------------------------------- entries stay inside the bundle


def _edit_manifest(root: Path, edit: object) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    data = edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("entry", ["../secret.txt", "sub/../../secret.txt", "/etc/hostname", "sub\\..\\x",
                                   "C:/x", "c:x", "", "sub//vocab.json", "./weights.bin", "sub/", "a\x00b",
                                   "manifest.json"])
def test_entries_outside_the_bundle_are_refused(tmp_path: Path, entry: str) -> None:
    root = _bundle(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()

    def add(data: dict) -> dict:
        data["files"][entry] = {"sha256": "0" * 64, "bytes": 10}
        return data

    _edit_manifest(root, add)
    for verify in (True, False):
        with pytest.raises(BundleError, match="manifest") as info:
            load_bundle(root, verify=verify)
        assert digest[:12] not in str(info.value) and "top secret" not in str(info.value)


def test_manifest_file_refuses_what_is_not_listed_or_escapes(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    m = load_bundle(root)
    for rel in ("../secret.txt", "/etc/hostname", "nope.bin"):
        with pytest.raises(BundleError):
            m.file(rel)


def test_symlinks_inside_the_bundle_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (outside / "vocab.json").write_text('{"a": 1}')
    # a listed file replaced by a link to an identical file outside: checksums match, still refused
    root = _bundle(tmp_path / "1")
    (root / "weights.bin").unlink()
    (root / "weights.bin").symlink_to(outside / "weights.bin")
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(root)
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(root, verify=False).file("weights.bin")
    # a directory replaced by a link
    root = _bundle(tmp_path / "2")
    (root / "sub" / "vocab.json").unlink()
    (root / "sub").rmdir()
    (root / "sub").symlink_to(outside)
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(root)
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(root, verify=False).file("sub/vocab.json")
    # an unlisted dangling or escaping link is refused too, and a manifest that is a link
    root = _bundle(tmp_path / "3")
    (root / "extra").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(root)
    root = _bundle(tmp_path / "4")
    (root / "manifest.json").rename(tmp_path / "4" / "m.json")
    (root / "manifest.json").symlink_to(tmp_path / "4" / "m.json")
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(root)
    # publishing a folder with a link in it is refused (it could not be loaded)
    with pytest.raises(BundleError, match="symlink"), publish(tmp_path / "5") as pub:
        (pub.path / "w.bin").symlink_to(outside / "weights.bin")
        pub.set_manifest(kind="model/test", name="t")
    assert not (tmp_path / "5").exists()


def test_a_symlinked_bundle_root_is_allowed(tmp_path: Path) -> None:
    root = _bundle(tmp_path)
    (tmp_path / "store").symlink_to(root)  # a model store that links versions by name
    assert load_bundle(tmp_path / "store").file("weights.bin").read_bytes() == (root / "weights.bin").read_bytes()


@pytest.mark.parametrize("doc", [
    [], "x", 3, None, {"schema_version": 1},
    {"schema_version": 1, "kind": "model/test", "name": "t", "version": "v", "created": "c", "command": "c",
     "files": []},
    {"schema_version": 1, "kind": "model/test", "name": "t", "version": "v", "created": "c", "command": "c",
     "files": {"w.bin": {"sha256": 5}}},
    {"schema_version": 1, "kind": "model/test", "name": "t", "version": "v", "created": "c", "command": "c",
     "files": {"w.bin": "abc"}},
    {"schema_version": 1, "kind": ["model/test"], "name": "t", "version": "v", "created": "c", "command": "c"},
    {"schema_version": 1, "kind": "model/test", "name": "t", "version": "v", "created": "c", "command": "c",
     "config": []},
    {"schema_version": True, "kind": "model/test", "name": "t", "version": "v", "created": "c", "command": "c"},
])
def test_malformed_manifests_are_a_clear_bundle_error(tmp_path: Path, doc: object) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="manifest"):
        load_bundle(root)


@pytest.mark.parametrize("name", ["x" * 5000, "a\x00b"])
def test_unreadable_bundle_names_are_a_bundle_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(BundleError, match=r"not a (readable )?retrec bundle"):
        load_bundle(tmp_path / name)
