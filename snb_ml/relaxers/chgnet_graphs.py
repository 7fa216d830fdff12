"""CHGNet crystal graphs for a whole batch, built with array operations.

CHGNet's own converter creates a Python object per edge and walks the line graph in a Python loop:
about 12 ms for a 63-atom cell, as much as the model's forward pass on that cell. The batched engine
calls the model hundreds of times per structure, so it builds the same graph here with NumPy (same
neighbour list routine, same cutoffs, same pairing of directed edges into bonds and of bonds into
angles) and assembles CHGNet's ``BatchedGraph`` for all structures at once. Edge order differs from
CHGNet's, which changes sums only at float32 round-off (checked against CHGNet's own path in
``tests/test_batch_engine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.neighbors import neighbor_list


@dataclass
class GraphArrays:
    """One structure's CHGNet graph as index arrays.

    Attributes:
        centers: Centre atom of each directed edge, shape (E,).
        neighbors: Neighbour atom of each directed edge, shape (E,).
        shifts: Cartesian lattice translation of each neighbour (Å), shape (E, 3).
        directed2undirected: Bond (undirected edge) of each directed edge, shape (E,).
        undirected2directed: One directed edge of each bond, shape (U,).
        bond_graph: Angles as rows ``[centre, bond_a, edge_a, bond_b, edge_b]``, shape (T, 5).
    """

    centers: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray
    directed2undirected: np.ndarray
    undirected2directed: np.ndarray
    bond_graph: np.ndarray


def _edge_keys(
    first: np.ndarray, second: np.ndarray, images: np.ndarray, n_atoms: int, span: int
) -> np.ndarray:
    base = 2 * span + 1
    image_code = ((images[:, 0] + span) * base + images[:, 1] + span) * base + images[:, 2] + span
    return (first * n_atoms + second) * base**3 + image_code


def graph_arrays(atoms: Atoms, atom_cutoff: float, bond_cutoff: float) -> GraphArrays:
    """CHGNet's atom graph and bond (line) graph of one structure.

    Args:
        atoms: The structure.
        atom_cutoff: Atom-graph cutoff (Å), CHGNet's ``atom_graph_cutoff``.
        bond_cutoff: Bond-graph cutoff (Å), CHGNet's ``bond_graph_cutoff``.

    Raises:
        ValueError: An atom has no neighbour within ``atom_cutoff`` (CHGNet refuses such graphs).
    """
    n_atoms = len(atoms)
    centers, neighbors, images, distances = neighbor_list(atoms, atom_cutoff)
    isolated = np.setdiff1d(np.arange(n_atoms), centers)
    if isolated.size:
        raise ValueError(
            f"atoms {isolated[:10].tolist()} of {atoms.get_chemical_formula()} have no neighbour within "
            f"{atom_cutoff} Å: CHGNet cannot evaluate isolated atoms (check the cell and positions)"
        )
    span = int(np.abs(images).max(initial=0))
    for _ in range(2):
        # Every directed edge i->j (image n) has its reverse j->i (-n); together they are one bond.
        forward = _edge_keys(centers, neighbors, images, n_atoms, span)
        reverse = _edge_keys(neighbors, centers, -images, n_atoms, span)
        order = np.argsort(forward, kind="stable")
        slot = np.minimum(np.searchsorted(forward[order], reverse), len(order) - 1)
        paired = forward[order][slot] == reverse
        if paired.all():
            break
        # Only an edge at exactly the cutoff can lose its reverse to round-off; CHGNet's envelope is
        # zero there, so it is dropped.
        centers, neighbors, images, distances = (
            centers[paired],
            neighbors[paired],
            images[paired],
            distances[paired],
        )
    partner = order[slot]
    image_code = _edge_keys(np.zeros_like(centers), np.zeros_like(centers), images, 1, span)
    reverse_code = _edge_keys(np.zeros_like(centers), np.zeros_like(centers), -images, 1, span)
    canonical = (centers < neighbors) | ((centers == neighbors) & (image_code > reverse_code))
    bond_of_canonical = np.cumsum(canonical) - 1
    directed2undirected = np.where(canonical, bond_of_canonical, bond_of_canonical[partner])
    undirected2directed = np.flatnonzero(canonical)

    # Angles: every ordered pair of distinct short edges that share a centre atom.
    short = np.flatnonzero(distances < bond_cutoff)
    short = short[np.argsort(centers[short], kind="stable")]
    short_centers = centers[short]
    group_size = np.bincount(short_centers, minlength=n_atoms)[short_centers]
    group_start = np.searchsorted(short_centers, short_centers, side="left")
    first = np.repeat(np.arange(short.size), group_size)
    within = np.arange(first.size) - np.repeat(np.cumsum(group_size) - group_size, group_size)
    second = np.repeat(group_start, group_size) + within
    distinct = first != second
    edge_a, edge_b = short[first[distinct]], short[second[distinct]]
    bond_graph = np.stack(
        [centers[edge_a], directed2undirected[edge_a], edge_a, directed2undirected[edge_b], edge_b], axis=1
    )
    return GraphArrays(
        centers=centers,
        neighbors=neighbors,
        shifts=images @ atoms.cell.array,
        directed2undirected=directed2undirected,
        undirected2directed=undirected2directed,
        bond_graph=bond_graph.reshape(-1, 5),
    )


def batched_graph(model: Any, structures: list[Atoms], device: str) -> tuple[Any, Any]:
    """CHGNet's ``BatchedGraph`` for ``structures`` and the leaf tensor of all atom positions.

    Forces are ``-d(energy)/d(positions)``; the positions of structure ``k`` are rows
    ``sum(len(s) for s in structures[:k])`` onwards.

    Args:
        model: A ``chgnet.model.CHGNet``.
        structures: The structures.
        device: Torch device of the model.
    """
    import torch
    from chgnet.model.model import BatchedGraph

    converter = model.graph_converter
    parts = [
        graph_arrays(atoms, converter.atom_graph_cutoff, converter.bond_graph_cutoff) for atoms in structures
    ]
    atom_offsets = np.cumsum([0] + [len(atoms) for atoms in structures])[:-1]
    edge_offsets = np.cumsum([0] + [part.centers.size for part in parts])[:-1]
    bond_offsets = np.cumsum([0] + [part.undirected2directed.size for part in parts])[:-1]

    def joined(field: str, offsets: np.ndarray | None = None) -> np.ndarray:
        arrays = [getattr(part, field) for part in parts]
        if offsets is not None:
            arrays = [array + offset for array, offset in zip(arrays, offsets, strict=True)]
        return np.concatenate(arrays)

    def index(array: np.ndarray) -> Any:
        return torch.as_tensor(array, dtype=torch.int32, device=device)

    dtype = next(model.parameters()).dtype
    positions = torch.tensor(
        np.concatenate([atoms.positions for atoms in structures]),
        dtype=dtype,
        device=device,
        requires_grad=True,
    )
    centers = joined("centers", atom_offsets)
    neighbors = joined("neighbors", atom_offsets)
    undirected2directed = joined("undirected2directed", edge_offsets)
    shifts = torch.as_tensor(joined("shifts"), dtype=dtype, device=device)
    bond_basis_ag, bond_basis_bg, bond_vectors = model.bond_basis_expansion(
        center=positions[index(centers)],
        neighbor=positions[index(neighbors)] + shifts,
        undirected2directed=index(undirected2directed),
        image=torch.zeros_like(shifts),
        lattice=torch.eye(3, dtype=dtype, device=device),
    )
    angles = np.concatenate(
        [
            part.bond_graph + np.array([atom_offset, bond_offset, edge_offset, bond_offset, edge_offset])
            for part, atom_offset, edge_offset, bond_offset in zip(
                parts, atom_offsets, edge_offsets, bond_offsets, strict=True
            )
        ]
    )
    if len(angles):
        angle_bases = model.angle_basis_expansion(
            bond_vectors[index(angles[:, 2])], bond_vectors[index(angles[:, 4])]
        )
        bond_graph = index(angles[:, [0, 1, 3]])
    else:  # as CHGNet does for structures without any angle
        angle_bases = torch.tensor([], device=device)
        bond_graph = torch.tensor([], device=device)
    atomic_numbers = np.concatenate([atoms.numbers for atoms in structures])
    graph = BatchedGraph(
        atomic_numbers=index(atomic_numbers),
        bond_bases_ag=bond_basis_ag,
        bond_bases_bg=bond_basis_bg,
        angle_bases=angle_bases,
        batched_atom_graph=index(np.stack([centers, neighbors], axis=1)),
        batched_bond_graph=bond_graph,
        atom_owners=index(np.repeat(np.arange(len(structures)), [len(atoms) for atoms in structures])),
        directed2undirected=index(joined("directed2undirected", bond_offsets)),
        atom_positions=[positions],
        strains=[None] * len(structures),
        volumes=torch.tensor([abs(atoms.cell.volume) for atoms in structures], dtype=dtype, device=device),
    )
    return graph, positions
