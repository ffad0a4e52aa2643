"""Reading k8s/ offline: its YAML files, the Kustomize overlays rendered here (resources, images and JSON6902
patches: the subset k8s/ uses; anything else is an error, so a new feature needs a line here), KubeRay's CRD
schemas made strict, and the ``retrec ...`` command lines inside manifests."""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CONFIGS = ROOT / "configs"
CRDS = ROOT.parent / "shared" / "k8s-crds"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayCluster": "ray.io_rayclusters.yaml"}
RAY_KINDS = frozenset(CRD_FILES)
KUSTOMIZATION = "kustomization.yaml"
Doc = dict[str, Any]


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def is_object(doc: Any) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def rel(path: Path) -> str:
    return path.relative_to(K8S).as_posix()


def yaml_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def kustomize_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S.rglob(KUSTOMIZATION))


# ---- Kustomize, the subset k8s/ uses ---------------------------------------------------------------------------
_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], key: str, *, append: bool) -> int:
    if append and key == "-":
        return len(container)
    if not key.isdigit() or int(key) > len(container) - (0 if append else 1):
        raise ValueError(f"list index {key!r} out of range ({len(container)} items)")
    return int(key)


def json_patch(doc: Doc, ops: list[dict[str, Any]]) -> Doc:
    """RFC 6902 ``add``/``replace``/``remove``/``test`` on a copy of ``doc``; a missing target raises ValueError."""
    out = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = out
        for key in parents:
            node = node[_index(node, key, append=False)] if isinstance(node, list) else node.get(key)
            if node is None:
                raise ValueError(f"{op['path']}: {key!r} does not exist")
        kind = op["op"]
        if kind == "test":
            current = node[_index(node, last, append=False)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                raise ValueError(f"{op['path']}: test failed ({current!r} != {op['value']!r})")
        elif isinstance(node, list):
            i = _index(node, last, append=kind == "add")
            if kind == "add":
                node.insert(i, copy.deepcopy(op["value"]))
            elif kind == "replace":
                node[i] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[i]
            else:
                raise ValueError(f"unsupported JSON patch op {kind!r}")
        elif isinstance(node, dict):
            if kind in ("replace", "remove") and last not in node:
                raise ValueError(f"{op['path']}: nothing to {kind}")
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            else:
                raise ValueError(f"unsupported JSON patch op {kind!r}")
        else:
            raise ValueError(f"{op['path']}: parent is not an object or a list")
    return out


def _matches(doc: Doc, target: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"].get("name")}
    unknown = set(target) - set(wanted)
    if unknown:
        raise ValueError(f"patch target keys {sorted(unknown)} are not supported by this renderer")
    return all(wanted[k] == v for k, v in target.items())


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            for container in node.get(key) or []:
                name, _, _tag = container["image"].partition(":")
                for image in images:
                    if image["name"] == name:
                        new = image.get("newName", name)
                        container["image"] = f"{new}:{image['newTag']}" if "newTag" in image else new
        for value in node.values():
            _set_images(value, images)
    elif isinstance(node, list):
        for value in node:
            _set_images(value, images)


@cache
def _render(folder: Path) -> tuple[Doc, ...]:
    spec = yaml.safe_load((folder / KUSTOMIZATION).read_text(encoding="utf-8"))
    unknown = set(spec) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{rel(folder)}: kustomization keys {sorted(unknown)} are not rendered by tests/k8s")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        docs += kustomize(path) if path.is_dir() else [d for d in yaml_docs(path) if is_object(d)]
    for patch in spec.get("patches", []):
        ops = yaml.safe_load((folder / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(
            patch["patch"])
        if not isinstance(ops, list):
            raise ValueError(f"{rel(folder)}: only JSON6902 patches (a list of operations) are rendered here")
        hits = [i for i, d in enumerate(docs) if _matches(d, patch.get("target", {}))]
        if len(hits) != 1:
            raise ValueError(f"{rel(folder)}: patch target {patch.get('target')} matches {len(hits)} resources")
        docs[hits[0]] = json_patch(docs[hits[0]], ops)
    for doc in docs:
        _set_images(doc, spec.get("images", []))
    return tuple(docs)


def kustomize(folder: Path) -> list[Doc]:
    """What ``kubectl kustomize FOLDER`` renders (same documents; order and formatting aside)."""
    return copy.deepcopy(list(_render(folder.resolve())))


# ---- every Ray document: each file's, each kustomization's ----------------------------------------------------
def ray_documents() -> list[tuple[str, Doc]]:
    """``(where, doc)`` for each RayService / RayJob / RayCluster in a k8s/ file or a kustomization's output."""
    found = [(f"{rel(p)}:{d['kind']}/{d['metadata'].get('name')}", d)
             for p in yaml_files() for d in yaml_docs(p) if is_object(d) and d["kind"] in RAY_KINDS]
    for folder in kustomize_dirs():
        found += [(f"{rel(folder)}/ (kustomize):{d['kind']}/{d['metadata'].get('name')}", d)
                  for d in kustomize(folder) if d["kind"] in RAY_KINDS]
    return found


def rendered(folder: str, kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in kustomize(K8S / folder) if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def cluster(doc: Doc) -> Doc:
    return {"RayService": lambda: doc["spec"]["rayClusterConfig"], "RayJob": lambda: doc["spec"]["rayClusterSpec"],
            "RayCluster": lambda: doc["spec"]}[doc["kind"]]()


def groups(cluster_spec: Doc) -> dict[str, Doc]:
    workers = {g["groupName"]: g for g in cluster_spec.get("workerGroupSpecs", [])}
    return {"head": cluster_spec["headGroupSpec"], **workers}


def templates(cluster_spec: Doc) -> list[Doc]:
    return [g["template"] for g in groups(cluster_spec).values()]


def cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# ---- KubeRay CRDs, strict ---------------------------------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """The CRD schema with ``additionalProperties: false`` wherever properties are listed (pruning → error)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _schema(kind: str) -> Any:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text(encoding="utf-8"))
    return _strict(next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"])


def validator(kind: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    if not (CRDS / CRD_FILES[kind]).is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (only present on the project's machines)")
    return jsonschema.Draft7Validator(_schema(kind))


def crd_errors(doc: Doc) -> list[str]:
    errors = sorted(validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    return [f"{'.'.join(map(str, e.path))}: {e.message[:200]}" for e in errors]


# ---- `retrec ...` command lines -------------------------------------------------------------------------------
PLACEHOLDER = "/shell-variable"
_SUBSTITUTION = re.compile(r"\$\([^()]*\)|\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")
_OPERATOR_CHARS = ";&|(){}\n"
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def shell_commands(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell script (``;``, ``&&``, ``|``, newlines ...), shell variables and ``$(...)``
    replaced by :data:`PLACEHOLDER`; ``bash -c SCRIPT`` is followed into SCRIPT."""
    text = _SUBSTITUTION.sub(PLACEHOLDER, script.replace("\\\n", " "))
    lexer = shlex.shlex(text, posix=True, punctuation_chars=_OPERATOR_CHARS)
    lexer.whitespace = " \t\r"  # a newline ends a command, like ;
    lexer.whitespace_split = True
    lexer.commenters = "#"
    command: list[str] = []
    for token in [*lexer, ";"]:
        if not set(token) <= set(_OPERATOR_CHARS):  # a word, not an operator (; && | newline ...)
            command.append(token)
            continue
        while command and (_ASSIGNMENT.match(command[0]) or command[0] in ("exec", "time", "then", "do")):
            command.pop(0)
        if command:
            yield from argv_commands(command)
        command = []


def argv_commands(argv: list[str]) -> Iterator[list[str]]:
    if len(argv) >= 3 and Path(argv[0]).name in ("bash", "sh") and "-c" in argv[1:-1]:
        yield from shell_commands(argv[argv.index("-c", 1) + 1])
    else:
        yield argv


def retrec_args(argv: list[str]) -> list[str] | None:
    """The arguments after ``retrec`` when ``argv`` runs it, else None."""
    if argv and Path(argv[0]).name == "retrec":
        return argv[1:]
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1:3] == ["-m", "retrec"]:
        return argv[3:]
    return None


def _command_sources(node: Any, where: str) -> Iterator[tuple[str, list[str]]]:
    if isinstance(node, dict):
        argv = [*(node.get("command") or []), *(node.get("args") or [])]
        if argv and all(isinstance(a, str) for a in argv):
            for command in argv_commands(argv):
                yield f"{where}.command", command
        for key, value in node.items():
            if key not in ("command", "args", "serveConfigV2"):
                yield from _command_sources(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _command_sources(value, f"{where}[{i}]")


def retrec_invocations(doc: Doc) -> list[tuple[str, list[str]]]:
    """``(where, args)`` for each ``retrec`` command in a document: the RayJob entrypoint and every
    ``command``/``args`` (containers, probes, hooks), shell scripts included."""
    found: list[tuple[str, list[str]]] = []
    entrypoint = doc.get("spec", {}).get("entrypoint")
    if isinstance(entrypoint, str):
        found += [("spec.entrypoint", c) for c in shell_commands(entrypoint)]
    found += list(_command_sources(doc.get("spec", {}), "spec"))
    return [(where, args) for where, argv in found if (args := retrec_args(argv)) is not None]


class CommandLineError(ValueError):
    """A ``retrec`` command line the CLI would refuse (usage error), raised by :func:`parse_retrec`."""


def _usage_errors() -> tuple[type[BaseException], ...]:
    import click  # Typer < 0.20 parses with click, later versions with their own copy (typer._click)

    try:
        from typer.exceptions import TyperException
    except ImportError:
        return (click.ClickException,)
    return (click.ClickException, TyperException)


def parse_retrec(args: list[str]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parse ``retrec ARGS`` with the real Typer app's parser, running nothing: the subcommand path (e.g.
    ``("train", "dense")``) and its parsed options. An unknown command or option, a missing required option, an
    extra argument or a bad value raises :class:`CommandLineError`."""
    import typer

    from retrec.cli import app

    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    ctx: Any = None
    try:
        while True:
            group = hasattr(command, "resolve_command")
            if group and not [a for a in rest if not a.startswith("-")]:  # a group would print its help
                raise CommandLineError(f"retrec {shlex.join(args)}: a subcommand is missing")
            ctx = command.make_context(path[-1] if path else "retrec", rest, parent=ctx, resilient_parsing=False)
            if not group:
                break
            # click >= 8.2 (and Typer's copy) keep the subcommand's name in _protected_args
            protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
            name, command, rest = command.resolve_command(ctx, [*protected, *ctx.args])
            if name is None or command is None:
                raise CommandLineError(f"retrec {shlex.join(args)}: no such command")
            path.append(name)
    except _usage_errors() as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise CommandLineError(f"retrec {shlex.join(args)}: {type(exc).__name__}: {message}") from exc
    return tuple(path), dict(ctx.params)
