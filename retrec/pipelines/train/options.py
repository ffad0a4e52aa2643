"""Config fields that carry their own help text and choices: one place per option of a command.

A training config is a dataclass whose fields are declared with :func:`option`; the CLI builds its
``--options`` from them (names, defaults, help, choices) and :func:`check_choices` validates any
field typed as a ``Literal`` with one message format.

Example::

    @dataclass
    class MyConfig:
        lr: float = option(1e-3, "learning rate")
        loss: Literal["ce", "sampled"] = option("ce", "ce (all items) | sampled")
        quantize: bool = option(True, "also write an int8 model", flag="--int8/--no-int8")

        def __post_init__(self) -> None:
            check_choices(self)          # ValueError: unknown loss 'x'; choose one of ce, sampled
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Literal

DEVICE_HELP = "auto (a CUDA GPU when torch sees one, else cpu) | cpu | cuda | cuda:N"
PRECISION_HELP = "auto (bf16 autocast where the hardware runs bf16 natively, else fp32) | bf16 | fp32"
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


def option(default: Any, help: str, *, flag: str | None = None) -> Any:
    """A dataclass field with its ``--help`` text (and, optionally, its own CLI flag declaration)."""
    metadata: dict[str, Any] = {"help": help}
    if flag is not None:
        metadata["flag"] = flag
    return dataclasses.field(default=default, metadata=metadata)


def field_types(config_type: type) -> dict[str, Any]:
    """Resolved type of each field of a config dataclass."""
    return typing.get_type_hints(config_type)


def choices(annotation: Any) -> tuple[str, ...] | None:
    """The allowed values of a ``Literal[...]`` type, else None."""
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def check_choices(config: Any) -> None:
    """Refuse a value outside its field's ``Literal`` choices: ``unknown lr schedule 'step'; choose one of …``; and
    a ``device`` field that is not auto, cpu, cuda or cuda:N (whether that GPU exists is the trainer's check)."""
    device = getattr(config, "device", "auto")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    types = field_types(type(config))
    for f in dataclasses.fields(config):
        allowed = choices(types[f.name])
        value = getattr(config, f.name)
        if allowed is not None and value not in allowed:
            label = f.name.replace("_", " ")
            raise ValueError(f"unknown {label} {value!r}; choose one of {', '.join(allowed)}")
