"""An EMT calculator whose answers turn NaN, to test what a diverging model leaves in the ML tree.

Used through the ``ase`` backend as ``--model nan_calc:NanEMT`` (the tests folder is on ``sys.path``).
"""

import numpy as np
from ase.calculators.emt import EMT


class NanEMT(EMT):
    """EMT that returns NaN energy and forces from its ``after + 1``-th call on."""

    def __init__(self, after: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.after = after
        self.calls = 0

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.calls += 1
        if self.calls > self.after:
            self.results["energy"] = self.results["free_energy"] = np.nan
            self.results["forces"] = np.full_like(self.results["forces"], np.nan)
