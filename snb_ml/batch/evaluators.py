"""Batched model evaluation: the protocol, the one-by-one fallback, and how a model's evaluator is found.

Each evaluator wraps the model already loaded by a relaxer backend (the calculator's own model object),
so the batched and the sequential engines use the same weights, device and precision. The backends own
their evaluators (:mod:`snb_ml.relaxers.chgnet_batch`, :mod:`snb_ml.relaxers.mace_batch`).
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


def batch_evaluator_for(model: Any) -> BatchEvaluator:
    """The batched evaluator of a loaded model, or a one-by-one loop over its calculator.

    The backend decides: its :class:`~snb_ml.relaxers.base.LoadedModel` carries a ready
    ``batch_evaluator`` or a ``batch_evaluator_factory`` (CHGNet's and MACE's live next to their
    backends, a third-party plugin sets its own the same way); without either, the calculator is
    evaluated one structure at a time.

    Args:
        model: A :class:`~snb_ml.relaxers.base.LoadedModel`.
    """
    if model.batch_evaluator is not None:
        return model.batch_evaluator
    if model.batch_evaluator_factory is not None:
        return model.batch_evaluator_factory(model.calculator)
    return CalculatorLoopEvaluator(model.calculator)
