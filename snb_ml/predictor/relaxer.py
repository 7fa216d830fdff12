"""The ``predict`` relaxer: jump to the single-step prediction, then (optionally) polish with a force field.

Registered through the ``snb_ml`` entry-point group like the built-in backends, so ``snb-ml run`` and
``snb-run --relaxer predict`` use it unchanged::

    snb-ml run -p TREE --relaxer predict --model single_step.pt --steps 0    # prediction only
    snb-ml run -p TREE --relaxer predict --model single_step.pt --steps 5    # + 5 FIRE steps
    snb-ml run -p TREE --relaxer predict --model single_step.pt              # + full FF relaxation

How it plugs into the runner: the backend returns the polishing force field's calculator (CHGNet by
default) and a ``prepare_atoms`` hook. The runner calls that hook once on every starting structure
(with ``atoms.info["charge"]`` and, from ShakeNBreak's metadata, ``atoms.info["defect_site"]``); the
hook marks the defect, predicts the relaxed structure and moves the atoms there. The runner's optimiser
then starts from the prediction: ``--steps 0`` records the force field's energy at the predicted
structure (status ``unconverged`` unless it already meets ``--fmax``), more steps polish it. The ML
tree keeps ``POSCAR`` = the original start and ``CONTCAR`` = the prediction (polished).

Options (``--calc-kwargs`` JSON): ``polish`` (relaxer name, default ``chgnet``), ``polish_model``,
``polish_options`` (the polishing backend's own options), ``bulk`` (bulk supercell file, to locate
defects without ShakeNBreak metadata).
"""

from __future__ import annotations

from pathlib import Path

from snb_ml.errors import InputError, ModelError
from snb_ml.hookspecs import hookimpl
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel

RELAXER_NAME = "predict"
DEFAULT_POLISH = "chgnet"
OPTIONS = ("polish", "polish_model", "polish_options", "bulk")


def load_predict_relaxer(request: CalculatorRequest) -> LoadedModel:
    """Load the single-step model in ``request.model`` and the polishing force field.

    Args:
        request: ``model`` is the ``.pt`` file of ``snb-ml train --kind single-step``; ``options`` as
            in the module docstring.

    Returns:
        The force field's calculator with a ``prepare_atoms`` hook that moves each start to its
        predicted relaxed structure.

    Raises:
        ModelError: No model file, a file of another kind, unknown options, or a polish backend
            that cannot be loaded.
    """
    # deferred: a plugin module, imported whenever plugins load (snb-run start-up): torch and the
    # predictor load only when this relaxer is asked for.
    from snb_ml import __version__
    from snb_ml.batch import batch_evaluator_for
    from snb_ml.plugins import get_relaxer
    from snb_ml.predictor.markers import mark_defect
    from snb_ml.predictor.model import load_predictor

    if not request.model:
        raise ModelError(
            "--relaxer predict needs --model PATH, a single-step model file written by "
            "`snb-ml train --kind single-step`."
        )
    options = dict(request.options)
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ModelError(
            f"Unknown option(s) {', '.join(unknown)} for --relaxer predict; --calc-kwargs takes "
            f"{', '.join(OPTIONS)}."
        )
    polish = options.get("polish") or DEFAULT_POLISH
    if polish == RELAXER_NAME:
        raise ModelError(
            "--calc-kwargs polish must name a force-field relaxer (e.g. chgnet, mace), not predict."
        )
    predictor = load_predictor(request.model, device=request.device)
    force_field = get_relaxer(polish).load(
        CalculatorRequest(
            model=options.get("polish_model"),
            head=request.head,
            device=request.device,
            dtype=request.dtype,
            options=dict(options.get("polish_options") or {}),
        )
    )
    bulk = _read_bulk(options.get("bulk"))
    force_field_prepare = force_field.prepare_atoms

    def prepare_atoms(atoms) -> None:
        if force_field_prepare is not None:  # e.g. site-charge markers of a MACE polish model
            force_field_prepare(atoms)
        charge = atoms.info.get("charge")
        if charge is None:
            raise InputError(
                "The starting structure has no charge (atoms.info['charge']); set it before relaxing."
            )
        marked = mark_defect(
            atoms.copy(),
            charge,
            site=atoms.info.get("defect_site"),
            bulk=bulk,
            where="the starting structure",
        )
        atoms.positions = predictor.predict([marked])[0]

    supported = predictor.atomic_numbers
    if force_field.supported_numbers is not None:
        supported = supported & force_field.supported_numbers
    return LoadedModel(
        calculator=force_field.calculator,
        name=f"single-step {Path(request.model).name} + {force_field.name}",
        version=f"snb_ml {__version__} single-step; {force_field.version}",
        charge_aware=force_field.charge_aware,
        supported_numbers=supported,
        head=force_field.head,
        charge_mode=force_field.charge_mode,
        prepare_atoms=prepare_atoms,
        batch_evaluator=force_field.batch_evaluator or batch_evaluator_for(force_field),
    )


def _read_bulk(path: str | None):
    if not path:
        return None
    from ase.io import read

    if not Path(path).is_file():
        raise ModelError(f"Bulk supercell file {path} (--calc-kwargs bulk) not found.")
    try:
        return read(str(path))
    except Exception as exc:
        raise ModelError(f"Cannot read the bulk supercell {path} ({type(exc).__name__}: {exc}).") from exc


@hookimpl
def register_relaxers(register):
    """Register the ``predict`` relaxer."""
    register(
        RELAXER_NAME,
        load_predict_relaxer,
        description="Single-step relaxed-structure predictor (--model FILE.pt), then a force field "
        "for --steps (0: prediction only)",
    )
