"""Deterministic grouping of the relaxed minima of one defect into structural basins.

Minima are grouped by agglomerative clustering (``scipy.cluster.hierarchy``) of their fingerprint
distance matrix, cut at a distance threshold. The default, complete linkage, merges two groups only
if *every* pair across them is within the threshold, so a chain of small steps can never join two
distinct basins (single linkage can); ``average`` is available as a more lenient choice.

The result does not depend on the order the minima are given in: they are first sorted by
(ML energy, label), clustered in that order, and clusters are numbered from 0 by their lowest
(energy, label) member, which is also their representative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from snb_ml.errors import InputError

LINKAGES = ("complete", "average", "single")


@dataclass(frozen=True)
class Cluster:
    """One structural basin.

    Attributes:
        id: 0 for the cluster holding the lowest-energy minimum, then by increasing lowest energy.
        members: Labels of the minima, lowest energy first.
        representative: The lowest-energy member.
        energy: ML energy of the representative (eV).
    """

    id: int
    members: tuple[str, ...]
    representative: str
    energy: float


def cluster_minima(
    labels: Sequence[str],
    energies: Sequence[float],
    distances: np.ndarray,
    threshold: float,
    linkage: str = "complete",
) -> list[Cluster]:
    """Group minima whose fingerprints are within ``threshold`` of each other.

    Args:
        labels: Unique names of the minima (distortion folders).
        energies: Their ML energies in eV, same order.
        distances: Symmetric distance matrix, same order.
        threshold: Largest distance within one cluster (for complete linkage).
        linkage: ``complete`` (default), ``average`` or ``single``.

    Returns:
        Clusters ordered by id.

    Raises:
        InputError: On inconsistent sizes, duplicate labels, a negative threshold or unknown linkage.
    """
    from scipy.cluster.hierarchy import fcluster
    from scipy.cluster.hierarchy import linkage as hierarchy_linkage
    from scipy.spatial.distance import squareform

    count = len(labels)
    matrix = np.asarray(distances, dtype=float)
    if len(energies) != count or matrix.shape != (count, count):
        raise InputError(
            f"cluster_minima got {count} labels, {len(energies)} energies and a {matrix.shape} distance "
            "matrix; pass one energy and one matrix row per minimum."
        )
    if len(set(labels)) != count:
        raise InputError(f"Minima labels must be unique, got {list(labels)}.")
    if threshold < 0 or linkage not in LINKAGES:
        raise InputError(
            f"Need threshold >= 0 and linkage in {', '.join(LINKAGES)} (got {threshold}, '{linkage}')."
        )
    if count == 0:
        return []
    order = sorted(range(count), key=lambda i: (energies[i], labels[i]))
    if count == 1:
        assignment = np.array([1])
    else:
        ordered = matrix[np.ix_(order, order)]
        ordered = np.clip((ordered + ordered.T) / 2, 0.0, None)
        np.fill_diagonal(ordered, 0.0)
        tree = hierarchy_linkage(squareform(ordered, checks=False), method=linkage)
        assignment = fcluster(tree, t=threshold, criterion="distance")
    groups: dict[int, list[int]] = {}
    for position, flat in enumerate(assignment):
        groups.setdefault(int(flat), []).append(order[position])
    # Members are already in (energy, label) order, so the first is the representative.
    ranked = sorted(groups.values(), key=lambda members: (energies[members[0]], labels[members[0]]))
    return [
        Cluster(
            id=number,
            members=tuple(labels[i] for i in members),
            representative=labels[members[0]],
            energy=float(energies[members[0]]),
        )
        for number, members in enumerate(ranked)
    ]
