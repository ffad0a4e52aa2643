"""The registry of bundle kinds: every built-in entry resolves, names are unique, plugins register."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from retrec import kinds

ROOT = Path(__file__).resolve().parents[1]


def test_every_builtin_reference_resolves_and_is_callable() -> None:
    for k in kinds.BUILTIN:
        for ref in (k.load, k.build, k.check, k.serve, k.default_model):
            if ref is not None:
                assert callable(kinds.resolve(ref)), (k.kind, ref)


def test_builtin_contract_facts() -> None:
    assert kinds.by_eval_name("bm25").kind == kinds.BM25_INDEX
    dense = kinds.get(kinds.DENSE_INDEX)
    assert dense.needs_encoder and dense.payload == "dense"
    assert dense.encoder_kinds == (kinds.DENSE_MODEL, kinds.COMPAT_MAP)
    assert kinds.get(kinds.DENSE_MODEL).payload == dense.payload  # the encoder produces what the index searches
    assert not kinds.get(kinds.BM25_INDEX).needs_encoder
    assert {k.kind for k in kinds.by_role("recommender")} >= {kinds.BERT4REC_MODEL}
    assert "bm25" in kinds.eval_names("index") and "bert4rec" in kinds.eval_names("recommender")


def _code_strings(tree: ast.AST) -> set[str]:
    """String constants in code (docstrings, which show examples, are not code)."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def test_kind_strings_are_defined_once() -> None:
    """No module under retrec/ spells a built-in kind string in code: it imports the constant from kinds.py."""
    strings = {k.kind for k in kinds.BUILTIN}
    offenders = []
    for path in (ROOT / "retrec").rglob("*.py"):
        if path.name == "kinds.py":
            continue
        found = strings & _code_strings(ast.parse(path.read_text(encoding="utf-8")))
        offenders += [f"{path.relative_to(ROOT)}: {s}" for s in sorted(found)]
    assert not offenders, offenders


def test_unknown_names_list_what_is_known() -> None:
    with pytest.raises(kinds.UnknownKindError, match=r"known kinds: .*index/bm25"):
        kinds.get("index/nope")
    with pytest.raises(kinds.UnknownKindError, match=r"available: .*bm25"):
        kinds.by_eval_name("nope", role="index")
    with pytest.raises(kinds.UnknownKindError, match="roles"):
        kinds.by_role("teacher")


def test_malformed_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match="role/name"):
        kinds.Kind("bm25", "index", "x", payload="text")
    with pytest.raises(ValueError, match="names the payload"):
        kinds.Kind("index/x", "index", "x")
    with pytest.raises(ValueError, match="module:attr"):
        kinds.Kind("index/x", "index", "x", payload="text", load="retrec.index.bm25_index.load_index")
    with pytest.raises(ValueError, match="payload"):
        kinds.Kind("index/x", "index", "x", payload="audio")  # type: ignore[arg-type]


def test_register_refuses_clashes_and_unregister_removes() -> None:
    toy = kinds.Kind("index/test-only", "index", "x", payload="text", eval_names=("test-only",))
    kinds.register(toy)
    try:
        assert kinds.by_eval_name("test-only") is toy
        kinds.register(toy)  # the same definition again is fine (a plugin imported twice)
        with pytest.raises(ValueError, match="registered already"):
            kinds.register(kinds.Kind("index/test-only", "index", "other", payload="text"))
        with pytest.raises(ValueError, match="already name"):
            kinds.register(kinds.Kind("index/test-other", "index", "x", payload="text", eval_names=("bm25",)))
    finally:
        kinds.unregister("index/test-only")
    with pytest.raises(kinds.UnknownKindError):
        kinds.get("index/test-only")


def test_plugins_named_in_the_environment_register_in_a_fresh_process() -> None:
    code = "from retrec import kinds; print(kinds.get('index/toy-overlap').eval_names)"
    env = {"RETREC_PLUGINS": "tests.toy_kinds", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "toy" in out.stdout
    missing = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "RETREC_PLUGINS": ""},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "unknown bundle kind 'index/toy-overlap'" in missing.stderr


def test_resolve_reports_bad_references() -> None:
    with pytest.raises(ValueError, match="module:attr"):
        kinds.resolve("retrec.kinds")
    with pytest.raises(AttributeError):
        kinds.resolve("retrec.kinds:nothing_here")
    assert kinds.resolve("retrec.kinds:Kind.needs_encoder") is kinds.Kind.needs_encoder
