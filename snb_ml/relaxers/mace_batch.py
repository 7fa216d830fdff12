"""MACE's batched evaluator: the structures' graphs joined into one ``torch_geometric`` batch."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.batch.lanes import evaluate_in_lanes, lane_count, split_into_lanes


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
