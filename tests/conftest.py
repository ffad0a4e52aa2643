from __future__ import annotations

from pathlib import Path

import pytest

from retrec.data.synthetic import SyntheticConfig, write_default_dataset
from retrec.process_env import configure_process

configure_process()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (only present on the project's machines)")
    return path


@pytest.fixture(scope="session")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default dataset, written once per test session."""
    return write_default_dataset(tmp_path_factory.mktemp("default-data"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SyntheticConfig(docs=300, queries_train=40, queries_test=30, users=150, items=400, genres=10)
    return write_default_dataset(tmp_path_factory.mktemp("tiny-data"), cfg)
