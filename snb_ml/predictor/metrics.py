"""Coordinate errors as in the DefiNet paper: MAE on all atoms and within 3/4/5/6 Å of the defect.

The coordinate MAE is the mean absolute error of the Cartesian coordinates (Å), over the three
components of every atom in the region, each difference taken as the minimum periodic image. Regions
are defined by the distance of an atom to the defect site in the *unrelaxed* structure, so the same
atoms are compared for every model. The "dummy" baseline returns the unrelaxed structure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from snb_ml.predictor.markers import MarkedStructure

RADII = (3.0, 4.0, 5.0, 6.0)


def site_distances(marked: MarkedStructure) -> np.ndarray:
    """Distance (Å, minimum image) of every atom of the unrelaxed structure to the defect site."""
    from ase.geometry import get_distances

    atoms = marked.atoms
    _, distances = get_distances(marked.site.reshape(1, 3), atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return distances[0]


def minimum_image(delta: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Cartesian differences ``delta`` folded to their minimum periodic image (orthogonal-safe)."""
    fractional = np.linalg.solve(np.asarray(cell).T, np.asarray(delta).T).T
    fractional -= np.round(fractional)
    return fractional @ np.asarray(cell)


class CoordinateErrors:
    """Accumulates absolute coordinate errors per region over many structures."""

    def __init__(self, radii: Sequence[float] = RADII):
        self.radii = tuple(radii)
        self.sums = np.zeros(len(self.radii) + 1)
        self.counts = np.zeros(len(self.radii) + 1)

    def add(self, marked: MarkedStructure, predicted: np.ndarray, target: np.ndarray) -> None:
        """Add one structure's prediction (Cartesian positions, Å) against its relaxed target."""
        errors = np.abs(minimum_image(np.asarray(predicted) - np.asarray(target), marked.atoms.cell.array))
        distances = site_distances(marked)
        masks = [np.ones(len(distances), dtype=bool)] + [distances <= r for r in self.radii]
        for slot, mask in enumerate(masks):
            self.sums[slot] += errors[mask].sum()
            self.counts[slot] += 3 * mask.sum()

    def as_dict(self) -> dict[str, float]:
        """``{"all": MAE, "A3": MAE, ...}`` in Å (``nan`` for an empty region)."""
        names = ["all"] + [f"A{r:g}" for r in self.radii]
        with np.errstate(invalid="ignore", divide="ignore"):
            values = self.sums / self.counts
        return {name: float(value) for name, value in zip(names, values, strict=True)}
