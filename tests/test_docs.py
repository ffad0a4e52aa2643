"""The documentation cannot rot (issue 45): the fenced blocks of README.md and docs/*.md are checked.

- Every ``retrec ...`` command in a ```` ```bash ```` / ```` ```sh ```` block (``\\`` continuations joined, comments
  dropped, split at ``;``, ``&&``, ``||``, ``|``, ``&``) is parsed by the real CLI parser, invoking nothing
  (:func:`tests.k8s.manifests.parse_retrec`): an unknown command or option, a missing required option or a bad
  value fails with the page and line. ``python -c CODE`` compiles, ``python PATH`` / ``bash PATH`` name a file
  that exists, ``make TARGET`` a target of the Makefile.
- Every ```` ```python ```` block compiles.
- Blocks marked cheap — ``run`` after the language (```` ```bash run ````, ```` ```python run ````; GitHub highlights
  by the first word) — are executed, page by page in their order, in a scratch folder standing for the
  repository root (``configs/``, ``examples/``, ``benchmarks/`` linked in, ``../shared`` linked beside it), so
  their ``runs/...`` outputs never land in the working tree. One that reads ``../shared/data`` is skipped with
  the reason where that folder is absent.
- Repository paths in backticks (```retrec/...```, ```benchmarks/...```, ...) and relative links (with their
  ``#anchor``) point at something that exists; README.md stays short and links every page.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.k8s.manifests import CommandLineError, parse_retrec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell"}
LINKED_INTO_SCRATCH = ("configs", "examples", "benchmarks")
REPO_PATH = re.compile(r"`((?:retrec|benchmarks|tests|k8s|configs|examples|docs)/[^`\s]*)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
OPERATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}
REDIRECTS = {">", ">>", "<", "2>", "&>"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # the line of the block's first content line (1-based)
    lang: str
    run: bool
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def fenced_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = re.match(r"^(\s*)(`{3,})\s*(.*)$", lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        words = info.split()
        found.append(Block(page, i + 2, words[0].lower() if words else "", "run" in words[1:], "\n".join(body)))
        i = end + 1
    return found


def shell_commands(block: Block) -> list[tuple[int, list[str]]]:
    """(line, words) of each simple command in a shell block: continuations joined, comments, assignments
    before the command and redirections dropped."""
    commands: list[tuple[int, list[str]]] = []
    lines, i = block.text.split("\n"), 0
    while i < len(lines):
        start, logical = i, lines[i]
        while logical.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            logical = logical.rstrip()[:-1] + " " + lines[i]
        i += 1
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token not in OPERATORS:
                words.append(token)
                continue
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)
            kept, skip = [], False
            for word in words:
                if skip:
                    skip = False
                elif word in REDIRECTS:
                    skip = True
                else:
                    kept.append(word)
            if kept:
                commands.append((block.line + start, kept))
            words = []
    return commands


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return {m for line in text.splitlines() for m in re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)}


def command_problems(where: str, words: list[str]) -> list[str]:
    program, args = Path(words[0]).name, words[1:]
    if program == "retrec":
        if args and set(args) <= {"--version", "--help"}:  # the root's own options: nothing to resolve
            return []
        try:
            parse_retrec(args)
        except CommandLineError as exc:
            return [f"{where}: {exc}"]
    elif program in ("python", "python3", "bash", "sh") and args:
        if args[0] == "-c" and program.startswith("python") and len(args) > 1:
            try:
                compile(args[1], f"{where} (python -c)", "exec")
            except SyntaxError as exc:
                return [f"{where}: python -c does not compile: {exc}"]
        elif not args[0].startswith("-") and not (ROOT / args[0]).is_file():
            return [f"{where}: {program} {args[0]}: no such file in the repository"]
    elif program == "make":
        missing = [t for t in args if not t.startswith("-") and "=" not in t and t not in makefile_targets()]
        if missing:
            return [f"{where}: make {' '.join(missing)}: no such target in the Makefile"]
    return []


@pytest.mark.parametrize("doc", PAGES, ids=rel)
def test_every_command_parses_and_every_python_block_compiles(doc: Path) -> None:
    problems: list[str] = []
    for block in fenced_blocks(doc):
        if block.lang in SHELLS:
            for line, words in shell_commands(block):
                problems += command_problems(f"{rel(doc)}:{line}", words)
        elif block.lang == "python":
            try:
                compile(block.text, block.where, "exec")
            except SyntaxError as exc:
                problems.append(f"{block.where}: python block does not compile: {exc}")
    assert not problems, "\n".join(problems)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", PAGES, ids=rel)
def test_paths_and_links_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    problems = []
    for path in REPO_PATH.findall(text):
        path = path.split(":")[0].rstrip(".,;")
        if not any(c in path for c in "*{<") and not (ROOT / path).exists():
            problems.append(f"{rel(doc)}: `{path}` does not exist")
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (doc.parent / file).resolve() if file else doc
        if not resolved.exists():
            problems.append(f"{rel(doc)}: link {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{rel(doc)}: link {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_the_readme_is_short_and_maps_every_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme  # the two commands
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


RUN_PAGES = [page for page in PAGES if any(b.run for b in fenced_blocks(page))]


@pytest.mark.parametrize("doc", RUN_PAGES, ids=rel)
def test_cheap_blocks_run(doc: Path, tmp_path: Path) -> None:
    """A doc's ``run`` blocks, in order, in one scratch repository root (later blocks use what earlier ones
    wrote); a block that reads ../shared/data is left out where that folder is absent, and said so."""
    cwd = tmp_path / "main"
    cwd.mkdir()
    for name in LINKED_INTO_SCRATCH:
        (cwd / name).symlink_to(ROOT / name)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "RETREC_DATA": str(tmp_path / "data-cache"), "HF_HUB_OFFLINE": "1"}
    left_out = []
    for block in (b for b in fenced_blocks(doc) if b.run):
        assert block.lang in SHELLS | {"python"}, f"{block.where}: only shell and python blocks run"
        if "../shared/data" in block.text and not (SHARED / "data").is_dir():
            left_out.append(block.where)
            continue
        argv = (["bash", "-euo", "pipefail", "-c", block.text] if block.lang in SHELLS
                else [sys.executable, "-c", block.text])
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, (f"{block.where} exited {done.returncode}\n--- stdout\n"
                                      f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
    if left_out:
        pytest.skip(f"{', '.join(left_out)} read ../shared/data, which is not at {SHARED / 'data'} (only present "
                    "on the project's machines); the doc's other blocks ran")
