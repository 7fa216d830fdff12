"""Phonon displacement forces: batched evaluator vs one calculator call per displaced supercell.

The finite-displacement step of ``snb-ml free-energy`` evaluates many independent displaced copies of a
defect supercell (108 for V_Cd0 in doped's 63-atom CdTe cell at symprec 1e-3). This times
``snb_ml.thermo.phonons.build_phonopy`` both ways, side by side (alternating, same process, same model),
and checks that the force constants agree.

    OMP_NUM_THREADS=1 python bench/bench_phonons_batched.py --threads 1 --repeats 3

Defaults to the doped CdTe V_Cd0 supercell shipped in examples/doped_thermo/data/structures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT = HERE.parent / "examples" / "doped_thermo" / "data" / "structures" / "v_Cd_0_POSCAR"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structure", type=Path, default=DEFAULT, help="Defect supercell (POSCAR).")
    parser.add_argument("--relaxer", default="chgnet", help="snb_ml relaxer backend (chgnet, mace, ...).")
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (lanes of the batched evaluator)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--symprec", type=float, default=1e-3)
    parser.add_argument(
        "--batch-atoms", type=int, default=None, help="atoms per batched call (default: module's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the timings here")
    args = parser.parse_args()

    import torch
    from ase.io import read

    from snb_ml.batch import batch_evaluator_for
    from snb_ml.runner import load_model
    from snb_ml.settings import RunSettings
    from snb_ml.thermo.phonons import PHONON_BATCH_ATOMS, build_phonopy

    torch.set_num_threads(args.threads)
    loaded = load_model(RunSettings(relaxer=args.relaxer, model=args.model, device=args.device))
    evaluator = batch_evaluator_for(loaded)
    atoms = read(args.structure, format="vasp")
    batch_atoms = args.batch_atoms or PHONON_BATCH_ATOMS
    times: dict[str, list[float]] = {"sequential": [], "batched": []}
    constants = {}
    build_phonopy(atoms, loaded.calculator, symprec=args.symprec, evaluator=evaluator)  # warm-up
    for _ in range(args.repeats):
        for mode in ("sequential", "batched"):
            start = time.perf_counter()
            phonon, count = build_phonopy(
                atoms,
                loaded.calculator,
                symprec=args.symprec,
                evaluator=evaluator if mode == "batched" else None,
                batch_atoms=batch_atoms,
            )
            times[mode].append(time.perf_counter() - start)
            constants[mode] = phonon.force_constants
    difference = float(np.abs(constants["batched"] - constants["sequential"]).max())
    sequential, batched = (statistics.median(times[m]) for m in ("sequential", "batched"))
    result = {
        "structure": str(args.structure),
        "atoms": len(atoms),
        "displacements": count,
        "model": loaded.name,
        "device": args.device,
        "threads": args.threads,
        "batch_atoms": batch_atoms,
        "seconds": times,
        "median_sequential_s": sequential,
        "median_batched_s": batched,
        "speedup": sequential / batched,
        "max_force_constant_difference_eV_A2": difference,
    }
    print(json.dumps(result, indent=1))
    print(
        f"{count} displaced {len(atoms)}-atom cells, {loaded.name} on {args.device}, "
        f"{args.threads} thread(s): "
        f"sequential {sequential:.2f} s, batched {batched:.2f} s (median of {args.repeats}); "
        f"speed-up {sequential / batched:.2f}x; max |ΔΦ| {difference:.2e} eV/Å²"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
