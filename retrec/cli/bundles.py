"""`retrec ls` and `retrec show`: the bundles and index versions under a folder, and one of them described
(kind, created, command, metrics, size; `show` verifies every file's checksum).

Example::

    retrec ls artifacts                    # every bundle under artifacts/ (two levels), current versions marked
    retrec show artifacts/scifact-bm25     # one bundle: manifest, size, checksums verified
    retrec show artifacts/scifact-bm25 --json | jq .metrics
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from retrec.bundle import MANIFEST, BundleError, load_bundle, read_manifest
from retrec.cli.common import JSON_HELP, _fail, app, print_json

MAX_DEPTH = 3  # ROOT/name/VERSION/manifest.json: a versions root's versions are found


def summary(path: Path, verify: bool = False) -> dict[str, Any]:
    """What a report says of a bundle: path, kind, name, version, created, command, metrics, files, bytes (and,
    ``verify``: every file's sha256 checked — a mismatch is a ``BundleError``)."""
    manifest = load_bundle(path) if verify else read_manifest(path)
    size = sum(entry.size for entry in manifest.files.values())
    out: dict[str, Any] = {"path": str(path), "kind": manifest.kind, "name": manifest.name,
                           "version": manifest.version, "created": manifest.created, "command": manifest.command,
                           "metrics": manifest.metrics, "files": len(manifest.files), "bytes": size}
    if verify:
        out["checksums"] = "verified"
    return out


def wrote(path: Path, as_json: bool) -> None:
    """What a command that writes a bundle reports: ``wrote PATH``, or (``--json``) its :func:`summary`."""
    if as_json:
        print_json(summary(path))
    else:
        typer.echo(f"wrote {path}")


def bundles_under(root: Path, depth: int = MAX_DEPTH) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a manifest, sorted; symlinks (a versions root's
    ``current``) are not followed, hidden folders (a publish in progress) skipped."""
    found, frontier = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in frontier:
            if (folder / MANIFEST).is_file():
                found.append(folder)
                continue  # a bundle's own sub-folders are its files
            try:
                nxt += [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
            except OSError:
                continue
        frontier = nxt
    return sorted(found)


def _current(path: Path) -> bool:
    link = path.parent / "current"
    return link.is_symlink() and link.resolve() == path.resolve()


@app.command("ls")
def ls_cmd(
    root: Annotated[Path, typer.Argument(help="a folder of bundles or index versions")] = Path("."),
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """List the bundles and index versions under ROOT: kind, name, version, created, size (a versions root's
    current version marked with *)."""
    from retrec.console import console, plain_table

    if not root.is_dir():
        raise _fail(f"{root}: not a folder")
    rows, problems = [], []
    for path in bundles_under(root):
        try:
            rows.append({**summary(path), "current": _current(path)})
        except BundleError as exc:
            problems.append({"path": str(path), "error": str(exc)})
    if as_json:
        print_json({"root": str(root), "bundles": rows, "unreadable": problems})
        return
    console.print(plain_table(["path", "kind", "version", "created", "MiB"], [
        [("* " if r["current"] else "") + r["path"], r["kind"], r["version"], r["created"],
         f"{r['bytes'] / 2**20:.1f}"] for r in rows], numeric=["MiB"]))
    for problem in problems:
        typer.secho(f"warning: {problem['error']}", err=True, fg="yellow")
    if not rows:
        typer.echo(f"no bundles under {root}", err=True)


@app.command("show")
def show_cmd(
    path: Annotated[Path, typer.Argument(help="a bundle or index version folder (or a versions root's current)")],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Describe one bundle or index version: its manifest (kind, created, command, config, metrics), size, and
    every file's checksum verified (exit 2 on a mismatch, naming the file)."""
    from retrec.console import console

    try:
        out = {**summary(path, verify=True), "config": read_manifest(path).config}
    except BundleError as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print_json(out)
        return
    for key in ("path", "kind", "name", "version", "created", "command", "files", "bytes", "checksums"):
        console.print(f"{key:<9} {out[key]}", markup=False, highlight=False)
    for key in ("metrics", "config"):
        if out[key]:
            console.print(f"{key}:", markup=False)
            for name, value in out[key].items():
                console.print(f"  {name}: {value}", markup=False, highlight=False)
