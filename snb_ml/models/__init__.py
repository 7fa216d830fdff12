"""Charge-aware and multi-fidelity MACE models for defects.

Public API:

- ``CHARGE_MODES`` / ``DEFAULT_CHARGE_MODE``: ``("site", "global", "intensive")`` / ``"site"``.
- :func:`defect_markers`: 1.0 on atoms within a marker radius of the defect site, else 0.0.
- :func:`annotate_atoms`: write ``info["charge"]`` and the per-atom charge feature a model reads.
- :func:`charge_embedding_specs`: MACE ``embedding_specs`` for a mode (also for ``mace_run_train``).
- :func:`detect_charge_mode`: the mode of a loaded MACE model, or ``None`` if charge-blind.
- :func:`build_charge_aware_mace`: a fresh ``ScaleShiftMACE`` with a charge embedding.
- :func:`graft_charge_embedding`: add a zero-initialised charge embedding to a trained MACE model,
  reproducing its energies and forces exactly for every charge until it is fine-tuned.
- :func:`add_readout_heads`: give a single-head model several readout heads (e.g. PBE and HSE)
  sharing the body, each starting as a copy of the original readout.
- :func:`vacancy_supercell` / :func:`charge_energy_differences`: check that ``E(q) - E(q')`` of a
  model does not depend on the supercell size.
"""

from snb_ml.models.charge import (
    CHARGE_INFO_KEY,
    CHARGE_MODES,
    DEFAULT_CHARGE_MODE,
    GLOBAL_KEY,
    INTENSIVE_KEY,
    MARKER_RADIUS_FACTOR,
    SITE_INFO_KEY,
    SITE_KEY,
    annotate_atoms,
    bulk_bond_length,
    charge_embedding_specs,
    defect_markers,
    detect_charge_mode,
)
from snb_ml.models.diagnostics import charge_energy_differences, vacancy_supercell
from snb_ml.models.mace_charge import (
    add_readout_heads,
    build_charge_aware_mace,
    graft_charge_embedding,
    mace_hyperparameters,
)

__all__ = [
    "CHARGE_INFO_KEY",
    "CHARGE_MODES",
    "DEFAULT_CHARGE_MODE",
    "GLOBAL_KEY",
    "INTENSIVE_KEY",
    "MARKER_RADIUS_FACTOR",
    "SITE_INFO_KEY",
    "SITE_KEY",
    "add_readout_heads",
    "annotate_atoms",
    "build_charge_aware_mace",
    "bulk_bond_length",
    "charge_embedding_specs",
    "charge_energy_differences",
    "defect_markers",
    "detect_charge_mode",
    "graft_charge_embedding",
    "mace_hyperparameters",
    "vacancy_supercell",
]
