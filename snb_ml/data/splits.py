"""Train / validation / test splits that never put frames of one relaxation on two sides.

Modes:

- ``relaxation``: whole relaxations are assigned (the default).
- ``defect``: all relaxations (every charge state) of one defect go to the same side.
- ``composition``: all relaxations with the same chemical formula go to the same side.
- ``frames``: every relaxation is cut into contiguous blocks along its ionic steps, the last ones to
  validation/test. Weaker: neighbouring ionic steps are strongly correlated, so its validation error is
  optimistic. It is the only mode that keeps every charge state in training when each charge state has a
  single relaxation (as in doped's MgO example).

In the grouped modes bulk frames always go to training (every model needs the host reference), and when
there are enough groups the validation and test sides each get at least one group; the remaining groups
are assigned greedily towards the requested frame fractions, in a seeded random order.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from snb_ml.errors import InputError

SPLITS = ("train", "valid", "test")
MODES = ("relaxation", "defect", "composition", "frames")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` into three non-negative fractions summing to 1.

    Raises:
        InputError: If the text is not three numbers, one is negative, or they do not sum to 1.
    """
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or values[0] <= 0:
        raise InputError(f"--fractions must be three numbers train,valid,test summing to 1 (got {text!r}).")
    return values  # type: ignore[return-value]


def _unit(frame, mode: str) -> str:
    info = frame.info
    if mode == "defect":
        return f"{info['config_type']}:{info['defect']}"
    if mode == "composition":
        return frame.get_chemical_formula()
    return info["relaxation"]


def split_frames(
    frames: list, mode: str, fractions: tuple[float, float, float], seed: int = 0
) -> dict[str, list]:
    """Assign every frame to ``train``, ``valid`` or ``test`` (written to ``info["split"]``).

    Raises:
        InputError: For an unknown mode.
    """
    if mode not in MODES:
        raise InputError(f"Unknown split mode {mode!r}; choose one of {', '.join(MODES)}.")
    result: dict[str, list] = {name: [] for name in SPLITS}
    if mode == "frames":
        by_relaxation: dict[str, list] = defaultdict(list)
        for frame in frames:
            by_relaxation[frame.info["relaxation"]].append(frame)
        for group in by_relaxation.values():
            group.sort(key=lambda f: f.info["frame"])
            n = len(group)
            n_test = math.floor(fractions[2] * n + 0.5) if n > 1 else 0
            n_valid = math.floor(fractions[1] * n + 0.5) if n - n_test > 1 else 0
            n_train = n - n_test - n_valid
            result["train"] += group[:n_train]
            result["valid"] += group[n_train : n_train + n_valid]
            result["test"] += group[n_train + n_valid :]
    else:
        units: dict[str, list] = defaultdict(list)
        for frame in frames:
            if frame.info["config_type"] == "bulk":
                result["train"].append(frame)
            else:
                units[_unit(frame, mode)].append(frame)
        names = sorted(units)
        np.random.default_rng(seed).shuffle(names)
        total = len(frames)
        counts = {name: len(result[name]) for name in SPLITS}
        seeded = [name for name in ("test", "valid") if fractions[SPLITS.index(name)] > 0]
        if len(names) > len(seeded):
            for split, unit in zip(seeded, names, strict=False):
                result[split] += units[unit]
                counts[split] += len(units[unit])
            names = names[len(seeded) :]
        for unit in names:
            deficits = [fractions[i] * total - counts[split] for i, split in enumerate(SPLITS)]
            split = SPLITS[int(np.argmax(deficits))]
            result[split] += units[unit]
            counts[split] += len(units[unit])
    for split, members in result.items():
        for frame in members:
            frame.info["split"] = split
    return result
