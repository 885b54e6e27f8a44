"""Thread pools under control: one thread count for every pool a fit calls into.

A fit runs torch's products (its OpenMP pool), numpy/scipy's BLAS and LAPACK (OpenBLAS's own
pthreads pool, which does not follow :func:`torch.set_num_threads`) and, on some builds,
MKL. Left alone, each pool keeps its own count and spins for a while after its calls, so on
a machine where other work holds a core the pools contend with it and with each other: with
one busy process beside it on 2 cores a default digits fit took 3.4 s where every pool at
one thread took 1.8 s.

:func:`thread_count` picks the count of a fit (``n_threads="auto"``: torch's count, lowered
by the CPUs other processes are running on right now); :func:`limited_threads` sets every
pool to it for the library's own calls and puts each back afterwards.

Two limits. The other processes are counted once, when the fit starts (``/proc/loadavg``'s
runnable tasks less this process's own running threads; on systems without ``/proc`` none
are counted). Torch's thread count is one setting per process: fits in several threads of
one process (joblib's threading backend) share it, and the first to start sets it.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral

import torch

__all__ = [
    "SMALL_WORK_FLOPS", "ThreadChoice", "cpus_busy_elsewhere", "fit_work", "limited_threads",
    "thread_count",
]  # fmt: skip


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count of a fit and why (the estimators' ``n_threads_`` and a verbose line)."""

    n_threads: int
    reason: str


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpus_busy_elsewhere() -> int | None:
    """How many CPUs other processes are running on now (None where it cannot be read).

    Read from the kernel's count of runnable tasks (``/proc/loadavg``), less the threads of
    this process that are running (``/proc/self/task``), so the library's own pools never
    count as load.
    """
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    own = 0
    for path in glob.glob("/proc/self/task/*/stat"):
        try:
            with open(path) as f:
                stat = f.read()
        except OSError:  # the thread ended while we looked
            continue
        own += stat[stat.rindex(")") + 2 : stat.rindex(")") + 3] == "R"
    return max(0, runnable - own)


#: Below this many floating-point operations in its largest step a fit runs on one thread:
#: its products are too small to share. Measured on 2 cores, quiet: a diabetes fit (353
#: rows, about 4e7) ran 2.2x slower on two threads than on one, a digits fit (1797 rows,
#: about 1e9) 1.2x faster.
SMALL_WORK_FLOPS = 2e8


def fit_work(n_samples: int, n_features: int, selection_rows: int = 1000) -> float:
    """Operations of a fit's largest step: the selection's eigendecomposition
    (``min(n, selection_rows)^3``) or one pass over every training point as a center
    (``n^2 (d + 16)``)."""
    s = min(n_samples, selection_rows)
    return float(max(s**3, n_samples**2 * (n_features + 16)))


def thread_count(n_threads="auto", work_flops: float | None = None) -> ThreadChoice:
    """The thread count of a fit.

    Parameters
    ----------
    n_threads : "auto" or int
        A positive number is used as given. ``"auto"``: :func:`torch.get_num_threads`
        (one per core unless ``OMP_NUM_THREADS`` or :func:`torch.set_num_threads` says
        otherwise; joblib's workers start with their share), lowered to the CPUs this
        process may use that other processes are not running on (at least one), and to
        one for work below :data:`SMALL_WORK_FLOPS`.
    work_flops : float, optional
        The size of the work (:func:`fit_work`); None: not known.

    Returns
    -------
    ThreadChoice
    """
    if isinstance(n_threads, Integral) and not isinstance(n_threads, bool):
        if n_threads < 1:
            raise ValueError(f"n_threads must be a positive integer or 'auto'; got {n_threads}")
        return ThreadChoice(int(n_threads), f"n_threads={int(n_threads)} as given")
    if n_threads != "auto":
        raise ValueError(f"n_threads must be a positive integer or 'auto'; got {n_threads!r}")
    wanted = torch.get_num_threads()
    if work_flops is not None and work_flops < SMALL_WORK_FLOPS and wanted > 1:
        return ThreadChoice(1, f"1 of torch's {wanted}: {work_flops:.2g} operations are too "
                               "few to share")  # fmt: skip
    cpus = _usable_cpus()
    busy = cpus_busy_elsewhere()
    if busy is None:
        return ThreadChoice(wanted, f"{wanted} (torch's thread count; load not readable here)")
    free = max(1, cpus - busy)
    if free >= wanted:
        return ThreadChoice(wanted, f"{wanted} (torch's thread count; {busy} of {cpus} CPUs busy)")
    return ThreadChoice(
        free, f"{free} of torch's {wanted}: other processes are running on {busy} of {cpus} CPUs"
    )


_lock = threading.Lock()
_depth = 0
_restore: list = []
_controller = None


def _thread_pools():
    """threadpoolctl's view of the BLAS and OpenMP libraries loaded (built once, lazily:
    listing them walks the loaded shared objects)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@contextmanager
def limited_threads(n_threads: int) -> Iterator[int]:
    """Run the enclosed calls with every thread pool (torch's, and each BLAS and OpenMP
    library threadpoolctl finds) at ``n_threads``; every pool is put back on exit.

    Nested and concurrent uses inside one process share the outermost setting (torch's
    count is one per process); the last to leave restores the pools.

    Examples
    --------
    >>> import torch
    >>> from eigenpro.threads import limited_threads
    >>> before = torch.get_num_threads()
    >>> with limited_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    global _depth
    if not (isinstance(n_threads, Integral) and n_threads >= 1):
        raise ValueError(f"n_threads must be a positive integer; got {n_threads!r}")
    with _lock:
        if _depth == 0:
            previous = torch.get_num_threads()
            limits = _thread_pools().limit(limits=int(n_threads))
            torch.set_num_threads(int(n_threads))
            _restore[:] = [previous, limits]
        _depth += 1
    try:
        yield torch.get_num_threads()
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                previous, limits = _restore
                limits.restore_original_limits()
                torch.set_num_threads(previous)
                _restore.clear()
