"""The provenance file of an ML-tree defect folder (``snb_ml_provenance.json``), typed, read and written.

``snb-ml run`` writes one per defect folder of the ML tree, atomically after every distortion::

    {"snb_ml_version": ..., "defect": "v_Cd_0", "charge": 0, "input_directory": ...,
     "signature": {...}, "model": {"name", "version", "charge_aware", "head", "file", "fine_tuned_on"},
     "settings": {...}, "distortions": {folder: DistortionRecord.to_json(), ...}}

Everything that reads it (selection, hand-off, executors' progress, the API, datasets) goes through
:func:`read_provenance`; only the run writes it, with :func:`write_provenance`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from snb_ml.errors import OutputError
from snb_ml.safe_write import write_text
from snb_ml.tree.status import Status

PROVENANCE_FILE = "snb_ml_provenance.json"


@dataclass
class DistortionRecord:
    """Outcome of one distortion, as stored in the provenance file and shown in the summary.

    ``input_sha256`` and ``charge`` say which starting structure and charge the result belongs to;
    records written before they existed have ``None``.
    """

    folder: str
    status: Status | str
    energy: float | None = None
    steps: int = 0
    seconds: float = 0.0
    max_force: float | None = None
    message: str = ""
    output_folder: str | None = None
    input_sha256: str | None = None
    charge: int | None = None
    skipped: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            self.status = Status.parse(self.status)

    @classmethod
    def from_json(cls, data: dict[str, Any], **changes: Any) -> DistortionRecord:
        """Rebuild a stored record (keys this version does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known}, **changes})

    def to_json(self) -> dict[str, Any]:
        """Plain data for the provenance file: ``skipped`` is per run, not stored; NaN/inf become null."""
        data = dict(self.__dict__)
        data.pop("skipped")
        data["status"] = str(self.status)
        for key, value in data.items():  # strict JSON: an exploded run's force may be NaN
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None
        return data

    @property
    def result_folder(self) -> str:
        """The folder holding this result (``X_High_Energy`` after a rename), as recorded."""
        return self.output_folder or self.folder


@dataclass
class Provenance:
    """What one ML-tree defect folder holds, and how it was made.

    Attributes:
        defect: The defect folder name.
        charge: The defect charge the run used (``None`` in files from before it was stored).
        input_directory: The input defect folder (or the label the run was given).
        signature: The settings that decide whether results can be reused.
        model: ``{"name", "version", "charge_aware", "head", "file", "fine_tuned_on"}`` of the model.
        settings: Every run setting, as plain data.
        distortions: One record per distortion folder.
        snb_ml_version: The version that wrote the file.
        extra: Keys this version does not know, written back unchanged.
    """

    defect: str = ""
    charge: int | None = None
    input_directory: str | None = None
    signature: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    distortions: dict[str, DistortionRecord] = field(default_factory=dict)
    snb_ml_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    _KEYS = ("snb_ml_version", "defect", "charge", "input_directory", "signature", "model", "settings")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Provenance:
        """Type a provenance document (records keyed by folder; unknown keys kept in ``extra``)."""
        records = data.get("distortions") or {}
        if not isinstance(records, dict):
            records = {}
        return cls(
            defect=str(data.get("defect") or ""),
            charge=data.get("charge"),
            input_directory=data.get("input_directory"),
            signature=dict(data.get("signature") or {}),
            model=dict(data.get("model") or {}),
            settings=dict(data.get("settings") or {}),
            distortions={
                folder: DistortionRecord.from_json({"folder": folder, "status": None, **record})
                for folder, record in records.items()
                if isinstance(record, dict)
            },
            snb_ml_version=data.get("snb_ml_version"),
            extra={k: v for k, v in data.items() if k not in (*cls._KEYS, "distortions")},
        )

    def to_json(self) -> dict[str, Any]:
        """The document as written (same keys and order as every earlier version)."""
        data = {key: getattr(self, key) for key in self._KEYS}
        data["distortions"] = {folder: record.to_json() for folder, record in self.distortions.items()}
        return {**data, **self.extra}

    @property
    def model_name(self) -> str:
        """The model's name, ``"unknown"`` if not recorded."""
        return str(self.model.get("name") or "unknown")

    @property
    def fine_tuned_on(self) -> tuple[str, ...] | None:
        """The defect folders whose DFT the model was fine-tuned on; ``None`` if not a fine-tuned model.

        Empty for a fine-tuned model that does not say which (files from before it was recorded).
        """
        value = self.model.get("fine_tuned_on")
        return None if value is None else tuple(str(name) for name in value)

    @property
    def fmax(self) -> float | None:
        """The force threshold the relaxations converged to, if recorded."""
        return self.signature.get("fmax")

    def energies(self) -> dict[str, float]:
        """Energies for ``{defect}.yaml``: converged and unconverged runs (not ``_High_Energy`` ones)."""
        return {
            folder: float(record.energy)
            for folder, record in self.distortions.items()
            if record.status in (Status.CONVERGED, Status.UNCONVERGED) and record.energy is not None
        }


def read_provenance(
    defect_dir: str | Path,
    fix: str = "move it away and rerun to redo this defect.",
    error: type[Exception] = OutputError,
) -> Provenance | None:
    """Read the provenance file of an ML-tree defect folder; ``None`` if it has none.

    Args:
        defect_dir: The defect's ML tree folder.
        fix: What the user should do if the file is unreadable (ends the error message).
        error: Exception class raised for an unreadable file.
    """
    path = Path(defect_dir) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise error(f"{path} is unreadable ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise error(f"{path} holds {type(data).__name__}, not a JSON object; {fix}")
    return Provenance.from_json(data)


def write_provenance(defect_dir: str | Path, provenance: Provenance) -> Path:
    """Write the provenance file atomically, as strict JSON (NaN is stored as null)."""
    path = Path(defect_dir) / PROVENANCE_FILE
    write_text(path, json.dumps(provenance.to_json(), indent=2, default=str, allow_nan=False))
    return path
