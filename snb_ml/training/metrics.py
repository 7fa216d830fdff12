"""Error metrics of model predictions against DFT: by charge, by head, relative energies, rankings."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from snb_ml.training.frames import frame_charge, frame_head
from snb_ml.training.predict import Prediction

#: Spearman correlations need at least this many frames in a group to mean anything.
MIN_RANK_FRAMES = 3


def error_stats(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Return energy and force errors of a set of frames.

    Keys: ``n_frames``; ``energy_mae``/``energy_rmse`` (eV per structure);
    ``energy_mae_per_atom``/``energy_rmse_per_atom`` (eV/atom); ``force_mae``/``force_rmse`` (eV/Å,
    per Cartesian component).
    """
    if not predictions:
        return {"n_frames": 0}
    de = np.array([p.energy - p.ref_energy for p in predictions])
    n_atoms = np.array([len(p.atoms) for p in predictions])
    df = np.concatenate([(p.forces - p.ref_forces).reshape(-1) for p in predictions])
    return {
        "n_frames": len(predictions),
        "energy_mae": float(np.mean(np.abs(de))),
        "energy_rmse": float(np.sqrt(np.mean(de**2))),
        "energy_mae_per_atom": float(np.mean(np.abs(de / n_atoms))),
        "energy_rmse_per_atom": float(np.sqrt(np.mean((de / n_atoms) ** 2))),
        "force_mae": float(np.mean(np.abs(df))),
        "force_rmse": float(np.sqrt(np.mean(df**2))),
    }


def _grouped(predictions: Sequence[Prediction], key: Callable[[Prediction], str]) -> dict[str, list]:
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        groups[key(p)].append(p)
    return dict(sorted(groups.items()))


def charge_label(charge: int) -> str:
    """Return ``+1``, ``0`` or ``-2`` style labels."""
    return f"{charge:+d}" if charge else "0"


def defect_group(p: Prediction) -> str:
    """Return the group label of a frame: ``head:defect_charge`` (bulk frames: ``head:bulk``)."""
    info = p.atoms.info
    if str(info.get("config_type", "defect")) == "bulk":
        return f"{frame_head(p.atoms)}:bulk"
    return f"{frame_head(p.atoms)}:{info.get('defect', 'defect')}_{charge_label(frame_charge(p.atoms))}"


def relative_energy_errors(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Errors of energies relative to each group's lowest DFT frame (same frame for the model).

    Within one defect and charge state (and level of theory), both DFT and model energies are measured
    from the frame that DFT puts lowest, which removes any constant offset of the model: this is what
    decides which distortion ShakeNBreak keeps.

    Returns:
        ``{"mae": eV, "rmse": eV, "n_frames": int, "per_group": {group: mae}}`` over frames other than
        the reference ones (``mae``/``rmse`` are ``None`` when no group has two frames).
    """
    errors, per_group = [], {}
    for group, items in _grouped(predictions, defect_group).items():
        if len(items) < 2:
            continue
        ref = min(items, key=lambda p: p.ref_energy)
        diffs = [(p.energy - ref.energy) - (p.ref_energy - ref.ref_energy) for p in items if p is not ref]
        errors += diffs
        per_group[group] = float(np.mean(np.abs(diffs)))
    if not errors:
        return {"mae": None, "rmse": None, "n_frames": 0, "per_group": {}}
    errors = np.asarray(errors)
    return {
        "mae": float(np.mean(np.abs(errors))),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "n_frames": int(errors.size),
        "per_group": per_group,
    }


def rank_correlations(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Spearman rank correlation of model vs DFT energies within each defect group, and their mean.

    Groups with fewer than :data:`MIN_RANK_FRAMES` frames, or constant energies, are skipped.

    Returns:
        ``{"mean": float | None, "per_defect": {group: rho}, "min_frames": 3}``.
    """
    from scipy.stats import spearmanr

    per_group = {}
    for group, items in _grouped(predictions, defect_group).items():
        if len(items) < MIN_RANK_FRAMES or group.endswith(":bulk"):
            continue
        ref = [p.ref_energy for p in items]
        model = [p.energy for p in items]
        if np.ptp(ref) == 0 or np.ptp(model) == 0:
            continue
        rho = spearmanr(ref, model).statistic
        if math.isfinite(rho):
            per_group[group] = float(rho)
    mean = float(np.mean(list(per_group.values()))) if per_group else None
    return {"mean": mean, "per_defect": per_group, "min_frames": MIN_RANK_FRAMES}


def all_metrics(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Return the metrics block of ``report.json``: overall, by charge, by head, relative, ranks."""
    return {
        "overall": error_stats(predictions),
        "by_charge": {
            label: error_stats(items)
            for label, items in sorted(
                _grouped(predictions, lambda p: charge_label(frame_charge(p.atoms))).items(),
                key=lambda item: int(item[0]),
            )
        },
        "by_head": {
            head: error_stats(items)
            for head, items in _grouped(predictions, lambda p: frame_head(p.atoms)).items()
        },
        "relative_energy": relative_energy_errors(predictions),
        "spearman": rank_correlations(predictions),
    }
