"""Rebuild the trimmed OUTCAR fixtures from the doped MgO example (../shared/data/MgO_Mg_O, MIT licence).

Keeps the OUTCAR header and the first ionic steps (each up to its closing ``LOOP+`` line), dropping
only the per-step eigenvalue listings (``spin component`` blocks), which nothing here reads. Run from
the repository root:
``python tests/data/vasp/make_fixture.py ../shared/data/MgO_Mg_O``.
"""

import gzip
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent / "MgO_tree"
# source folder -> (fixture folder, ionic steps kept)
LAYOUT = {
    "Mg_O_0": ("Mg_O_0/vasp_std", 3),  # doped layout
    "Mg_O_+2": ("Mg_O_+2/Unperturbed", 3),  # ShakeNBreak layout
    "MgO_bulk": ("MgO_bulk", 1),  # flat bulk folder
}


def trim(source: Path, target: Path, steps: int) -> None:
    """Copy the header and the first ``steps`` ionic steps of ``source`` without eigenvalue listings."""
    kept, done, skipping = [], 0, False
    with gzip.open(source, "rt") as stream:
        for line in stream:
            if line.strip().startswith("spin component") and len(line.split()) == 3:
                skipping = True
            if skipping:
                if line.startswith("-----"):
                    skipping = False
                else:
                    continue
            kept.append(line)
            if "energy(sigma->0)" in line and "energy  without entropy" in line:
                done += 1
            if done == steps and "LOOP+" in line:  # the step's closing line: the step is complete
                break
        # The closing timing block marks a finished run; keep it so the fixture reads as complete.
        in_trailer = False
        for line in stream:
            in_trailer = in_trailer or "General timing" in line
            if in_trailer:
                kept.append(line)
    with gzip.open(target, "wt", compresslevel=9) as stream:
        stream.writelines(kept)


def main(shared: Path) -> None:
    """Write the fixture tree from the shared MgO data."""
    for name, (folder, steps) in LAYOUT.items():
        target = HERE / folder
        target.mkdir(parents=True, exist_ok=True)
        trim(shared / name / "OUTCAR.gz", target / "OUTCAR.gz", steps)
        for extra in ("INCAR", "KPOINTS"):
            shutil.copy(shared / name / extra, target / extra)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
