"""MACE backend: a model file, or a MACE-MP foundation model fetched only when named."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from snb_ml.errors import ModelError
from snb_ml.hookspecs import hookimpl
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel

OFFLINE_ENV = "SNB_ML_OFFLINE"

_OFFLINE_HELP = (
    "Ways out: pass --model PATH to a MACE .model file already on disk, or use the offline default "
    "--relaxer chgnet."
)


def _foundation_names() -> list[str]:
    from mace.calculators.foundations_models import mace_mp_names

    return [name for name in mace_mp_names if name]


def offline() -> bool:
    """True when ``SNB_ML_OFFLINE`` forbids downloads (any value but empty/0/false/no)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _fetch_foundation_model(name: str) -> str:
    """Return a local path for MACE-MP foundation model ``name``, downloading it if allowed."""
    from mace.calculators.foundations_models import (
        download_mace_mp_checkpoint,
        local_model_path,
        mace_mp_urls,
    )
    from mace.tools.utils import get_cache_dir

    if name == "medium-mpa-0" and os.path.isfile(local_model_path):  # some installs bundle it
        return local_model_path
    cached = Path(get_cache_dir()) / "".join(
        c for c in os.path.basename(mace_mp_urls[name]) if c.isalnum() or c == "_"
    )
    if cached.is_file():
        return str(cached)
    if offline():
        raise ModelError(
            f"MACE foundation model '{name}' is not cached in {cached.parent} and {OFFLINE_ENV} is set, "
            f"so it will not be downloaded. {_OFFLINE_HELP}"
        )
    try:
        return download_mace_mp_checkpoint(name)
    except Exception as exc:  # URLError, timeouts, HTML error pages: all mean "no model"
        raise ModelError(
            f"Could not download MACE foundation model '{name}' ({type(exc).__name__}: {exc}); the "
            f"network may be unavailable. {_OFFLINE_HELP}"
        ) from exc


def _import_mace() -> Any:
    # mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD before e3nn is imported; e3nn then warns about it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        import mace
        import mace.calculators  # noqa: F401

    return mace


def _load_torch_model(path: str, device: str) -> Any:
    _import_mace()
    import torch

    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise ModelError(
            f"Could not read MACE model file '{path}' ({type(exc).__name__}: {exc}). Check that it is a "
            f"model saved by MACE (e.g. from mace_run_train). {_OFFLINE_HELP}"
        ) from exc
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "atomic_numbers"):
        raise ModelError(
            f"'{path}' holds a {type(model).__name__}, not a MACE model (a training checkpoint or state "
            f"dict?). Pass the .model file that mace_run_train writes. {_OFFLINE_HELP}"
        )
    return model


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
        request: ``model`` is a path or a MACE-MP name (``small``, ``medium-mpa-0``, ...); ``head``
            selects the readout of multi-head models; ``dtype`` defaults to ``float64``;
            ``options["marker_radius"]`` (Å) overrides the defect marker radius of ``site`` models;
            other options go to ``MACECalculator``.

    Returns:
        The loaded model; ``charge_aware``, ``charge_mode`` and ``prepare_atoms`` are set when the
        model has a charge embedding (see :mod:`snb_ml.models`).
    """
    spec = request.model
    if not spec:
        raise ModelError(
            "The mace relaxer needs --model: a path to a MACE .model file, or a foundation-model name "
            f"({', '.join(_foundation_names())}) which is downloaded on first use. {_OFFLINE_HELP}"
        )
    if Path(spec).exists():
        path = spec
        if not os.access(path, os.R_OK) or Path(path).is_dir():
            raise ModelError(f"MACE model file '{path}' is not a readable file. {_OFFLINE_HELP}")
    elif os.sep in spec or Path(spec).suffix in (".model", ".pt", ".pth"):
        # Clearly a path: fail before importing mace to list foundation names.
        raise ModelError(f"MACE model file '{spec}' does not exist. {_OFFLINE_HELP}")
    elif spec in _foundation_names():
        path = _fetch_foundation_model(spec)
    else:
        raise ModelError(
            f"MACE model '{spec}' is neither an existing file nor a foundation-model name "
            f"({', '.join(_foundation_names())}). {_OFFLINE_HELP}"
        )

    mace = _import_mace()
    model = _load_torch_model(path, request.device)
    heads = list(getattr(model, "heads", None) or ["Default"])
    head = request.head
    if head is not None and head not in heads:
        raise ModelError(f"MACE model '{spec}' has no head '{head}'. Its heads are: {', '.join(heads)}.")
    if head is None and len(heads) > 1:
        # Multi-fidelity models: prefer the higher level of theory, then MACE's own default.
        lowered = {h.lower(): h for h in heads}
        head = lowered.get("hse") or lowered.get("default") or heads[-1]
    dtype = request.dtype or "float64"
    model = model.double() if dtype == "float64" else model.float()
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
    name = f"MACE {Path(spec).name}"
    # A model trained with explicit charge terms (q·E_ref, point-charge image energy) gets a calculator
    # that adds them to the energy (snb_ml.models.charge_reference); others get MACE's own.
    from snb_ml.models.charge_reference import mace_calculator_class, reference_of

    calculator = mace_calculator_class(model)(
        models=model,
        device=request.device,
        default_dtype=dtype,
        head=head if len(heads) > 1 else None,
        **options,
    )
    return LoadedModel(
        calculator=calculator,
        name=name,
        version=f"mace-torch {getattr(mace, '__version__', 'unknown')}",
        charge_aware=mode is not None or reference_of(model) is not None,
        supported_numbers=frozenset(int(z) for z in model.atomic_numbers),
        head=head if len(heads) > 1 else None,
        charge_mode=mode,
        prepare_atoms=charge_preparer(mode, name, radius),
    )


@hookimpl
def register_relaxers(register):
    """Register the ``mace`` relaxer."""
    register(
        "mace", load_mace, description="MACE from --model PATH or a foundation name (downloaded on request)"
    )
