"""Diagnostics for charge-aware models: does ``E(q) - E(q')`` depend on the supercell size?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError
from snb_ml.models.charge import annotate_atoms


def vacancy_supercell(bulk: Atoms, site: Sequence[float], repeat: Sequence[int] = (1, 1, 1)) -> Atoms:
    """Repeat a bulk cell and remove the atom at ``site``, keeping every other position exact.

    The defect's surroundings are the same in every repeat (only more bulk is added), which is what
    a size-consistency comparison needs.

    Args:
        bulk: The pristine (super)cell.
        site: Cartesian position (Å) of the atom to remove; it must be an atom of ``bulk``.
        repeat: Repetitions along the three cell vectors.

    Returns:
        The vacancy supercell with ``len(bulk) * prod(repeat) - 1`` atoms.

    Raises:
        InputError: If no atom of ``bulk`` sits within 0.1 Å of ``site``.
    """
    from ase.geometry import get_distances

    cell = bulk.repeat(tuple(int(r) for r in repeat))
    _, distances = get_distances(np.asarray(site, dtype=float), cell.positions, cell=cell.cell, pbc=cell.pbc)
    index = int(np.argmin(distances[0]))
    if distances[0, index] > 0.1:
        raise InputError(
            f"No atom of the bulk cell sits at {list(site)} (closest: {distances[0, index]:.2f} Å)."
        )
    del cell[index]
    return cell


def charge_energy_differences(
    calculator: Any,
    structures: Sequence[Atoms],
    site: Sequence[float],
    mode: str,
    charges: tuple[int, int] = (1, 0),
    radius: float | None = None,
) -> list[float]:
    """Return ``E(charges[0]) - E(charges[1])`` (eV) of each structure, same geometry, both charges.

    Args:
        calculator: ASE calculator of a charge-aware model (arrays keys already configured).
        structures: The structures (e.g. one defect in growing supercells).
        site: Cartesian defect site (Å), the same in every structure.
        mode: Charge mode of the model (how to annotate).
        charges: The two charge states compared.
        radius: Defect marker radius (Å) of ``site`` mode; ``None`` for the default.

    Returns:
        One energy difference per structure.
    """
    differences = []
    for structure in structures:
        energies = []
        for charge in charges:
            atoms = annotate_atoms(structure.copy(), charge, site, mode=mode, radius=radius)
            atoms.calc = calculator
            energies.append(float(atoms.get_potential_energy()))
        differences.append(energies[0] - energies[1])
    return differences
