"""Learning-rate schedules shared by the training pipelines: linear warm-up, then constant / cosine / linear decay.

``progress`` is the fraction of the training budget used — time (``elapsed / max_minutes``) or steps —
so a run cut by a time budget still ends its decay when the budget does.

Example::

    for step, batch in enumerate(batches):
        lr = scheduled_lr(3e-5, step, progress=step / total, schedule="linear", warmup_steps=20)
"""

from __future__ import annotations

import math
from typing import Literal, get_args

Schedule = Literal["constant", "cosine", "linear"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def scheduled_lr(base: float, step: int, progress: float, schedule: str = "constant", warmup_steps: int = 0,
                 warmup_fraction: float = 0.0, progress_after: float | None = None) -> float:
    """Learning rate at optimizer ``step`` (0-based) with ``progress`` ∈ [0, 1] of the budget used before it.

    Warm-up is linear over ``warmup_steps`` steps and/or over the first ``warmup_fraction`` of the budget's
    progress (time or steps, whichever runs out first: a run cut by its time budget warms up over its first
    minutes, not over steps it will never reach), measured at ``progress_after`` (the progress once this step
    is done; default ``progress``) so that the first step learns a little rather than nothing.
    """
    check_schedule(schedule)
    p = min(max(progress, 0.0), 1.0)
    lr = base * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else base
    if warmup_fraction > 0:
        lr *= min(1.0, (p if progress_after is None else progress_after) / warmup_fraction)
    if schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "linear":
        lr *= 1.0 - p
    return lr


def budget_progress(seconds: float, max_minutes: float | None, steps_done: float, total_steps: float) -> float:
    """Fraction of the budget used: the larger of the time and step fractions (time only counts when set)."""
    by_steps = steps_done / max(total_steps, 1.0)
    return max(by_steps, seconds / (60.0 * max_minutes)) if max_minutes else by_steps
