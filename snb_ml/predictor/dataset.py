"""Training pairs for the single-step predictor: (unrelaxed, relaxed) structures from ML and DFT trees.

Sources (any depth below the paths given; a defect folder is one holding ShakeNBreak distortion folders):

- snb_ml ML trees (a defect folder with ``snb_ml_provenance.json``): ``POSCAR`` (the start) ->
  ``CONTCAR`` (the force-field minimum) of every distortion the provenance records as ``converged`` or
  ``high_energy``; plus intermediate frames of ``snb_ml_trajectory.extxyz`` -> the same ``CONTCAR``.
- DFT trees (ShakeNBreak layout, VASP): ``POSCAR`` -> ``CONTCAR`` of every distortion folder that
  holds both; plus every ionic step of its ``OUTCAR`` files (subsampled) -> the same ``CONTCAR``.

Each pair is stored as one extended-XYZ frame: the input structure, with the arrays
``relaxed_positions`` (target, unwrapped to the minimum image of each displacement) and
``defect_marker`` (0 host / 1 defect atom), and the info keys ``charge``, ``defect_site``,
``vacancy`` (then the ghost sits at ``defect_site``), ``defect_kind``, ``site_method``, ``defect``
(``<tree folder>/<defect name without charge>``), ``relaxation``, ``frame``, ``level`` (``dft`` or
``ml:<model>``), ``source`` and ``split``. Markers are those of the relaxation's start, for every frame.

Splits reuse :func:`snb_ml.data.splits.split_frames`: by ``defect`` (all charge states and distortions
of a defect on one side; the default), ``composition`` or ``relaxation``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.data.splits import SPLITS, split_frames
from snb_ml.data.vasp import UnreadableFile, output_files, read_outcar_frames
from snb_ml.errors import InputError, SnbMlError
from snb_ml.predictor.markers import MarkedStructure, mark_defect, with_positions
from snb_ml.progress import progress_bar
from snb_ml.safe_write import atomic_path, write_text
from snb_ml.tree.layout import is_defect_dir, is_distortion_dir
from snb_ml.tree.metadata import charge_from_folder, defect_site_fractional, split_charge
from snb_ml.tree.provenance import PROVENANCE_FILE, Provenance, read_provenance
from snb_ml.tree.status import Status

DATASET_KIND = "snb_ml.single_step.pairs"
TARGET_KEY = "relaxed_positions"
MARKER_KEY = "defect_marker"
SPLIT_MODES = ("defect", "composition", "relaxation")
_USABLE_ML_STATUSES = (Status.CONVERGED, Status.HIGH_ENERGY)


@dataclass
class PairSettings:
    """Options of a pair harvest (recorded in ``dataset.json``).

    Attributes:
        frames: Intermediate trajectory frames per relaxation, besides its start (evenly spaced).
        split: ``defect``, ``composition`` or ``relaxation``.
        fractions: Train, valid, test fractions.
        seed: Seed of the split.
        max_displacement: Å; a pair whose largest displacement exceeds this is dropped (a start that
            relaxed into another defect, e.g. an interstitial hopping away, says nothing local).
    """

    frames: int = 3
    split: str = "defect"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_displacement: float = 3.0


@dataclass
class PairReport:
    """What a harvest read and wrote."""

    splits: dict[str, list]
    relaxations: int = 0
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        """Pairs and relaxations per split and level."""
        from tabulate import tabulate

        rows = []
        for split, frames in self.splits.items():
            levels: dict[str, list] = {}
            for frame in frames:
                levels.setdefault(frame.info["level"], []).append(frame)
            for level, members in sorted(levels.items()):
                relaxations = {f.info["relaxation"] for f in members}
                defects = {f.info["defect"] for f in members}
                rows.append([split, level, len(defects), len(relaxations), len(members)])
        text = tabulate(rows, headers=["split", "level", "defects", "relaxations", "pairs"])
        lines = [text, f"Skipped: {len(self.skipped)} relaxation(s)"]
        lines += [f"  {line}" for line in self.skipped[:20]]
        return "\n".join(lines)


def _read_vasp(path: Path) -> Atoms:
    from ase.io import read

    try:
        return read(str(path), format="vasp")
    except Exception as exc:
        raise InputError(f"Cannot read {path} ({type(exc).__name__}: {exc}).") from exc


def _unwrapped_target(start: Atoms, final: Atoms, where: str) -> np.ndarray:
    if start.get_chemical_symbols() != final.get_chemical_symbols():
        raise InputError(
            f"{where}: the relaxed structure's atoms differ from the start's (order or species)."
        )
    if not np.allclose(start.cell.array, final.cell.array, atol=1e-3):
        raise InputError(f"{where}: the cell changed during the relaxation; only fixed-cell pairs are used.")
    delta = final.get_scaled_positions(wrap=False) - start.get_scaled_positions(wrap=False)
    delta -= np.round(delta)
    return start.positions + delta @ start.cell.array


def _locate(defect_dir: Path, start: Atoms, charge: int, bulks: list[Atoms], where: str) -> MarkedStructure:
    fractional = defect_site_fractional(defect_dir)
    if fractional is not None:
        return mark_defect(start, charge, site=np.asarray(fractional) @ start.cell.array, where=where)
    matching = [b for b in bulks if len(b) in (len(start) - 1, len(start), len(start) + 1)]
    errors = []
    for bulk in matching:
        try:
            return mark_defect(start, charge, bulk=bulk, where=where)
        except InputError as exc:
            errors.append(str(exc))
    raise InputError(
        errors[0]
        if errors
        else f"{where}: the defect cannot be located: no distortion_metadata.json lists it and no --bulk "
        "supercell matches its cell."
    )


def _pair_frame(marked: MarkedStructure, target: np.ndarray, info: dict[str, Any]) -> Atoms:
    atoms = Atoms(
        marked.atoms.get_chemical_symbols(),
        positions=marked.atoms.positions,
        cell=marked.atoms.cell,
        pbc=True,
    )
    atoms.arrays[TARGET_KEY] = np.asarray(target, dtype=float)
    atoms.arrays[MARKER_KEY] = marked.markers.astype(np.int64)
    atoms.info.update(
        {
            "charge": int(marked.charge),
            "defect_site": np.asarray(marked.site, dtype=float),
            "vacancy": marked.ghost is not None,
            "defect_kind": marked.kind,
            "site_method": marked.method,
            "config_type": "defect",
            **info,
        }
    )
    return atoms


def _evenly(items: list, count: int) -> list:
    if count <= 0 or not items:
        return []
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, count).round().astype(int))]


def _relaxation_frames(start_marked, target, starts: list[np.ndarray], info, settings, where) -> list[Atoms]:
    frames = [_pair_frame(start_marked, target, {**info, "frame": 0})]
    for index, positions in enumerate(_evenly(starts, settings.frames), start=1):
        frame_marked = with_positions(start_marked, positions)
        unwrapped = _unwrapped_target(frame_marked.atoms, _as_atoms(target, start_marked.atoms), where)
        frames.append(_pair_frame(frame_marked, unwrapped, {**info, "frame": index}))
    return frames


def _as_atoms(positions: np.ndarray, like: Atoms) -> Atoms:
    atoms = like.copy()
    atoms.positions = positions
    return atoms


def _ml_pairs(defect_dir: Path, tree_name: str, bulks, settings: PairSettings, skipped: list) -> list[Atoms]:
    from ase.io import read

    provenance = read_provenance(defect_dir, "rerun snb-ml run for this defect.", error=InputError)
    provenance = provenance if provenance is not None else Provenance()
    charge = provenance.charge
    if charge is None:
        charge = charge_from_folder(defect_dir)
    model = provenance.model_name
    frames = []
    for folder, record in sorted(provenance.distortions.items()):
        where = f"{defect_dir}/{folder}"
        output = defect_dir / record.result_folder
        if record.status not in _USABLE_ML_STATUSES or not (output / "CONTCAR").is_file():
            skipped.append(f"{where}: ML status {record.status}")
            continue
        try:
            start = _read_vasp(output / "POSCAR")
            target = _unwrapped_target(start, _read_vasp(output / "CONTCAR"), where)
            marked = _locate(defect_dir, start, charge, bulks, where)
            trajectory = output / "snb_ml_trajectory.extxyz"
            intermediate = []
            if trajectory.is_file() and settings.frames > 0:
                intermediate = [f.positions for f in read(str(trajectory), index=":", format="extxyz")[1:-1]]
        except SnbMlError as exc:
            skipped.append(str(exc))
            continue
        info = {
            "defect": f"{tree_name}/{split_charge(defect_dir.name)[0]}",
            "relaxation": f"{tree_name}/{defect_dir.name}/{folder}",
            "level": f"ml:{model}",
            "source": str(output),
        }
        frames += _relaxation_frames(marked, target, intermediate, info, settings, where)
    return frames


def _dft_pairs(defect_dir: Path, tree_name: str, bulks, settings: PairSettings, skipped: list) -> list[Atoms]:

    frames = []
    charge = None
    for folder in sorted(p for p in defect_dir.iterdir() if is_distortion_dir(p)):
        where = str(folder)
        if not ((folder / "POSCAR").is_file() and (folder / "CONTCAR").is_file()):
            continue
        try:
            if charge is None:
                charge = charge_from_folder(defect_dir)
            start = _read_vasp(folder / "POSCAR")
            target = _unwrapped_target(start, _read_vasp(folder / "CONTCAR"), where)
            marked = _locate(defect_dir, start, charge, bulks, where)
            steps = []
            for path in output_files(folder):
                if path.name.startswith("OUTCAR"):
                    try:
                        steps += [f.positions for f in read_outcar_frames(path)]
                    except UnreadableFile as exc:
                        skipped.append(f"{path}: unreadable ({exc}); its frames are left out")
        except SnbMlError as exc:
            skipped.append(str(exc))
            continue
        info = {
            "defect": f"{tree_name}/{split_charge(defect_dir.name)[0]}",
            "relaxation": f"{tree_name}/{defect_dir.name}/{folder.name}",
            "level": "dft",
            "source": str(folder),
        }
        frames += _relaxation_frames(
            marked, target, steps[1:-1] if len(steps) > 2 else [], info, settings, where
        )
    return frames


def _defect_dirs(paths: list[Path]) -> list[Path]:

    found = []
    for root in paths:
        if is_defect_dir(root):
            found.append(root)
            continue
        for candidate in sorted(root.rglob("*")):
            if (
                candidate.is_dir()
                and is_defect_dir(candidate)
                and "snb_ml_not_selected" not in candidate.parts
            ):
                found.append(candidate)
    return sorted(set(found))


def harvest_pairs(
    paths: list[str | Path],
    bulk_files: list[str | Path] | None = None,
    settings: PairSettings | None = None,
    progress: bool = True,
) -> PairReport:
    """Collect and split the (start, relaxed) pairs of every defect folder below ``paths``.

    Args:
        paths: ML trees (``snb-ml run`` output) and/or ShakeNBreak DFT trees.
        bulk_files: Bulk supercells (any ASE-readable file) for defects without metadata.
        settings: Harvest options.
        progress: Show a progress bar.

    Raises:
        InputError: If a path is missing, the split mode is unknown, or no pair is found.
    """
    settings = settings or PairSettings()
    if settings.split not in SPLIT_MODES:
        raise InputError(f"Unknown split {settings.split!r}; choose one of {', '.join(SPLIT_MODES)}.")
    start_time = time.perf_counter()
    roots = [Path(p).resolve() for p in paths]
    for root in roots:
        if not root.is_dir():
            raise InputError(f"'{root}' is not a directory (pass ML trees or ShakeNBreak DFT trees).")
    bulks = [_read_any(Path(b)) for b in bulk_files or []]
    frames: list[Atoms] = []
    skipped: list[str] = []
    directories = _defect_dirs(roots)
    for defect_dir in progress_bar(directories, desc="Harvesting pairs", unit="defect", enabled=progress):
        tree_name = defect_dir.parent.name
        if (defect_dir / PROVENANCE_FILE).is_file():
            frames += _ml_pairs(defect_dir, tree_name, bulks, settings, skipped)
        else:
            frames += _dft_pairs(defect_dir, tree_name, bulks, settings, skipped)
    kept = []
    for frame in frames:
        largest = np.linalg.norm(frame.arrays[TARGET_KEY] - frame.positions, axis=1).max()
        if largest > settings.max_displacement:
            skipped.append(
                f"{frame.info['relaxation']} frame {frame.info['frame']}: an atom moved {largest:.2f} Å"
            )
        else:
            kept.append(frame)
    if not kept:
        raise InputError(
            f"No (start, relaxed) pair found below {', '.join(map(str, roots))}: expected ML trees written "
            "by snb-ml run (POSCAR + CONTCAR, converged) or ShakeNBreak trees with DFT CONTCARs"
            + (f"; skipped: {skipped[0]}" if skipped else "")
            + "."
        )
    splits = split_frames(kept, settings.split, settings.fractions, settings.seed)
    relaxations = len({f.info["relaxation"] for f in kept})
    return PairReport(splits, relaxations, skipped, time.perf_counter() - start_time)


def _read_any(path: Path) -> Atoms:
    from ase.io import read

    if not path.is_file():
        raise InputError(f"Bulk structure file {path} not found.")
    try:
        return read(str(path))
    except Exception as exc:
        raise InputError(f"Cannot read the bulk structure {path} ({type(exc).__name__}: {exc}).") from exc


def write_pairs(report: PairReport, out: Path, paths: list, settings: PairSettings) -> None:
    """Write ``train.xyz``, ``valid.xyz``, ``test.xyz`` and ``dataset.json`` atomically."""
    from ase.io import write

    for split in SPLITS:
        with atomic_path(out / f"{split}.xyz") as temporary:
            write(str(temporary), report.splits[split], format="extxyz")
    document = {
        "kind": DATASET_KIND,
        "inputs": [str(Path(p).resolve()) for p in paths],
        "settings": {
            "frames": settings.frames,
            "split": settings.split,
            "fractions": list(settings.fractions),
            "seed": settings.seed,
            "max_displacement": settings.max_displacement,
        },
        "counts": {split: len(frames) for split, frames in report.splits.items()},
        "relaxations": report.relaxations,
        "defects": {
            split: sorted({f.info["defect"] for f in frames}) for split, frames in report.splits.items()
        },
        "skipped": report.skipped,
        "seconds": round(report.seconds, 2),
    }
    write_text(out / "dataset.json", json.dumps(document, indent=2) + "\n")


def read_pairs(path: str | Path) -> list[tuple[MarkedStructure, np.ndarray, dict[str, Any]]]:
    """Read one split file back: ``(marked start, target positions, info)`` per pair.

    Raises:
        InputError: If the file is not a single-step pair file.
    """
    from ase.io import read

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} not found; write the dataset with `snb-ml single-step dataset`.")
    if path.stat().st_size == 0:
        return []
    frames = read(str(path), index=":", format="extxyz")
    pairs = []
    for index, frame in enumerate(frames):
        if TARGET_KEY not in frame.arrays or MARKER_KEY not in frame.arrays:
            raise InputError(
                f"{path} frame {index} has no {TARGET_KEY}/{MARKER_KEY} arrays: it is not a single-step pair "
                "dataset (write one with `snb-ml single-step dataset`)."
            )
        site = np.asarray(frame.info["defect_site"], dtype=float)
        markers = np.asarray(frame.arrays[MARKER_KEY], dtype=np.int64)
        target = np.asarray(frame.arrays[TARGET_KEY], dtype=float)
        atoms = Atoms(frame.get_chemical_symbols(), positions=frame.positions, cell=frame.cell, pbc=True)
        marked = MarkedStructure(
            atoms=atoms,
            markers=markers,
            ghost=site.copy() if bool(frame.info.get("vacancy")) else None,
            site=site,
            charge=int(frame.info["charge"]),
            kind=str(frame.info.get("defect_kind", "")),
            method=str(frame.info.get("site_method", "")),
        )
        pairs.append((marked, target, dict(frame.info)))
    return pairs


def check_dataset(dataset_dir: str | Path) -> dict[str, Any]:
    """``dataset.json`` of a single-step pair dataset.

    Raises:
        InputError: If the folder is not one (e.g. an ``snb-ml dataset`` folder for MACE training).
    """
    document_path = Path(dataset_dir) / "dataset.json"
    try:
        document = json.loads(document_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{dataset_dir} is not a single-step pair dataset (no readable dataset.json: {exc}). Write one "
            "with `snb-ml single-step dataset TREES -o DIR`."
        ) from exc
    if document.get("kind") != DATASET_KIND:
        raise InputError(
            f"{dataset_dir} is a dataset of another kind ({document.get('kind', 'snb-ml dataset frames')}); "
            "--kind single-step trains on (start, relaxed) pairs: write them with `snb-ml single-step "
            "dataset TREES -o DIR`."
        )
    return document
