"""Quasi-harmonic Gibbs free energies at zero pressure with phonopy's QHA (forces from any snb_ml model).

Harmonic phonons at each volume come from :mod:`snb_ml.thermo.phonons` (same units and conventions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError
from snb_ml.relax import RelaxSettings, relax
from snb_ml.thermo.phonons import (
    DEFAULT_MESH_LENGTH,
    PHONON_RELAX,
    build_phonopy,
    temperature_grid,
    thermal_properties,
)

#: Volume scales V/V0 of the quasi-harmonic grid (volume scale, not linear).
DEFAULT_VOLUME_SCALES = tuple(np.round(np.arange(0.90, 1.1001, 0.02), 4))


@dataclass
class QuasiHarmonicFreeEnergy:
    """Quasi-harmonic Gibbs free energy at zero pressure (per cell of the input structure).

    Attributes:
        temperatures: Temperatures in K (phonopy's QHA drops the last point of the input grid).
        gibbs_free_energy: G(T) = min_V [E(V) + F_vib(V, T)] in eV per cell (static energy included).
        equilibrium_volumes: V(T) in Å^3 per cell.
        thermal_expansion: Volumetric thermal expansion coefficient in 1/K.
        bulk_moduli: B(T) in GPa.
        volumes: Volumes of the grid in Å^3.
        volume_scales: The grid as V/V0.
        energies: Static energies E(V) in eV (positions relaxed at each volume).
        free_energies: Harmonic F_vib(T, V) in eV per cell, shape (temperatures of the input, volumes).
    """

    temperatures: np.ndarray
    gibbs_free_energy: np.ndarray
    equilibrium_volumes: np.ndarray
    thermal_expansion: np.ndarray
    bulk_moduli: np.ndarray
    volumes: np.ndarray
    volume_scales: np.ndarray
    energies: np.ndarray
    free_energies: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation."""
        return {k: np.asarray(v).tolist() for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuasiHarmonicFreeEnergy:
        """Rebuild from :meth:`to_dict` output."""
        return cls(**{k: np.asarray(v, dtype=float) for k, v in data.items()})


def quasi_harmonic_free_energy(
    atoms: Atoms,
    calculator: Any,
    temperatures: Sequence[float] | np.ndarray = tuple(range(0, 1001, 50)),
    volume_scales: Sequence[float] = DEFAULT_VOLUME_SCALES,
    supercell_matrix: Sequence[Sequence[int]] | None = None,
    displacement: float = 0.01,
    mesh: float | Sequence[int] | None = None,
    relax_settings: RelaxSettings | None = None,
    eos: str = "vinet",
) -> QuasiHarmonicFreeEnergy:
    """Quasi-harmonic G(T) at zero pressure with phonopy's QHA (fixed cell shape, isotropic volume scan).

    ``volume_scales`` are ratios V/V0 of the *volume* (default 0.90 ... 1.10 in steps of 0.02; each lattice
    vector is scaled by (V/V0)^(1/3)). At each volume the positions are relaxed with the same model, the
    static energy and harmonic F_vib(V, T) computed, and phonopy's ``run_qha`` minimises E + F_vib over V.
    ``atoms`` should be close to the model's equilibrium volume so that the minimum lies inside the grid.

    Args:
        atoms: Bulk structure (the cell that ``supercell_matrix`` multiplies).
        calculator: ASE calculator.
        temperatures: Temperatures in K; the result covers all but the last one (finite differences).
        volume_scales: Volume ratios V/V0 (at least 5).
        supercell_matrix: Supercell for the force constants (``None``: identity).
        displacement: Finite displacement in Å.
        mesh: q-mesh, as in :func:`harmonic_free_energy`; even mesh numbers are raised by one, because
            phonopy's ``run_qha`` samples its own mesh without ``is_gamma_center`` (shifted even grids).
            A float length may give a shifted grid in ``run_qha``.
        relax_settings: Position relaxation at each volume (default :data:`PHONON_RELAX`).
        eos: Equation of state of phonopy: ``vinet``, ``murnaghan`` or ``birch_murnaghan``.

    Returns:
        The quasi-harmonic result.
    """
    from phonopy.qha.qha import run_qha

    temps = temperature_grid(temperatures)
    scales = np.asarray(volume_scales, dtype=float)
    if scales.size < 5 or (scales <= 0).any():
        raise InputError(f"Need at least 5 positive volume scales for the QHA fit, got {scales.tolist()}.")
    if temps.size < 4:
        raise InputError("Give at least 4 temperatures for the QHA (finite differences use neighbours).")
    identity = supercell_matrix is None or np.array_equal(np.asarray(supercell_matrix), np.eye(3))
    mesh = ([1, 1, 1] if identity else DEFAULT_MESH_LENGTH) if mesh is None else mesh
    if not isinstance(mesh, (int, float)):  # run_qha samples without is_gamma_center: keep Gamma in the mesh
        mesh = [int(n) + (int(n) + 1) % 2 for n in mesh]
    phonons, energies, free = [], [], []
    for scale in scales:
        scaled = atoms.copy()
        scaled.set_cell(np.array(atoms.cell) * scale ** (1 / 3), scale_atoms=True)
        relaxed = relax(scaled, calculator, relax_settings or PHONON_RELAX).atoms
        relaxed.calc = calculator
        energies.append(float(relaxed.get_potential_energy()))
        relaxed.calc = None
        phonon, _ = build_phonopy(relaxed, calculator, supercell_matrix, displacement)
        free.append(thermal_properties(phonon, mesh, temps)["free_energy"])
        phonons.append(phonon)
    result = run_qha(
        phonons, temps, internal_energies=energies, mesh=mesh, eos=eos, exclude_gamma_acoustic=True
    )
    count = len(result.gibbs_free_energies)
    return QuasiHarmonicFreeEnergy(
        temperatures=np.asarray(result.temperatures)[:count],
        gibbs_free_energy=np.asarray(result.gibbs_free_energies),
        equilibrium_volumes=np.asarray(result.equilibrium_volumes),
        thermal_expansion=np.asarray(result.thermal_expansion),
        bulk_moduli=np.asarray(result.bulk_moduli) * 160.21766208,
        volumes=atoms.get_volume() * scales,
        volume_scales=scales,
        energies=np.asarray(energies),
        free_energies=np.array(free).T,
    )
