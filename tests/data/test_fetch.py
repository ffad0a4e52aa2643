"""`retrec data fetch` against a local HTTP server the test starts (issue 45, acceptance 3): a correct archive
installs and `--data NAME` finds it; a wrong checksum and a truncated download leave nothing half-written and exit 2
with the reason; a broken download resumes; no server is a clear error. Never the internet."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from retrec.data.fetch import MARKER

RETREC = str(Path(sys.executable).with_name("retrec"))


def _archive() -> bytes:
    """A BEIR-style zip: tiny/corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny/corpus.jsonl", "\n".join(
            f'{{"_id": "d{i}", "title": "", "text": "vitamin c {i} scurvy"}}' for i in range(20)) + "\n")
        z.writestr("tiny/queries.jsonl", '{"_id": "q1", "text": "vitamin c"}\n')
        z.writestr("tiny/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td3\t1\n")
        z.writestr("tiny/padding.bin", bytes(range(256)) * 400)  # large enough to cut in the middle
    return buf.getvalue()


ARCHIVE = _archive()


class Handler(BaseHTTPRequestHandler):
    cut_at: ClassVar[int | None] = None  # the next full GET sends this many bytes, then closes
    requests: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        Handler.requests.append(self.headers.get("Range"))
        body, status = ARCHIVE, 200
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            body, status = ARCHIVE[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.cut_at is not None and status == 200:
            self.wfile.write(body[:Handler.cut_at])
            Handler.cut_at = None
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Handler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/tiny.zip"
    httpd.shutdown()


def _fetch(url: str, cache: Path, digest: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([RETREC, "data", "fetch", "tiny", "--url", url, "--sha256", digest, "--inner", "tiny",
                           *extra], capture_output=True, text=True, env={**_env(), "RETREC_DATA": str(cache)})


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "RETREC_DATA"}


def test_a_correct_archive_installs_and_data_name_finds_it(server: str, tmp_path: Path) -> None:
    done = _fetch(server, tmp_path, hashlib.sha256(ARCHIVE).hexdigest())
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "tiny"
    assert {p.name for p in folder.iterdir()} >= {"corpus.jsonl", "queries.jsonl", "qrels", MARKER}
    assert not (tmp_path / ".downloads" / "tiny.part").exists()
    evaluated = subprocess.run([RETREC, "eval", "--data", "tiny", "--retriever", "bm25", "--json"],
                               capture_output=True, text=True, env={**_env(), "RETREC_DATA": str(tmp_path)},
                               cwd=tmp_path / "..")
    assert evaluated.returncode == 0 and '"nDCG@10"' in evaluated.stdout, evaluated.stderr
    again = _fetch(server, tmp_path, hashlib.sha256(ARCHIVE).hexdigest())
    assert again.returncode == 0 and len(Handler.requests) == 1  # already there: not downloaded again


def test_a_wrong_checksum_leaves_nothing_and_exits_2(server: str, tmp_path: Path) -> None:
    done = _fetch(server, tmp_path, "0" * 64)
    assert done.returncode == 2 and "sha256" in done.stderr and "nothing was unpacked" in done.stderr
    assert not (tmp_path / "tiny").exists() and not (tmp_path / ".downloads" / "tiny.part").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny")]


def test_a_truncated_download_exits_2_then_resumes(server: str, tmp_path: Path) -> None:
    Handler.cut_at = len(ARCHIVE) // 2
    first = _fetch(server, tmp_path, hashlib.sha256(ARCHIVE).hexdigest())
    assert first.returncode == 2 and "resume" in first.stderr, first.stderr
    assert not (tmp_path / "tiny").exists()
    assert (tmp_path / ".downloads" / "tiny.part").stat().st_size == len(ARCHIVE) // 2
    second = _fetch(server, tmp_path, hashlib.sha256(ARCHIVE).hexdigest())
    assert second.returncode == 0, second.stderr
    assert Handler.requests == [None, f"bytes={len(ARCHIVE) // 2}-"]  # the rest only
    assert (tmp_path / "tiny" / "corpus.jsonl").is_file()


def test_no_server_is_one_clear_error(tmp_path: Path) -> None:
    done = _fetch("http://127.0.0.1:9/tiny.zip", tmp_path, "0" * 64)
    assert done.returncode == 2 and "offline?" in done.stderr and "Traceback" not in done.stderr


def test_an_archive_member_outside_the_folder_is_refused(tmp_path: Path) -> None:
    from retrec.data.errors import DataError
    from retrec.data.fetch import Source, _unpack

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("tiny/../../escape.txt", "x")
    with pytest.raises(DataError, match="outside the folder"):
        _unpack(bad, tmp_path / "out", Source("file://bad.zip", "0" * 64, "sha256", inner="tiny"), "tiny")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "out").exists()


def test_an_unfetched_known_name_says_how_to_fetch_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrec.data.beir import load_retrieval_data
    from retrec.data.errors import DataError

    monkeypatch.setenv("RETREC_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="retrec data fetch nfcorpus"):
        load_retrieval_data("nfcorpus")
