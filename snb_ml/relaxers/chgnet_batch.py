"""CHGNet's batched evaluator: the crystal graphs of a whole batch built with array operations."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.batch.lanes import evaluate_in_lanes, lane_count, split_into_lanes
from snb_ml.relaxers.chgnet_graphs import batched_graph


class ChgnetBatchEvaluator:
    """CHGNet: the crystal graphs of the whole batch built with array operations, one model pass.

    On a CPU with several torch threads the batch is split into lanes, one per thread, each evaluated
    with one intra-op thread on its own Python thread (torch releases the GIL): a 64-atom CHGNet graph
    is too small to keep two cores busy, independent structures are not. On a GPU there is one lane.

    Args:
        calculator: A ``chgnet.model.dynamics.CHGNetCalculator``.
        lanes: Lanes on CPU (see :mod:`snb_ml.batch.lanes`); ``None`` picks one per torch thread.
    """

    batched = True
    # 2.2-2.8x snb_ml's sequential engine on 2 CPU cores (15-60 V_Cd distortions, bench/bench_batched.py).
    faster_on_cpu = True

    def __init__(self, calculator: Any, lanes: int | None = None):
        self.model = calculator.model
        self.device = str(calculator.device)
        self.name = "CHGNet"
        self.lanes = lanes
        self._composition_energy: dict[bytes, float] = {}
        # Checked once, so a bug in the fast path fails loudly instead of falling back unseen.
        self.array_graphs = _supports_array_graphs(self.model)
        if not self.array_graphs:
            warnings.warn(
                "This CHGNet version's BatchedGraph/_compute differ from 0.3-0.4; the batched engine uses "
                "CHGNet's own (slower) graph construction.",
                stacklevel=2,
            )

    def evaluate(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces (no stress, no magnetic moments)."""
        self.model.eval()
        self._composition_energies(structures)  # fills the cache here, not from the lanes
        lanes = split_into_lanes(structures, lane_count(self.device, self.lanes, structures))
        return evaluate_in_lanes(
            structures,
            lanes,
            lambda lane, threads: self._evaluate_lane([structures[i] for i in lane], threads),
        )

    def _evaluate_lane(
        self, structures: list[Atoms], threads: int | None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        if threads is not None:  # per OS thread: the caller's own setting is untouched
            torch.set_num_threads(threads)
        if not self.array_graphs:
            return self._evaluate_public(structures)
        graph, positions = batched_graph(self.model, structures, self.device)
        prediction = self.model._compute(graph, compute_force=False)
        counts = [len(atoms) for atoms in structures]
        energy = prediction["e"] + torch.as_tensor(
            self._composition_energies(structures), dtype=prediction["e"].dtype, device=prediction["e"].device
        )
        if self.model.is_intensive:  # CHGNet predicts eV/atom
            energy = energy * torch.as_tensor(counts, dtype=energy.dtype, device=energy.device)
        # First derivatives only: CHGNet's own force path keeps the graph for training.
        (gradient,) = torch.autograd.grad(energy.sum(), positions)
        forces = -gradient.detach().cpu().numpy().astype(float)
        bounds = np.cumsum([0, *counts])
        return (
            energy.detach().cpu().numpy().astype(float),
            [forces[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
        )

    def _composition_energies(self, structures: list[Atoms]) -> list[float]:
        # CHGNet's composition reference depends on the species only: one model call per composition.
        energies = []
        for atoms in structures:
            key = atoms.numbers.tobytes()
            if key not in self._composition_energy:
                composition_model = self.model.composition_model
                self._composition_energy[key] = (
                    0.0
                    if composition_model is None
                    else float(composition_model([self.model.graph_converter(_structure(atoms))]).item())
                )
            energies.append(self._composition_energy[key])
        return energies

    def _evaluate_public(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        graphs = [self.model.graph_converter(_structure(atoms)).to(self.device) for atoms in structures]
        prediction = self.model.forward(graphs, task="ef")
        energies = prediction["e"].detach().cpu().numpy().astype(float)
        if self.model.is_intensive:
            energies = energies * np.array([len(atoms) for atoms in structures])
        return energies, [f.detach().cpu().numpy().astype(float) for f in prediction["f"]]


def _supports_array_graphs(model: Any) -> bool:
    try:
        from chgnet.model.model import BatchedGraph
    except ImportError:
        return False
    fields = set(getattr(BatchedGraph, "__dataclass_fields__", ()))
    needed = {
        "atomic_numbers",
        "bond_bases_ag",
        "bond_bases_bg",
        "angle_bases",
        "batched_atom_graph",
        "batched_bond_graph",
        "atom_owners",
        "directed2undirected",
        "atom_positions",
        "strains",
        "volumes",
    }
    parts = ("_compute", "bond_basis_expansion", "angle_basis_expansion", "graph_converter")
    return needed == fields and all(hasattr(model, part) for part in parts)


def _structure(atoms: Atoms) -> Any:
    # A plain Structure: AseAtomsAdaptor's oxidation-state bookkeeping costs more than the conversion.
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice(atoms.cell.array), atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True
    )
