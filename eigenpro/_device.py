"""Device, dtype and memory-budget resolution.

Every other module receives an already resolved :class:`torch.device` and
:class:`torch.dtype`; this is the only place that interprets the user's
``device=``, ``dtype=`` and ``memory_gb=`` parameters.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["resolve_device", "resolve_dtype", "available_memory_bytes", "resolve_memory_budget"]

_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "single": torch.float32,
    "double": torch.float64,
}


def resolve_device(
    device: str | torch.device | None = "auto", *, fallback: bool = False
) -> torch.device:
    """Turn a user's ``device`` parameter into a :class:`torch.device`.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "cuda:N", "mps"}, torch.device or None
        ``"auto"`` (or None) picks the first CUDA device when one is available, else the CPU.
    fallback : bool, default=False
        When the requested accelerator is not available, warn and return the CPU instead of
        raising. Used at prediction time, so that a model fitted on a GPU still predicts on a
        CPU-only machine.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the string is not a device name, or the device is unavailable (``fallback=False``).
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(
            f"device must be 'auto', a device name such as 'cpu' or 'cuda:0', or a torch.device; "
            f"got {type(device).__name__}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device name ({exc})") from None

    problem = None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            problem = "CUDA is not available on this machine"
        elif dev.index is not None and dev.index >= torch.cuda.device_count():
            problem = f"only {torch.cuda.device_count()} CUDA device(s) are visible"
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            problem = "MPS is not available on this machine"
    elif dev.type != "cpu":
        problem = f"device type {dev.type!r} is not supported (use 'cpu', 'cuda' or 'mps')"
    if problem is None:
        return dev
    if fallback:
        warnings.warn(f"device={device!r} requested but {problem}; using the CPU.", stacklevel=3)
        return torch.device("cpu")
    raise ValueError(f"device={device!r}: {problem}.")


def resolve_dtype(dtype) -> torch.dtype:
    """Turn ``"float32"``, ``"float64"``, a numpy or a torch floating dtype into a torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float64):
            return dtype
    elif isinstance(dtype, str):
        if dtype in _DTYPES:
            return _DTYPES[dtype]
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = None
        if name in _DTYPES:
            return _DTYPES[name]
    raise ValueError(
        f"dtype must be 'float32' or 'float64' (a string, numpy or torch dtype); got {dtype!r}"
    )


def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` in bytes: free GPU memory, or available host RAM for the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # other POSIX systems
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def resolve_memory_budget(memory_gb: float | str, device: torch.device) -> int:
    """Memory budget in bytes for the solver's working set.

    ``"auto"`` takes 80% of the free GPU memory, or half of the available host RAM capped at
    16 GiB on the CPU (the CPU is shared with the rest of the user's process). A number is
    taken as gigabytes (GiB).
    """
    if isinstance(memory_gb, str):
        if memory_gb != "auto":
            raise ValueError(f"memory_gb must be 'auto' or a positive number; got {memory_gb!r}")
        free = available_memory_bytes(device)
        if device.type == "cuda":
            return int(0.8 * free)
        return int(min(0.5 * free, 16 * 1024**3))
    if not np.isfinite(memory_gb) or memory_gb <= 0:
        raise ValueError(f"memory_gb must be 'auto' or a positive number; got {memory_gb!r}")
    return int(memory_gb * 1024**3)


#: One core's private cache assumed where the operating system reports none (the L2 of
#: current x86 and ARM server cores is 1-2 MiB).
DEFAULT_PRIVATE_CACHE_BYTES = 2**20
_SYS_CPU = Path("/sys/devices/system/cpu")


@functools.lru_cache(maxsize=1)
def private_cache_bytes() -> int:
    """Bytes of the largest data cache private to one core (the L2 on current CPUs), as
    Linux reports it for CPU 0; :data:`DEFAULT_PRIVATE_CACHE_BYTES` where it cannot be read.

    A cache counts as private when only the core's own hardware threads share it. The shared
    last-level cache is left out on purpose: on a cloud machine, other tenants evict it.
    """
    try:
        siblings = (_SYS_CPU / "cpu0/topology/thread_siblings_list").read_text().strip()
        best = 0
        for index in (_SYS_CPU / "cpu0/cache").glob("index*"):
            kind = (index / "type").read_text().strip()
            shared = (index / "shared_cpu_list").read_text().strip()
            if kind == "Instruction" or shared not in ("0", siblings):
                continue
            best = max(best, _parse_size((index / "size").read_text().strip()))
        return best or DEFAULT_PRIVATE_CACHE_BYTES
    except (OSError, ValueError):
        return DEFAULT_PRIVATE_CACHE_BYTES


def _parse_size(text: str) -> int:
    """'1024K' -> 1048576 (sysfs cache sizes)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text and text[-1].upper() in units:
        return int(text[:-1]) * units[text[-1].upper()]
    return int(text)
