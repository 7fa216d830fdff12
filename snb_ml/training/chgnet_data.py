"""Turning ``snb-ml dataset`` frames into CHGNet training labels.

Everything here happens once, before the first epoch, and its result is written to ``MODEL_DIR/data``
so that ``--restart`` trains on exactly the same labels:

- checks: at least two training frames, one level of theory, elements CHGNet embeds (Z ≤ 94);
- Δ-labelled rattled copies of DFT minima (``augment``);
- energy references (``energy_reference = atomref``): per-element shifts of CHGNet's AtomRef fitted to
  the neutral frames, and one label offset per charged defect state (CHGNet is charge-blind);
- units: CHGNet trains on eV/atom energies, eV/Å forces and GPa stresses with ASE's sign convention
  (its calculator returns ``stress * units.GPa``); ``REF_stress`` is eV/Å³ with the same sign, so the
  target is ``REF_stress / units.GPa``. CHGNet's own ``StructureData`` expects VASP's kBar sign
  convention instead (it multiplies by −0.1), which is why frames are converted here, not there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY, STRESS_KEY
from snb_ml.data.minima import LABEL_KIND_KEY, MINIMUM
from snb_ml.errors import InputError
from snb_ml.training.frames import frame_charge, frame_head

#: CHGNet's atom embedding and AtomRef cover elements 1..94.
CHGNET_MAX_Z = 94
#: ``label_kind`` of the Δ-labelled rattled copies of minima.
AUGMENTED = "augmented"


def check_training_frames(data: dict[str, list[Atoms]], head: str | None) -> dict[str, list[Atoms]]:
    """Keep one level of theory and check what CHGNet can train on.

    Args:
        data: ``{split: frames}`` from :func:`snb_ml.training.frames.read_dataset`.
        head: The level of theory to keep; ``None`` accepts a dataset with a single one.

    Returns:
        ``data`` restricted to ``head``.

    Raises:
        InputError: For several heads without ``head``, an unknown head, fewer than two training
            frames, or elements CHGNet does not embed.
    """
    heads = sorted({frame_head(a) for frames in data.values() for a in frames})
    if head is None and len(heads) > 1:
        raise InputError(
            f"The dataset mixes levels of theory ({', '.join(heads)}); CHGNet learns one energy scale. "
            "Choose one with --head."
        )
    if head is not None:
        if head not in heads:
            raise InputError(
                f"No frames of level of theory '{head}' in the dataset (it has {', '.join(heads)})."
            )
        data = {split: [a for a in frames if frame_head(a) == head] for split, frames in data.items()}
    train = data.get("train", [])
    if len(train) < 2:
        raise InputError(
            f"The training split has {len(train)} frame: fine-tuning needs at least two DFT frames (two "
            "relaxations, minima or ionic steps). Harvest more calculations with `snb-ml dataset`, or "
            "put more of them in training with --fractions."
        )
    for frames in data.values():
        for atoms in frames:
            beyond = sorted(
                {
                    s
                    for s, z in zip(atoms.get_chemical_symbols(), atoms.numbers, strict=True)
                    if z > CHGNET_MAX_Z
                }
            )
            if beyond:
                raise InputError(
                    f"{atoms.info.get('_where', 'A frame')} contains {', '.join(beyond)}: CHGNet embeds "
                    f"elements up to Z = {CHGNET_MAX_Z} only, so no CHGNet model can learn it. Leave those "
                    "calculations out of the dataset or train a MACE model (--base mace)."
                )
    return data


def to_structure(atoms: Atoms):
    """Return the pymatgen ``Structure`` of a frame (what CHGNet's graph converter reads)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_structure(
        Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    )


#: Atoms per CHGNet prediction call in :func:`predict_frames` (bounds its memory).
PREDICT_ATOMS = 256


def predict_frames(
    model, frames: Sequence[Atoms], batch_size: int = 4
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return a CHGNet model's total energies (eV) and forces (eV/Å) for ``frames``.

    ``batch_size`` is lowered so that one call holds at most ``PREDICT_ATOMS`` atoms: CHGNet keeps the
    force graph of every structure in a call (up to ~9 MB per atom of a dense cell such as MgO), and
    four 216-atom MgO cells in one call took the process past 17 GB.
    """
    import contextlib
    import io

    if not frames:
        return np.zeros(0), []
    batch_size = max(1, min(batch_size, PREDICT_ATOMS // max(len(a) for a in frames)))
    structures = [to_structure(atoms) for atoms in frames]
    with contextlib.redirect_stdout(io.StringIO()):
        results = model.predict_structure(structures, task="ef", batch_size=batch_size)
    if isinstance(results, dict):
        results = [results]
    energies = np.array([float(r["e"]) * len(a) for r, a in zip(results, frames, strict=True)])
    return energies, [np.asarray(r["f"], dtype=float) for r in results]


def rattled_copies(minima: Sequence[Atoms], model, copies: int, sigma: float, seed: int) -> list[Atoms]:
    """Return Δ-labelled rattled copies of DFT minima.

    For each minimum ``m`` and copy ``r`` (Gaussian displacements of ``sigma`` Å, seeded):
    ``E(r) = E_DFT(m) + E_base(r) − E_base(m)`` and ``F(r) = F_base(r) − F_base(m)``, with the base
    (not yet fine-tuned) model. The DFT minimum stays a stationary point of the labels and the base
    model's curvature around it is kept.
    """
    if copies <= 0 or not minima:
        return []
    rng = np.random.default_rng(seed)
    rattled = []
    for atoms in minima:
        for index in range(copies):
            copy = atoms.copy()
            copy.positions = atoms.positions + rng.normal(0.0, sigma, atoms.positions.shape)
            copy.info.update(atoms.info)
            copy.info[LABEL_KIND_KEY] = AUGMENTED
            copy.info["frame"] = index + 1
            copy.info["_where"] = f"{atoms.info.get('_where', 'a minimum')} (rattled copy {index + 1})"
            rattled.append(copy)
    base_minima_e, base_minima_f = predict_frames(model, minima)
    base_e, base_f = predict_frames(model, rattled)
    for i, copy in enumerate(rattled):
        m = i // copies
        copy.info[ENERGY_KEY] = float(minima[m].info[ENERGY_KEY] + base_e[i] - base_minima_e[m])
        copy.arrays[FORCES_KEY] = base_f[i] - base_minima_f[m]
        copy.info.pop(STRESS_KEY, None)
    return rattled


def group_of(atoms: Atoms) -> str:
    """Return the energy-reference group of a frame: ``defect_charge`` (bulk: its name)."""
    info = atoms.info
    if str(info.get("config_type", "defect")) == "bulk":
        return f"bulk:{info.get('defect', 'bulk')}"
    return f"{info.get('defect', 'defect')}_{frame_charge(atoms):+d}"


@dataclass
class EnergyReference:
    """Per-element AtomRef shifts (eV per atom of the element) and per-group label offsets (eV/cell).

    Attributes:
        element_shifts: Added to CHGNet's AtomRef weights, ``{symbol: eV}``.
        group_offsets: Subtracted from the labels of each charged defect state, ``{group: eV}``.
        residual_mae: Mean absolute residual of the training labels against the base model before and
            after the references (eV/cell): what the network is left to learn.
    """

    element_shifts: dict[str, float] = field(default_factory=dict)
    group_offsets: dict[str, float] = field(default_factory=dict)
    residual_mae: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for ``training.json``."""
        return {
            "element_shifts": self.element_shifts,
            "group_offsets": self.group_offsets,
            "residual_mae": self.residual_mae,
        }


def fit_reference(frames: Sequence[Atoms], base_energies: np.ndarray) -> EnergyReference:
    """Fit per-element shifts on neutral frames, then an offset per charged group.

    The shifts solve ``min Σ_i (r_i − Σ_el n_i,el δ_el)²`` over the neutral (defect q = 0 and bulk)
    frames, ``r_i = E_DFT,i − E_base,i`` (minimum-norm least squares: with one composition only the
    combination present is determined, which is all that frames of that composition use); without
    neutral frames over all frames. Each charged defect state then gets its mean remaining residual as
    an offset.
    """
    symbols = sorted({s for atoms in frames for s in atoms.get_chemical_symbols()})
    counts = np.array([[atoms.get_chemical_symbols().count(s) for s in symbols] for atoms in frames], float)
    labels = np.array([float(a.info[ENERGY_KEY]) for a in frames])
    residuals = labels - np.asarray(base_energies, float)
    neutral = np.array([frame_charge(a) == 0 for a in frames])
    rows = neutral if neutral.any() else np.ones(len(frames), bool)
    shifts, *_ = np.linalg.lstsq(counts[rows], residuals[rows], rcond=None)
    remaining = residuals - counts @ shifts
    by_group: dict[str, list[float]] = defaultdict(list)
    for atoms, value in zip(frames, remaining, strict=True):
        if frame_charge(atoms) != 0:
            by_group[group_of(atoms)].append(float(value))
    offsets = {group: float(np.mean(values)) for group, values in sorted(by_group.items())}
    after = np.array(
        [value - offsets.get(group_of(a), 0.0) for a, value in zip(frames, remaining, strict=True)]
    )
    return EnergyReference(
        element_shifts={s: float(x) for s, x in zip(symbols, shifts, strict=True)},
        group_offsets=offsets,
        residual_mae={"before": float(np.mean(np.abs(residuals))), "after": float(np.mean(np.abs(after)))},
    )


def apply_reference(model, frames: Sequence[Atoms], reference: EnergyReference) -> None:
    """Shift the model's AtomRef weights and the charged frames' labels, in place."""
    import torch
    from ase.data import atomic_numbers

    weight = model.composition_model.fc.weight
    with torch.no_grad():
        for symbol, shift in reference.element_shifts.items():
            weight[0, atomic_numbers[symbol] - 1] += shift
    for atoms in frames:
        offset = reference.group_offsets.get(group_of(atoms))
        if offset is not None:
            atoms.info[ENERGY_KEY] = float(atoms.info[ENERGY_KEY]) - offset


def is_minimum(atoms: Atoms) -> bool:
    """True for a ``CONTCAR`` + yaml minimum of the dataset."""
    return atoms.info.get(LABEL_KIND_KEY) == MINIMUM


class FrameDataset:
    """A torch dataset of frames as ``(CrystalGraph, targets)``, graphs built once.

    Targets: ``e`` eV/atom; ``f`` eV/Å (NaN rows for minima when ``minima_forces == "none"``);
    ``s`` GPa, ASE sign (only when ``with_stress``).
    """

    def __init__(self, frames: Sequence[Atoms], converter, minima_forces: str, with_stress: bool) -> None:
        import torch
        from ase import units

        self.graphs, self.targets = [], []
        for index, atoms in enumerate(frames):
            graph = converter(to_structure(atoms), graph_id=str(index), mp_id=str(index))
            forces = np.asarray(atoms.arrays[FORCES_KEY], dtype=float)
            if minima_forces == "none" and is_minimum(atoms):
                forces = np.full_like(forces, np.nan)
            targets = {
                "e": torch.tensor(float(atoms.info[ENERGY_KEY]) / len(atoms), dtype=torch.float32),
                "f": torch.tensor(forces, dtype=torch.float32),
            }
            if with_stress:
                stress = np.asarray(atoms.info[STRESS_KEY], dtype=float).reshape(3, 3) / units.GPa
                targets["s"] = torch.tensor(stress, dtype=torch.float32)
            self.graphs.append(graph)
            self.targets.append(targets)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int):
        return self.graphs[index], self.targets[index]


def has_stress(frames: Sequence[Atoms]) -> bool:
    """True when every frame carries a finite ``REF_stress``."""
    for atoms in frames:
        stress = atoms.info.get(STRESS_KEY)
        if stress is None or np.size(stress) != 9 or not np.isfinite(np.asarray(stress, float)).all():
            return False
    return True
