"""Forged index files that claim 2^34 elements are refused before any large allocation (issue 44, acceptance 4).

Whoever can write the models volume can rewrite a bundle's manifest, so its checksums match the forgery. Each
load runs in a child process under ``RLIMIT_AS`` (a few hundred MiB over what the child has mapped at the
start): a loader that allocates what a header claims dies there with ``MemoryError`` / ``bad_alloc`` (or is
killed), a checked one raises ``BundleError`` (exit 3)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrec.index.bm25_index import BM25Config, BM25Index
from retrec.index.faiss_index import FaissIndex
from tests.tiny_models import with_version

CHILD = r"""
import resource, sys
from pathlib import Path
import numpy as np  # noqa  (mapped before the limit)
import faiss, pyarrow.parquet  # noqa
from retrec.bundle import BundleError
vm = int([l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmSize:")][0].split()[1])
limit = vm * 1024 + 512 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "dense":
        from retrec.index.faiss_index import FaissIndex
        FaissIndex.load(path)
    elif kind == "bm25":
        from retrec.index.bm25_index import BM25Index
        BM25Index.load(path)
    elif kind == "parquet":
        pyarrow.parquet.read_table(path)
except BundleError as exc:
    print("REFUSED", exc)
    sys.exit(3)
except (MemoryError, Exception) as exc:
    print("FAILED", type(exc).__name__, str(exc)[:200])
    sys.exit(4)
print("LOADED")
"""


def _load_in_child(kind: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True,
                          timeout=120)


def _dense(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    ids = [f"d{i}" for i in range(20)]
    FaissIndex.build(rng.normal(size=(20, 8)).astype(np.float32), ids).save(tmp_path / "dense")
    return tmp_path / "dense"


@pytest.mark.parametrize("claim", [2**34, 2**28])  # 64 GiB, and 1 GiB: a size the allocator would grant
def test_forged_faiss_flat_file_is_refused_before_allocating(tmp_path: Path, claim: int) -> None:
    bundle = _dense(tmp_path)
    assert _load_in_child("dense", bundle).returncode == 0, "the genuine bundle loads under the limit"
    shard = bundle / "shards" / "000.faiss"
    raw = bytearray(shard.read_bytes())
    d = struct.unpack_from("<i", raw, 4)[0]
    struct.pack_into("<q", raw, 8, claim // d)       # ntotal
    struct.pack_into("<Q", raw, 4 + 37 - 4, claim)   # the code array's length, in floats
    shard.write_bytes(bytes(raw[:4 + 37 + 4 + 64]))  # and a short body: 77 bytes that claim everything
    with_version(bundle, "forged")  # checksums rewritten: the manifest vouches for the forgery
    out = _load_in_child("dense", bundle)
    assert out.returncode == 3 and "refused before loading" in out.stdout, out.stdout + out.stderr


def test_forged_faiss_header_vector_count_is_refused(tmp_path: Path) -> None:
    bundle = _dense(tmp_path)
    shard = bundle / "shards" / "000.faiss"
    raw = bytearray(shard.read_bytes())
    struct.pack_into("<q", raw, 8, 2**34)
    shard.write_bytes(bytes(raw))
    with_version(bundle, "forged")
    out = _load_in_child("dense", bundle)
    assert out.returncode == 3 and "declares 17179869184 vectors" in out.stdout, out.stdout + out.stderr


def test_forged_safetensors_claiming_2_34_elements_is_refused(tmp_path: Path) -> None:
    ids, texts = ["a", "b", "c"], ["vitamin c scurvy", "iron anemia", "sunlight vitamin d"]
    bundle = Path(BM25Index.build(ids, texts, BM25Config()).save(tmp_path / "bm25", name="bm25").path)
    assert _load_in_child("bm25", bundle).returncode == 0
    scores = bundle / "scores.safetensors"
    raw = scores.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [2**34]
    header[name]["data_offsets"] = [0, 2**34 * np.dtype(np.float32).itemsize]
    body = json.dumps(header).encode()
    scores.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])
    with_version(bundle, "forged")
    out = _load_in_child("bm25", bundle)
    assert out.returncode == 3, out.stdout + out.stderr


def test_forged_parquet_row_count_allocates_nothing_it_claims(tmp_path: Path) -> None:
    """A Parquet footer claiming 2^35 rows: pyarrow reads what the pages hold, never the claim."""
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(100)]}), path)
    raw = bytearray(path.read_bytes())
    meta = pq.read_metadata(path)
    assert meta.num_rows == 100
    footer_len = struct.unpack_from("<i", raw, len(raw) - 8)[0]
    footer = bytes(raw[len(raw) - 8 - footer_len:len(raw) - 8])
    # the FileMetaData num_rows field (id 3, i64, zigzag varint of 100 = 200 -> b"\xc8\x01")
    forged = footer.replace(b"\x16\xc8\x01", b"\x16" + _varint(2**35), 1)
    assert forged != footer
    raw = raw[:len(raw) - 8 - footer_len] + forged + struct.pack("<i", len(forged)) + b"PAR1"
    path.write_bytes(bytes(raw))
    out = _load_in_child("parquet", path)
    assert out.returncode == 0 and "LOADED" in out.stdout, out.stdout + out.stderr


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_forged_npy_refine_store_is_refused(tmp_path: Path) -> None:
    """The exact vectors an ANN dense index keeps beside its FAISS file: a header claiming 2^34 rows."""
    from retrec.bundle import BundleError
    from retrec.index.faiss_check import load_npy

    path = tmp_path / "000.vectors.npy"
    np.save(path, np.zeros((10, 8), np.float16))
    assert load_npy(path, mmap=False).shape == (10, 8)
    raw = path.read_bytes()
    forged = raw.replace(b"'shape': (10, 8), }", b"'shape': (17179869184, 8), }")
    assert forged != raw
    path.write_bytes(forged)
    for mmap in (False, True):
        with pytest.raises(BundleError, match="refused before loading"):
            load_npy(path, mmap=mmap)


def test_bm25_arrays_that_do_not_form_a_score_matrix_are_refused(tmp_path: Path) -> None:
    """Document numbers past the corpus (checksums rewritten to match): a BundleError at load, never an
    IndexError at the first query."""
    from safetensors.numpy import load_file, save_file

    from retrec.bundle import BundleError

    ids, texts = ["a", "b", "c"], ["vitamin c scurvy", "iron anemia", "sunlight vitamin d"]
    bundle = Path(BM25Index.build(ids, texts, BM25Config()).save(tmp_path / "bm25", name="bm25").path)
    arrays = load_file(str(bundle / "scores.safetensors"))
    arrays["indices"] = arrays["indices"].copy()
    arrays["indices"][-1] = 10**6
    save_file(arrays, str(bundle / "scores.safetensors"))
    with_version(bundle, "forged")
    with pytest.raises(BundleError, match="do not form a score matrix"):
        BM25Index.load(bundle)


def test_a_shard_replica_hashes_only_its_own_shard(tmp_path: Path) -> None:
    """Issue 44: loading shard 0 verifies shard 0's files (and the shared ones), not every shard's; a corrupted
    shard 1 fails whoever loads it."""
    from retrec.bundle import BundleError

    ids = [f"d{i}" for i in range(40)]
    FaissIndex.build(np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32), ids, shards=2).save(
        tmp_path / "dense")
    other = tmp_path / "dense" / "shards" / "001.faiss"
    raw = bytearray(other.read_bytes())
    raw[-1] ^= 0xFF
    other.write_bytes(bytes(raw))
    assert len(FaissIndex.load(tmp_path / "dense", shards=[0])) > 0
    for shards in ([1], None):
        with pytest.raises(BundleError, match=r"checksum mismatch for shards/001\.faiss"):
            FaissIndex.load(tmp_path / "dense", shards=shards)
