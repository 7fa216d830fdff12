"""The JSON of ``snb-ml free-energy --defect`` (one defect), read back into typed results.

It holds harmonic results (:mod:`snb_ml.thermo.phonons`) and, with ``--qha``, quasi-harmonic ones
(:mod:`snb_ml.thermo.qha`), so its reader sits above both: QHA builds on the harmonic module, never the
reverse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError
from snb_ml.thermo.phonons import VibrationalFreeEnergy
from snb_ml.thermo.qha import QuasiHarmonicFreeEnergy


def load_free_energy_json(path: str | Path) -> dict[str, Any]:
    """Load a ``snb-ml free-energy`` JSON file.

    Returns:
        ``{"defect", "bulk": VibrationalFreeEnergy, "references": {element: VibrationalFreeEnergy},
        "composition_change": dict, "temperatures", "delta_free_energy": ndarray (eV),
        "qha": {name: QuasiHarmonicFreeEnergy}}`` plus the remaining metadata as stored.
    """
    try:
        data = json.loads(Path(path).read_text())
        out = dict(data)
        out["defect"] = VibrationalFreeEnergy.from_dict(data["defect"])
        out["bulk"] = VibrationalFreeEnergy.from_dict(data["bulk"])
        out["references"] = {e: VibrationalFreeEnergy.from_dict(r) for e, r in data["references"].items()}
        out["temperatures"] = np.asarray(data["temperatures"], dtype=float)
        out["delta_free_energy"] = np.asarray(data["delta_free_energy"], dtype=float)
        out["qha"] = {k: QuasiHarmonicFreeEnergy.from_dict(v) for k, v in (data.get("qha") or {}).items()}
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"{path} is not a free-energy JSON written by `snb-ml free-energy` ({exc}). Rerun that command."
        ) from exc
    return out
