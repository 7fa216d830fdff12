"""Peak resident memory and speed of the batched CHGNet engine on CPU: old atom budget vs memory bound.

Relaxes the 12 ShakeNBreak starts of Mg_O in the 216-atom MgO supercell (the doped example's search,
``../shared/data/snb_dft/MgO_SnB``) with the batched engine, in two modes, each in its own child process
(so each peak is its own), alternating when repeated:

- ``old``: the former default budget, 1,024 atoms per model call whatever they cost (4 x 216 atoms);
- ``new``: today's default, one structure first, then as many atoms per call as the measured memory
  per atom leaves room for under ``CPU_MEMORY_LIMIT`` (2 GB), freed memory handed back after each call;
- ``keep`` (``--modes old,new,keep``): the memory bound without handing freed memory back.

Both run the same FIRE steps on the same structures, so their energies agree to float noise; ``--steps``
keeps the run short (memory peaks in the first calls; speed is reported per atom-step).

``--cdte-atoms 216`` uses ShakeNBreak distortions of V_Cd in a CdTe supercell instead (made as in
``bench/bench_batched.py``; no shared data needed): a less dense crystal, so more cells fit one call.

Usage::

    python bench/bench_memory.py [--data ../shared/data/snb_dft/MgO_SnB] [--defect Mg_O_0] \
        [--structures 12] [--steps 3] [--threads 2] [--repeat 1]
    python bench/bench_memory.py --cdte-atoms 216 --structures 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "snb_dft" / "MgO_SnB"


def starts(data: Path, defect: str, count: int) -> list[Path]:
    """POSCARs of the defect's ShakeNBreak starts (Unperturbed first)."""
    folders = sorted(
        (p for p in (data / defect).iterdir() if (p / "POSCAR").is_file()),
        key=lambda p: (p.name != "Unperturbed", p.name),
    )
    if not folders:
        sys.exit(f"No distortion folders with a POSCAR in {data / defect}; pass --data and --defect.")
    return [p / "POSCAR" for p in folders[:count]]


def cdte_starts(atoms: int, count: int, workdir: Path) -> list[Path]:
    """``count`` ShakeNBreak distortions of V_Cd0 in a CdTe cell, as one extxyz file."""
    sys.path.insert(0, str(HERE))
    from bench_batched import make_structures

    path = workdir / f"vcd_{atoms}_{count}.xyz"
    if not path.exists():
        make_structures(count, atoms, path)
    return [path]


def child(mode: str, paths: list[str], steps: int) -> dict:
    """Relax the structures with the batched engine in ``mode``; return memory, time and energies."""
    from ase.io import read

    from snb_ml.batch import BatchJob, batch_evaluator_for, relax_batched
    from snb_ml.batch.engine import CPU_ATOMS_PER_BATCH
    from snb_ml.batch.memory import peak_resident, resident
    from snb_ml.relax import RelaxSettings
    from snb_ml.relaxers.base import CalculatorRequest
    from snb_ml.relaxers.chgnet_backend import load_chgnet

    warnings.filterwarnings("ignore")
    structures = [atoms for path in paths for atoms in read(path, index=":")]
    evaluator = batch_evaluator_for(load_chgnet(CalculatorRequest(device="cpu")))
    loaded = resident()
    sizes: list[int] = []
    jobs = [BatchJob(i, atoms) for i, atoms in enumerate(structures)]
    options = {"max_atoms": CPU_ATOMS_PER_BATCH} if mode == "old" else {}
    if mode == "keep":  # the memory bound without handing freed memory back: what the trim costs
        import snb_ml.batch.memory

        snb_ml.batch.memory.release_free_memory = lambda: None
    start = time.perf_counter()
    results = dict(
        relax_batched(jobs, evaluator, RelaxSettings(steps=steps), on_step=sizes.append, **options)
    )
    seconds = time.perf_counter() - start
    atom_steps = sum((results[job].steps + 1) * len(job.atoms) for job in jobs)
    return {
        "mode": mode,
        "seconds": seconds,
        "model_calls": len(sizes),
        "largest_call": max(sizes),
        "atom_steps_per_s": atom_steps / seconds,
        "resident_after_load_mb": (loaded or 0) / 1e6,
        "peak_rss_mb": peak_resident() / 1e6,
        "energies": [results[job].energy for job in jobs],
    }


def run_child(mode: str, poscars: list[Path], args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, __file__, "_child", mode, *map(str, poscars), "--steps", str(args.steps)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="compare", choices=["compare", "_child"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--defect", default="Mg_O_0")
    parser.add_argument("--structures", type=int, default=12)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--modes", default="old,new", help="old,new (default); add 'keep' for the bound without the trim"
    )
    parser.add_argument("--cdte-atoms", type=int, default=None, choices=[64, 216, 512])
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "snb_ml_bench_memory")
    args = parser.parse_args()
    if args.command == "_child":
        print(json.dumps(child(args.rest[0], args.rest[1:], args.steps)))
        return
    if args.cdte_atoms:
        args.workdir.mkdir(parents=True, exist_ok=True)
        poscars = cdte_starts(args.cdte_atoms, args.structures, args.workdir)
        what = f"{args.structures} V_Cd distortions in a {args.cdte_atoms}-site CdTe cell"
    else:
        poscars = starts(args.data, args.defect, args.structures)
        what = f"{len(poscars)} starts of {args.defect} from {args.data}"
    print(
        f"{what}, CHGNet on CPU, {args.threads} thread(s), "
        f"{args.steps} FIRE steps each, cores visible {os.cpu_count()}"
    )
    runs = []
    for _ in range(args.repeat):  # alternating, so a slow spell of a shared host hits both alike
        runs += [run_child(mode, poscars, args) for mode in args.modes.split(",")]
    for run in runs:
        print(
            f"  {run['mode']:>3}: peak RSS {run['peak_rss_mb']:7.0f} MB (after model load "
            f"{run['resident_after_load_mb']:.0f} MB) | {run['seconds']:7.1f} s, "
            f"{run['model_calls']} model calls, "
            f"largest {run['largest_call']} structure(s) | {run['atom_steps_per_s']:.1f} atom-steps/s"
        )
    old = [r for r in runs if r["mode"] == "old"]
    new = [r for r in runs if r["mode"] == "new"]
    ratio = sorted(o["seconds"] / n["seconds"] for o, n in zip(old, new, strict=True))[len(old) // 2]
    de = max(abs(a - b) for a, b in zip(old[0]["energies"], new[0]["energies"], strict=True))
    print(
        f"old/new time ratio (median of {len(old)}): {ratio:.2f} (below 1: the memory bound costs speed); "
        f"peak RSS old {max(r['peak_rss_mb'] for r in old):.0f} MB vs new "
        f"{max(r['peak_rss_mb'] for r in new):.0f} MB; "
        f"max |dE| between modes {1000 * de:.3f} meV"
    )


if __name__ == "__main__":
    main()
