"""The package that installs: ranges in pyproject agree with the lock, extras named in messages exist,
test-only packages stay out of runtime dependencies, `retrec --version`, and a missing extra is one clear
line with exit status 2 (never a ModuleNotFoundError traceback)."""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

import retrec
import retrec.cli as cli
from retrec.extras import OPTIONAL_MODULES, missing_extra_message

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
TEST_ONLY = {"sentence-transformers", "pytest", "ruff"}
# Import names of the base dependencies (`pip install .`); anything else imported under retrec/ needs an extra.
BASE_MODULES = {"numpy", "scipy", "pyarrow", "safetensors", "bm25s", "Stemmer", "ir_measures", "typer", "rich",
                "pydantic"}


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def _reqs(specs: list[str]) -> list[Requirement]:
    return [Requirement(s) for s in specs]


def _names(specs: list[str]) -> set[str]:
    return {canonicalize_name(r.name) for r in _reqs(specs)}


def _lock(*files: str) -> dict[str, str]:
    """name -> pinned version of the lock files (following -r includes)."""
    pins: dict[str, str] = {}
    for name in files:
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("-r "):
                pins.update(_lock(line[3:].strip()))
            elif line:
                req = Requirement(line)
                (spec,) = req.specifier
                assert spec.operator == "==", f"{name}: {line!r} is not an exact pin"
                pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_metadata_license_and_entry_point() -> None:
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert PROJECT["scripts"]["retrec"] == "retrec.cli:main"
    assert PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "retrec.version.__version__"}


def test_dependencies_are_ranges_not_pins() -> None:
    for group, specs in {"dependencies": PROJECT["dependencies"], **EXTRAS}.items():
        for req in _reqs(specs):
            if req.name == "retrec":  # an extra that includes another extra
                continue
            ops = {s.operator for s in req.specifier}
            assert ">=" in ops, f"{group}: {req} needs a lower bound"
            assert not ops & {"==", "===", "~="}, f"{group}: {req} is pinned; exact pins belong in the lock files"


def test_lock_satisfies_every_range() -> None:
    """`make test` installs the lock: every range must admit it (torch 2.13.0+cpu included, so pip never swaps it)."""
    cpu_lock, gpu_lock = _lock("requirements.txt"), _lock("requirements-gpu.txt")
    checks = [(PROJECT["dependencies"], cpu_lock), (EXTRAS["cpu"], cpu_lock), (EXTRAS["train"], cpu_lock),
              (EXTRAS["test"], cpu_lock), (EXTRAS["gpu"], gpu_lock)]
    for specs, lock in checks:
        for req in _reqs(specs):
            pinned = lock.get(canonicalize_name(req.name))
            assert pinned is not None, f"{req.name} is in pyproject.toml but not in the lock files"
            assert req.specifier.contains(pinned, prereleases=True), f"lock {req.name}=={pinned} is outside {req}"
    assert Requirement(next(s for s in EXTRAS["train"] if s.startswith("torch"))).specifier.contains("2.13.0+cpu")


def test_test_only_packages_are_not_runtime_dependencies() -> None:
    runtime = _names(PROJECT["dependencies"]) | _names(EXTRAS["cpu"]) | _names(EXTRAS["gpu"]) | _names(EXTRAS["train"])
    assert not runtime & TEST_ONLY
    assert _names(EXTRAS["test"]) | _names(EXTRAS["dev"]) >= TEST_ONLY
    assert {"sentence_transformers", "pytest"}.isdisjoint(_imported_modules())


def test_cpu_and_gpu_extras_differ_only_in_their_builds() -> None:
    swap = {"faiss-cpu": "faiss-gpu", "onnxruntime": "onnxruntime-gpu"}
    cpu = {str(r).replace(r.name, swap.get(r.name, r.name), 1) for r in _reqs(EXTRAS["cpu"])}
    assert cpu == {str(r) for r in _reqs(EXTRAS["gpu"])}


def _imported_modules() -> set[str]:
    """Top-level names of every absolute import under retrec/ (module level or inside functions)."""
    names: set[str] = set()
    for path in (ROOT / "retrec").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"retrec", "__future__"}


def test_every_third_party_import_is_base_or_has_an_extra() -> None:
    unknown = _imported_modules() - BASE_MODULES - set(OPTIONAL_MODULES)
    assert not unknown, f"imported under retrec/ but neither a base dependency nor in retrec/extras.py: {unknown}"
    dists = _distributions()
    base = _names(PROJECT["dependencies"])
    for module in BASE_MODULES:
        assert {canonicalize_name(d) for d in dists[module]} & base, f"{module}: no base dependency provides it"


@pytest.mark.parametrize("module", sorted(OPTIONAL_MODULES))
def test_messages_name_extras_that_provide_the_module(module: str) -> None:
    entry = OPTIONAL_MODULES[module]
    message = missing_extra_message(ModuleNotFoundError(f"No module named {module!r}", name=module))
    assert message is not None and repr(module) in message and entry.label in message
    named = {e for group in re.findall(r"retrec\[([a-z,]+)\]", message) for e in group.split(",")}
    assert set(entry.extras) <= named and named <= set(EXTRAS), message
    if module in _distributions():  # installed here: the first extra declares one of its distributions
        provided = {canonicalize_name(d) for d in _distributions()[module]}
        assert provided & _names(EXTRAS[entry.extras[0]]), f"{module}: extra {entry.extras[0]!r} lacks {provided}"


def test_base_modules_get_no_extra_message() -> None:
    assert missing_extra_message(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None
    assert missing_extra_message(ModuleNotFoundError("x")) is None  # no name at all
    assert missing_extra_message(ModuleNotFoundError("x", name="faiss.contrib")) is not None


def test_version_option(monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(cli.app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"retrec {cli.package_version()}\n"

    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(cli, "dist_version", not_installed)
    assert cli.package_version() == retrec.__version__


def test_main_turns_a_missing_extra_into_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def needs(module: str):
        def command() -> None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return command

    monkeypatch.setattr(cli, "app", needs("onnxruntime"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ONNX Runtime is not installed") and "pip install 'retrec[cpu]'" in err
    monkeypatch.setattr(cli, "app", needs("some_base_dependency"))  # not an extra's: the real error stays
    with pytest.raises(ModuleNotFoundError):
        cli.main()


_BLOCKED_RUN = """
import contextlib, io, json, sys
BLOCKED = set(sys.argv[1].split(","))

class NotInstalled:  # behaves as if the optional modules were never installed
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled)
from retrec.cli import main
results = []
for args in json.loads(sys.argv[2]):
    sys.argv = ["retrec", *args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results), file=sys.__stdout__)
"""


def test_commands_without_extras_say_which_to_install(tiny_data: Path, tmp_path: Path) -> None:
    """The base install as a fresh process sees it: no optional module importable at all."""
    commands = [["--help"], ["--version"],
                ["eval", "--data", str(tiny_data), "--retriever", "bm25", "--json"],
                ["eval", "--data", str(tiny_data), "--retriever", "dense"],
                ["serve", "--config", str(ROOT / "configs" / "serve.yaml")],
                ["train", "bert4rec", "--data", str(tiny_data), "--out", str(tmp_path / "b4r")]]
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, ",".join(OPTIONAL_MODULES), json.dumps(commands)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    helped, version, bm25, dense, serve, train = json.loads(proc.stdout)
    assert helped["code"] == 0 and "eval" in helped["out"] and "train" in helped["out"]
    assert version["code"] == 0 and version["out"].startswith("retrec ")
    assert bm25["code"] == 0 and 0.0 < json.loads(bm25["out"].splitlines()[-1])["systems"][0]["nDCG@10"] <= 1.0
    for result in (dense, serve):
        assert result["code"] == 2 and result["err"].startswith("error: "), result
        # [cpu] for FAISS/ONNX Runtime/Ray; zero-shot dense also exports MiniLM with torch: [cpu,train]
        assert "pip install 'retrec[cpu" in result["err"] and "Traceback" not in result["err"]
    assert train["code"] == 2 and "PyTorch is not installed" in train["err"] and "'retrec[cpu,train]'" in train["err"]


def test_the_plot_extra_is_pinned_in_its_own_lock() -> None:
    """Benchmarks' figures: `pip install -c requirements.txt -c requirements-plot.txt ".[plot]"`; CI does not."""
    lock = _lock("requirements-plot.txt")
    for req in _reqs(EXTRAS["plot"]):
        assert req.specifier.contains(lock[canonicalize_name(req.name)]), f"{req} does not admit its pin"
    assert not set(lock) & set(_lock("requirements.txt")), "a plot pin repeats (or contradicts) the main lock"
