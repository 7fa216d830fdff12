"""Batched model evaluation: energies and forces of many structures in one model call.

Each evaluator wraps the model already loaded by a relaxer backend (the calculator's own model object),
so the batched and the sequential engines use the same weights, device and precision.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np
from ase import Atoms

from snb_ml.batch.lanes import evaluate_in_lanes, lane_count, split_into_lanes


class BatchEvaluator(Protocol):
    """What the batched engine needs from a model.

    Attributes:
        name: Short description for messages.
        device: ``"cpu"`` or a CUDA device name.
        batched: True when :meth:`evaluate` really evaluates the structures together.
        faster_on_cpu: True when the batched engine beat the sequential one on CPU in
            ``bench/bench_batched.py`` (on a GPU batching always pays).
    """

    name: str
    device: str
    batched: bool
    faster_on_cpu: bool

    def evaluate(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Return the energies (eV, shape (n,)) and forces (eV/Å, one (N_i, 3) array each)."""


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device (or host) out-of-memory error raised by torch."""
    try:
        import torch

        if isinstance(error, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(error, MemoryError) or "out of memory" in str(error).lower()


class CalculatorLoopEvaluator:
    """Any ASE calculator, one structure after the other (no speed-up; same engine logic).

    Args:
        calculator: The ASE calculator.
    """

    batched = False
    faster_on_cpu = False
    device = "cpu"

    def __init__(self, calculator: Any):
        self.calculator = calculator
        self.name = type(calculator).__name__

    def evaluate(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Evaluate each structure with the calculator."""
        energies, forces = [], []
        for atoms in structures:
            work = atoms.copy()
            work.calc = self.calculator
            forces.append(np.array(work.get_forces()))
            energies.append(float(work.get_potential_energy()))
        return np.array(energies), forces


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
        from snb_ml.batch.chgnet_graphs import batched_graph

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


class MaceBatchEvaluator:
    """MACE: the structures' graphs joined into one ``torch_geometric`` batch, one model call.

    Args:
        calculator: A ``mace.calculators.MACECalculator`` with a single model.
        lanes: Lanes on CPU (see :mod:`snb_ml.batch.lanes`); ``None`` picks one per torch thread.
    """

    batched = True
    # On CPU a 945-atom MACE batch costs 1.4-1.5x the same structures one by one (cache-bound
    # contractions; bench/bench_batched.py): batches pay only on a GPU.
    faster_on_cpu = False

    def __init__(self, calculator: Any, lanes: int | None = None):
        self.calculator = calculator
        self.model = calculator.models[0]
        self.device = str(calculator.device)
        self.name = "MACE"
        self.lanes = lanes

    def evaluate(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces of all structures (one forward pass per lane)."""
        from mace import data as mace_data
        from mace.tools import torch_tools

        calc = self.calculator
        keyspec = mace_data.KeySpecification(
            info_keys=calc.info_keys, arrays_keys={**calc.arrays_keys, calc.charges_key: "charges"}
        )
        # Built here, not in the lanes: MACE's default-dtype switch is process-wide.
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(atoms, key_specification=keyspec, head_name=calc.head),
                    z_table=calc.z_table,
                    cutoff=calc.r_max,
                    heads=calc.available_heads,
                )
                for atoms in structures
            ]
        lanes = split_into_lanes(structures, lane_count(self.device, self.lanes, structures))
        energies, forces = evaluate_in_lanes(
            structures, lanes, lambda lane, threads: self._evaluate_lane([graphs[i] for i in lane], threads)
        )
        # Explicit charge terms of the model (q·E_ref − E_pc, snb_ml.models.charge_reference): constant
        # per structure at fixed cell, so they shift the energy exactly as the sequential calculator does.
        explicit = getattr(calc, "explicit_energy", None)
        if explicit is not None:
            energies = energies + np.array([explicit(atoms) for atoms in structures])
        return energies, forces

    def _evaluate_lane(self, graphs: list[Any], threads: int | None) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch
        from mace.tools import torch_geometric

        if threads is not None:  # per OS thread: the caller's own setting is untouched
            torch.set_num_threads(threads)
        calc = self.calculator
        batch = torch_geometric.Batch.from_data_list(graphs).to(self.device)
        dtype = next(self.model.parameters()).dtype
        data = {
            key: value.to(dtype=dtype) if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in batch.to_dict().items()
        }
        out = self.model(data, compute_force=True, compute_stress=False, training=False)
        scale = calc.energy_units_to_eV
        energies = out["energy"].detach().cpu().numpy().astype(float) * scale
        all_forces = out["forces"].detach().cpu().numpy().astype(float) * scale / calc.length_units_to_A
        bounds = np.cumsum([0] + [int(graph.num_nodes) for graph in graphs])
        return energies, [all_forces[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def batch_evaluator_for(model: Any) -> BatchEvaluator:
    """The batched evaluator of a loaded model, or a one-by-one loop over its calculator.

    A plugin can provide its own by setting ``batch_evaluator`` on the :class:`LoadedModel` it returns.

    Args:
        model: A :class:`~snb_ml.relaxers.base.LoadedModel`.
    """
    custom = getattr(model, "batch_evaluator", None)
    if custom is not None:
        return custom
    calculator = model.calculator
    # Class names, not isinstance: importing chgnet or mace just to ask would cost seconds.
    kinds = {f"{cls.__module__}.{cls.__name__}" for cls in type(calculator).__mro__}
    if "chgnet.model.dynamics.CHGNetCalculator" in kinds:
        return ChgnetBatchEvaluator(calculator)
    if "mace.calculators.mace.MACECalculator" in kinds and len(calculator.models) == 1:
        return MaceBatchEvaluator(calculator)
    return CalculatorLoopEvaluator(calculator)
