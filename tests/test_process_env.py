from __future__ import annotations

from pathlib import Path

import pytest

from retrec.process_env import available_cpus, cache_dir, configure_process


def test_defaults_do_not_override_user_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = configure_process(num_threads=1)
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
