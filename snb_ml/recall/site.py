"""The defect site of a ShakeNBreak search found from its starting structures, where no metadata gives it.

ShakeNBreak's bond distortion by ``d`` moves each distorted neighbour ``i`` of the defect site ``p`` to
``p + (1 + d) (x_i - p)``, i.e. by ``d (x_i - p)`` from its Unperturbed position ``x_i``, then rattles
the cell. So over the bond-distortion starts, each atom's displacement from Unperturbed, fitted
linearly against ``d``, has a slope ``x_i - p`` (a bond length) for the distorted neighbours and
about zero for every other atom (the rattle does not grow with ``d``). Each distorted neighbour then
gives the site as ``x_i - slope_i``; they must agree within :data:`AGREEMENT` Å.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

MIN_SLOPE = 0.5  # Å: a neighbour moved by the distortions has a slope of a bond length (~2-3 Å)
AGREEMENT = 0.5  # Å: the site estimates of the distorted neighbours must agree this well


def site_from_starts(
    unperturbed: Atoms, starts: dict[float, Atoms]
) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The defect site and the distorted neighbours, from the bond-distortion starts.

    Args:
        unperturbed: The Unperturbed starting structure.
        starts: Bond-distortion starting structures by distortion (-0.3 for -30 %), same atom order.

    Returns:
        The site in fractional coordinates and the distorted neighbours' indices, or ``None`` when
        fewer than two distinct non-zero distortions are given or the neighbours do not agree.
    """
    from ase.geometry import find_mic

    values = sorted(d for d in starts if abs(d) > 1e-6)
    if len({round(d, 4) for d in values}) < 2:
        return None
    design = np.column_stack([np.ones(len(values)), values])  # displacement = a + d * slope
    displacements = np.stack(
        [find_mic(starts[d].positions - unperturbed.positions, unperturbed.cell, pbc=True)[0] for d in values]
    )  # (distortions, atoms, 3)
    flat = displacements.reshape(len(values), -1)
    coefficients, *_ = np.linalg.lstsq(design, flat, rcond=None)
    slopes = coefficients[1].reshape(-1, 3)
    norms = np.linalg.norm(slopes, axis=1)
    if norms.max() < MIN_SLOPE:
        return None
    moved = np.flatnonzero((norms >= MIN_SLOPE) & (norms >= 0.5 * norms.max()))
    estimates = unperturbed.positions[moved] - slopes[moved]
    anchor = estimates[0]
    offsets, _ = find_mic(estimates - anchor, unperturbed.cell, pbc=True)
    if np.linalg.norm(offsets - offsets.mean(axis=0), axis=1).max() > AGREEMENT:
        return None
    site = anchor + offsets.mean(axis=0)
    fractional = np.linalg.solve(unperturbed.cell.array.T, site) % 1.0
    fractional[np.isclose(fractional, 1.0, atol=1e-6)] = 0.0
    return fractional, tuple(int(i) for i in moved)
