"""snb_ml's batched FIRE vs torch-sim's batched FIRE vs the sequential ASE loop, fixed step count.

Same structures as ``bench_batched.py`` (ShakeNBreak distortions of V_Cd0 in the 64-site CdTe cell)
and one MACE model of realistic size (MACE-MP "small" hyperparameters: 128x0e, max_L 0, r_max 6,
2 interactions, correlation 3, 89 elements) with random weights: fine for timing, not for physics,
so every engine runs a fixed number of FIRE steps (fmax 1e-12, no convergence, guards off).

Variants (each in its own child process, ``--repeats`` times, best time kept):

* ``ours``: ``snb_ml.batch.relax_batched`` + ``MaceBatchEvaluator`` (all structures in one batch).
* ``torchsim``: ``torch_sim.optimizers.fire(md_flavor="ase_fire")`` + ``torch_sim.models.mace.MaceModel``
  (stress off), its init and step functions called directly (no convergence checks, no autobatcher).
* ``sequential``: ``snb_ml.relax.relax`` with the ``MACECalculator`` (ASE's FIRE), one structure at a time.
* ``ours_tsorder`` (untimed, ``--check-order``): our engine with torch-sim's FIRE ordering (alpha is
  decayed *before* the velocity mixing; ASE mixes first, then decays), to show that this ordering is
  the only difference between the two FIRE implementations.

torch-sim is not a dependency of snb_ml. Install it outside the venv and put it on PYTHONPATH::

    pip install --no-deps --target /tmp/ts_site torch-sim-atomistic==0.3.0 vesin vesin-torch tables \\
        numexpr blosc2 py-cpuinfo
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/ts_site python bench/bench_torchsim.py [--structures 15] \\
        [--steps 30] [--repeats 2] [--check-order]

Without torch_sim importable the script prints why and exits 0.
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
FORCE_SCALE = 3000.0
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def torch_sim_problem() -> str | None:
    """None if torch_sim and its MACE wrapper import; otherwise the error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch_sim  # noqa: F401
            from torch_sim.models.mace import MaceModel  # noqa: F401
    except Exception as exc:  # any import failure means: skip
        return f"{type(exc).__name__}: {exc}"
    return None


def build_model(path: Path, dtype: str, elements: int = 89, seed: int = 0) -> None:
    """A ScaleShiftMACE with MACE-MP 'small' hyperparameters and random weights, saved like MACE does."""
    import importlib

    import torch
    from mace import modules

    o3 = importlib.import_module("e3nn.o3")
    # MACE-MP covers Z 1..89; with 2 elements only Cd and Te (the element one-hot is the only change).
    z_list = list(range(1, 90)) if elements == 89 else [48, 52]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=6.0,
            num_bessel=10,
            num_polynomial_cutoff=5,
            max_ell=3,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=2,
            num_elements=len(z_list),
            hidden_irreps=o3.Irreps("128x0e"),
            MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.array([-1.0 - 0.01 * i for i in range(len(z_list))]),
            avg_num_neighbors=40.0,
            atomic_numbers=z_list,
            correlation=3,
            gate=torch.nn.functional.silu,
            radial_MLP=[64, 64, 64],
            # Random weights give ~1e-4 eV/Å forces at scale 1; this scale gives ~0.1-1 eV/Å, as on
            # distorted ShakeNBreak starts, so FIRE really moves the atoms.
            atomic_inter_scale=FORCE_SCALE,
            atomic_inter_shift=0.0,
        )
        model = (model.double() if dtype == "float64" else model.float()).eval()
        torch.save(model, path)
    finally:
        torch.set_default_dtype(previous)


def _settings(steps: int):
    from snb_ml.relax import RelaxSettings

    # Fixed step count: nothing converges (fmax tiny) and no guard stops a run early.
    return RelaxSettings(fmax=1e-12, steps=steps, min_distance_fraction=0.0, max_energy_rise=1e9)


def _load(model_path: str, dtype: str):
    from snb_ml.relaxers.base import CalculatorRequest
    from snb_ml.relaxers.mace_backend import load_mace

    return load_mace(CalculatorRequest(model=model_path, device="cpu", dtype=dtype))


def _torchsim_order_fire():
    """Our FireState, but with torch-sim's ordering: alpha/dt updated before the velocity mixing."""
    from snb_ml.batch.fire import FireState

    class TorchSimOrderFire(FireState):
        def step(self, positions, forces):
            force = forces.ravel()
            if self.velocity is None:
                self.velocity = np.zeros_like(force)
            elif np.vdot(force, self.velocity) > 0.0:
                if self.n_steps > self.n_min:
                    self.dt = min(self.dt * self.f_inc, self.dt_max)
                    self.a *= self.f_a
                self.n_steps += 1
                self.velocity = (1.0 - self.a) * self.velocity + self.a * force / np.sqrt(
                    np.vdot(force, force)
                ) * np.sqrt(np.vdot(self.velocity, self.velocity))
            else:
                self.velocity[:] *= 0.0
                self.a = self.a_start
                self.dt *= self.f_dec
                self.n_steps = 0
            self.velocity += self.dt * force
            displacement = self.dt * self.velocity
            norm = np.sqrt(np.vdot(displacement, displacement))
            if norm > self.max_step:
                displacement = self.max_step * displacement / norm
            return positions + displacement.reshape(positions.shape)

    return TorchSimOrderFire


def child(mode: str, structures_path: str, model_path: str, dtype: str, steps: int) -> dict:
    """Run one variant; return its time (model loading excluded) and final positions."""
    import torch
    from ase.io import read

    warnings.filterwarnings("ignore")
    structures = read(structures_path, index=":")
    start = None
    if mode == "torchsim":
        import torch_sim as ts
        from torch_sim.models.mace import MaceModel
        from torch_sim.optimizers import fire

        torch_dtype = torch.float64 if dtype == "float64" else torch.float32
        network = torch.load(model_path, map_location="cpu", weights_only=False)
        model = MaceModel(model=network, device=torch.device("cpu"), dtype=torch_dtype, compute_stress=False)
        start = time.perf_counter()
        state = ts.initialize_state(structures, model.device, model.dtype)
        init_fn, step_fn = fire(model=model, md_flavor="ase_fire")
        state = init_fn(state)  # first model call
        for _ in range(steps):
            state = step_fn(state)  # one move + one model call
        seconds = time.perf_counter() - start
        index = state.system_idx.cpu().numpy()
        all_positions = state.positions.detach().cpu().numpy()
        positions = [all_positions[index == i] for i in range(len(structures))]
        energies = state.energy.detach().cpu().numpy().tolist()
        steps_done = [steps] * len(structures)
        calls = steps + 1
    else:
        loaded = _load(model_path, dtype)
        settings = _settings(steps)
        if mode == "sequential":
            from snb_ml.relax import relax

            start = time.perf_counter()
            results = [relax(atoms, loaded.calculator, settings) for atoms in structures]
            calls = sum(r.steps + 1 for r in results)
        else:
            import snb_ml.batch.engine as engine
            from snb_ml.batch import BatchJob, batch_evaluator_for, relax_batched

            if mode == "ours_tsorder":
                engine.FireState = _torchsim_order_fire()  # this child process only
            calls = 0

            def count(_n):
                nonlocal calls
                calls += 1

            start = time.perf_counter()
            jobs = [BatchJob(i, atoms) for i, atoms in enumerate(structures)]
            evaluator = batch_evaluator_for(loaded)
            finished = dict(relax_batched(jobs, evaluator, settings, on_step=count))
            results = [finished[job] for job in jobs]
        seconds = time.perf_counter() - start
        positions = [r.atoms.positions for r in results]
        energies = [r.energy for r in results]
        steps_done = [r.steps for r in results]
    return {
        "seconds": seconds,
        "model_calls": calls,
        "steps": steps_done,
        "energies": energies,
        "positions": [np.asarray(p).tolist() for p in positions],
    }


def run_child(mode: str, structures: Path, model: Path, args) -> dict:
    command = [sys.executable, __file__, "_child", mode, str(structures), str(model),
               "--dtype", args.dtype, "--steps", str(args.steps)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_dr(a: dict, b: dict) -> float:
    return max(
        float(np.abs(np.array(x) - np.array(y)).max())
        for x, y in zip(a["positions"], b["positions"], strict=True)
    )


def max_de(a: dict, b: dict) -> float:
    return float(np.max(np.abs(np.array(a["energies"]) - np.array(b["energies"]))))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="compare", choices=["compare", "_child"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--structures", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--elements", type=int, default=89, choices=[2, 89], help="model elements")
    parser.add_argument("--variants", default="ours,torchsim,sequential")
    parser.add_argument("--check-order", action="store_true", help="also run ours_tsorder (untimed)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    if args.command == "_child":
        mode, structures, model = args.rest
        print(json.dumps(child(mode, structures, model, args.dtype, args.steps)))
        return

    variants = [v for v in args.variants.split(",") if v]
    problem = torch_sim_problem() if "torchsim" in variants else None
    if problem is not None:
        print(f"SKIPPED: torch_sim is not importable ({problem}).\n"
              "Install it outside the venv (see this script's docstring) and set PYTHONPATH.")  # fmt: skip
        return

    from bench_batched import make_structures

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="snb_ml_bench_ts_"))
    workdir.mkdir(parents=True, exist_ok=True)
    structures = workdir / f"vcd_64_{args.structures}.xyz"
    if not structures.exists():
        make_structures(args.structures, 64, structures)
    model = workdir / f"mace_mp_small_random_{args.elements}el_{args.dtype}.model"
    if not model.exists():
        build_model(model, args.dtype, args.elements)
    print(
        f"{args.structures} x V_Cd0 in the 64-site CdTe cell, {args.steps} FIRE steps, random MACE "
        f"(MP-small size, {args.elements} elements, {args.dtype}), {args.threads} thread(s), "
        f"best of {args.repeats}"
    )

    best: dict[str, dict] = {}
    for variant in variants:
        runs = [run_child(variant, structures, model, args) for _ in range(args.repeats)]
        best[variant] = min(runs, key=lambda r: r["seconds"])
        times = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        print(f"  {variant:<11} runs: {times} s; steps {sorted(set(best[variant]['steps']))}")
    if args.check_order:
        best["ours_tsorder"] = run_child("ours_tsorder", structures, model, args)

    reference = best.get("sequential") or best[variants[0]]
    print(f"\n{'engine':<12} {'seconds':>8} {'calls':>6} {'s/step/structure':>17} {'x vs seq':>9} "
          f"{'max|dr| vs seq (A)':>19} {'max|dE| vs seq (meV)':>21}")  # fmt: skip
    for name, run in best.items():
        per = run["seconds"] / (args.steps * args.structures)
        speedup = reference["seconds"] / run["seconds"] if name != "ours_tsorder" else float("nan")
        print(f"{name:<12} {run['seconds']:8.1f} {run['model_calls']:6d} {per:17.4f} {speedup:9.2f} "
              f"{max_dr(run, reference):19.2e} {1000 * max_de(run, reference):21.3e}")  # fmt: skip
    if "torchsim" in best and "ours" in best:
        print(f"\nmax |dr| torchsim vs ours: {max_dr(best['torchsim'], best['ours']):.2e} A")
    if "torchsim" in best and "ours_tsorder" in best:
        print(f"max |dr| torchsim vs ours with torch-sim's FIRE ordering: "
              f"{max_dr(best['torchsim'], best['ours_tsorder']):.2e} A")  # fmt: skip


if __name__ == "__main__":
    main()
