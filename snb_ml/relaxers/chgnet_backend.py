"""CHGNet backend: the offline default, its pretrained weights ship inside the chgnet wheel."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

from snb_ml.errors import ModelError
from snb_ml.hookspecs import hookimpl
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel

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
    with contextlib.redirect_stdout(io.StringIO()):
        if name in PRETRAINED:
            model = CHGNet.load(model_name=name, use_device=request.device, verbose=False)
        elif Path(name).is_file():
            model = CHGNet.from_file(name)
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
    )


@hookimpl
def register_relaxers(register):
    """Register the ``chgnet`` relaxer."""
    register(
        "chgnet", load_chgnet, description="CHGNet universal potential; weights ship in the wheel (default)"
    )
