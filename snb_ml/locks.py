"""Exclusive locks on output folders: one run (or loop round) at a time writes there.

The locks are OS file locks (``filelock``): a process that dies releases its lock, so nothing stale is
left for a later run to trip over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snb_ml.errors import OutputError


def acquire_lock(path: str | Path, busy: str) -> Any:
    """Take the lock at ``path`` without waiting and return it (call ``.release()`` when done).

    Args:
        path: The lock file (its folder must exist).
        busy: The error message when another process holds the lock.

    Raises:
        OutputError: ``busy``, if another process holds the lock.
        OSError: If the lock file cannot be created (a read-only or full disk).
    """
    from filelock import FileLock, Timeout  # deferred: only runs that write take a lock

    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise OutputError(busy) from exc
    return lock
