"""``training.json``, the record ``snb-ml train`` leaves beside every model it writes.

One owner for the file: both trainers (MACE and CHGNet) write it here, and ``snb-ml evaluate`` and
the benchmarks read it here. Its common keys are ``model`` (the model file's name), ``dataset``,
``settings``, ``frames`` (counts per split), ``fine_tuned_on`` (the defect states it learnt),
``history`` (per-epoch errors) and ``seconds``; each trainer adds its own (``base``: ``chgnet`` for
the CHGNet route; ``charge_reference``, ``heads`` for MACE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from snb_ml.errors import ModelError
from snb_ml.safe_write import write_text

RECORD_NAME = "training.json"


def write_record(model_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as the model folder's ``training.json`` (temporary file, then rename).

    Args:
        model_dir: The training's output folder.
        record: JSON-serialisable record; must name the ``model`` file.

    Returns:
        The record's path.
    """
    if "model" not in record:
        raise ValueError("a training record names its model file ('model')")
    path = Path(model_dir) / RECORD_NAME
    write_text(path, json.dumps(record, indent=2))
    return path


def read_record(model_dir: str | Path) -> dict[str, Any]:
    """Return the ``training.json`` record of a trained model folder.

    Raises:
        ModelError: If the folder holds no record, or one that is not JSON.
    """
    path = Path(model_dir) / RECORD_NAME
    if not path.is_file():
        raise ModelError(f"'{model_dir}' holds no {RECORD_NAME}; was it written by `snb-ml train`?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); retrain into a fresh folder.") from exc


def recorded_setting(model_path: str | Path, key: str) -> Any:
    """A training setting recorded beside ``model_path`` (``None`` without a record or that key)."""
    model_dir = Path(model_path).parent
    if not (model_dir / RECORD_NAME).is_file():
        return None
    return read_record(model_dir).get("settings", {}).get(key)
