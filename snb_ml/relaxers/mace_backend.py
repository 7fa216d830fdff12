"""MACE backend: a model file, or a MACE-MP foundation model (by default mace-torch's default one)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snb_ml.errors import ModelError
from snb_ml.hookspecs import hookimpl
from snb_ml.relaxers import mace_foundations as foundations
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel
from snb_ml.relaxers.mace_foundations import OFFLINE_ENV, OFFLINE_HELP, offline
from snb_ml.relaxers.mace_loading import file_sha256, import_mace, load_torch_model

__all__ = ["OFFLINE_ENV", "charge_preparer", "file_sha256", "load_mace", "offline"]


def _resolve(spec: str | None) -> tuple[str, str | None]:
    """Map ``--model`` to ``(file path, foundation name or None)``, downloading a foundation if needed."""
    if not spec:
        default = foundations.DEFAULT_FOUNDATION
        return str(foundations.fetch(default, default=True)), default
    if Path(spec).exists():
        if not os.access(spec, os.R_OK) or Path(spec).is_dir():
            raise ModelError(f"MACE model file '{spec}' is not a readable file. {OFFLINE_HELP}")
        return spec, None
    if os.sep in spec or Path(spec).suffix in (".model", ".pt", ".pth"):
        # Clearly a path: fail before importing mace to list foundation names.
        raise ModelError(f"MACE model file '{spec}' does not exist. {OFFLINE_HELP}")
    names = foundations.foundation_names()
    if spec in names:
        return str(foundations.fetch(spec)), spec
    raise ModelError(
        f"MACE model '{spec}' is neither an existing file nor a MACE-MP foundation-model name. Foundation "
        f"names: {', '.join(names)} (`snb-ml plugins` says what each was trained on; without --model: "
        f"{foundations.DEFAULT_FOUNDATION}). mace-torch's molecular models (mace_off, mace_omol, mace_polar) "
        f"are not offered by name. {OFFLINE_HELP}"
    )


def _choose_head(spec: str, heads: list[str], asked: str | None, foundation: str | None) -> str | None:
    """The readout head to use, or ``None`` for a single-head model."""
    if asked is not None and asked not in heads:
        raise ModelError(f"MACE model '{spec}' has no head '{asked}'. Its heads are: {', '.join(heads)}.")
    if len(heads) == 1:
        return None
    if asked is not None:
        return asked
    lowered = {h.lower(): h for h in heads}
    if foundation is not None:
        # As MACECalculator: a multi-head foundation (mh-0, mh-1: one head per level of theory and
        # domain, molecules included) has no safe guess, only its "default" head if it has one.
        if "default" in lowered:
            return lowered["default"]
        raise ModelError(
            f"MACE foundation model '{foundation}' has several heads ({', '.join(heads)}) and none is "
            "'default'; choose one with --head (e.g. the head trained on the level of theory of your DFT)."
        )
    # Multi-fidelity models trained by snb_ml: prefer the higher level of theory, then MACE's default.
    return lowered.get("hse") or lowered.get("default") or heads[-1]


def charge_preparer(mode: str | None, name: str, radius: float | None = None) -> Callable[[Any], None] | None:
    """Return the ``LoadedModel.prepare_atoms`` hook for a model of charge ``mode``.

    Args:
        mode: ``"site"``, ``"global"``, ``"intensive"`` or ``None`` (charge-blind: no hook).
        name: Model name for messages.
        radius: Defect marker radius (Å) of ``site`` models; ``None`` for the default
            (:data:`snb_ml.models.MARKER_RADIUS_FACTOR` times the bulk-like bond length).

    Returns:
        A callable that annotates an ``Atoms`` in place, or ``None``.
    """
    if mode is None:
        return None
    # deferred: plugin module, imported whenever plugins load (snb-run start-up); models imports ase.
    from snb_ml.models.charge import CHARGE_INFO_KEY, SITE_INFO_KEY, annotate_atoms

    def prepare_atoms(atoms: Any) -> None:
        # MACE would silently read a missing charge as 0: insist on it.
        if atoms.info.get(CHARGE_INFO_KEY) is None:
            raise ModelError(
                f"Model '{name}' is charge-aware but the structure has no atoms.info['{CHARGE_INFO_KEY}']; "
                "set it to the integer charge state of the supercell."
            )
        site = atoms.info.get(SITE_INFO_KEY)
        if mode == "site" and site is None and atoms.info[CHARGE_INFO_KEY] != 0:
            raise ModelError(
                f"Model '{name}' reads the charge at the defect site (charge mode 'site'), but the structure "
                f"has no atoms.info['{SITE_INFO_KEY}']. snb_ml sets it from ShakeNBreak's "
                "distortion_metadata.json; for other structures set atoms.info['defect_site'] to the "
                "Cartesian defect position in Å, or use a model with a global charge embedding."
            )
        annotate_atoms(atoms, atoms.info[CHARGE_INFO_KEY], site, mode=mode, radius=radius)

    return prepare_atoms


def load_mace(request: CalculatorRequest) -> LoadedModel:
    """Load a MACE calculator from ``request.model`` (file path or foundation-model name).

    Args:
        request: ``model`` is a path, a MACE-MP name (``small``, ``medium-mpa-0``, ...; see
            :mod:`snb_ml.relaxers.mace_foundations`) or ``None`` for mace-torch's default foundation
            model (:data:`~snb_ml.relaxers.mace_foundations.DEFAULT_FOUNDATION`); a foundation file is
            downloaded once into mace-torch's cache unless ``SNB_ML_OFFLINE`` is set; ``head``
            selects the readout of multi-head models; ``dtype`` defaults to ``float64``;
            ``options["marker_radius"]`` (Å) overrides the defect marker radius of ``site`` models;
            other options go to ``MACECalculator``.

    Returns:
        The loaded model; ``charge_aware``, ``charge_mode`` and ``prepare_atoms`` are set when the
        model has a charge embedding (see :mod:`snb_ml.models`); ``source`` and ``file_sha256``
        identify the file read.

    Raises:
        ModelError: For an unknown name, a missing or damaged file, a foundation model that is not
            cached and cannot (or, offline, may not) be downloaded, or an unknown head.
    """
    spec = request.model
    path, foundation = _resolve(spec)
    mace = import_mace()
    # deferred: plugin modules are imported whenever plugins load (snb-run start-up); batching needs ase.
    from snb_ml.relaxers.mace_batch import MaceBatchEvaluator

    model = load_torch_model(path, request.device, foundation)
    heads = list(getattr(model, "heads", None) or ["Default"])
    head = _choose_head(foundation or str(spec), heads, request.head, foundation)
    dtype = request.dtype or "float64"
    model = model.double() if dtype == "float64" else model.float()
    # deferred: plugin module, imported whenever plugins load (snb-run start-up); models imports ase.
    from snb_ml.models.charge import detect_charge_mode

    mode = detect_charge_mode(model)
    options = dict(request.options)
    # A radius chosen at training time travels inside the model (snb_ml.training); an option overrides it.
    radius = options.pop("marker_radius", None) or getattr(model, "snb_ml_marker_radius", None)
    arrays_keys = dict(options.pop("arrays_keys", None) or {})
    # Per-atom charge features (site, intensive) come from atoms.arrays under the spec's own name.
    # Only arrays_keys is passed: info_keys stays MACE's default, which maps total_charge to info["charge"].
    for feature, feature_spec in (getattr(model, "embedding_specs", None) or {}).items():
        if feature_spec.get("per") == "atom":
            arrays_keys.setdefault(feature, feature_spec.get("key", feature))
    if arrays_keys:
        options["arrays_keys"] = arrays_keys
    name = f"MACE {foundation or Path(spec).name}"
    # A model trained with explicit charge terms (q·E_ref, point-charge image energy) gets a calculator
    # that adds them to the energy (snb_ml.models.charge_reference); others get MACE's own.
    # deferred: plugin module, imported whenever plugins load (snb-run start-up); models imports ase.
    from snb_ml.models.charge_reference import mace_calculator_class, reference_of

    calculator = mace_calculator_class(model)(
        models=model,
        device=request.device,
        default_dtype=dtype,
        head=head,
        **options,
    )
    return LoadedModel(
        calculator=calculator,
        name=name,
        version=f"mace-torch {getattr(mace, '__version__', 'unknown')}",
        charge_aware=mode is not None or reference_of(model) is not None,
        supported_numbers=frozenset(int(z) for z in model.atomic_numbers),
        head=head,
        charge_mode=mode,
        prepare_atoms=charge_preparer(mode, name, radius),
        source=os.path.abspath(path),
        file_sha256=file_sha256(path),
        fine_tuned_on=_fine_tuned_on(model),
        batch_evaluator_factory=MaceBatchEvaluator,
    )


def _fine_tuned_on(model: Any) -> tuple[str, ...] | None:
    """The defect states ``snb-ml train`` trained ``model`` on; ``None`` for models from elsewhere."""
    states = getattr(model, "snb_ml_fine_tuned_on", None)
    return None if states is None else tuple(str(name) for name in states)


@hookimpl
def register_relaxers(register):
    """Register the ``mace`` relaxer."""
    register(
        "mace",
        load_mace,
        description=(
            "MACE: --model PATH or a foundation name (below); without --model "
            f"{foundations.DEFAULT_FOUNDATION}, downloaded once into mace-torch's cache"
        ),
    )
