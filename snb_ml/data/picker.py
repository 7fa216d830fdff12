"""``snb-ml pick-hybrid``: choose GGA frames to recompute as hybrid (HSE06) single points.

Per defect and charge state (bulk included as its own group), ``max(1, round(fraction * n))`` frames are
picked by farthest-point sampling in a space of (energy above the group's lowest frame, structure
descriptor), each axis scaled to its range in the group and the lowest-energy frame taken first. So the
picks spread over the energy range and over distinct local structures, and every defect/charge gets at
least one.

Descriptor: the 12 nearest-neighbour distances of the defect site (sorted, minimum image) when every
frame of the group has ``defect_site``; otherwise the 11 deciles of the per-atom nearest-neighbour
distances. Both cost one neighbour search per frame and need no species-specific settings.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from snb_ml.data.frames import ENERGY_KEY
from snb_ml.data.vasp import read_incar
from snb_ml.errors import InputError, OutputError
from snb_ml.safe_write import atomic_path, write_text

SITE_NEIGHBOURS = 12
REF_KEY = "gga_energy"  # the picked frame's GGA energy in picked.json
HYBRID_TAGS = {
    "LHFCALC": ".TRUE.",
    "HFSCREEN": "0.2",
    "AEXX": "0.25",
    "GGA": "PE",
    "ALGO": "All",
    "NSW": "0",
    "IBRION": "-1",
    "ICHARG": "2",
}
README = """# Hybrid single points picked by snb-ml pick-hybrid

Each folder is one frame of {dataset} to recompute with HSE06 (single point, NSW = 0).
INCAR: the source calculation's INCAR with {tags}
(NELECT, ISPIN, ENCUT and the rest kept; ICHARG = 2 because no CHGCAR is copied; GGA = PE because
HSE06 is built on PBE). KPOINTS: copied from the source folder.

**POTCAR files are not copied** (they are licensed to VASP users): add the same POTCARs as the source
calculations (same order as the POSCAR species) to every folder before running VASP.

picked.json lists, per folder, the source frame (relaxation, frame index, source file, defect, charge).
Harvest the finished runs with `snb-ml dataset` to add them under the head "hse".
"""


def read_dataset(path: Path) -> list:
    """Frames of a dataset folder (``train/valid/test.xyz``) or of one extended XYZ file.

    Raises:
        InputError: If nothing readable is there.
    """
    from ase.io import read

    files = [path] if path.is_file() else [path / f"{split}.xyz" for split in ("train", "valid", "test")]
    frames = []
    for file in files:
        if file.is_file() and file.stat().st_size:
            frames += read(str(file), index=":", format="extxyz")
    if not frames:
        raise InputError(f"No frames in {path}; pass the folder written by snb-ml dataset or an .xyz file.")
    return frames


def _descriptor(frame, use_site: bool) -> np.ndarray:
    from ase.geometry import get_distances
    from ase.neighborlist import neighbor_list

    if use_site:
        _, distances = get_distances(
            np.asarray(frame.info["defect_site"], dtype=float)[None, :],
            frame.positions,
            frame.cell,
            frame.pbc,
        )
        values = np.sort(distances[0])
        return values[values > 0.1][:SITE_NEIGHBOURS]
    first, distances = neighbor_list("id", frame, cutoff=4.0)
    nearest = np.full(len(frame), 4.0)
    np.minimum.at(nearest, first, distances)
    return np.quantile(nearest, np.linspace(0, 1, 11))


def _farthest_points(points: np.ndarray, count: int) -> list[int]:
    chosen = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < min(count, len(points)):
        index = int(np.argmax(distance))
        if distance[index] <= 0:
            break
        chosen.append(index)
        distance = np.minimum(distance, np.linalg.norm(points - points[index], axis=1))
    return chosen


def pick_frames(frames: list, fraction: float = 0.1) -> list:
    """Choose GGA frames (not ``hse``, not ``ml:*``) for hybrid single points.

    Raises:
        InputError: If ``fraction`` is not in (0, 1] or there is no GGA frame.
    """
    if not 0 < fraction <= 1:
        raise InputError(f"--fraction must be in (0, 1], got {fraction}.")
    groups: dict[tuple, list] = defaultdict(list)
    for frame in frames:
        head = str(frame.info.get("head", ""))
        if head == "hse" or head.startswith("ml:") or ENERGY_KEY not in frame.info:
            continue
        groups[
            (frame.info.get("config_type"), frame.info.get("defect"), frame.info.get("charge_state"))
        ].append(frame)
    if not groups:
        raise InputError("No GGA frames to pick from (hybrid and ML frames are never picked).")
    picked = []
    for key in sorted(groups, key=str):
        group = groups[key]
        group.sort(key=lambda f: f.info[ENERGY_KEY])
        count = max(1, round(fraction * len(group)))
        energies = np.array([f.info[ENERGY_KEY] for f in group])
        use_site = all("defect_site" in f.info for f in group)
        descriptors = np.array([_descriptor(f, use_site) for f in group])
        columns = np.column_stack([energies - energies.min(), descriptors])
        spans = np.ptp(columns, axis=0)
        scaled = np.divide(columns, spans, out=np.zeros_like(columns), where=spans > 1e-12)
        picked += [group[i] for i in _farthest_points(scaled, count)]
    return picked


def hybrid_incar(source_incar: Path) -> str:
    """The source INCAR's tags (read like the harvest reads them) with the hybrid single-point tags set.

    Tags are rewritten one per line, so a source line such as ``ISPIN = 2; LHFCALC = .FALSE.`` cannot
    leave a second, contradicting setting behind.
    """
    tags = read_incar(source_incar.parent)
    lines = [f"# snb-ml pick-hybrid: tags of {source_incar}"]
    lines += [f"{key} = {value}" for key, value in tags.items() if key not in HYBRID_TAGS]
    lines.append("# HSE06 single point")
    lines += [f"{key} = {value}" for key, value in HYBRID_TAGS.items()]
    return "\n".join(lines) + "\n"


def write_inputs(picked: list, out: Path, dataset: Path) -> list[dict]:
    """Write a VASP input folder per picked frame (POSCAR, INCAR, KPOINTS; no POTCAR) and picked.json.

    Raises:
        InputError: If a frame's source folder or its INCAR is missing.
        OutputError: If a target folder would be a source DFT folder.
    """
    from ase.io import write

    records = []
    for frame in picked:
        info = frame.info
        source_folder = Path(str(info["source"])).parent
        incar = source_folder / "INCAR"
        if not incar.is_file():
            raise InputError(f"{incar} (source of {info['relaxation']} frame {info['frame']}) is missing.")
        name = f"{str(info['relaxation']).replace('/', '__')}__frame{int(info['frame']):04d}"
        folder = (out / name).resolve()
        if folder == source_folder.resolve() or source_folder.resolve() in folder.parents:
            raise OutputError(f"{folder} is inside the source DFT folder {source_folder}; choose another -o.")
        structure = frame.copy()
        with atomic_path(folder / "POSCAR") as temporary:
            write(str(temporary), structure, format="vasp", direct=True, sort=False)
        write_text(folder / "INCAR", hybrid_incar(incar))
        if (source_folder / "KPOINTS").is_file():
            write_text(folder / "KPOINTS", (source_folder / "KPOINTS").read_text())
        records.append(
            {
                "folder": name,
                "relaxation": info["relaxation"],
                "frame": int(info["frame"]),
                "source": str(info["source"]),
                "defect": info.get("defect"),
                "charge_state": int(info.get("charge_state", 0)),
                "head": info.get("head"),
                REF_KEY: float(info[ENERGY_KEY]),
            }
        )
    document = {"dataset": str(dataset.resolve()), "hybrid_tags": HYBRID_TAGS, "frames": records}
    write_text(out / "picked.json", json.dumps(document, indent=2) + "\n")
    tags = ", ".join(f"{k} = {v}" for k, v in HYBRID_TAGS.items())
    write_text(out / "README.md", README.format(dataset=dataset, tags=tags))
    return records
