"""Does fine-tuning CHGNet on some charge states of a defect improve ground-state recall on the others?

Input: one finished ShakeNBreak DFT search of a defect in several charge states (``CONTCAR`` +
``{defect}.yaml`` per charge state, as ShakeNBreak leaves it; e.g. ``../shared/data/snb_dft/MgO_SnB``,
Mg_O in 0..+4).

1. ``snb-ml dataset``'s harvest reads the search; the minima of ``--train-charges`` (at most
   ``--minima-per-charge`` per charge state: the lowest, Unperturbed, and the rest evenly spaced over
   the distortion range) form the training set; every minimum of ``--test-charges`` is the test set.
2. CHGNet 0.3.0 is fine-tuned on them with the project's default recipe (per-cell energy loss, per-element
   references refitted, nothing frozen) for ``--epochs``; by default on the minima's energies alone
   (``--minima-forces none``): their zero-force labels need a second derivative per step (time and
   memory), and the two ranked the same on V_Cd0 (docs/training.md).
3. Test minima: energy errors of the stock and the fine-tuned model (relative to each charge state's
   lowest DFT minimum) and the Spearman of their energies.
4. ``snb-ml recall`` on the test charge states' defect folders, with the fine-tuned model,
   both policies (``--stock`` runs the stock model through the same benchmark too): ground state found,
   whether the model's lowest minimum is the DFT ground state, Spearman, starts ending in their DFT basin,
   DFT relaxations kept.

Usage::

    python bench/bench_charge_transfer.py ../shared/data/snb_dft/MgO_SnB --out /tmp/transfer \\
        --train-charges 0,1 --test-charges 2 --epochs 20 --threads 2 --batch-size 4

Everything is cached in ``--out`` (the dataset, the model, the ML relaxations); a rerun reports again.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from snb_ml.tree.metadata import split_charge


def pick_minima(frames: list, keep: int) -> list:
    """At most ``keep`` minima of one charge state: the lowest, Unperturbed, then evenly spaced others."""
    if len(frames) <= keep:
        return list(frames)
    ordered = sorted(frames, key=lambda a: str(a.info.get("source", "")))
    lowest = min(frames, key=lambda a: float(a.info["REF_energy"]))
    chosen = [lowest]
    chosen += [a for a in ordered if "Unperturbed" in str(a.info.get("source", "")) and a is not lowest][:1]
    rest = [a for a in ordered if all(a is not c for c in chosen)]
    step = len(rest) / max(keep - len(chosen), 1)
    chosen += [rest[int(i * step)] for i in range(keep - len(chosen))]
    return chosen[:keep]


def build_dataset(search: Path, out: Path, train: set[int], test: set[int], keep: int) -> Path:
    """Harvest ``search`` and split its minima by charge state (cached)."""
    from snb_ml.data.filters import FilterSettings
    from snb_ml.data.harvest import HarvestSettings, harvest, prepare_output, write_dataset

    target = out / "dataset"
    if (target / "train.xyz").is_file():
        return target
    settings = HarvestSettings(filters=FilterSettings(), fractions=(1.0, 0.0, 0.0))
    report = harvest([search], settings, progress=False)
    every = [f for split in report.splits.values() for f in split]
    by_charge: dict[int, list] = {}
    for frame in every:
        by_charge.setdefault(int(frame.info["charge_state"]), []).append(frame)
    missing = (train | test) - set(by_charge)
    if missing:
        have = sorted(by_charge)
        raise SystemExit(f"{search}: no DFT minima for charge states {sorted(missing)} (have {have}).")
    report.splits = {
        "train": [f for q in sorted(train) for f in pick_minima(by_charge[q], keep)],
        "valid": [],
        "test": [f for q in sorted(test) for f in by_charge[q]],
    }
    prepare_output(target, force=True)
    write_dataset(report, target, [search], settings)
    return target


def test_defects(search: Path, test: set[int]) -> list[str]:
    """The defect folders of ``search`` in the test charge states."""
    return sorted(
        child.name for child in search.iterdir() if child.is_dir() and split_charge(child.name)[1] in test
    )


def recall(search: Path, defects: list[str], output: Path, model: str | None, args) -> dict:
    """Both policies of the recall benchmark with ``model`` (None: stock CHGNet)."""
    from snb_ml.recall import benchmark_search
    from snb_ml.relax import RelaxSettings
    from snb_ml.settings import RunSettings

    settings = RunSettings(
        relaxer="chgnet",
        model=model,
        relax=RelaxSettings(fmax=args.fmax),
        threads=args.threads,
        batch_size=args.batch_size,
        progress=False,
    )
    start = time.perf_counter()
    results = {}
    for policy in ("protect", "lean"):
        result = benchmark_search(search, output, settings, policy=policy, defects=defects)
        print(result.table(), "\n", flush=True)
        results[policy] = json.loads(json.dumps(result.to_json(), default=str))
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", type=Path, help="ShakeNBreak DFT search with several charge states")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-charges", default="0,1")
    parser.add_argument("--test-charges", default="2")
    parser.add_argument("--minima-per-charge", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--minima-forces",
        default="none",
        help="zero: train the minima's zero forces too (a second derivative per step); "
        "none: energies only (the two ranked the same on V_Cd0, docs/training.md)",
    )
    parser.add_argument(
        "--train-batch", type=int, default=1, help="structures per training batch (216-atom MgO: ~9 GB each)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=None, help="batched-engine cap (dense cells: 4)")
    parser.add_argument("--fmax", type=float, default=0.01)
    parser.add_argument("--stock", action="store_true", help="also run the stock model through recall")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from chgnet.model import CHGNet

    from snb_ml.training.chgnet_config import ChgnetSettings
    from snb_ml.training.chgnet_trainer import frame_errors, load_base, train_chgnet
    from snb_ml.training.frames import read_split

    train = {int(q) for q in args.train_charges.split(",")}
    test = {int(q) for q in args.test_charges.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(args.search, args.out, train, test, args.minima_per_charge)
    model_dir = args.out / "model"
    model_path = model_dir / "chgnet_model.pth.tar"
    train_seconds = None
    if not model_path.is_file():
        resume = (model_dir / "checkpoint.pth.tar").is_file()
        settings = ChgnetSettings(
            epochs=args.epochs,
            threads=args.threads,
            batch_size=args.train_batch,
            minima_forces=args.minima_forces,
            restart=resume,
        )
        trained = train_chgnet(dataset, model_dir, settings, echo=print, progress=True)
        train_seconds = round(trained.seconds, 1)
    frames = read_split(dataset, "test")
    errors = {
        "stock": frame_errors(load_base("0.3.0"), frames),
        "tuned": frame_errors(CHGNet.from_file(str(model_path)), frames),
    }
    for name, e in errors.items():
        print(
            f"{name:5s} test minima {e['n_frames']}: relative E MAE {e['relative_energy_mae']:.3f} eV/cell, "
            f"Spearman {e['spearman']}",
            flush=True,
        )
    defects = test_defects(args.search, test)
    result = {
        "train_charges": sorted(train),
        "test_charges": sorted(test),
        "train_frames": len(read_split(dataset, "train")),
        "epochs": args.epochs,
        "train_seconds": train_seconds,
        "test_minima": errors,
        "tuned": recall(args.search, defects, args.out / "recall_tuned", str(model_path), args),
    }
    if args.stock:
        result["stock"] = recall(args.search, defects, args.out / "recall_stock", None, args)
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"written {args.out / 'result.json'}")


if __name__ == "__main__":
    main()
