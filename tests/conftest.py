from __future__ import annotations

import os
from pathlib import Path

import pytest

from retrec.data.synthetic import SyntheticConfig, write_default_dataset
from retrec.process_env import configure_process

# The suite asserts on the CLI's plain output; a runner's environment must not turn on terminal features. Typer
# and rich read these once, at import (nothing above imports them; test modules do, later): GITHUB_ACTIONS,
# FORCE_COLOR, PY_COLORS and TTY_COMPATIBLE switch on colour and live bars, TERMINAL_WIDTH and COLUMNS re-wrap
# help texts and tables.
for _var in ("FORCE_COLOR", "PY_COLORS", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERMINAL_WIDTH", "COLUMNS"):
    os.environ.pop(_var, None)
os.environ["_TYPER_FORCE_DISABLE_TERMINAL"] = "1"
configure_process()

# the tests' text is pseudo-words (nothing a pretrained model knows; the figures tests assert were set on it);
# `retrec data default` and the demo write the English variant (tests/data/test_synthetic.py checks it)
PSEUDO = SyntheticConfig(language="pseudo")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """Path of a real dataset in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real dataset {name!r} not found at {path} (only present on the project's machines)")
    return path


@pytest.fixture(scope="session")
def default_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default dataset (its pseudo-word text), written once per test session."""
    return write_default_dataset(tmp_path_factory.mktemp("default-data"), PSEUDO)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = SyntheticConfig(docs=300, queries_train=40, queries_test=30, users=150, items=400, genres=10,
                          language="pseudo")
    return write_default_dataset(tmp_path_factory.mktemp("tiny-data"), cfg)
