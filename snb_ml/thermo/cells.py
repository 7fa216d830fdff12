"""Cells at the ML model's own equilibrium for the phonon step.

DFT-relaxed supercells (e.g. hybrid-functional ones from doped) are usually strained for an ML model
trained on another functional: CHGNet puts CdTe at a = 6.63 Å against HSE+SOC's 6.54 Å (1.5 GPa on the
doped 64-atom bulk cell), and the harmonic formation entropy of V_Cd then comes out at about +20 k_B
instead of about -1 k_B at the model's own lattice. :func:`bulk_pressure` detects this and
:func:`scale_to_model` (``snb-ml free-energy --relax-cells``) removes it: the bulk is brought to zero
pressure by an isotropic scaling that is then applied to the defect cell too (same lattice for both),
and elemental references are relaxed in full.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError

EV_PER_A3_TO_GPA = 160.21766208
#: Bulk pressures (GPa) beyond this trigger the strained-cell warning of ``snb-ml free-energy``.
PRESSURE_WARNING_GPA = 0.5


def bulk_pressure(atoms: Atoms, calculator: Any) -> float:
    """Hydrostatic pressure (GPa, positive = compressed) of ``atoms`` with ``calculator``.

    Returns ``nan`` when the calculator gives no stress.
    """
    work = atoms.copy()
    work.calc = calculator
    try:
        stress = np.asarray(work.get_stress(voigt=True), dtype=float)
    except Exception:  # calculators without stress raise various error types
        return float("nan")
    return float(-stress[:3].mean() * EV_PER_A3_TO_GPA)


def relax_cell(
    atoms: Atoms, calculator: Any, hydrostatic: bool = False, fmax: float = 1e-3, steps: int = 500
) -> Atoms:
    """Relax positions and cell (only its volume with ``hydrostatic=True``) at zero pressure.

    Args:
        atoms: Structure (not modified).
        calculator: ASE calculator giving stresses.
        hydrostatic: Keep the cell shape, scale the volume only.
        fmax: Force (and scaled stress) threshold in eV/Å.
        steps: Maximum optimizer steps.

    Returns:
        The relaxed copy (no calculator attached).
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = calculator
    if not np.isfinite(bulk_pressure(work, calculator)):
        raise InputError(
            "--relax-cells needs stresses from the model; this calculator gives none. Relax the cells "
            "yourself and drop --relax-cells."
        )
    with warnings.catch_warnings():  # scipy's logm inside the cell filter warns at ~1e-12 error
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        BFGS(FrechetCellFilter(work, hydrostatic_strain=hydrostatic), logfile=None).run(
            fmax=fmax, steps=steps
        )
    work.calc = None
    return work


def scale_to_model(defect: Atoms, bulk: Atoms, calculator: Any) -> tuple[Atoms, Atoms, float]:
    """Scale defect and bulk cells isotropically to the model's zero-pressure bulk lattice.

    Args:
        defect: Defect supercell (same lattice as ``bulk``).
        bulk: Pristine supercell.
        calculator: ASE calculator giving stresses.

    Returns:
        ``(scaled defect, relaxed bulk, linear scale factor)``; the defect positions are scaled with its cell
        and relaxed later by the phonon step.
    """
    relaxed = relax_cell(bulk, calculator, hydrostatic=True)
    scale = float((relaxed.get_volume() / bulk.get_volume()) ** (1 / 3))
    scaled = defect.copy()
    scaled.set_cell(np.array(defect.cell) * scale, scale_atoms=True)
    return scaled, relaxed, scale


def report_pressure(pressure: float, scale: float | None, log: Any, label: str = "bulk pressure") -> None:
    """Log the bulk cell's pressure with the model and warn when a strained cell is used as given.

    Args:
        pressure: The bulk cell's pressure with the model (GPa).
        scale: The lattice scale applied to reach zero pressure, or ``None`` if the cells are used as
            given (``--no-relax-cells``).
        log: Where the line goes.
        label: How the line starts.
    """
    if scale is not None:
        log(f"{label} {pressure:.2f} GPa with the model; cells scaled by {scale:.5f} to zero pressure")
        return
    log(f"{label} {pressure:.2f} GPa with the model; cells used as given (--no-relax-cells)")
    if abs(pressure) > PRESSURE_WARNING_GPA:
        warnings.warn(
            f"The bulk cell is at {pressure:.2f} GPa with this model (DFT cells strain ML models trained "
            "on another functional); ΔF_vib of a strained cell can be far off (CdTe V_Cd at 873 K: "
            "-1.48 eV as given, +0.10 eV scaled). Drop --no-relax-cells to scale the cells to the "
            "model's own lattice.",
            stacklevel=3,
        )
