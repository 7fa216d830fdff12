"""Calibrate the SOAP cosine-distance threshold of snb_ml's minima selection.

Relaxes real ShakeNBreak-style trees with the snb_ml runner and measures the defect-site SOAP
cosine distances (``snb_ml.minima.fingerprints``, default SOAP parameters) between relaxed minima
that ended in the SAME local structure (within-basin) and in DIFFERENT ones (between-basin). The
basin of each minimum is decided independently of SOAP, from a geometric order parameter:

* EMT V_Cu (32-atom fcc Cu, ShakeNBreak ``Distortions`` with bond distortions -60%..+60%): one
  basin; every distortion relaxes back to the vacancy.
* EMT H_i in 32-atom Cu: starts at the octahedral site (Unperturbed and bond distortions of its six
  Cu neighbours) and at the tetrahedral site (rattled). Both are EMT minima (tet ~1 eV higher);
  basin = number of Cu within 2.6 Å of H (6 = oct, 4 = tet).
* CHGNet V_Cd in 64-atom CdTe (zinc blende, a = 6.54 Å; ``Distortions.from_structures`` with
  bond distortions -60%..+40% and Dimer, charge 0, fmax 0.05 eV/Å; 8 relaxations): basin = whether
  two Te neighbours of the vacancy form a Te-Te dimer (shortest Te-Te distance < 3.0 Å). CHGNet
  relaxes every start, Dimer included, back to the open vacancy.
* CHGNet Cd_i in 64-atom CdTe, started at the tetrahedral site next to 4 Te (twice) and next to
  4 Cd (twice; 4 relaxations): basin = species of the 4 nearest atoms.

The CHGNet part is 12 relaxations at fmax 0.05. ``--refine`` adds 9 short continuations of those
minima to fmax 0.01 (snb_ml's default) and one V_Cd with two Te held 2.85 Å apart (the DFT dimer,
which CHGNet does not keep), the rest relaxed: the distinct basin that matters most for V_Cd.
The threshold is placed in the gap over minima relaxed to fmax 0.01.

Measured (``--refine``, default SOAP: r_cut 5 Å, n_max 10, l_max 10, sigma 0.3 Å)::

    minima                           fmax  basins                         max within  min between
    EMT V_Cu                         0.01  vacancy x8                     1.8e-06     -
    EMT H_i oct/tet                  0.01  octahedral x5, tetrahedral x3  1.2e-06     1.0e-01
    CHGNet V_Cd                      0.05  open (no dimer) x8             2.1e-02     -
    CHGNet V_Cd re-relaxed           0.01  open (no dimer) x5             1.1e-03     -
    CHGNet V_Cd + fixed Te-Te dimer  0.01  dimer x1, open x5              1.1e-03     7.8e-02
    CHGNet Cd_i                      0.05  CdCdCdCd, CdCdCdTe, TeTeTeTe x2  2.5e-03   9.3e-03
    CHGNet Cd_i re-relaxed           0.01  CdTeTeTe x2, TeTeTeTe x2       5.6e-03     2.1e-01

    gap at fmax <= 0.01 by sigma: 1.0 Å: 5.8e-04 / 1.6e-04 (ratio 0.3); 0.75: 1.0; 0.5: 4.3;
    0.4: 7.3; 0.3: 5.6e-03 / 7.8e-02 (ratio 14); 0.25: 25
    chosen threshold 1.5e-2 (inside the gap 5.6e-3 .. 7.8e-2)

At fmax 0.05 the two Cd_i starts next to 4 Cd were still moving: their snapshots (9.3e-3 apart)
both reach the same hexagonal-like site (3 Te + 3 Cd neighbours) at fmax 0.01. That is why the
gap is taken over fmax 0.01 minima only.

Usage::

    OMP_NUM_THREADS=1 python bench/calibrate_threshold.py [--workdir DIR] [--skip-chgnet] [--refine]

Relaxations are cached in ``DIR`` (default ``./calibration_work``); a rerun only recomputes the
distances. The printed table is what the docstring of ``snb_ml.minima.selection`` quotes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import warnings
from pathlib import Path

import numpy as np
from tabulate import tabulate

from snb_ml.minima.fingerprints import (
    DefectFingerprinter,
    SoapParameters,
    cosine_distance,
    identify_defect_site,
)
from snb_ml.minima.selection import DEFAULT_THRESHOLD, select_defect
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings
from snb_ml.tree.provenance import PROVENANCE_FILE

EMT = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False)
CHGNET = RunSettings(relaxer="chgnet", progress=False, relax=RelaxSettings(fmax=0.05, steps=600))
REFINED = {  # minima re-relaxed to fmax 0.01 by --refine
    "CHGNet V_Cd": [
        "Unperturbed",
        "Bond_Distortion_40.0%",
        "Bond_Distortion_0.0%",
        "Bond_Distortion_-40.0%",
        "Dimer",
    ],
    "CHGNet Cd_i": ["Unperturbed", "Rattled", "Rattled_Td_Cd_1", "Rattled_Td_Cd_2"],
}


def write_snb_tree(distortion_dict: dict, metadata: dict, directory: Path, charges: list[int]) -> Path:
    """Write ``Distortions.apply_distortions()`` output (chosen charges) as a ShakeNBreak tree."""
    from pymatgen.io.vasp import Poscar

    for name, entry in distortion_dict.items():
        for charge in charges:
            structures = entry["charges"][charge]["structures"]
            folder = directory / f"{name}_{charge}"
            items = {"Unperturbed": structures["Unperturbed"], **structures["distortions"]}
            for distortion, structure in items.items():
                (folder / distortion).mkdir(parents=True, exist_ok=True)
                Poscar(structure).write_file(folder / distortion / "POSCAR")
            (folder / "distortion_metadata.json").write_text(json.dumps(metadata, indent=2))
    (directory / "distortion_metadata.json").write_text(json.dumps(metadata, indent=2))
    return directory


def cu_vacancy_tree(workdir: Path) -> Path:
    """V_Cu in 32-atom fcc Cu with ShakeNBreak's own distortions (charge 0)."""
    from pymatgen.core import Lattice, Structure
    from shakenbreak.input import Distortions

    directory = workdir / "Cu_vacancy"
    if directory.is_dir():
        return directory
    bulk = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.59), ["Cu"], [[0, 0, 0]]) * 2
    vacancy = bulk.copy()
    vacancy.remove_sites([0])
    distortions = Distortions.from_structures(
        [vacancy],
        bulk=bulk,
        bond_distortions=[-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6],
        oxidation_states={"Cu": 1},
    )
    distortion_dict, metadata = distortions.apply_distortions(verbose=False)
    return write_snb_tree(distortion_dict, metadata, directory, charges=[0])


def h_interstitial_tree(workdir: Path) -> Path:
    """H_i in 32-atom Cu: octahedral starts (bond distortions) and tetrahedral starts (rattled)."""
    from ase.build import bulk
    from ase.io import write

    directory = workdir / "H_interstitial" / "H_i_Cu_0"
    if directory.is_dir():
        return directory.parent
    a = 3.59
    host = bulk("Cu", "fcc", a=a, cubic=True).repeat(2)
    octahedral, tetrahedral = np.array([0.25, 0.0, 0.0]), np.array([0.125, 0.125, 0.125])
    starts = {}
    for percent in (None, -30.0, -15.0, 15.0, 30.0):
        atoms = host.copy()
        atoms.append("H")
        atoms.positions[-1] = atoms.cell.cartesian_positions(octahedral)
        if percent is not None:
            for i in np.argsort(atoms.get_distances(len(host), range(len(host)), mic=True))[:6]:
                atoms.set_distance(len(host), int(i), 2 * a / 4 * (1 + percent / 100), fix=1, mic=True)
            atoms.rattle(0.05, seed=int(percent) % 97)
        starts["Unperturbed" if percent is None else f"Bond_Distortion_{percent:.1f}%"] = atoms
    for seed in (1, 2, 3):
        atoms = host.copy()
        atoms.append("H")
        atoms.positions[-1] = atoms.cell.cartesian_positions(tetrahedral)
        atoms.rattle(0.05, seed=seed)
        starts[f"Rattled_tet_{seed}"] = atoms
    for folder, atoms in starts.items():
        (directory / folder).mkdir(parents=True, exist_ok=True)
        write(directory / folder / "POSCAR", atoms, format="vasp", direct=True, sort=False)
    metadata = {
        "defects": {
            "H_i_Cu": {
                "unique_site": octahedral.tolist(),
                "defect_site_index": len(host),
                "charges": {"0": {"num_nearest_neighbours": 6, "distorted_atoms": []}},
            }
        }
    }
    (directory / "distortion_metadata.json").write_text(json.dumps(metadata, indent=2))
    return directory.parent


def cdte_vacancy_tree(workdir: Path) -> Path:
    """V_Cd in 64-atom CdTe with ShakeNBreak's distortions -60%..+40% and Dimer (charge 0)."""
    from pymatgen.core import Lattice, Structure
    from shakenbreak.input import Distortions

    directory = workdir / "CdTe_vacancy"
    if directory.is_dir():
        return directory
    bulk = Structure.from_spacegroup("F-43m", Lattice.cubic(6.54), ["Cd", "Te"], [[0, 0, 0], [0.25] * 3]) * 2
    vacancy = bulk.copy()
    vacancy.remove_sites([0])
    distortions = Distortions.from_structures(
        [vacancy],
        bulk=bulk,
        bond_distortions=[-0.6, -0.4, -0.2, 0.0, 0.2, 0.4, "Dimer"],
        oxidation_states={"Cd": 2, "Te": -2},
    )
    distortion_dict, metadata = distortions.apply_distortions(verbose=False)
    return write_snb_tree(distortion_dict, metadata, directory, charges=[0])


def cd_interstitial_tree(workdir: Path) -> Path:
    """Cd_i in 64-atom CdTe, started at both tetrahedral sites (next to 4 Te, next to 4 Cd)."""
    from ase.build import bulk
    from ase.io import write

    directory = workdir / "CdTe_interstitial" / "Cd_i_0"
    if directory.is_dir():
        return directory.parent
    host = bulk("CdTe", "zincblende", a=6.54, cubic=True).repeat(2)
    td_te, td_cd = np.array([0.25, 0.25, 0.25]), np.array([0.375, 0.375, 0.375])
    starts = {}
    for folder, site, rattle in (
        ("Unperturbed", td_te, 0.0),
        ("Rattled", td_te, 0.25),
        ("Rattled_Td_Cd_1", td_cd, 0.05),
        ("Rattled_Td_Cd_2", td_cd, 0.25),
    ):
        atoms = host.copy()
        atoms.append("Cd")
        atoms.positions[-1] = atoms.cell.cartesian_positions(site)
        if rattle:
            atoms.rattle(rattle, seed=len(starts))
        starts[folder] = atoms
    for folder, atoms in starts.items():
        (directory / folder).mkdir(parents=True, exist_ok=True)
        write(directory / folder / "POSCAR", atoms, format="vasp", direct=True, sort=False)
    metadata = {
        "defects": {
            "Cd_i": {
                "unique_site": td_te.tolist(),
                "defect_site_index": len(host),
                "charges": {"0": {"num_nearest_neighbours": 2, "distorted_atoms": []}},
            }
        }
    }
    (directory / "distortion_metadata.json").write_text(json.dumps(metadata, indent=2))
    return directory.parent


def relax_all(workdir: Path, chgnet: bool) -> dict[str, Path]:
    """Generate and relax the calibration trees; return each case's ML defect folder."""
    cases = {
        "EMT V_Cu": (cu_vacancy_tree(workdir), EMT),
        "EMT H_i oct/tet": (h_interstitial_tree(workdir), EMT),
    }
    if chgnet:
        cases["CHGNet V_Cd"] = (cdte_vacancy_tree(workdir), CHGNET)
        cases["CHGNet Cd_i"] = (cd_interstitial_tree(workdir), CHGNET)
    folders = {}
    for case, (tree, settings) in cases.items():
        report = run_tree(tree, settings)
        if report.failed:
            raise SystemExit(f"{case}: relaxations failed: {[d.error for d in report.defects]}")
        folders[case] = report.defects[0].ml_directory
    return folders


def basin_label(case: str, atoms, site) -> str:
    """The basin of a relaxed minimum from a geometric order parameter, independent of SOAP."""
    if site.atom_index is not None:
        others = [i for i in range(len(atoms)) if i != site.atom_index]
        distances = atoms.get_distances(site.atom_index, others, mic=True)
        if case.startswith("EMT H_i"):
            return {6: "octahedral", 4: "tetrahedral"}.get(int((distances < 2.6).sum()), "other")
        nearest = sorted(atoms[others[i]].symbol for i in np.argsort(distances)[:4])
        return "4 nearest: " + "".join(nearest)
    shell = list(site.shell)
    pair = min(atoms.get_distance(i, j, mic=True) for n, i in enumerate(shell) for j in shell[n + 1 :])
    if case.startswith("CHGNet V_Cd"):
        return "Te-Te dimer" if pair < 3.0 else "open (no dimer)"
    return "vacancy"


def refine(workdir: Path, folder: Path, names: list[str]) -> dict[str, object]:
    """Re-relax chosen CHGNet minima to fmax 0.01 eV/Å (cached); for ``--refine``."""
    from ase.io import read, write

    from snb_ml.relax import relax
    from snb_ml.runner import load_model

    target = workdir / "refined" / folder.name
    target.mkdir(parents=True, exist_ok=True)
    model = None
    refined = {}
    for name in names:
        path = target / f"{name}.vasp"
        if not path.is_file():
            model = model or load_model(CHGNET)
            result = relax(
                read(folder / name / "CONTCAR"), model.calculator, RelaxSettings(fmax=0.01, steps=1500)
            )
            write(path, result.atoms, format="vasp", direct=True, sort=False)
        refined[name] = read(path)
    return refined


def constrained_dimer(workdir: Path, folder: Path, site):
    """V_Cd with the two closest Te neighbours held 2.85 Å apart, the rest relaxed (CHGNet, fmax 0.01)."""
    from ase.constraints import FixAtoms
    from ase.io import read, write

    from snb_ml.relax import relax
    from snb_ml.runner import load_model

    path = workdir / "refined" / folder.name / "Te_Te_dimer_fixed.vasp"
    if not path.is_file():
        atoms = read(folder / "Dimer" / "POSCAR")
        shell = list(site.shell)
        _, i, j = min(
            (atoms.get_distance(i, j, mic=True), i, j) for n, i in enumerate(shell) for j in shell[n + 1 :]
        )
        atoms.set_distance(i, j, 2.85, mic=True)
        atoms.set_constraint(FixAtoms(indices=[i, j]))
        result = relax(atoms, load_model(CHGNET).calculator, RelaxSettings(fmax=0.01, steps=1500))
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path, result.atoms, format="vasp", direct=True, sort=False)
    return read(path)


def split_distances(structures: dict, labels: dict[str, str], fingerprinter) -> tuple[list, list]:
    """Cosine distances of all pairs, split into same-basin and different-basin pairs."""
    fingerprints = {name: fingerprinter(atoms) for name, atoms in structures.items()}
    within, between = [], []
    for a, b in itertools.combinations(sorted(structures), 2):
        (within if labels[a] == labels[b] else between).append(
            cosine_distance(fingerprints[a], fingerprints[b])
        )
    return within, between


def minima_groups(folders: dict[str, Path], workdir: Path, refined: bool) -> list[dict]:
    """Sets of relaxed minima to compare, each with its fmax, defect site and species."""
    from ase.io import read

    groups = []
    for case, folder in folders.items():
        provenance = json.loads((folder / PROVENANCE_FILE).read_text())
        site = identify_defect_site(folder)
        structures = {
            name: read(folder / record["output_folder"] / "CONTCAR")
            for name, record in provenance["distortions"].items()
            if record["status"] == "converged"
        }
        species = sorted({s for atoms in structures.values() for s in atoms.get_chemical_symbols()})
        common = {"case": case, "site": site, "species": species}
        groups.append({**common, "name": case, "fmax": provenance["signature"]["fmax"], "minima": structures})
        if refined and case in REFINED:
            tight = refine(workdir, folder, REFINED[case])
            groups.append({**common, "name": f"{case} re-relaxed", "fmax": 0.01, "minima": tight})
            if case == "CHGNet V_Cd":
                dimer = {"Te_Te_dimer_fixed": constrained_dimer(workdir, folder, site), **tight}
                groups.append(
                    {**common, "name": f"{case} + fixed Te-Te dimer", "fmax": 0.01, "minima": dimer}
                )
    return groups


def measure(groups: list[dict], soap: SoapParameters) -> list[list]:
    """One row per group: name, fmax, basins, largest within-basin and smallest between-basin distance."""
    rows = []
    for group in groups:
        fingerprinter = DefectFingerprinter(group["species"], group["site"], soap)
        labels = {
            key: basin_label(group["case"], atoms, group["site"]) for key, atoms in group["minima"].items()
        }
        within, between = split_distances(group["minima"], labels, fingerprinter)
        counts = {label: list(labels.values()).count(label) for label in sorted(set(labels.values()))}
        basins = ", ".join(f"{label} x{n}" for label, n in counts.items())
        rows.append(
            [group["name"], group["fmax"], basins, max(within, default=None), min(between, default=None)]
        )
    return rows


def gap(rows: list[list]) -> tuple[float, float]:
    """Largest within-basin and smallest between-basin distance over minima relaxed to fmax <= 0.01."""
    tight = [row for row in rows if row[1] <= 0.01]
    return (
        max((row[3] for row in tight if row[3] is not None), default=float("nan")),
        min((row[4] for row in tight if row[4] is not None), default=float("nan")),
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("calibration_work"))
    parser.add_argument("--skip-chgnet", action="store_true", help="only the EMT cases")
    parser.add_argument(
        "--refine",
        action="store_true",
        help="also re-relax the CHGNet minima at fmax 0.01 (9 short continuations) and a fixed Te-Te dimer",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    folders = relax_all(workdir, chgnet=not args.skip_chgnet)
    groups = minima_groups(folders, workdir, args.refine)
    soap = SoapParameters()
    rows = measure(groups, soap)
    print(f"Cosine distances between relaxed minima, SOAP {soap.as_dict()}:")
    headers = ["minima", "fmax", "basins (order parameter)", "max within-basin", "min between-basin"]
    table = [[r[0], f"{r[1]:g}", r[2], _fmt(r[3]), _fmt(r[4])] for r in rows]
    print(tabulate(table, headers=headers, tablefmt="simple", disable_numparse=True))
    print("\nGap over minima relaxed to fmax <= 0.01 eV/Å, by SOAP sigma (r_cut 5, n_max 10, l_max 10):")
    sweep = []
    for sigma in (1.0, 0.75, 0.5, 0.4, 0.3, 0.25):
        within, between = gap(measure(groups, SoapParameters(sigma=sigma)))
        sweep.append([f"{sigma:g}", _fmt(within), _fmt(between), f"{between / within:.1f}"])
    print(tabulate(sweep, headers=["sigma (Å)", "max within", "min between", "ratio"], disable_numparse=True))
    within, between = gap(rows)
    verdict = "inside" if within < DEFAULT_THRESHOLD < between else "OUTSIDE"
    print(
        f"\nChosen threshold (snb_ml.minima.selection.DEFAULT_THRESHOLD): {DEFAULT_THRESHOLD:g}, {verdict} "
        f"the gap ({within:.1e}, {between:.1e})"
    )
    for case, folder in folders.items():
        selection = select_defect(folder, write=False)
        print(f"  {case}: {len(selection.clusters)} cluster(s); {selection.headline()}")


if __name__ == "__main__":
    main()
