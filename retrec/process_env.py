"""Process-wide defaults set wherever retrec starts work.

Offline by default (no model-hub lookups), no Ray usage reporting, and thread pools of
torch / ONNX Runtime / FAISS / BLAS capped to the CPUs this process was actually given
(affinity mask and cgroup quota), so that replicas sharing a machine do not oversubscribe it.
Also the one place that names retrec's cache folder.

Example::

    configure_process()            # at the start of a command, a test session or a Ray worker
    cache_dir() / "embeddings"     # ~/.cache/retrec/embeddings unless RETREC_CACHE is set
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys
from pathlib import Path

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cache_dir() -> Path:
    """retrec's cache root: ``$RETREC_CACHE``, else ``~/.cache/retrec`` (exported models, corpus encodings)."""
    value = os.environ.get("RETREC_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "retrec"


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, further limited by a cgroup v2 quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota_file = Path("/sys/fs/cgroup/cpu.max")
    try:
        quota, period = quota_file.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


UNIX_SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path on Linux (sun_path less its terminating NUL)
# The longest socket path Ray makes under its temp root: a session folder named by date, microseconds and pid.
_RAY_SOCKET = os.path.join("ray", "session_2026-12-31_23-59-59_999999_4194304", "sockets", "plasma_store")


def ray_temp_root(environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """A shorter root for Ray's temp folder when the default would not fit its sockets, else None.

    Ray puts its sockets under ``$RAY_TMPDIR``, else ``$TMPDIR`` (on Linux), else ``/tmp``, and refuses to start
    when a socket's path exceeds the Unix limit of 107 bytes, which a ``TMPDIR`` of 40 characters or more
    already does. Then this returns ``/tmp`` (Ray's own default). An explicit ``RAY_TMPDIR`` always wins.

    >>> ray_temp_root({"TMPDIR": "/tmp"}) is None
    True
    >>> ray_temp_root({"TMPDIR": "/home/ci/" + "a-long-build-folder/" * 3 + "tmp"})
    '/tmp'
    """
    if "RAY_TMPDIR" in environ:
        return None
    root = environ.get("TMPDIR") if sys.platform.startswith("linux") else None
    if not root or len(os.fsencode(os.path.join(root, _RAY_SOCKET))) <= UNIX_SOCKET_PATH_MAX:
        return None
    return "/tmp"


def configure_process(threads: int | None = None) -> int:
    """Apply offline/telemetry defaults and cap thread pools; returns the thread count used.

    Environment variables already set by the user win. Libraries that are already imported
    get their thread pools capped directly. A ``TMPDIR`` too long for Ray's sockets gets Ray a
    short temp root (:func:`ray_temp_root`).
    """
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    short = ray_temp_root()
    if short is not None:
        os.environ["RAY_TMPDIR"] = short
    threads = threads or int(os.environ.get("RETREC_NUM_THREADS", 0)) or available_cpus()
    for key in _THREAD_VARS:
        os.environ.setdefault(key, str(threads))
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(threads)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(threads)
    return threads


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


_DEFAULT_MMAP_MAX = 65536  # glibc's defaults, restored by keep_freed_memory(False)
_DEFAULT_TRIM_THRESHOLD = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        for name in ("mallopt", "malloc_trim"):  # glibc's; absent from other C libraries
            getattr(libc, name)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(keep: bool = True) -> bool:
    """Make glibc's malloc serve every block from its heap and keep freed memory for reuse (``keep=False``:
    glibc's defaults again).

    A training step allocates and frees gigabytes of activations; by default glibc maps each large block with
    ``mmap`` and unmaps it on ``free``, so every step faults all of it in again: ~30 million page faults and a
    sixth of the CPU time in the kernel over 8 dense steps, 1.43-1.47x slower steps on 2 cores
    (benchmarks/RESULTS.md). With mmap and trimming off, the memory of one step serves the next, and the heap
    keeps its peak and fragments (4.0 GiB instead of 2.4 at 100,000 judgements): pair it with
    :func:`release_freed_memory` above a ceiling, as the training loop does. The setting is process-wide and
    stays until ``keep_freed_memory(False)``. Returns False where the C library is not glibc (nothing changes).
    """
    libc = _libc()
    if libc is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if keep else (_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    return bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))


def release_freed_memory() -> bool:
    """Return the free pages of glibc's heaps to the system (``malloc_trim``); False where not glibc."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)  # its result only says whether anything was released
    return True


def resident_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; 0 where unavailable)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class FreedMemoryKept:
    """``with FreedMemoryKept(ceiling_gb=3.0) as memory: ... memory.after_step()``: from the end of the first step
    on, glibc keeps freed memory for reuse (:func:`keep_freed_memory`); past ``ceiling_gb`` of resident memory at a
    step's end its free pages go back to the system (``trims`` counts them); leaving the block restores glibc's
    defaults and returns the free pages. ``keep=False`` or a C library that is not glibc (``available``) make it
    a no-op.

    From the second step: the first allocates what lives for the whole run (the optimizer's state) under glibc's
    defaults, outside the kept heap. What bounds the kept heap is the size of the blocks a step frees and asks for
    again: with a dense step's documents in passes of 16 the first kept step spread to 3.7-4.3 GiB at 100,000
    judgements (later steps 2.5-2.7); in passes of 8 no step passed 3.1 GiB (benchmarks/RESULTS.md).
    """

    def __init__(self, keep: bool = True, ceiling_gb: float | None = None) -> None:
        self.keep, self.ceiling = keep, int(ceiling_gb * 2**30) if ceiling_gb else 0
        self.available, self.active, self.started, self.trims = False, False, False, 0

    def __enter__(self) -> FreedMemoryKept:
        self.available = _libc() is not None
        return self

    def after_step(self) -> bool:
        """Call at the end of each step: keeps freed memory from now on (first call), or returns its free pages if
        the resident set is over the ceiling; True when it returned them."""
        if not self.started:
            self.started = True
            self.active = self.keep and self.available and keep_freed_memory(True)
            return False
        if not (self.active and self.ceiling and resident_bytes() > self.ceiling):
            return False
        self.trims += 1
        return release_freed_memory()

    def __exit__(self, *exc: object) -> None:
        if self.active:
            keep_freed_memory(False)
            release_freed_memory()
            self.active = False


LOCAL_NODE_IP = "127.0.0.1"
# Ray resolves a node address of 127.0.0.1 to the machine's routable address (then GCS, raylet and workers
# listen on every interface) unless this is "0", which makes its node address the loopback one.
RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def start_local_ray(num_cpus: int | None = None, dashboard: bool = False) -> str | None:
    """Start a one-machine Ray whose node address is 127.0.0.1, so none of its ports (GCS, raylet, object
    manager, workers, dashboard agent, runtime-env agent) listens on a routable address. Ray's token auth stays
    as Ray sets it (``RAY_AUTH_MODE``; on by default). ``dashboard``: Ray's dashboard too, bound to 127.0.0.1;
    returns its URL (else None)."""
    import ray
    from ray._private import ray_constants

    os.environ[RAY_CLUSTER_ENV] = "0"  # for processes importing Ray from now on
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already (the flag is read at import)
    context = ray.init(num_cpus=num_cpus, include_dashboard=dashboard, configure_logging=False, log_to_driver=False,
                       _node_ip_address=LOCAL_NODE_IP, **({"dashboard_host": LOCAL_NODE_IP} if dashboard else {}))
    url = getattr(context, "dashboard_url", None) if dashboard else None
    return f"http://{url}" if url and not str(url).startswith("http") else url
