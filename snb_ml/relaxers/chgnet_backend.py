"""CHGNet backend: the offline default, its pretrained weights ship inside the chgnet wheel."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

from snb_ml.errors import ModelError
from snb_ml.hookspecs import hookimpl
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel, file_sha256

PRETRAINED = ("0.3.0", "0.2.0", "r2scan")
DEFAULT_MODEL = "0.3.0"
CHGNET_MAX_Z = 94  # CHGNet's composition model embeds elements 1..94


def _energy_forces_calculator(calculator_class):
    class EnergyForcesCHGNetCalculator(calculator_class):
        """CHGNet's calculator computing stress and magnetic moments only when asked for.

        Fixed-cell relaxations need energies and forces; CHGNet's default task ("efsm") also
        differentiates with respect to strain and evaluates the magnetic-moment head at every step.
        """

        def calculate(self, atoms=None, properties=None, system_changes=None, task=None):
            wanted = set(properties or ("energy", "forces", "stress", "magmoms"))
            task = task or "ef" + ("s" if "stress" in wanted else "") + ("m" if "magmoms" in wanted else "")
            super().calculate(atoms, list(wanted | {"energy", "forces"}), system_changes, task=task)

    return EnergyForcesCHGNetCalculator


def load_chgnet(request: CalculatorRequest) -> LoadedModel:
    """Load a CHGNet calculator: a bundled pretrained model by name, or a saved model file.

    Args:
        request: ``model`` is one of ``0.3.0`` (default), ``0.2.0``, ``r2scan`` or a path to a file
            written by ``CHGNet.save``/the CHGNet trainer.

    Returns:
        The loaded model (CHGNet ignores the defect charge).
    """
    import chgnet
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    # deferred: plugin modules are imported whenever plugins load (snb-run start-up); batching needs ase.
    from snb_ml.relaxers.chgnet_batch import ChgnetBatchEvaluator

    # CHGNet's calculator calls float() on a grad-tracking tensor at every step; the warning is noise.
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
    name = request.model or DEFAULT_MODEL
    if request.dtype not in (None, "float32"):
        warnings.warn("CHGNet runs in float32; ignoring --dtype.", stacklevel=2)
    # CHGNet prints its banner on every load; keep the progress display clean.
    source = fine_tuned_on = None
    with contextlib.redirect_stdout(io.StringIO()):
        if name in PRETRAINED:
            model = CHGNet.load(model_name=name, use_device=request.device, verbose=False)
        elif Path(name).is_file():
            model, fine_tuned_on = _load_file(name)
            source = os.path.abspath(name)
        else:
            raise ModelError(
                f"CHGNet model '{name}' is neither a bundled model ({', '.join(PRETRAINED)}) nor an "
                "existing file. Pass --model with one of those names or a path to a saved CHGNet model."
            )
        calculator = _energy_forces_calculator(CHGNetCalculator)(
            model=model, use_device=request.device, **request.options
        )
    return LoadedModel(
        calculator=calculator,
        name=f"CHGNet {name}",
        version=f"chgnet {chgnet.__version__}",
        supported_numbers=frozenset(range(1, CHGNET_MAX_Z + 1)),
        batch_evaluator_factory=ChgnetBatchEvaluator,
        source=source,
        file_sha256=None if source is None else file_sha256(source),
        fine_tuned_on=fine_tuned_on,
    )


def _load_file(path: str) -> tuple[Any, tuple[str, ...] | None]:
    """A saved CHGNet and, for a file `snb-ml train` wrote, the defects it was fine-tuned on.

    The trainer stores ``{"model": ..., "snb_ml": {"fine_tuned_on": [...], ...}}``; CHGNet's own
    ``from_file`` reads the same dict and ignores the extra key, so the file loads once here.
    """
    import torch
    from chgnet.model import CHGNet

    state = torch.load(path, map_location=torch.device("cpu"), weights_only=False)
    if not isinstance(state, dict) or "model" not in state:
        raise ModelError(
            f"{path} is not a saved CHGNet model (no 'model' entry). Pass a file written by "
            "`snb-ml train --base chgnet` or by CHGNet's trainer."
        )
    meta = state.get("snb_ml")
    # Files from before the trainer stored the list are fine-tuned on defects nobody recorded: ().
    tuned = tuple(meta.get("fine_tuned_on") or ()) if isinstance(meta, dict) else None
    return CHGNet.from_dict(state["model"]), tuned


@hookimpl
def register_relaxers(register):
    """Register the ``chgnet`` relaxer."""
    register(
        "chgnet", load_chgnet, description="CHGNet universal potential; weights ship in the wheel (default)"
    )
