"""Settings of an ML screening run, shared by the CLI, ``snb-run --relaxer`` and the Python API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from snb_ml.errors import InputError
from snb_ml.relax import RelaxSettings


@dataclass(frozen=True)
class RunSettings:
    """Everything that defines an ML relaxation run of a ShakeNBreak tree.

    Attributes:
        relaxer: Relaxer backend name (``chgnet``, ``mace``, ``ase`` or a plugin's).
        model: Model file, model name or ``module:Class`` (backend specific).
        head: Readout head for multi-head models.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``float32`` or ``float64`` where the backend supports it.
        calculator_options: Extra keyword arguments for the calculator constructor.
        relax: Optimizer settings.
        charge: Override for the defect charge (otherwise read from the folder name).
        force: Redo distortions that already have results, and accept a different model.
        progress: Show progress bars.
        threads: CPU threads for torch (``None``: torch's default). Use 1 per process when several
            runs share the cores; oversubscribed cores slow model calls by an order of magnitude.
        engine: ``auto`` (batched where the backend supports it and it is faster, else sequential),
            ``batched`` or ``sequential``.
        batch_size: Most structures relaxed together by the batched engine (``None``: chosen from
            atom counts and device memory).
    """

    relaxer: str = "chgnet"
    model: str | None = None
    head: str | None = None
    device: str = "auto"
    dtype: str | None = None
    calculator_options: dict[str, Any] = field(default_factory=dict)
    relax: RelaxSettings = field(default_factory=RelaxSettings)
    charge: int | None = None
    force: bool = False
    progress: bool = True
    threads: int | None = None
    engine: str = "auto"
    batch_size: int | None = None

    def __post_init__(self) -> None:
        import json

        # Recorded in the provenance file, which must stay strict JSON (no NaN/Infinity).
        try:
            json.dumps(self.calculator_options, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"Calculator options {self.calculator_options!r} must be plain JSON values with finite "
                f"numbers ({exc}); e.g. --calc-kwargs '{{\"rc\": 6.0}}'."
            ) from exc

    def signature(self) -> dict[str, Any]:
        """The settings that make results comparable; a rerun with other values refuses to mix them."""
        return {
            "relaxer": self.relaxer,
            "model": self.model,
            "head": self.head,
            "dtype": self.dtype,
            "fmax": self.relax.fmax,
            "calculator_options": self.calculator_options,
        }

    def as_dict(self) -> dict[str, Any]:
        """All settings as plain data, for the provenance file."""
        return asdict(self)
