"""Datasets by name: ``retrec data fetch NAME`` downloads a public collection, checks the checksum its publisher
gives, and unpacks it atomically into the data cache; ``--data NAME`` then finds it anywhere a folder is taken.

Sources (:data:`SOURCES`): the BEIR collections from UKP's mirror with the MD5 the BEIR wiki publishes, MovieLens
100k and 1M from GroupLens with the MD5 GroupLens publishes. Anything else: ``--url URL --sha256 HEX`` (or
``--md5``). Amazon Beauty in BERT4Rec's form has no published checksum, so it is not fetched by name.

- **Cache**: ``$RETREC_DATA``, else ``~/.cache/retrec/data``; a dataset is the folder ``CACHE/NAME`` (or ``--out``),
  written whole: unpacked into a hidden sibling, checked, renamed into place.
- **Resume**: the download goes to ``CACHE/.downloads/NAME.part``; a later run asks for the rest (HTTP Range).
- **Refusals** (``DataError``, exit 2 in the CLI): a checksum that differs (the partial file is removed), a
  download that ends early (kept to resume), an archive member that would land outside the folder, no network.

Example::

    path = fetch("scifact")                 # ~/.cache/retrec/data/scifact (corpus.jsonl, queries.jsonl, qrels/)
    resolve_dataset("scifact")              # the same path, for --data scifact
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from retrec.data.errors import DataError

log = logging.getLogger("retrec.data")
MARKER = ".retrec-fetch.json"  # in a fetched folder: where it came from and its checksum
UKP = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets"
GROUPLENS = "https://files.grouplens.org/datasets/movielens"


@dataclass(frozen=True)
class Source:
    url: str
    digest: str  # hex
    algorithm: str = "md5"  # the publisher's: BEIR and GroupLens publish MD5
    inner: str | None = None  # the archive's top folder whose content is the dataset

    def __post_init__(self) -> None:
        if self.algorithm not in ("md5", "sha256"):
            raise ValueError(f"checksum algorithm {self.algorithm!r}: md5 or sha256")


SOURCES: dict[str, Source] = {
    **{name: Source(f"{UKP}/{name}.zip", md5, inner=name) for name, md5 in {
        "scifact": "5f7d1de60b170fc8027bb7898e2efca1", "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
        "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9", "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
        "nq": "d4d3d2e48787a744b6f6e691ff534307", "hotpotqa": "f412724f78b0d91183a0e86805e16114",
        "msmarco": "444067daf65d982533ea17ebd59501e4"}.items()},
    "ml-100k": Source(f"{GROUPLENS}/ml-100k.zip", "0e33842e24a9c977be4e0107933c0723", inner="ml-100k"),
    "ml-1m": Source(f"{GROUPLENS}/ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906", inner="ml-1m"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("RETREC_DATA") or Path.home() / ".cache" / "retrec" / "data")


def resolve_dataset(value: str | os.PathLike[str]) -> Path:
    """``--data VALUE``: the folder or file it names, else the fetched dataset of that name, else the path as
    given (whose reader then says it is missing, with the fetch command when VALUE is a known name)."""
    path = Path(value)
    if path.exists() or os.sep in str(value) or "/" in str(value):
        return path
    cached = cache_dir() / str(value)
    if (cached / MARKER).is_file():
        return cached
    if str(value) in SOURCES:
        raise DataError(path, f"not a folder here, and dataset {value!r} is not fetched yet: run "
                              f"`retrec data fetch {value}` (cache: $RETREC_DATA or ~/.cache/retrec/data)")
    return path


def fetch(name: str, out: Path | None = None, source: Source | None = None, timeout_s: float = 60.0) -> Path:
    """Download (resuming), verify and unpack dataset ``name`` (from :data:`SOURCES`, or ``source``)."""
    if source is None:
        if name not in SOURCES:
            raise DataError(Path(name), f"unknown dataset; known: {', '.join(sorted(SOURCES))} (or give --url and "
                                        "--sha256/--md5)")
        source = SOURCES[name]
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise DataError(Path(name), "a dataset name is one plain folder name")
    target = (out or cache_dir() / name).absolute()
    marker = target / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("digest") == source.digest:
        log.info("%s: already fetched at %s", name, target)
        return target
    if target.exists() and any(target.iterdir()):
        raise DataError(target, "exists and is not this dataset's fetch; remove it or choose --out")
    part = cache_dir() / ".downloads" / f"{name}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    _download(source.url, part, timeout_s)
    digest = _digest(part, source.algorithm)
    if digest != source.digest:
        part.unlink(missing_ok=True)
        raise DataError(Path(source.url), f"{source.algorithm} {digest}, the publisher's is {source.digest}: "
                                          "the download was removed; nothing was unpacked")
    _unpack(part, target, source, name)
    part.unlink(missing_ok=True)
    log.info("%s: fetched into %s", name, target)
    return target


def _download(url: str, part: Path, timeout_s: float) -> None:
    """``url`` into ``part``, continuing a partial file with a Range request."""
    import httpx

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout_s, follow_redirects=True) as r:
            if r.status_code == 416:  # nothing left to send: the file is whole
                return
            if r.status_code not in (200, 206):
                raise DataError(Path(url), f"HTTP {r.status_code}")
            resumed = r.status_code == 206
            expected = r.headers.get("content-length")
            got = 0
            with open(part, "ab" if resumed else "wb") as f:
                for chunk in r.iter_raw():  # as received: a broken-off download keeps what came
                    f.write(chunk)
                    got += len(chunk)
            if expected is not None and got < int(expected):
                raise DataError(Path(url), f"the download ended after {have * resumed + got} bytes of "
                                           f"{have * resumed + int(expected)}; run the command again to resume")
    except httpx.HTTPError as exc:
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)) and part.exists():
            raise DataError(Path(url), f"the download broke off after {part.stat().st_size} bytes "
                                       f"({type(exc).__name__}); run the command again to resume") from None
        raise DataError(Path(url), f"cannot download ({type(exc).__name__}): offline? Fetch the file yourself "
                                   "and unpack it, or point --url at a mirror") from None


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unpack(archive: Path, target: Path, source: Source, name: str) -> None:
    """The archive's (inner folder's) files into a hidden sibling, then renamed onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            zipped = zipfile.ZipFile(archive)
        except zipfile.BadZipFile as exc:
            raise DataError(archive, f"not a zip archive ({exc})") from None
        with zipped:
            for member in zipped.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts or "\\" in member.filename:
                    raise DataError(archive, f"member {member.filename[:100]!r} would land outside the folder")
                if source.inner is not None:
                    if not parts or parts[0] != source.inner:
                        continue
                    parts = parts[1:]
                if not parts or member.is_dir():
                    continue
                dest = tmp.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not any(tmp.iterdir()):
            raise DataError(archive, f"holds no files under {source.inner!r}")
        meta: dict[str, Any] = {"name": name, "url": source.url, "algorithm": source.algorithm,
                                "digest": source.digest}
        (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
        if target.exists():
            target.rmdir()  # empty (checked by fetch)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
