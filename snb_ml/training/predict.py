"""Load a trained MACE model as ASE calculators (one per head) and predict dataset frames with it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import ModelError
from snb_ml.training.frames import NO_CHARGE, frame_head


@dataclass
class ModelHandle:
    """A MACE model file with its charge mode, heads and one calculator per head (made on demand).

    Attributes:
        path: The ``.model`` file.
        charge_mode: ``site``, ``global``, ``intensive`` or ``none``.
        heads: Readout heads of the model.
        device: Torch device.
        explicit_charge_terms: True when the model carries explicit charge terms
            (:mod:`snb_ml.models.charge_reference`), which its calculators add to every energy.
    """

    path: Path
    charge_mode: str
    heads: list[str]
    device: str = "cpu"
    explicit_charge_terms: bool = False
    _calculators: dict[str, Any] = field(default_factory=dict, repr=False)

    def head_for(self, atoms: Atoms) -> str:
        """Return the head that predicts a frame: its own ``head`` if the model has several.

        Raises:
            ModelError: If a multi-head model has no head of the frame's level of theory.
        """
        if len(self.heads) == 1:
            return self.heads[0]
        head = frame_head(atoms)
        if head not in self.heads:
            raise ModelError(
                f"Model '{self.path.name}' has heads {', '.join(self.heads)}, none for frames of level "
                f"of theory '{head}'."
            )
        return head

    def calculator(self, head: str | None = None) -> Any:
        """Return the ASE calculator of one head (MACE's ``MACECalculator`` via the ``mace`` backend).

        The backend maps the charge features: ``info["charge"]`` for ``global`` models, the per-atom
        ``defect_charge``/``charge_per_atom`` array for ``site``/``intensive`` ones (which the frames
        must already carry, see :func:`snb_ml.training.frames.annotate_charges`).
        """
        from snb_ml.relaxers.base import CalculatorRequest
        from snb_ml.relaxers.mace_backend import load_mace

        head = head or self.heads[0]
        if head not in self._calculators:
            request = CalculatorRequest(
                model=str(self.path),
                head=head if len(self.heads) > 1 else None,
                device=self.device,
            )
            self._calculators[head] = load_mace(request).calculator
        return self._calculators[head]


def open_model(path: str | Path, device: str = "cpu") -> ModelHandle:
    """Read a MACE model's charge mode and heads.

    Raises:
        ModelError: If the file is missing or not a MACE model.
    """
    from snb_ml.models import detect_charge_mode
    from snb_ml.models.charge_reference import reference_of
    from snb_ml.relaxers.mace_backend import _load_torch_model

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file '{path}' does not exist; train one with `snb-ml train`.")
    model = _load_torch_model(str(path), "cpu")
    heads = [str(h) for h in (getattr(model, "heads", None) or ["Default"])]
    explicit = reference_of(model) is not None
    return ModelHandle(path.resolve(), detect_charge_mode(model) or NO_CHARGE, heads, device, explicit)


@dataclass
class Prediction:
    """Model and DFT energies and forces of one frame.

    Attributes:
        atoms: The frame (with its info: defect, charge, head, relaxation, frame).
        energy: Model energy (eV).
        forces: Model forces (eV/Å).
        ref_energy: DFT energy (eV).
        ref_forces: DFT forces (eV/Å).
    """

    atoms: Atoms
    energy: float
    forces: np.ndarray
    ref_energy: float
    ref_forces: np.ndarray


def predict(handle: ModelHandle, frames: Sequence[Atoms]) -> list[Prediction]:
    """Predict energies and forces of frames already annotated for the model's charge mode."""
    from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY

    results = []
    for atoms in frames:
        work = atoms.copy()
        work.calc = handle.calculator(handle.head_for(atoms))
        energy = float(work.get_potential_energy())
        forces = np.asarray(work.get_forces(), dtype=float)
        results.append(
            Prediction(
                atoms, energy, forces, float(atoms.info[ENERGY_KEY]), np.asarray(atoms.arrays[FORCES_KEY])
            )
        )
    return results
