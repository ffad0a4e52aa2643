from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrec.process_env import available_cpus, cache_dir, configure_process, ray_temp_root


def test_defaults_do_not_override_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = configure_process(threads=1)
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
    assert os.environ["OMP_NUM_THREADS"] == "1" and threads == 1
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_cache_dir_follows_retrec_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RETREC_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RETREC_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "retrec"


_FAULTS = """
import ctypes, resource, sys
import torch
from retrec.process_env import keep_freed_memory
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: count 4 KiB pages wherever huge pages are on
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for rounds in (20, 10):  # the first rounds grow the heap; the next ones are what a training step sees
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        block = torch.ones(8 << 20, dtype=torch.float64)  # 64 MiB, allocated and freed like a step's activations
        del block
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_kept_freed_memory_is_reused_without_faulting_it_in_again() -> None:
    import subprocess
    import sys

    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied, int(faults)

    applied, kept = run("keep")
    if applied != "True":
        pytest.skip("not glibc: mallopt is not available")
    _, default = run("default")
    assert default > 10 * 16_000 * 0.8  # each round faults its 64 MiB (16,384 pages) in again
    assert kept < default / 10, (kept, default)


_CEILING = """
import sys
import torch
from retrec.process_env import FreedMemoryKept, resident_bytes
mib = lambda: resident_bytes() / 2**20
with FreedMemoryKept(ceiling_gb=float(sys.argv[1])) as memory:
    assert not memory.after_step()  # the first step's end: memory is kept from now on
    if not memory.active:
        print("skip"); sys.exit()
    block = torch.ones(32 << 20, dtype=torch.float64)  # 256 MiB, freed: kept in the heap
    del block
    kept = mib()
    released = memory.after_step()
    after_step = mib()
    block = torch.ones(32 << 20, dtype=torch.float64)
    del block
print(released, round(kept - after_step), memory.trims, round(after_step - mib()))
"""


@pytest.mark.parametrize("ceiling", [0.0, 0.05])
def test_kept_memory_goes_back_past_the_ceiling_and_when_the_block_ends(ceiling: float) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _CEILING, str(ceiling)], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "skip":
        pytest.skip("not glibc: mallopt is not available")
    released, dropped, trims, dropped_on_exit = out.stdout.split()
    if ceiling:  # the process is over 50 MiB: the step's end returns the 256 MiB
        assert (released, trims) == ("True", "1") and int(dropped) > 200, out.stdout
    else:  # no ceiling: kept until the block ends, then returned
        assert (released, trims) == ("False", "0") and abs(int(dropped)) < 20, out.stdout
        assert int(dropped_on_exit) > 200, out.stdout


def test_a_tmpdir_too_long_for_ray_sockets_gets_a_short_ray_root() -> None:
    fits, long = "/tmp/" + "x" * 30, "/tmp/" + "x" * 40  # Ray's sockets need up to 68 bytes below the root
    assert ray_temp_root({"TMPDIR": "/tmp"}) is None and ray_temp_root({}) is None
    assert ray_temp_root({"TMPDIR": fits}) is None
    assert ray_temp_root({"TMPDIR": long}) == "/tmp"
    assert ray_temp_root({"TMPDIR": long, "RAY_TMPDIR": long}) is None  # the operator's explicit choice wins


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Ray reads TMPDIR on Linux only")
def test_ray_starts_from_a_process_whose_tmpdir_is_too_long_for_its_sockets(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    long = tmp_path / ("t" * 80)
    long.mkdir()
    script = ("from retrec.process_env import configure_process, start_local_ray\n"
              "configure_process(1)\nimport os, ray\nstart_local_ray(num_cpus=1)\n"
              "print('ray up under', os.environ['RAY_TMPDIR'], ray.cluster_resources()['CPU'])\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_TMPDIR", "RAY_ADDRESS")}
    env["TMPDIR"] = str(long)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "ray up under /tmp 1.0" in done.stdout, done.stderr[-2000:]
