"""Read, check and annotate the frames of an ``snb-ml dataset`` folder for MACE training.

A dataset folder holds ``train.xyz``, ``valid.xyz`` and ``test.xyz`` (extended XYZ) whose frames carry
``REF_energy`` (eV), ``REF_forces`` (eV/Å), ``total_charge`` (int), ``head`` (level of theory),
``config_type`` (``defect``/``bulk``), ``defect``, ``charge_state``, ``relaxation`` and ``frame``, and for
charged defects ``defect_site`` (Cartesian Å). MACE silently reads a missing charge as 0 and truncates
a fractional one, so every charge is checked here before anything is trained or evaluated.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from snb_ml.data.frames import CHARGE_KEY, ENERGY_KEY, FORCES_KEY
from snb_ml.errors import InputError
from snb_ml.models import SITE_KEY, annotate_atoms, defect_markers
from snb_ml.tree.metadata import charged_name

SPLITS = ("train", "valid", "test")

HEAD_KEY = "head"
DEFAULT_HEAD = "Default"
#: ``--charge-mode`` values: the models' modes plus ``none`` for a charge-blind model.
NO_CHARGE = "none"


def read_split(dataset_dir: str | Path, split: str) -> list[Atoms]:
    """Return the frames of one split (``[]`` if the file is missing or empty).

    Args:
        dataset_dir: Folder written by ``snb-ml dataset``.
        split: ``train``, ``valid`` or ``test``.

    Raises:
        InputError: If the folder does not exist or the file cannot be read as extended XYZ.
    """
    from ase.io import read

    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise InputError(f"Dataset folder '{folder}' does not exist; write it with `snb-ml dataset`.")
    path = folder / f"{split}.xyz"
    if not path.is_file() or path.stat().st_size == 0:
        return []
    try:
        frames = read(path, index=":", format="extxyz")
    except Exception as exc:
        raise InputError(f"Cannot read '{path}' as extended XYZ ({type(exc).__name__}: {exc}).") from exc
    for index, atoms in enumerate(frames):
        atoms.info.setdefault("_where", f"{path.name} frame {index}")
    return list(frames)


def read_dataset(dataset_dir: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, list[Atoms]]:
    """Return ``{split: frames}`` for every split, all checked with :func:`check_frames`.

    Raises:
        InputError: If there are no training frames or a frame misses a label or charge.
    """
    data = {split: read_split(dataset_dir, split) for split in splits}
    if "train" in data and not data["train"]:
        raise InputError(
            f"'{Path(dataset_dir) / 'train.xyz'}' is missing or empty: build the dataset with "
            "`snb-ml dataset DFT_FOLDERS -o DATASET_DIR` first."
        )
    for frames in data.values():
        check_frames(frames)
    return data


def frame_charge(atoms: Atoms) -> int:
    """Return the integer ``total_charge`` of a frame.

    Raises:
        InputError: If the charge is missing, not a number or not an integer.
    """
    where = atoms.info.get("_where", "a frame")
    if CHARGE_KEY not in atoms.info:
        raise InputError(
            f"{where} has no '{CHARGE_KEY}': MACE would silently train it as neutral. Rebuild the "
            "dataset with `snb-ml dataset`, which records the charge of every frame."
        )
    value = atoms.info[CHARGE_KEY]
    try:
        number = float(np.asarray(value).reshape(-1)[0]) if np.ndim(value) else float(value)
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{where}: '{CHARGE_KEY}' = {value!r} is not a number.") from exc
    if not np.isfinite(number) or number != round(number):
        raise InputError(
            f"{where}: '{CHARGE_KEY}' = {value!r} is not an integer (MACE would silently truncate it)."
        )
    return int(round(number))


def defect_name(atoms: Atoms) -> str:
    """The defect name of a frame without its charge (``Mg_O``)."""
    return str(atoms.info.get("defect") or "defect")


def defect_states(frames: Iterable[Atoms]) -> list[str]:
    """The defect folders (``Mg_O_+1``: defect and charge) that the defect frames come from.

    Sorted by defect, then charge; bulk frames are left out. This is what a fine-tuned model records
    as ``fine_tuned_on``: the selection keeps exploring every other defect until its own DFT is in
    the training data.
    """
    states = {
        (defect_name(atoms), frame_charge(atoms))
        for atoms in frames
        if str(atoms.info.get("config_type", "defect")) != "bulk"
    }
    return [charged_name(defect, charge) for defect, charge in sorted(states)]


def check_frames(frames: Iterable[Atoms]) -> None:
    """Check that every frame has an integer charge, a finite energy and per-atom forces.

    Raises:
        InputError: Naming the first frame with a missing or invalid value.
    """
    for atoms in frames:
        where = atoms.info.get("_where", "a frame")
        frame_charge(atoms)
        energy = atoms.info.get(ENERGY_KEY)
        if energy is None or not np.isfinite(float(energy)):
            raise InputError(f"{where} has no finite '{ENERGY_KEY}' (eV).")
        forces = atoms.arrays.get(FORCES_KEY)
        if forces is None or np.shape(forces) != (len(atoms), 3) or not np.isfinite(forces).all():
            raise InputError(f"{where} has no finite '{FORCES_KEY}' array of shape ({len(atoms)}, 3).")


def frame_head(atoms: Atoms) -> str:
    """Return the level of theory (``head``) of a frame, ``Default`` when absent."""
    return str(atoms.info.get(HEAD_KEY) or DEFAULT_HEAD)


def heads_of(frames: Iterable[Atoms]) -> list[str]:
    """Return the sorted heads present in ``frames``."""
    return sorted({frame_head(atoms) for atoms in frames})


def relaxation_key(atoms: Atoms) -> tuple[str, str, int, str]:
    """Return ``(head, defect, charge, relaxation)``: the frames of one DFT relaxation."""
    return (
        frame_head(atoms),
        str(atoms.info.get("defect", atoms.info.get("config_type", ""))),
        frame_charge(atoms),
        str(atoms.info.get("relaxation", atoms.info.get("source", ""))),
    )


def _defect_site(atoms: Atoms) -> np.ndarray | None:
    site = atoms.info.get("defect_site")
    if site is None:
        return None
    site = np.asarray(site, dtype=float).reshape(-1)
    return site if site.shape == (3,) and np.isfinite(site).all() else None


def annotate_charges(data: dict[str, list[Atoms]], mode: str, radius: float | None = None) -> None:
    """Write the charge feature a model of ``mode`` reads into every frame, in place.

    ``info["charge"]`` is always set. In ``site`` mode the markers of one relaxation are computed once,
    from its first frame (as the relaxer does from the starting structure), and ``defect_charge =
    q * markers`` is written into every frame of it; bulk and neutral frames get zeros.

    Args:
        data: ``{split: frames}``; frames of one relaxation may be spread over several splits.
        mode: ``site``, ``global``, ``intensive`` or ``none``.
        radius: Marker radius in Å (``None``: the models' default, 1.3 bulk bond lengths).

    Raises:
        InputError: If a charged defect frame has no ``defect_site`` in ``site`` mode.
    """
    everything = [atoms for frames in data.values() for atoms in frames]
    for atoms in everything:
        atoms.info["charge"] = frame_charge(atoms)
    if mode == NO_CHARGE:
        return
    if mode != "site":
        for atoms in everything:
            annotate_atoms(atoms, frame_charge(atoms), _defect_site(atoms), mode=mode, radius=radius)
        return
    groups: dict[tuple, list[Atoms]] = defaultdict(list)
    for atoms in everything:
        groups[relaxation_key(atoms)].append(atoms)
    for (_, defect, charge, _), frames in groups.items():
        frames.sort(key=lambda a: int(a.info.get("frame", 0)))
        first = frames[0]
        site = _defect_site(first)
        bulk = str(first.info.get("config_type", "defect")) == "bulk"
        if site is None or bulk:
            if charge != 0 and not bulk:
                raise InputError(
                    f"{first.info.get('_where', 'A frame')} (defect '{defect}', charge {charge:+d}) has no "
                    "'defect_site', which charge mode 'site' needs to mark the atoms around the defect. "
                    "Rebuild the dataset from folders with the defect's ShakeNBreak metadata, or train "
                    "with --charge-mode global."
                )
            for atoms in frames:
                atoms.arrays[SITE_KEY] = np.zeros(len(atoms))
            continue
        markers = defect_markers(first, site, radius)
        for atoms in frames:
            if len(atoms) != len(markers):
                raise InputError(
                    f"{atoms.info.get('_where')}: relaxation '{atoms.info.get('relaxation')}' mixes "
                    "structures with different numbers of atoms."
                )
            atoms.info["defect_site"] = [float(x) for x in site]
            atoms.arrays[SITE_KEY] = charge * markers


def write_frames(frames: Sequence[Atoms], path: str | Path) -> Path:
    """Write frames as extended XYZ without the private ``_where`` label; return the path."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info.pop("_where", None)
        copy.calc = None
        clean.append(copy)
    write(path, clean, format="extxyz")
    return path


def write_head_files(data: dict[str, list[Atoms]], folder: str | Path) -> dict[str, dict[str, str]]:
    """Write one ``{split}_{head}.xyz`` per head and split present; return MACE's ``heads`` files.

    Args:
        data: ``{split: frames}`` already annotated.
        folder: Where to write the files.

    Returns:
        ``{head: {"train_file": ..., "valid_file": ...}}`` (``valid_file`` only where the head has
        validation frames).
    """
    folder = Path(folder)
    heads: dict[str, dict[str, str]] = {}
    for head in heads_of(data.get("train", [])):
        entry = {}
        for split in ("train", "valid"):
            frames = [atoms for atoms in data.get(split, []) if frame_head(atoms) == head]
            if frames:
                stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in head)
                entry[f"{split}_file"] = str(write_frames(frames, folder / f"{split}_{stem}.xyz").resolve())
        heads[head] = entry
    return heads
