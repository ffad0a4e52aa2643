"""``retrec serve`` as a user runs it: a real subprocess on a free 127.0.0.1 port, serving 4 clients' searches
when it is stopped by Ctrl-C (SIGINT to its process group) or ``kill`` / Kubernetes (SIGTERM to the process). It
must exit within 10 s and leave none of its Ray processes (raylet, gcs_server, ray:: workers) behind. Its
processes are told apart from other sessions' by their own ``RAY_TMPDIR`` and process tree; nothing else is
signalled."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from retrec.data.beir import load_retrieval_data
from retrec.index.bm25_index import BM25Index
from retrec.serving.launch import free_port

pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]


def _processes() -> dict[int, tuple[int, str, str, str]]:
    """pid -> (parent pid, state, program, whole command line) of every process (Linux ``/proc``). The program is
    the file name of argv[0] (``raylet`` for ``<any long path>/ray/core/src/ray/raylet/raylet --flags``): finding
    Ray's processes must not depend on how long the checkout's path is."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, IndexError):
            continue
        out[int(entry.name)] = (int(stat[1]), stat[0], Path(argv[0]).name, " ".join(argv).strip())
    return out


def _descendants(root: int) -> set[int]:
    procs, found, frontier = _processes(), set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, *_) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int], marker: str) -> dict[int, str]:
    """Those of ``pids`` still running (zombies excluded), plus any process naming ``marker`` (our temp dir):
    pid -> its program and the start of its command line."""
    return {pid: f"{program}: {cmd[:200]}" for pid, (_, state, program, cmd) in _processes().items()
            if state != "Z" and (pid in pids or marker in cmd) and pid != os.getpid()}


def _terminal_signals() -> None:
    """SIGINT as a terminal's foreground command has it. A command started in the background by a script (``cmd
    &``, as a CI runner may start the suite) inherits SIGINT ignored, and Python then installs no Ctrl-C handler:
    the server would rightly ignore the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to find the session's processes")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_retrec_serve_stops_within_10s_leaving_no_ray_process(tiny_data: Path, tmp_path: Path, how: str) -> None:
    ids, texts = load_retrieval_data(tiny_data, split="test").doc_texts()
    bundle = BM25Index.build(ids, texts).save(tmp_path / "bm25", name="bm25").path
    port = free_port()
    two = {"replicas": 2, "num_cpus": 0}  # two replicas per role, as on k8s: more for Serve to stop
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "retrec", "route_prefix": "/", "import_path": "retrec.serving.app:build_app",
                          "args": {"retrievers": {"bm25": {"index": str(bundle), "placement": "deployment",
                                                                    "shards": two}},
                                   "ingress": two, "auth": {"mode": "none"}}}]}))
    ray_tmp = tempfile.mkdtemp(prefix="rr-stop-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)  # its own local Ray
    dashboard = ["--dashboard"] if how == "sigterm" else []  # Ray's dashboard on: it must stop with the rest too
    proc = subprocess.Popen([sys.executable, "-c", "from retrec.cli import main; main()", "serve",
                             "--config", str(config), "--port", str(port), *dashboard],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                            start_new_session=True, text=True, preexec_fn=_terminal_signals)
    lines: list[str] = []
    ready = threading.Event()
    session: set[int] = set()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if ("serving at" in line and not dashboard) or "Ray dashboard:" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(300), "retrec serve did not start:\n" + "".join(lines[-30:])
        assert any(f"console: http://127.0.0.1:{port}/ui/" in line for line in lines), lines
        if dashboard:  # loopback only, and it answers
            url = next(line for line in lines if "Ray dashboard:" in line).split()[2]
            assert url.startswith("http://127.0.0.1:"), url
            assert httpx.get(url, timeout=30).status_code == 200
        session = _descendants(proc.pid)
        procs = _processes()
        programs = sorted(procs[p][2] for p in session if p in procs)
        assert "raylet" in programs, f"no raylet among {proc.pid}'s processes: {programs}"
        stop_load = threading.Event()

        def load() -> None:  # a server is stopped while it serves
            with httpx.Client(timeout=5) as c:
                while not stop_load.is_set():
                    try:
                        c.post(f"http://127.0.0.1:{port}/v1/search", json={"query": "vitamin c", "k": 5})
                    except Exception:
                        time.sleep(0.05)

        workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(2)
        started = time.monotonic()
        if how == "ctrl-c":  # what Ctrl-C in a terminal does: SIGINT to the whole foreground group
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"retrec serve still running 120 s after {how}:\n" + "".join(lines[-40:]))
        stop_load.set()
        took = time.monotonic() - started
        deadline = time.monotonic() + 2.0  # a moment for the kernel to reap what was killed at exit
        while _alive(session, ray_tmp) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _alive(session, ray_tmp)
        print(f"retrec serve stopped ({how}) in {took:.1f} s; left behind: {len(left)}")
        assert took <= 10.0, f"took {took:.1f} s to stop:\n" + "".join(lines[-40:])
        assert not left, f"Ray processes left behind: {sorted(v.split(': ')[0] for v in left.values())}: {left}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in _alive(session, ray_tmp):  # only this session's, never others'
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
