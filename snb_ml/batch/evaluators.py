"""Batched model evaluation: energies and forces of many structures in one model call.

Each evaluator wraps the model already loaded by a relaxer backend (the calculator's own model object),
so the batched and the sequential engines use the same weights, device and precision.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from ase import Atoms


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
    """CHGNet: one ``CHGNet.forward`` over the crystal graphs of the whole batch.

    Args:
        calculator: A ``chgnet.model.dynamics.CHGNetCalculator``.
    """

    batched = True
    # 1.3x the sequential engine on 2 CPU cores (15 V_Cd distortions, bench/bench_batched.py).
    faster_on_cpu = True

    def __init__(self, calculator: Any):
        self.model = calculator.model
        self.device = str(calculator.device)
        self.name = "CHGNet"

    def evaluate(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces from one batched forward pass (no stress, no magnetic moments)."""
        import torch
        from pymatgen.core import Lattice, Structure

        model = self.model
        model.eval()
        # A plain Structure: AseAtomsAdaptor's oxidation-state and property bookkeeping cost more than
        # CHGNet's own graph construction.
        graphs = [
            model.graph_converter(
                Structure(
                    Lattice(atoms.cell.array),
                    atoms.get_chemical_symbols(),
                    atoms.positions,
                    coords_are_cartesian=True,
                )
            ).to(self.device)
            for atoms in structures
        ]
        try:
            from chgnet.model.model import BatchedGraph

            batched = BatchedGraph.from_graphs(
                graphs,
                bond_basis_expansion=model.bond_basis_expansion,
                angle_basis_expansion=model.angle_basis_expansion,
                compute_stress=False,
            )
            prediction = model._compute(batched, compute_force=False)
        except (ImportError, AttributeError, TypeError):  # another CHGNet version: its public path
            return self._evaluate_public(graphs, structures)
        per_structure = prediction["atoms_per_graph"]
        energy = prediction["e"]
        if model.composition_model is not None:
            energy = energy + model.composition_model(graphs)
        if model.is_intensive:
            energy = energy * per_structure
        # CHGNet's own force path keeps the graph for second derivatives (training); relaxations only
        # need first derivatives, which is about half the backward cost.
        gradients = torch.autograd.grad(energy.sum(), batched.atom_positions)
        energies = energy.detach().cpu().numpy().astype(float)
        return energies, [-g.detach().cpu().numpy().astype(float) for g in gradients]

    def _evaluate_public(self, graphs: list, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        prediction = self.model.forward(graphs, task="ef")
        energies = prediction["e"].detach().cpu().numpy().astype(float)
        if self.model.is_intensive:  # CHGNet predicts eV/atom
            energies = energies * np.array([len(atoms) for atoms in structures])
        return energies, [f.detach().cpu().numpy().astype(float) for f in prediction["f"]]


class MaceBatchEvaluator:
    """MACE: the structures' graphs joined into one ``torch_geometric`` batch, one model call.

    Args:
        calculator: A ``mace.calculators.MACECalculator`` with a single model.
    """

    batched = True
    # On CPU a 945-atom MACE batch costs 1.4-1.5x the same structures one by one (cache-bound
    # contractions; bench/bench_batched.py): batches pay only on a GPU.
    faster_on_cpu = False

    def __init__(self, calculator: Any):
        self.calculator = calculator
        self.model = calculator.models[0]
        self.device = str(calculator.device)
        self.name = "MACE"

    def evaluate(self, structures: list[Atoms]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies and forces of all structures from one forward pass."""
        import torch
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        calc = self.calculator
        keyspec = mace_data.KeySpecification(
            info_keys=calc.info_keys, arrays_keys={**calc.arrays_keys, calc.charges_key: "charges"}
        )
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
        bounds = np.cumsum([0] + [len(atoms) for atoms in structures])
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
