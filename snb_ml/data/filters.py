"""Frame filters (each reports how many frames it removed) and even sampling along a relaxation."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY


@dataclass
class FilterSettings:
    """Thresholds of the harvest filters.

    Attributes:
        min_energy_per_atom: Frames below this energy per atom (eV) are absurd and dropped.
        max_energy_per_atom: Frames above this energy per atom (eV) are dropped (DFT totals are negative).
        window: Frames more than this many eV above the lowest frame of their defect, charge and head are
            dropped (``None``: no window).
        frames_per_relaxation: Evenly spaced frames kept per relaxation, first and last included
            (``0`` or ``None``: keep all).
        keep_unconverged: Keep electronically unconverged ionic steps.
    """

    min_energy_per_atom: float = -50.0
    max_energy_per_atom: float = 0.0
    window: float | None = 15.0
    frames_per_relaxation: int | None = 10
    keep_unconverged: bool = False


def _group_key(frame) -> tuple:
    info = frame.info
    return info["config_type"], info["defect"], info["charge_state"], info["head"]


def evenly_spaced(count: int, keep: int | None) -> list[int]:
    """Indices of ``keep`` evenly spaced items out of ``count`` (first and last included)."""
    if not keep or keep <= 0 or count <= keep:
        return list(range(count))
    if keep == 1:
        return [count - 1]
    return sorted({int(i) for i in np.linspace(0, count - 1, keep).round()})


def apply_filters(
    frames: list, unconverged: set[tuple[str, int]], settings: FilterSettings
) -> tuple[list, dict[str, int]]:
    """Apply the filters in order; return the kept frames and ``{filter: frames removed}``.

    Order: missing labels, electronic convergence, absurd energies, energy window, sampling.

    Args:
        frames: Labelled frames (info ``relaxation`` and ``frame`` identify each).
        unconverged: ``(relaxation, frame)`` pairs of electronically unconverged ionic steps.
        settings: Thresholds.
    """
    removed: dict[str, int] = {}

    def keep(name: str, predicate) -> None:
        nonlocal frames
        kept = [frame for frame in frames if predicate(frame)]
        removed[name] = len(frames) - len(kept)
        frames = kept

    keep(
        "missing energy or forces",
        lambda f: f.info.get(ENERGY_KEY) is not None and FORCES_KEY in f.arrays,
    )
    if not settings.keep_unconverged:
        keep(
            "electronically unconverged (NELM reached)",
            lambda f: (f.info["relaxation"], f.info["frame"]) not in unconverged,
        )
    keep(
        f"energy per atom outside [{settings.min_energy_per_atom}, {settings.max_energy_per_atom}] eV",
        lambda f: settings.min_energy_per_atom <= f.info[ENERGY_KEY] / len(f) <= settings.max_energy_per_atom,
    )
    if settings.window is not None:
        lowest: dict[tuple, float] = {}
        for frame in frames:
            key = _group_key(frame)
            lowest[key] = min(lowest.get(key, np.inf), frame.info[ENERGY_KEY])
        keep(
            f"more than {settings.window} eV above the defect's lowest frame",
            lambda f: f.info[ENERGY_KEY] - lowest[_group_key(f)] <= settings.window,
        )
    by_relaxation: dict[str, list] = defaultdict(list)
    for frame in frames:
        by_relaxation[frame.info["relaxation"]].append(frame)
    sampled = []
    for relaxation_frames in by_relaxation.values():
        relaxation_frames.sort(key=lambda f: f.info["frame"])
        sampled.extend(
            relaxation_frames[i]
            for i in evenly_spaced(len(relaxation_frames), settings.frames_per_relaxation)
        )
    removed[f"sampling ({settings.frames_per_relaxation} evenly spaced per relaxation)"] = len(frames) - len(
        sampled
    )
    return sampled, removed
