"""``snb-ml dataset``: harvest every ionic step of DFT trees into train/valid/test extended XYZ files."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.data.discover import find_calculations
from snb_ml.data.filters import FilterSettings, apply_filters
from snb_ml.data.frames import CHARGE_KEY, ENERGY_KEY, FORCES_KEY, STRESS_KEY, harvest_calculation
from snb_ml.data.minima import LABEL_KIND_KEY, MINIMUM, same_structure
from snb_ml.data.sites import locate_site
from snb_ml.data.splits import SPLITS, split_frames
from snb_ml.errors import InputError, OutputError
from snb_ml.progress import progress_bar
from snb_ml.safe_write import atomic_path, write_text

ENERGY_CONVENTION = (
    "REF_energy is VASP's energy(sigma->0) (ASE 'energy'; what ShakeNBreak's snb-parse and doped use); "
    "REF_free_energy is the free energy TOTEN. Forces eV/Å, stress eV/Å^3 (ASE sign: positive = tensile). "
    "Frames with label_kind 'minimum' are CONTCAR + {defect}.yaml minima (no OUTCAR): their energy is the "
    "yaml's, their REF_forces are zeros (a converged DFT minimum) and they carry no stress."
)
#: Head given to yaml minima when no INCAR and no harvested OUTCAR of the same input path names one.
DEFAULT_MINIMA_HEAD = "pbe"
INFO_KEYS = (
    ENERGY_KEY,
    STRESS_KEY,
    CHARGE_KEY,
    "charge",
    "charge_state",
    "head",
    "config_type",
    "defect",
    "relaxation",
    "frame",
    "source",
    "split",
    "defect_site",
    "defect_site_method",
    LABEL_KIND_KEY,
)


@dataclass
class HarvestSettings:
    """Options of one harvest (recorded in ``dataset.json``)."""

    filters: FilterSettings = field(default_factory=FilterSettings)
    split: str = "relaxation"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    include_ml_trees: bool = False


@dataclass
class HarvestReport:
    """What a harvest read, dropped and wrote."""

    splits: dict[str, list]
    removed: dict[str, int]
    read_frames: int
    skipped_files: list[str]
    messages: list[str]
    unknown_sites: int
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        """Frames and relaxations per config type, defect, charge, head and split."""
        counts: Counter = Counter()
        minima: Counter = Counter()
        relaxations: dict[tuple, set] = {}
        for split, frames in self.splits.items():
            for frame in frames:
                info = frame.info
                key = (info["config_type"], info["defect"], info["charge_state"], info["head"], split)
                counts[key] += 1
                minima[key] += info.get(LABEL_KIND_KEY) == MINIMUM
                relaxations.setdefault(key, set()).add(info["relaxation"])
        return [
            {
                "config_type": key[0],
                "defect": key[1],
                "charge": key[2],
                "head": key[3],
                "split": key[4],
                "frames": counts[key],
                "relaxations": len(relaxations[key]),
                "minima": minima[key],
            }
            for key in sorted(counts, key=lambda k: (k[0], k[1], k[2], k[3], SPLITS.index(k[4])))
        ]

    def table(self) -> str:
        """Human-readable summary: frames per defect / charge / head / split, then the filter counts."""
        from tabulate import tabulate

        rows = self.rows()
        text = tabulate([list(row.values()) for row in rows], headers=list(rows[0]) if rows else [])
        lines = [text, "", f"Frames read: {self.read_frames}"]
        lines += [f"  removed by {name}: {count}" for name, count in self.removed.items()]
        lines.append(
            f"Frames written: {sum(len(frames) for frames in self.splits.values())} ({self._sizes()})"
        )
        lines.append(f"Defect frames without a known defect site: {self.unknown_sites}")
        if self.skipped_files:
            lines.append(f"Skipped unreadable files: {len(self.skipped_files)}")
        return "\n".join(lines)

    def _sizes(self) -> str:
        return ", ".join(f"{name} {len(frames)}" for name, frames in self.splits.items())


def _assign_sites(frames: list, bulk_references: dict[Path, list], defect_folders: dict[str, Path]) -> int:
    """Write ``defect_site`` / ``defect_site_method`` on defect frames; return how many stay unknown."""
    first: dict[str, Any] = {}
    for frame in frames:
        relaxation = frame.info["relaxation"]
        if frame.info["config_type"] != "defect":
            continue
        if relaxation not in first or frame.info["frame"] < first[relaxation].info["frame"]:
            first[relaxation] = frame
    sites: dict[str, tuple | None] = {}
    for relaxation, frame in first.items():
        folder = defect_folders[relaxation]
        located = locate_site(folder, frame, None)
        for root, bulks in bulk_references.items():
            if located is not None:
                break
            if root in folder.parents:
                for bulk in bulks:
                    located = locate_site(folder, frame, bulk)
                    if located is not None:
                        break
        sites[relaxation] = located
    unknown = 0
    for frame in frames:
        if frame.info["config_type"] != "defect":
            continue
        located = sites.get(frame.info["relaxation"])
        if located is None:
            unknown += 1
            continue
        frame.info["defect_site"] = np.asarray(located[0], dtype=float).copy()
        frame.info["defect_site_method"] = located[1]
    return unknown


def harvest(paths: list[str | Path], settings: HarvestSettings, progress: bool = True) -> HarvestReport:
    """Collect, filter, locate and split the frames of every calculation below ``paths``.

    Raises:
        InputError: If nothing is found, a charge is inconsistent, a head mixes functionals, or no frame
            survives the filters (the message lists what each filter removed).
    """
    start = time.perf_counter()
    for path in paths:
        if not Path(path).is_dir():
            raise InputError(f"'{path}' is not a directory of DFT calculations.")
    calculations = find_calculations([Path(p) for p in paths], settings.include_ml_trees)
    if not calculations:
        raise InputError(
            f"No VASP outputs (OUTCAR*, vasprun.xml*) found below {', '.join(map(str, paths))}"
            + ("" if settings.include_ml_trees else " (ML-tree trajectories need --include-ml-trees)")
            + "."
        )
    frames, unconverged, messages, skipped = [], set(), [], []
    bulk_references: dict[Path, list] = {}
    defect_folders: dict[str, Path] = {}
    roots: dict[str, Path] = {}
    bar = progress_bar(calculations, unit="folder", enabled=progress, desc="Harvesting")
    for calculation in bar:
        bar.set_postfix_str(calculation.relaxation[-40:])
        harvested = harvest_calculation(calculation)
        for message in harvested.messages:
            bar.write(message, file=sys.stderr)
        messages += harvested.messages
        skipped += harvested.skipped_files
        frames += harvested.frames
        unconverged.update((calculation.relaxation, index) for index in harvested.unconverged)
        defect_folders[calculation.relaxation] = calculation.defect_folder
        roots[calculation.relaxation] = calculation.root
        if calculation.kind == "bulk" and harvested.frames:
            bulk_references.setdefault(calculation.root, []).append(harvested.frames[0])
    read_frames = len(frames)
    frames, notes = _settle_minima(frames, roots, defect_folders)
    repeated = read_frames - len(frames)
    for message in notes:
        if progress:
            print(message, file=sys.stderr)
    messages += notes
    _check_heads(frames)
    kept, removed = apply_filters(frames, unconverged, settings.filters)
    removed = {"repeated yaml minimum (same structure)": repeated, **removed}
    if not kept:
        details = "; ".join(f"{name}: {count}" for name, count in removed.items())
        raise InputError(
            f"No frame left after the filters ({read_frames} read; removed by {details}"
            + (f"; {len(skipped)} unreadable file(s) skipped" if skipped else "")
            + "). Loosen the filter that removed them (see snb-ml dataset --help)."
        )
    unknown = _assign_sites(kept, bulk_references, defect_folders)
    splits = split_frames(kept, settings.split, settings.fractions, settings.seed)
    report = HarvestReport(splits, removed, read_frames, skipped, messages, unknown)
    report.seconds = time.perf_counter() - start
    return report


def _settle_minima(
    frames: list, roots: dict[str, Path], defect_folders: dict[str, Path]
) -> tuple[list, list[str]]:
    """Give yaml minima without an INCAR a head, and drop exact repeats of a defect's minimum.

    A minimum's head is the functional of an INCAR next to it; without one, the single head of the
    OUTCAR frames harvested from the same input path (a tree keeps one functional), else the single
    head of every OUTCAR frame of this harvest (a tree of minima given next to the OUTCARs of the same
    project), else :data:`DEFAULT_MINIMA_HEAD` with a message.

    Returns:
        The kept frames and the messages.
    """
    notes: list[str] = []
    trajectory_heads: dict[Path, set[str]] = {}
    for frame in frames:
        if frame.info.get(LABEL_KIND_KEY) != MINIMUM and frame.info["config_type"] != "ml":
            trajectory_heads.setdefault(roots[frame.info["relaxation"]], set()).add(frame.info["head"])
    kept: list = []
    seen: dict[Path, list] = {}
    defaulted: set[Path] = set()
    for frame in frames:
        if frame.info.get(LABEL_KIND_KEY) != MINIMUM:
            kept.append(frame)
            continue
        relaxation = frame.info["relaxation"]
        if not frame.info["head"]:
            heads = trajectory_heads.get(roots[relaxation]) or set().union(*trajectory_heads.values())
            frame.info["head"] = next(iter(heads)) if len(heads) == 1 else DEFAULT_MINIMA_HEAD
            if len(heads) != 1:
                defaulted.add(defect_folders[relaxation])
        folder = defect_folders[relaxation]
        twin = next((other for other in seen.get(folder, []) if same_structure(other, frame)), None)
        if twin is not None:
            notes.append(
                f"{frame.info['source']}: the same structure as {twin.info['source']}; "
                "harvested once (as the latter)"
            )
            continue
        seen.setdefault(folder, []).append(frame)
        kept.append(frame)
    for folder in sorted(defaulted):
        notes.append(
            f"{folder}: no INCAR and no OUTCAR of one functional next to its yaml minima; "
            f"their head is taken to be '{DEFAULT_MINIMA_HEAD}'"
        )
    return kept, notes


def _check_heads(frames: list) -> None:
    """One head = one functional: refuse DFT and ML labels sharing a head name."""
    kinds: dict[str, set] = {}
    for frame in frames:
        kinds.setdefault(frame.info["head"], set()).add(frame.info["config_type"] == "ml")
    mixed = [head for head, types in kinds.items() if len(types) > 1]
    if mixed:
        raise InputError(f"Head(s) {', '.join(mixed)} would mix DFT and ML labels; rename the ML model.")


def prepare_output(out: Path, force: bool) -> None:
    """Create ``out``; refuse an existing non-empty folder unless ``force``.

    Raises:
        OutputError: If ``out`` is a file or a non-empty folder and ``force`` is false.
    """
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder; choose another -o.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"{out} exists and is not empty; choose another -o or pass --force to overwrite.")
    out.mkdir(parents=True, exist_ok=True)


def write_dataset(
    report: HarvestReport, out: Path, paths: list[str | Path], settings: HarvestSettings
) -> None:
    """Write ``train.xyz``, ``valid.xyz``, ``test.xyz``, ``dataset.json`` and ``summary.csv`` atomically."""
    from ase.io import write

    for split in SPLITS:
        with atomic_path(out / f"{split}.xyz") as temporary:
            write(str(temporary), report.splits[split], format="extxyz")
    rows = report.rows()
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer,
        fieldnames=["config_type", "defect", "charge", "head", "split", "frames", "relaxations", "minima"],
    )
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "summary.csv", buffer.getvalue())
    filters = asdict(settings.filters)
    document = {
        "inputs": [str(Path(p).resolve()) for p in paths],
        "settings": {
            "filters": filters,
            "split": settings.split,
            "fractions": list(settings.fractions),
            "seed": settings.seed,
            "include_ml_trees": settings.include_ml_trees,
        },
        "energy_convention": ENERGY_CONVENTION,
        "keys": {"info": list(INFO_KEYS), "arrays": [FORCES_KEY]},
        "frames_read": report.read_frames,
        "removed": report.removed,
        "counts": {split: len(frames) for split, frames in report.splits.items()},
        "summary": rows,
        "unknown_defect_sites": report.unknown_sites,
        "skipped_files": report.skipped_files,
        "messages": report.messages,
        "seconds": round(report.seconds, 2),
    }
    write_text(out / "dataset.json", json.dumps(document, indent=2) + "\n")
