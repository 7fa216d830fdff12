"""Prepare the inputs of ``demo_finite_temperature.py`` from doped's published CdTe example files.

Already done for the committed files under ``data/``; rerun to reproduce them:

.. code-block:: bash

    # doped's files (MIT licence, https://github.com/SMTG-Bham/doped, commit 93c8b99b):
    #   examples/CdTe/CdTe_thermo_wout_meta.json.gz  -> data/ (copied unchanged)
    #   tests/data/CdTe/CdTe_prim_k101010_dos_vr.xml.gz  (HSE+SOC bulk DOS, 3.4 MB; not committed)
    python prepare_inputs.py dos CdTe_prim_k101010_dos_vr.xml.gz
    python prepare_inputs.py structures          # DFT-relaxed v_Cd cells + bulk from the doped thermo
    python prepare_inputs.py minima --threads 1  # CHGNet energies of the v_Cd_0 minima (tests/data tree)
    # then the CHGNet phonon step, e.g. (see README.md for the timings):
    snb-ml free-energy --defect data/structures/v_Cd_-2_POSCAR --bulk data/structures/bulk_POSCAR \
        --reference Cd=data/structures/Cd_POSCAR --relaxer chgnet --threads 1 --tmax 1500 --tstep 25 \
        --charge -2 -o data/v_Cd_-2_fvib.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
THERMO = DATA / "CdTe_thermo_wout_meta.json.gz"
DOS = DATA / "CdTe_prim_k101010_fermi_dos.json.gz"
TREE = HERE.parents[1] / "tests" / "data" / "CdTe_tree" / "v_Cd_0"


def write_dos(vasprun: str) -> None:
    """Store the total DOS of the bulk vasprun as a compact pymatgen ``FermiDos`` (what doped uses)."""
    from doped.thermodynamics import get_fermi_dos
    from monty.serialization import dumpfn
    from pymatgen.electronic_structure.dos import Dos, FermiDos

    full = get_fermi_dos(vasprun)
    dumpfn(
        FermiDos(
            Dos(full.efermi, full.energies, full.densities), structure=full.structure, nelecs=full.nelecs
        ),
        DOS,
    )
    print(f"wrote {DOS} (nelecs {full.nelecs}, gap {full.get_gap(tol=1e-4, abs_tol=True):.3f} eV)")


def write_structures() -> None:
    """DFT-relaxed v_Cd supercells and bulk from the doped thermo, plus hcp Cd (experimental cell)."""
    from ase.build import bulk
    from monty.serialization import loadfn

    out = DATA / "structures"
    out.mkdir(exist_ok=True)
    thermo = loadfn(THERMO)
    for name in ("v_Cd_0", "v_Cd_-1", "v_Cd_-2"):
        thermo.defect_entries[name].sc_entry.structure.to(filename=str(out / f"{name}_POSCAR"), fmt="poscar")
    thermo.defect_entries["v_Cd_0"].bulk_entry.structure.to(filename=str(out / "bulk_POSCAR"), fmt="poscar")
    bulk("Cd", "hcp", a=2.979, c=5.619).write(out / "Cd_POSCAR", format="vasp")
    print(f"wrote structures to {out}")


def write_minima(threads: int) -> None:
    """Relax the ShakeNBreak v_Cd_0 starting structures with CHGNet; store energies and point groups."""
    from ase.io import read
    from doped.utils.symmetry import point_symmetry_from_structure
    from pymatgen.io.ase import AseAtomsAdaptor

    from snb_ml.relax import RelaxSettings, relax
    from snb_ml.runner import load_model
    from snb_ml.settings import RunSettings

    calculator = load_model(RunSettings(relaxer="chgnet", threads=threads)).calculator
    bulk = AseAtomsAdaptor.get_structure(read(TREE.parent / "CdTe_bulk_POSCAR"))
    minima = {}
    for folder in sorted(p for p in TREE.iterdir() if p.is_dir()):
        result = relax(
            read(folder / "POSCAR"), calculator, RelaxSettings(fmax=1e-3, steps=3000, optimizer="BFGS")
        )
        atoms = result.atoms
        atoms.calc = calculator
        structure = AseAtomsAdaptor.get_structure(atoms)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            group = point_symmetry_from_structure(structure, bulk, relaxed=True, symprec=0.1)
        minima[folder.name] = {"energy": float(atoms.get_potential_energy()), "point_group": group}
        print(folder.name, minima[folder.name], result.status)
    (DATA / "v_Cd_0_minima_chgnet.json").write_text(
        json.dumps({"model": "chgnet", "minima": minima}, indent=1)
    )


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("dos").add_argument("vasprun")
    sub.add_parser("structures")
    sub.add_parser("minima").add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.what == "dos":
        write_dos(args.vasprun)
    elif args.what == "structures":
        write_structures()
    else:
        write_minima(args.threads)


if __name__ == "__main__":
    main()
