"""An EMT calculator that SIGKILLs its own process once, to test recovery from a dying Dask worker.

Imported by Dask worker processes through ``--model killer_calc:KillerEMT`` of the ``ase`` backend; the
``marker`` file records that the kill happened, so the retried task runs to the end.
"""

import os
import signal

from ase.calculators.emt import EMT


class KillerEMT(EMT):
    """EMT that kills its process at the ``kill_after``-th force call unless ``marker`` exists."""

    def __init__(self, marker: str, kill_after: int = 30, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker
        self.kill_after = kill_after
        self.calls = 0

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.calls += 1
        if self.calls >= self.kill_after:
            try:
                # O_EXCL: exactly one process, the first to get here, is killed.
                handle = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(handle, str(os.getpid()).encode())
            os.close(handle)
            os.kill(os.getpid(), signal.SIGKILL)
