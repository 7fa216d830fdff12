"""Load a trained model as ASE calculators (one per head) and predict dataset frames with it.

MACE ``.model`` files (``snb-ml train``), CHGNet files (``snb-ml train --base chgnet``, or any file
``CHGNet.from_file`` reads) and CHGNet's bundled weights by name (``chgnet:0.3.0``) are recognised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY
from snb_ml.errors import ModelError
from snb_ml.models import detect_charge_mode
from snb_ml.models.charge_reference import reference_of
from snb_ml.relaxers.base import CalculatorRequest
from snb_ml.relaxers.chgnet_backend import PRETRAINED, load_chgnet
from snb_ml.relaxers.mace_backend import load_mace
from snb_ml.relaxers.mace_loading import load_torch_model
from snb_ml.training.frames import NO_CHARGE, frame_head

#: ``snb-ml evaluate chgnet:0.3.0``: a bundled CHGNet model by name.
CHGNET_PREFIX = "chgnet:"


@dataclass
class ModelHandle:
    """A model file with its charge mode, heads and one calculator per head (made on demand).

    Attributes:
        path: The model file (for a bundled CHGNet model, its name, e.g. ``chgnet:0.3.0``).
        charge_mode: ``site``, ``global``, ``intensive`` or ``none``.
        heads: Readout heads of the model.
        device: Torch device.
        explicit_charge_terms: True when the model carries explicit charge terms
            (:mod:`snb_ml.models.charge_reference`), which its calculators add to every energy.
        backend: ``mace`` or ``chgnet`` (charge-blind, one head).
    """

    path: Path
    charge_mode: str
    heads: list[str]
    device: str = "cpu"
    explicit_charge_terms: bool = False
    backend: str = "mace"
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
        head = head or self.heads[0]
        if head not in self._calculators and self.backend == "chgnet":
            name = str(self.path)
            name = name[len(CHGNET_PREFIX) :] if name.startswith(CHGNET_PREFIX) else name
            self._calculators[head] = load_chgnet(
                CalculatorRequest(model=name, device=self.device)
            ).calculator
        if head not in self._calculators:
            request = CalculatorRequest(
                model=str(self.path),
                head=head if len(self.heads) > 1 else None,
                device=self.device,
            )
            self._calculators[head] = load_mace(request).calculator
        return self._calculators[head]


def is_chgnet_file(path: str | Path) -> bool:
    """True for a file ``CHGNet.from_file`` reads (a dict holding the model's weights and arguments)."""
    import torch

    try:
        # weights_only: a MACE file (a pickled module) fails here without being unpickled.
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        return False
    model = state.get("model") if isinstance(state, dict) else None
    return isinstance(model, dict) and "state_dict" in model and "model_args" in model


def open_model(path: str | Path, device: str = "cpu") -> ModelHandle:
    """Read a model's kind, charge mode and heads.

    Args:
        path: A MACE ``.model`` file, a CHGNet file, or ``chgnet:<name>`` for CHGNet's bundled weights
            (``chgnet:0.3.0``).
        device: Torch device.

    Raises:
        ModelError: If the file is missing or neither a MACE nor a CHGNet model.
    """
    text = str(path)
    if text.startswith(CHGNET_PREFIX):
        if text[len(CHGNET_PREFIX) :] not in PRETRAINED:
            raise ModelError(
                f"Unknown bundled CHGNet model '{text}'; use one of "
                + ", ".join(CHGNET_PREFIX + name for name in PRETRAINED)
                + "."
            )
        return ModelHandle(Path(text), NO_CHARGE, ["Default"], device, backend="chgnet")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file '{path}' does not exist; train one with `snb-ml train`.")
    if is_chgnet_file(path):
        return ModelHandle(path.resolve(), NO_CHARGE, ["Default"], device, backend="chgnet")
    model = load_torch_model(str(path), "cpu")
    heads = [str(h) for h in (getattr(model, "heads", None) or ["Default"])]
    explicit = reference_of(model) is not None
    return ModelHandle(
        path.resolve(), detect_charge_mode(model) or NO_CHARGE, heads, device, explicit_charge_terms=explicit
    )


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
