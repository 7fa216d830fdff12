"""Sequential ASE relaxation vs snb_ml's batched engine, same model, same structures, one run.

Structures: ShakeNBreak bond distortions (``Distortions.from_structures``, -60%..+60% spread over N
starts, rattled as ShakeNBreak does) of V_Cd0 in zinc-blende CdTe, in the 64-atom (2x2x2) or 216-atom
(3x3x3) conventional supercell. Each mode runs in its own child process (so peak memory is its own),
one after the other, with the same thread count; the parent prints times, the ratio and the largest
differences between the two engines' final energies and positions.

Usage::

    python bench/bench_batched.py compare [--atoms 64] [--structures 15] [--model chgnet] [--threads 2]
    python bench/bench_batched.py scaling [--model chgnet] [--threads 2]   # N and atom-count series
    python bench/bench_batched.py compare --device cuda --structures 120   # on a GPU machine
    python bench/bench_batched.py compare --decompose   # also: one lane; one structure per call
    python bench/bench_batched.py compare --repeat 3    # median of three alternating pairs

``--model`` is ``chgnet`` (default, offline) or a path to a MACE ``.model`` file. ``--fmax`` and
``--steps`` default to snb_ml's (0.01 eV/Å, 1000).
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

import numpy as np

HERE = Path(__file__).resolve().parent
BULK = HERE.parent / "tests" / "data" / "CdTe_tree" / "CdTe_bulk_POSCAR"


def make_structures(n: int, atoms: int, path: Path) -> None:
    """Write ``n`` ShakeNBreak distortions of V_Cd0 in a CdTe supercell of ``atoms`` sites."""
    import contextlib
    import io

    from ase.io import write
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor
    from shakenbreak.input import Distortions

    warnings.filterwarnings("ignore")
    bulk64 = Structure.from_file(BULK)
    a = bulk64.lattice.a / 2
    conventional = Structure.from_spacegroup(
        "F-43m", [[a, 0, 0], [0, a, 0], [0, 0, a]], ["Cd", "Te"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    )
    repeats = round((atoms / 8) ** (1 / 3))
    bulk = conventional * repeats
    defect = bulk.copy()
    defect.remove_sites([0])
    distortions = [round(x, 3) for x in np.linspace(-0.6, 0.6, n)]
    with contextlib.redirect_stdout(io.StringIO()):
        generator = Distortions.from_structures(
            [(defect, bulk[0].frac_coords)],
            bulk=bulk,
            bond_distortions=distortions,
            oxidation_states={"Cd": 2, "Te": -2},
        )
        result, _ = generator.apply_distortions()
    structures = [
        AseAtomsAdaptor.get_atoms(structure)
        for defect_data in result.values()
        for charge, charge_data in defect_data["charges"].items()
        if int(charge) == 0
        for structure in charge_data["structures"]["distortions"].values()
    ]
    write(path, structures[:n], format="extxyz")


def load_model(model: str, device: str):
    from snb_ml.relaxers.base import CalculatorRequest
    from snb_ml.relaxers.chgnet_backend import load_chgnet
    from snb_ml.relaxers.mace_backend import load_mace

    request = CalculatorRequest(model=None if model == "chgnet" else model, device=device)
    return load_chgnet(request) if model == "chgnet" else load_mace(request)


def child(mode: str, structures_path: str, model: str, device: str, fmax: float, steps: int) -> dict:
    """Relax every structure in ``structures_path`` with one engine; return timings and results."""
    import resource

    import torch
    from ase.io import read

    from snb_ml.batch import BatchJob, batch_evaluator_for, relax_batched
    from snb_ml.batch.memory import peak_resident
    from snb_ml.relax import RelaxSettings, relax

    warnings.filterwarnings("ignore")
    structures = read(structures_path, index=":")
    loaded = load_model(model, device)
    settings = RelaxSettings(fmax=fmax, steps=steps)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    calls = 0
    evaluator_options = {}
    engine_options = {}
    if mode == "batched-1lane":  # the batched engine without its CPU lanes: one model call, all threads
        evaluator_options["lanes"] = 1
    if mode == "one-by-one":  # the batched engine's evaluator and FIRE, one structure per call
        evaluator_options["lanes"] = 1
        engine_options["max_structures"] = 1
    if mode in ("sequential", "stock"):
        calculator = loaded.calculator
        if mode == "stock" and model == "chgnet":
            # CHGNet's own ASE calculator: energy, forces, stress and magnetic moments at every step.
            from chgnet.model.dynamics import CHGNetCalculator

            calculator = CHGNetCalculator(model=loaded.calculator.model, use_device=device)
        results = [relax(atoms, calculator, settings) for atoms in structures]
        calls = sum(r.steps + 1 for r in results)
    else:

        def count(_n):
            nonlocal calls
            calls += 1

        jobs = [BatchJob(i, atoms) for i, atoms in enumerate(structures)]
        evaluator = batch_evaluator_for(loaded)
        for name, value in evaluator_options.items():
            setattr(evaluator, name, value)
        finished = dict(relax_batched(jobs, evaluator, settings, on_step=count, **engine_options))
        results = [finished[job] for job in jobs]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "model_calls": calls,
        "steps": [r.steps for r in results],
        "statuses": [r.status for r in results],
        "energies": [r.energy for r in results],
        "positions": [r.atoms.positions.tolist() for r in results],
        # snb_ml's own peak: the batched engine resets the kernel's high-water mark to measure calls
        "peak_rss_mb": peak_resident() / 2**20,
        "rss_growth_mb": peak_resident() / 2**20 - rss_before / 1024,
        "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
    }


def run_child(mode: str, structures: Path, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [
        sys.executable,
        __file__,
        "_child",
        mode,
        str(structures),
        "--model",
        args.model,
        "--device",
        args.device,
        "--fmax",
        str(args.fmax),
        "--steps",
        str(args.steps),
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(n: int, atoms: int, args, workdir: Path) -> dict:
    structures = workdir / f"vcd_{atoms}_{n}.xyz"
    if not structures.exists():
        make_structures(n, atoms, structures)
    stock = run_child("stock", structures, args) if args.model == "chgnet" and not args.skip_stock else None
    # Repeats alternate the two engines, so a slow spell of a shared host hits both alike.
    pairs = [
        (run_child("sequential", structures, args), run_child("batched", structures, args))
        for _ in range(args.repeat)
    ]
    ratios = [one["seconds"] / other["seconds"] for one, other in pairs]
    seq, bat = pairs[int(np.argsort(ratios)[len(ratios) // 2])]  # the pair with the median ratio
    parts = (
        {mode: run_child(mode, structures, args) for mode in ("batched-1lane", "one-by-one")}
        if args.decompose
        else {}
    )
    de = np.nanmax(np.abs(np.array(seq["energies"]) - np.array(bat["energies"])))
    dr = max(
        np.abs(np.array(a) - np.array(b)).max()
        for a, b in zip(seq["positions"], bat["positions"], strict=True)
    )
    return {
        "n": n,
        "atoms": atoms,
        "stock": stock,
        "seq": seq,
        "bat": bat,
        "parts": parts,
        "ratio": seq["seconds"] / bat["seconds"],
        "repeats": [(one["seconds"], other["seconds"]) for one, other in pairs],
        "max_dE_meV": 1000 * de,
        "max_dr_A": dr,
    }


def report(row: dict, device: str) -> None:
    seq, bat = row["seq"], row["bat"]
    per_min = 60 * row["n"] / bat["seconds"]
    print(
        f"{row['n']:>4} x V_Cd in {row['atoms']:>3}-site cell | sequential {seq['seconds']:8.1f} s "
        f"({seq['model_calls']} calls, mean {np.mean(seq['steps']):.0f} steps) | batched "
        f"{bat['seconds']:8.1f} s ({bat['model_calls']} calls) | ratio {row['ratio']:5.2f} | "
        f"{per_min:6.1f} relax/min | max |dE| {row['max_dE_meV']:.3f} meV, max |dr| {row['max_dr_A']:.4f} A "
        f"| statuses seq {sorted(set(seq['statuses']))} bat {sorted(set(bat['statuses']))}"
    )
    if len(row["repeats"]) > 1:
        runs = ", ".join(f"{one:.1f}/{other:.1f} s = {one / other:.2f}" for one, other in row["repeats"])
        print(f"      repeats (sequential/batched, alternating; the median pair is shown above): {runs}")
    if row["stock"] is not None:
        stock = row["stock"]
        print(
            f"      stock ASE loop with CHGNet's own CHGNetCalculator (computes stress + magmoms too): "
            f"{stock['seconds']:.1f} s; batched/stock speed ratio {stock['seconds'] / bat['seconds']:.2f}"
        )
    for mode, part in row["parts"].items():
        what = {
            "batched-1lane": "batched engine, one lane (all threads on one model call per step)",
            "one-by-one": "batched engine's evaluator and FIRE, one structure per model call",
        }[mode]
        print(
            f"      {what}: {part['seconds']:.1f} s ({part['model_calls']} calls); "
            f"sequential/this {seq['seconds'] / part['seconds']:.2f}"
        )
    memory = f"peak RSS seq {seq['peak_rss_mb']:.0f} MB, batched {bat['peak_rss_mb']:.0f} MB"
    if device.startswith("cuda"):
        memory += f"; GPU peak seq {seq['gpu_peak_mb']:.0f} MB, batched {bat['gpu_peak_mb']:.0f} MB"
    print(f"      {memory}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["compare", "scaling", "_child"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--atoms", type=int, default=64, choices=[64, 216, 512])
    parser.add_argument("--structures", type=int, default=15)
    parser.add_argument("--model", default="chgnet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument(
        "--repeat", type=int, default=1, help="run sequential and batched this many times, alternating"
    )
    parser.add_argument(
        "--skip-stock", action="store_true", help="leave out CHGNet's own ASE calculator (the slowest run)"
    )
    parser.add_argument(
        "--decompose",
        action="store_true",
        help="also time the batched engine with one lane and with one structure per call",
    )
    args = parser.parse_args()
    if args.command == "_child":
        print(json.dumps(child(args.rest[0], args.rest[1], args.model, args.device, args.fmax, args.steps)))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="snb_ml_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"model {args.model}, device {args.device}, {args.threads} thread(s), fmax {args.fmax}, "
        f"cores visible {os.cpu_count()}"
    )
    if args.device == "cpu":
        print("GPU: not measured in this run (pass --device cuda on a GPU machine).")
    cases = [(args.structures, args.atoms)]
    if args.command == "scaling":
        cases = [(15, 64), (30, 64), (60, 64), (15, 216)]
    for n, atoms in cases:
        report(compare(n, atoms, args, workdir), args.device)


if __name__ == "__main__":
    main()
