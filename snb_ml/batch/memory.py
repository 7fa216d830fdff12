"""Resident memory of this process: the per-call peak (to size CPU batches) and the run's peak.

On Linux the kernel's high-water mark (``VmHWM`` in ``/proc/self/status``) can be reset by writing
``5`` to ``/proc/self/clear_refs``, which measures one model call's peak exactly (torch's CPU tensors
are invisible to ``tracemalloc``). Elsewhere these functions return ``None`` and callers fall back to a
fixed estimate. :func:`release_free_memory` hands freed heap pages back to the system (glibc keeps them
otherwise: resident memory then grows with every large batch even though nothing is leaked).
"""

from __future__ import annotations

import ctypes
import functools
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_peak_before_reset = 0  # the high-water mark is per process; resets must not lose the run's peak


def _status(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def resident() -> int | None:
    """Resident memory of this process now, in bytes (``None`` where unknown)."""
    return _status("VmRSS:")


def start_peak_measurement() -> int | None:
    """Reset the high-water mark to the current resident size; return that size (``None``: unsupported)."""
    global _peak_before_reset
    before = _status("VmHWM:")
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    _peak_before_reset = max(_peak_before_reset, before or 0)
    return resident()


def peak_since_start() -> int | None:
    """Highest resident size since :func:`start_peak_measurement`, in bytes."""
    return _status("VmHWM:")


def peak_resident() -> int:
    """Highest resident size of this process so far, in bytes (resets above included)."""
    peak = max(_peak_before_reset, _status("VmHWM:") or 0)
    if peak:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return maxrss if sys.platform == "darwin" else maxrss * 1024


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Return freed heap memory to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
