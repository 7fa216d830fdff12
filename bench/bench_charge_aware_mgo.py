"""Charge-aware vs charge-blind MACE on real VASP relaxations of Mg_O (0..+4) in 216-atom MgO.

Data: ../shared/data/MgO_Mg_O (doped's public example, PBEsol): one relaxation per charge state with
1-37 near-relaxed frames each, plus the bulk cell. A split by relaxation would drop whole charge
states, so here the LAST ~25 % of the frames of each relaxation are held out as the test set (the
frame before them is the validation frame when the relaxation has at least 6 frames; relaxations
with a single frame stay in training). No augmentation: rattled copies would need DFT labels, and
inventing labels is not allowed, so only DFT frames are used.

The SAME small model (identical hyperparameters, seed and epochs) is trained twice, with the
charge embedding (``--charge-mode site`` by default) and without (``none``), and the energy MAE per
charge state on the held-out frames is printed for both.

Run:  python bench/bench_charge_aware_mgo.py [--epochs 40] [--lr 0.01] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "MgO_Mg_O"


def harvest(out: Path) -> Path:
    """Harvest every frame with `snb-ml dataset`, then hold out the last ~25 % of each relaxation."""
    from ase.io import read, write

    from snb_ml.cli import main

    raw = out / "harvested"
    shutil.rmtree(raw, ignore_errors=True)
    args = [
        "dataset", str(DATA), "-o", str(raw), "--split", "frames", "--fractions", "1,0,0",
        "--frames-per-relaxation", "0", "-q",
    ]  # fmt: skip
    try:
        main(args, standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise
    groups = defaultdict(list)
    for atoms in read(raw / "train.xyz", index=":"):
        groups[atoms.info["relaxation"]].append(atoms)
    splits = {"train": [], "valid": [], "test": []}
    for frames in groups.values():
        frames.sort(key=lambda a: int(a.info["frame"]))
        n = len(frames)
        n_test = max(1, round(0.25 * n)) if n >= 2 else 0
        n_valid = 1 if n >= 6 else 0
        n_train = n - n_test - n_valid
        splits["train"] += frames[:n_train]
        splits["valid"] += frames[n_train : n_train + n_valid]
        splits["test"] += frames[n_train + n_valid :]
    dataset = out / "dataset"
    dataset.mkdir(parents=True, exist_ok=True)
    for split, frames in splits.items():
        write(dataset / f"{split}.xyz", frames, format="extxyz")
    counts = {split: len(frames) for split, frames in splits.items()}
    print(f"Frames: {counts} (test = last ~25 % of each relaxation)")
    return dataset


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--charge-mode", default="site", choices=["site", "global", "intensive"])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--r-max", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "snb_ml_bench_mgo"))
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"{DATA} is missing: nothing to benchmark.")
        return 0
    import torch

    from snb_ml.training.config import TrainSettings
    from snb_ml.training.evaluate import evaluate_model
    from snb_ml.training.trainer import train_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    dataset = harvest(out)
    results, timings = {}, {}
    for mode in (args.charge_mode, "none"):
        settings = TrainSettings(
            name=f"mgo_{mode}",
            charge_mode=mode,
            epochs=args.epochs,
            seed=args.seed,
            num_channels=args.channels,
            r_max=args.r_max,
            max_ell=1,
            lr=args.lr,
            threads=args.threads,
        )
        start = time.perf_counter()
        result = train_model(dataset, out / f"model_{mode}", settings, echo=lambda _: None, progress=False)
        timings[mode] = time.perf_counter() - start
        report = evaluate_model(
            result.model_path, dataset, out / f"report_{mode}", "test", echo=lambda _: None, plots=False
        )
        results[mode] = report
    print(f"\nEnergy MAE on held-out frames (eV per 216-atom cell), {args.epochs} epochs, seed {args.seed}:")
    print(f"{'charge':>7} {'n':>3} {args.charge_mode + ' (charge-aware)':>22} {'none (charge-blind)':>20}")
    aware, blind = results[args.charge_mode], results["none"]
    for label, stats in sorted(aware["by_charge"].items(), key=lambda kv: int(kv[0])):
        other = blind["by_charge"][label]
        print(f"{label:>7} {stats['n_frames']:>3} {stats['energy_mae']:>22.3f} {other['energy_mae']:>20.3f}")
    print(
        f"{'all':>7} {aware['overall']['n_frames']:>3} {aware['overall']['energy_mae']:>22.3f} "
        f"{blind['overall']['energy_mae']:>20.3f}"
    )
    print(
        f"force MAE (eV/Å): {aware['overall']['force_mae']:.4f} vs {blind['overall']['force_mae']:.4f}; "
        f"training time (s): {timings[args.charge_mode]:.0f} vs {timings['none']:.0f}"
    )
    summary = {mode: {"by_charge": r["by_charge"], "overall": r["overall"]} for mode, r in results.items()}
    (out / "bench_summary.json").write_text(json.dumps({"args": vars(args), "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
