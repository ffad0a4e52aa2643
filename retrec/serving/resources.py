"""CPU/GPU facts of the replica a deployment runs in: thread counts capped to what Ray assigned.

Example::

    replica_threads()        # e.g. 1 for a replica with num_cpus=1 on a 2-core machine
    replica_threads(4)       # explicit setting wins (still capped to the machine's CPUs)
"""

from __future__ import annotations

import math

from retrec.process_env import available_cpus


def assigned_cpus() -> float | None:
    """CPUs Ray reserved for this replica (None outside a Ray worker)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))
    except Exception:  # not inside a Ray task/actor
        return None


def replica_threads(configured: int | None = None) -> int:
    """``configured``, else the CPUs assigned to this replica (at least 1), capped to the machine's CPUs."""
    cap = available_cpus()
    if configured:
        return max(1, min(configured, cap))
    cpus = assigned_cpus()
    if not cpus:
        return 1
    return max(1, min(math.floor(cpus), cap))
