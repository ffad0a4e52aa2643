"""Model folders by name: a local sentence-transformers / Hugging Face folder, or a Hub id fetched through
``huggingface_hub`` into its cache (torch-free).

retrec runs offline by default (``HF_HUB_OFFLINE=1``, :mod:`retrec.process_env`): a Hub id then resolves only
from the cache, and one that is not there is one clear error naming the id, the cache and ``HF_HUB_OFFLINE``.
With ``HF_HUB_OFFLINE=0`` and a network, the id is downloaded once (the files an encoder needs, not every
format a repository carries) and the snapshot's commit becomes the revision the bundle records.

Example::

    model_folder("models/my-minilm")                            # a local folder, as is
    model_folder("sentence-transformers/all-MiniLM-L6-v2")      # the Hub's snapshot in ~/.cache/huggingface
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# an encoder's files: config, weights, tokenizer, sentence-transformers' pooling / normalisation modules
ENCODER_FILES = ["*.json", "*.safetensors", "vocab.txt", "*/config.json"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


class ModelNotFoundError(ValueError):
    """A model reference that is neither a local folder nor a Hub id this machine can get."""


def is_hub_id(ref: str) -> bool:
    """Whether ``ref`` reads as a Hub id (``org/name`` or ``name``) rather than a path.

    >>> is_hub_id("sentence-transformers/all-MiniLM-L6-v2"), is_hub_id("./models/x"), is_hub_id("/abs/x")
    (True, False, False)
    """
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~")) and ".." not in ref


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (retrec's default: 1)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> Path:
    """Where huggingface_hub keeps snapshots: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def model_folder(ref: str | Path, revision: str | None = None) -> Path:
    """The local folder of ``ref``: an existing folder as is, else a Hub id's snapshot (downloaded unless offline).

    Raises :class:`ModelNotFoundError` with what to do: a path that does not exist, or an id that is not cached
    while offline (or that the Hub does not have / the network does not reach).
    """
    path = Path(ref).expanduser()
    if path.exists():
        return path
    name = str(ref)
    if not is_hub_id(name):
        raise ModelNotFoundError(f"model {name[:200]!r}: no such folder (a local sentence-transformers/HF folder, "
                                 "a retrec bundle, or a Hub id such as sentence-transformers/all-MiniLM-L6-v2)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=hub_cache(), allow_patterns=ENCODER_FILES,
                                      local_files_only=offline()))
    except LocalEntryNotFoundError as exc:
        why = ("HF_HUB_OFFLINE=1 (retrec's default) and it is not in the cache" if offline()
               else "the Hub could not be reached and it is not in the cache")
        raise ModelNotFoundError(
            f"model {name!r}: not a local folder, and {why} ({hub_cache()}); download it where the network "
            f"allows with HF_HUB_OFFLINE=0, or give a local folder") from exc
    except (HfHubHTTPError, OSError) as exc:  # no such repository, gated, no network, no disk
        raise ModelNotFoundError(f"model {name!r}: not a local folder, and the Hugging Face Hub did not give it "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from exc
