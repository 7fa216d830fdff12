"""A tiny ``snb-ml dataset``-style folder for training tests: EMT-labelled Cu vacancy frames.

The labels are EMT energies and forces plus a charge-dependent offset ``charge * charge_shift`` (and a
per-head offset), so a charge-aware model can learn the charge states apart and a charge-blind one
cannot. Frames carry exactly the keys ``snb-ml dataset`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

HEAD_OFFSETS = {"pbe": 0.0, "pbesol": 0.3, "hse": -1.5}


def _frames(head, charge, n_frames, charge_shift, seed, defect=True):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    site = cell.positions[0].copy()
    if defect:
        del cell[0]
    rng = np.random.default_rng(seed)
    name = "v_Cu" if defect else "Cu_bulk"
    frames = []
    for index in range(n_frames):
        atoms = cell.copy()
        amplitude = 0.12 * (n_frames - index) / n_frames  # a "relaxation": shrinking displacements
        atoms.positions += rng.normal(0.0, amplitude, atoms.positions.shape)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy() + charge * charge_shift + HEAD_OFFSETS.get(head, 0.0)
        forces = atoms.get_forces()
        atoms.calc = None
        atoms.info.update(
            REF_energy=float(energy),
            REF_stress=np.zeros((3, 3)),
            total_charge=int(charge),
            head=head,
            config_type="defect" if defect else "bulk",
            defect=name,
            charge_state=int(charge),
            relaxation=f"{name}_{charge:+d}/{head}" if defect else f"{name}/{head}",
            frame=index,
            source=f"emt/{name}_{charge}",
        )
        if defect:
            atoms.info["defect_site"] = [float(x) for x in site]
        atoms.arrays["REF_forces"] = forces
        frames.append(atoms)
    return frames


def write_fixture_dataset(
    out: str | Path,
    heads: Sequence[str] = ("pbe",),
    charges: Sequence[int] = (0, -1),
    n_frames: int = 8,
    charge_shift: float = 0.8,
    bulk_frames: int = 2,
    seed: int = 0,
    paired: bool = False,
) -> Path:
    """Write ``train.xyz``, ``valid.xyz``, ``test.xyz`` and ``dataset.json`` into ``out``.

    Per relaxation the last quarter of frames is the test split, the frame before it validation.
    ``paired``: every charge state gets the same geometries (only the labels differ).
    """
    from ase.io import write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": [], "valid": [], "test": []}
    for h, head in enumerate(heads):
        groups = [
            _frames(head, q, n_frames, charge_shift, seed + 10 * h + (0 if paired else i))
            for i, q in enumerate(charges)
        ]
        if bulk_frames:
            groups.append(_frames(head, 0, bulk_frames, charge_shift, seed + 99 + h, defect=False))
        for frames in groups:
            n_test = max(1, len(frames) // 4) if len(frames) > 2 else 0
            n_valid = 1 if len(frames) - n_test > 2 else 0
            n_train = len(frames) - n_test - n_valid
            splits["train"] += frames[:n_train]
            splits["valid"] += frames[n_train : n_train + n_valid]
            splits["test"] += frames[n_train + n_valid :]
    for split, frames in splits.items():
        write(out / f"{split}.xyz", frames, format="extxyz")
    (out / "dataset.json").write_text(
        json.dumps({"generator": "tests/training_data.py", "counts": {k: len(v) for k, v in splits.items()}})
    )
    return out
