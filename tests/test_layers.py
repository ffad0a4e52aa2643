"""House order: lower layers never import higher ones, serving stays torch-free, modules stay small.

Layers (a module may import its own layer and the ones below it, never above):

    0  data, atomic, bundle, process_env, kinds,      (kinds names loaders as "module:attr" strings only;
       console, contracts, csr                        contracts holds the Protocols of the hooks' products)
    1  tables, events                                 (collisionless ID tables; the event log)
    2  runtime                                        (torch-free inference, count models, the semantic-ID trie)
    3  models, index                                  (training must tokenise and post-process as inference does)
    4  pipelines, serving
    5  cli (the demo, ``retrec/cli/demo.py``, drives the whole stack end to end as a command does)

Inside pipelines/, the text trainers (``pipelines/train/text``) and the sequence trainers (``pipelines/train/seq``)
never import each other (:data:`FORBIDDEN`): what both need sits in ``pipelines/train`` (the loop, options, lr
schedule) or lower. Every import statement counts, at module level or inside a function (lazy imports), and under
``TYPE_CHECKING`` too; loader strings ("module:attr") are not imports. A module under retrec/ that no entry maps
fails the test, so a new top-level package has to declare its layer here.

The package root (``retrec/__init__.py``) runs before any submodule is imported, so it is layer 0 (modules take the
version from ``retrec.version``, never from the root) and its module-level imports must be layer 0; as the public
API facade it may reach higher layers only lazily, inside a function (``def load(path): from retrec.api import ...``).

No import cycle either, however lazy: two modules that need each other share code that belongs in a third, below
both (:func:`import_cycles`).

Example::

    PYTHONPATH=$PWD python -m pytest -q tests/test_layers.py
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "retrec"
MAX_LINES = 400  # the house rule

ROOT_LAYER = 0  # retrec/__init__.py itself (exact name only); its lazy imports inside functions are not limited

# Longest matching dotted prefix wins.
LAYERS: dict[str, int] = {
    "retrec.data": 0,
    "retrec.atomic": 0,
    "retrec.bundle": 0,
    "retrec.process_env": 0,
    "retrec.version": 0,
    "retrec.kinds": 0,
    "retrec.extras": 0,
    "retrec.console": 0,
    "retrec.contracts": 0,
    "retrec.csr": 0,
    "retrec.tables": 1,
    "retrec.events": 1,
    "retrec.runtime": 2,
    "retrec.models": 3,
    "retrec.index": 3,
    "retrec.pipelines": 4,
    "retrec.serving": 4,
    "retrec.cli": 5,
    "retrec.api": 5,
    "retrec.notebook": 5,
}

# Upward imports that are allowed, each with its reason: (importing module prefix, imported module) -> reason.
# Empty: shared code sits in the lower layer that both sides use. Keep it so.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

# Direct imports that these packages must never make (whatever their layers would allow).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "retrec.serving": ("torch", "retrec.models", "retrec.pipelines"),  # serving never imports torch or training code
    "retrec.runtime": ("torch",),  # the inference runtime is torch-free
    "retrec.pipelines.train.text": ("retrec.pipelines.train.seq",),  # families share through train/, not each other
    "retrec.pipelines.train.seq": ("retrec.pipelines.train.text",),
}


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root`` (a package directory)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _match(name: str, table: dict[str, int] | dict[str, tuple[str, ...]]) -> str | None:
    """The longest key of ``table`` that is ``name`` or a dotted prefix of it."""
    best = None
    for key in table:
        if (name == key or name.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    return best


def layer_of(name: str) -> int | None:
    """The layer of a dotted module name under retrec, None when no entry maps it."""
    if name == "retrec":
        return ROOT_LAYER
    key = _match(name, LAYERS)
    return None if key is None else LAYERS[key]


def imports_of(name: str, path: Path, known: set[str], *, nested: bool = True) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import statement in the file (with ``nested``: inside functions too).

    ``from a.b import c`` yields ``a.b.c`` when that is a known module, else ``a.b``; relative imports are
    resolved against the importing module's package.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    nodes = list(ast.walk(tree))
    if not nested:
        nodes = []
        todo: list[ast.AST] = [tree]
        while todo:  # everything except the bodies of functions (and lambdas)
            node = todo.pop()
            nodes.append(node)
            todo.extend(c for c in ast.iter_child_nodes(node)
                        if not isinstance(c, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))
    for node in nodes:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.append((node.lineno, sub if sub in known else module))
    return found


def upward_imports(files: dict[str, Path]) -> list[str]:
    """One line per import of a higher layer (not allow-listed), and per module that maps to no layer."""
    known = set(files)
    problems = []
    for name, path in files.items():
        src_layer = layer_of(name)
        if src_layer is None:
            problems.append(f"{path}: module {name} maps to no layer (add it to LAYERS in tests/test_layers.py)")
            continue
        for line, target in imports_of(name, path, known, nested=name != "retrec"):
            dst_layer = layer_of(target)
            if not target.startswith("retrec") or dst_layer is None or dst_layer <= src_layer:
                continue
            if any(name.startswith(src) and target == dst for src, dst in ALLOWED_UPWARD):
                continue
            problems.append(f"{path}:{line}: {name} (layer {src_layer}) imports {target} (layer {dst_layer})")
    return problems


def forbidden_imports(files: dict[str, Path]) -> list[str]:
    """One line per direct import that :data:`FORBIDDEN` rules out."""
    known = set(files)
    problems = []
    for name, path in files.items():
        key = _match(name, FORBIDDEN)
        if key is None:
            continue
        for line, target in imports_of(name, path, known):
            for banned in FORBIDDEN[key]:
                if target == banned or target.startswith(banned + "."):
                    problems.append(f"{path}:{line}: {name} imports {target} ({key} must never import {banned})")
    return problems


def test_lower_layers_never_import_higher_ones() -> None:
    problems = upward_imports(module_files())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_serving_and_runtime_stay_torch_free() -> None:
    problems = forbidden_imports(module_files())
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_no_module_over_the_line_limit() -> None:
    too_long = [
        f"{path}: {n} lines"
        for path in sorted(ROOT.rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(too_long)


def test_allow_list_entries_are_still_needed() -> None:
    """An allow-list entry that no import uses any more must be removed, so the list cannot go stale."""
    files = module_files()
    known = set(files)
    used = set()
    for name, path in files.items():
        for _, target in imports_of(name, path, known):
            used.update((src, dst) for src, dst in ALLOWED_UPWARD if name.startswith(src) and target == dst)
    assert set(ALLOWED_UPWARD) <= used, f"stale allow-list entries: {sorted(set(ALLOWED_UPWARD) - used)}"


def test_checker_sees_nested_relative_and_from_imports(tmp_path: Path) -> None:
    """The checks themselves: a lazy import in a function, a relative import and ``from pkg import module``."""
    pkg = tmp_path / "retrec"
    for sub in ("data", "index", "serving"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("def load():\n    from retrec.index import faiss_index\n")  # lazy: allowed
    (pkg / "index" / "faiss_index.py").write_text("X = 1\n")
    (pkg / "data" / "lazy.py").write_text("def f():\n    from retrec.index import faiss_index\n")
    (pkg / "data" / "rel.py").write_text("from ..index.faiss_index import X\n")
    (pkg / "data" / "fine.py").write_text("from . import lazy\nimport numpy\n")
    (pkg / "serving" / "bad.py").write_text("import torch.nn\n")
    files = module_files(pkg)
    problems = upward_imports(files)
    assert len(problems) == 2, problems
    assert any("retrec.data.lazy (layer 0) imports retrec.index.faiss_index (layer 3)" in p for p in problems)
    assert any(p.startswith(f"{pkg / 'data' / 'rel.py'}:1:") for p in problems)
    assert forbidden_imports(files) == [
        f"{pkg / 'serving' / 'bad.py'}:1: retrec.serving.bad imports torch.nn (retrec.serving must never import torch)"
    ]
    (pkg / "__init__.py").write_text("from retrec.index import faiss_index\n")  # eager in the root: refused
    assert any(p.startswith(f"{pkg / '__init__.py'}:1: retrec (layer 0)") for p in upward_imports(module_files(pkg)))
    (pkg / "newthing.py").write_text("")  # a new top-level module must declare its layer
    assert upward_imports(module_files(pkg))[-1].endswith("module retrec.newthing maps to no layer "
                                                           "(add it to LAYERS in tests/test_layers.py)")


@pytest.mark.parametrize("name, layer", [("retrec.cli.demo", 5), ("retrec.pipelines.eval.compare", 4),
                                         ("retrec.tables.live", 1), ("retrec", 0), ("retrec.kinds", 0),
                                         ("retrec.contracts", 0), ("retrec.runtime.tokenizer", 2),
                                         ("retrec.models.splade", 3)])
def test_layer_map(name: str, layer: int) -> None:
    assert layer_of(name) == layer


def import_cycles(files: dict[str, Path]) -> list[list[str]]:
    """Every import cycle among ``files``' modules: the strongly connected components of more than one module of
    the graph of all their imports (lazy ones in functions and ``TYPE_CHECKING`` ones included: a cycle through
    them still means that shared code sits in the wrong module). Each cycle sorted; the list sorted."""
    known = set(files)
    graph = {name: {t for _, t in imports_of(name, path, known) if t in known and t != name}
             for name, path in files.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(root: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit)
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(cycles)


def test_no_import_cycle() -> None:
    cycles = import_cycles(module_files())
    assert not cycles, "import cycles (move the shared code below both):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_sees_cycles_through_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "retrec"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text("from retrec.a import two\n")
    (pkg / "a" / "two.py").write_text("def f():\n    from retrec.a.three import X\n")  # lazy
    (pkg / "a" / "three.py").write_text("from typing import TYPE_CHECKING\nX = 1\nif TYPE_CHECKING:\n"
                                        "    from retrec.a.one import Y\n")
    (pkg / "a" / "alone.py").write_text("from retrec.a import one\n")  # imports into a cycle, not part of it
    assert import_cycles(module_files(pkg)) == [["retrec.a.one", "retrec.a.three", "retrec.a.two"]]
    (pkg / "a" / "three.py").write_text("X = 1\n")
    assert import_cycles(module_files(pkg)) == []
