"""Crash-safe file writing: write to a temporary sibling, fsync, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".snb_ml_tmp_"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success it replaces ``target`` atomically.

    A killed process leaves at most a ``.snb_ml_tmp_*`` file behind, never a half-written target;
    :func:`remove_stale_temporaries` clears those on the next run.

    Args:
        target: Final file path.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary_path, 0o644)
        os.replace(temporary_path, target)
    except OSError as exc:
        # A failed write() names no file (or only the temporary one): name the file the user knows.
        if exc.filename is None or TEMP_PREFIX in str(exc.filename):
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def write_text(target: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` to ``target``."""
    with atomic_path(target) as temporary:
        temporary.write_text(text)


def remove_stale_temporaries(directory: str | os.PathLike, names: tuple[str, ...] = ()) -> int:
    """Delete temporary files left by a killed run; return how many.

    Args:
        directory: Where to look (and below, unless ``names`` is given).
        names: Only the temporaries of these target file names directly in ``directory`` (for a
            folder another process may be writing other files into).
    """
    directory = Path(directory)
    if names:
        stale_files = [p for name in names for p in directory.glob(f"{TEMP_PREFIX}{name}.*")]
    else:
        stale_files = list(directory.rglob(f"{TEMP_PREFIX}*"))
    for stale in stale_files:
        stale.unlink(missing_ok=True)
    return len(stale_files)
