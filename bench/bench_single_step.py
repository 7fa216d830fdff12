"""Single-step predictor benchmark: coordinate MAE vs the dummy baseline, residual CHGNet steps, throughput.

Inputs: the ML trees written by ``bench/make_single_step_data.py`` (``DATA/ml/<host>``: CHGNet-relaxed
ShakeNBreak distortions), optionally a second such folder with a host left out of training
(``--unseen``), and a real ShakeNBreak DFT search (``--dft``, POSCAR -> DFT CONTCAR; default the shared
MgO_SnB search).

Steps (each skipped when its output exists, so an interrupted run resumes):

1. pairs: ``snb-ml single-step dataset``'s harvester on ``DATA/ml``, split by defect (held-out defects of
   seen hosts go to ``test``);
2. training: ``snb-ml train --kind single-step``'s trainer;
3. coordinate MAE (all atoms, within 3/4/5/6 Å of the defect) of the model and of the dummy (the
   unrelaxed start), on the starts (frame 0) of held-out defects, of the unseen host, and of the DFT search;
4. residual steps: CHGNet FIRE (fmax 0.01 eV/Å, the batched engine) from the prediction and from the
   unrelaxed start, side by side in one run, on held-out starts;
5. throughput: marking + graph building + forward passes for 64-atom cells, with ``--threads`` threads.

Usage::

    python bench/bench_single_step.py --data DATA --unseen DATA_UNSEEN --out OUT [--epochs 40]
    python bench/bench_single_step.py ... --dft ../shared/data/snb_dft/MgO_SnB --residual 24 --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DFT = HERE.parent.parent / "shared" / "data" / "snb_dft" / "MgO_SnB"


def harvest(paths, out: Path, split_fractions, frames: int, bulk=()):
    from snb_ml.predictor.dataset import PairSettings, harvest_pairs, write_pairs

    settings = PairSettings(frames=frames, split="defect", fractions=split_fractions, seed=0)
    if not (out / "dataset.json").is_file():
        out.mkdir(parents=True, exist_ok=True)
        report = harvest_pairs(paths, bulk_files=list(bulk), settings=settings, progress=False)
        write_pairs(report, out, paths, settings)
        print(report.table(), flush=True)
    return out


def starts_only(pairs):
    return [p for p in pairs if int(p[2].get("frame", 0)) == 0]


def coordinate_errors(predictor, pairs, by=None):
    from snb_ml.predictor.metrics import CoordinateErrors

    groups = {}
    predicted = predictor.predict([m for m, _, _ in pairs])
    for (marked, target, info), positions in zip(pairs, predicted, strict=True):
        key = by(info) if by else "all"
        model, dummy = groups.setdefault(key, (CoordinateErrors(), CoordinateErrors()))
        model.add(marked, positions, target)
        dummy.add(marked, marked.atoms.positions, target)
    table = {}
    for key, (model, dummy) in sorted(groups.items()):
        m, d = model.as_dict(), dummy.as_dict()
        table[key] = {
            "structures": sum(1 for _, _, info in pairs if (by(info) if by else "all") == key),
            "model": m,
            "dummy": d,
            "reduction": {k: 1 - m[k] / d[k] for k in m},
        }
    return table


def _recorded_steps(info) -> int | None:
    """FIRE steps of the ML tree's own relaxation of this start (same engine, model and fmax)."""
    output = Path(info["source"])
    provenance = json.loads((output.parent / "snb_ml_provenance.json").read_text())
    for record in provenance["distortions"].values():
        if (record.get("output_folder") or record["folder"]) == output.name:
            fmax = provenance["settings"]["relax"]["fmax"]
            return (
                record["steps"] if record["status"] in ("converged", "high_energy") and fmax == 0.01 else None
            )
    return None


def residual_steps(predictor, pairs, count: int, remeasure: bool, seed: int = 0):
    """CHGNet FIRE steps to fmax 0.01 from the prediction and from the start.

    From-start steps are those the ML tree recorded for the same start (the batched engine, CHGNet
    0.3.0, FIRE, fmax 0.01); ``remeasure`` relaxes the starts again in the same batched run instead.
    """
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    from snb_ml.batch import BatchJob, relax_batched
    from snb_ml.relax import RelaxSettings
    from snb_ml.relaxers.chgnet_batch import ChgnetBatchEvaluator

    rng = np.random.default_rng(seed)
    usable = [p for p in pairs if remeasure or _recorded_steps(p[2]) is not None]
    chosen = [usable[i] for i in sorted(rng.choice(len(usable), size=min(count, len(usable)), replace=False))]
    predicted = predictor.predict([m for m, _, _ in chosen])
    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(model_name="0.3.0", verbose=False)
    evaluator = ChgnetBatchEvaluator(CHGNetCalculator(model=model, use_device="cpu"))
    jobs = []
    steps = {"start": {}, "predicted": {}}
    for index, ((marked, _, info), positions) in enumerate(zip(chosen, predicted, strict=True)):
        jump = marked.atoms.copy()
        jump.positions = positions
        jobs.append(BatchJob(("predicted", index), jump))
        if remeasure:
            jobs.append(BatchJob(("start", index), marked.atoms.copy()))
        else:
            steps["start"][index] = _recorded_steps(info)
    converged = {"start": 0 if remeasure else len(chosen), "predicted": 0}
    started = time.perf_counter()
    for job, result in relax_batched(jobs, evaluator, RelaxSettings(fmax=0.01, steps=1000)):
        kind, index = job.key
        if isinstance(result, Exception):
            print(f"{kind} {index}: {result}")
            continue
        steps[kind][index] = result.steps
        converged[kind] += result.converged
    both = sorted(set(steps["start"]) & set(steps["predicted"]))
    start_steps = [steps["start"][i] for i in both]
    predicted_steps = [steps["predicted"][i] for i in both]
    return {
        "structures": len(both),
        "from_start": "remeasured in this run" if remeasure else "recorded in the ML tree",
        "converged": converged,
        "start_mean": float(np.mean(start_steps)),
        "predicted_mean": float(np.mean(predicted_steps)),
        "start_median": float(np.median(start_steps)),
        "predicted_median": float(np.median(predicted_steps)),
        "reduction_mean": float(1 - np.mean(predicted_steps) / np.mean(start_steps)),
        "per_structure": [
            {
                "relaxation": chosen[i][2]["relaxation"],
                "start": steps["start"][i],
                "predicted": steps["predicted"][i],
            }
            for i in both
        ],
        "seconds": round(time.perf_counter() - started, 1),
    }


def throughput(predictor, pairs, structures: int, repeats: int):
    """Predictions per minute for 64-atom cells, end to end from (Atoms, site, charge) to positions."""
    from snb_ml.predictor.markers import mark_defect

    cells = [p for p in pairs if len(p[0].atoms) == 64] or pairs
    inputs = [(cells[i % len(cells)][0].atoms, cells[i % len(cells)][0].site, cells[i % len(cells)][0].charge)
              for i in range(structures)]  # fmt: skip
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        marked = [mark_defect(atoms, charge, site=site) for atoms, site, charge in inputs]
        predictor.predict(marked)
        rates.append(60 * structures / (time.perf_counter() - started))
    return {"structures": structures, "atoms": len(cells[0][0].atoms), "per_minute": rates,
            "median_per_minute": statistics.median(rates)}  # fmt: skip


def print_mae(title: str, table: dict) -> None:
    print(f"\n{title}")
    print("| set | structures | | all | A3 | A4 | A5 | A6 |")
    print("|---|---|---|---|---|---|---|---|")
    for key, row in table.items():
        for label in ("model", "dummy"):
            values = " | ".join(f"{row[label][k]:.4f}" for k in ("all", "A3", "A4", "A5", "A6"))
            print(f"| {key} | {row['structures']} | {label} | {values} |")
        values = " | ".join(f"{100 * row['reduction'][k]:.0f}%" for k in ("all", "A3", "A4", "A5", "A6"))
        print(f"| {key} | | reduction | {values} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="make_single_step_data.py --out of the seen hosts",
    )
    parser.add_argument("--unseen", type=Path, default=None, help="... of a host left out of training")
    parser.add_argument(
        "--dft", type=Path, action="append", default=None, help="ShakeNBreak DFT search(es) (POSCAR+CONTCAR)"
    )
    parser.add_argument("--bulk", type=Path, action="append", default=[], help="Bulk cells for --dft trees")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--frames", type=int, default=2, help="Trajectory frames per relaxation in training")
    parser.add_argument("--residual", type=int, default=24, help="Held-out starts for the residual-step test")
    parser.add_argument(
        "--remeasure", action="store_true", help="Relax the starts again (else: ML tree steps)"
    )
    parser.add_argument("--throughput", type=int, default=2000, help="Structures in the throughput test")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None, help="Use this model instead of training one")
    args = parser.parse_args()

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    from snb_ml.predictor.dataset import read_pairs
    from snb_ml.predictor.model import load_predictor
    from snb_ml.predictor.training import SingleStepTrainSettings, train_single_step

    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    pairs_dir = harvest([data / "ml" for data in args.data], args.out / "pairs", (0.7, 0.1, 0.2), args.frames)
    model_path = args.model
    if model_path is None:
        model_path = args.out / "model" / "single_step.pt"
        log = args.out / "model" / "single_step_log.json"
        finished = log.is_file() and len(json.loads(log.read_text())) >= args.epochs
        if not finished:
            settings = SingleStepTrainSettings(
                epochs=args.epochs, features=args.features, threads=args.threads,
                restart=(args.out / "model" / "single_step.ckpt").is_file(),
            )  # fmt: skip
            started = time.perf_counter()
            train_single_step(pairs_dir, args.out / "model", settings)
            results["training_seconds_this_run"] = round(time.perf_counter() - started, 1)
    predictor = load_predictor(model_path)
    results["model"] = {"path": str(model_path), "training": predictor.training.get("metrics"),
                        "parameters": sum(p.numel() for p in predictor.network.parameters())}  # fmt: skip
    dataset = json.loads((pairs_dir / "dataset.json").read_text())
    results["dataset"] = {"counts": dataset["counts"], "relaxations": dataset["relaxations"],
                          "test_defects": dataset["defects"]["test"]}  # fmt: skip

    test = starts_only(read_pairs(pairs_dir / "test.xyz"))
    results["held_out"] = coordinate_errors(predictor, test)
    results["held_out_by_host"] = coordinate_errors(
        predictor, test, by=lambda info: info["defect"].split("/")[0]
    )
    print_mae("Held-out defects of seen hosts (ShakeNBreak starts -> CHGNet minima)", results["held_out"])
    print_mae("... by host", results["held_out_by_host"])
    if args.unseen:
        unseen_dir = harvest([args.unseen / "ml"], args.out / "pairs_unseen", (1.0, 0.0, 0.0), 0)
        unseen = starts_only(read_pairs(unseen_dir / "train.xyz"))
        results["unseen_host"] = coordinate_errors(
            predictor, unseen, by=lambda info: info["defect"].split("/")[0]
        )
        print_mae("Unseen host (ShakeNBreak starts -> CHGNet minima)", results["unseen_host"])
    for dft_tree in args.dft or ([DEFAULT_DFT] if DEFAULT_DFT.is_dir() else []):
        dft_dir = harvest([dft_tree], args.out / f"pairs_dft_{dft_tree.name}", (1.0, 0.0, 0.0), 0, args.bulk)
        dft = starts_only(read_pairs(dft_dir / "train.xyz"))
        key = f"dft_{dft_tree.name}"
        results[key] = coordinate_errors(predictor, dft, by=lambda info: info["defect"])
        results[key + "_by_charge"] = coordinate_errors(
            predictor, dft, by=lambda info: f"{info['defect']} q={info['charge']:+d}"
        )
        print_mae(f"Real DFT search {dft_tree.name} (POSCAR -> DFT CONTCAR)", results[key])
        print_mae("... by charge", results[key + "_by_charge"])
    if args.residual and "residual_steps" not in results:
        results["residual_steps"] = residual_steps(predictor, test, args.residual, args.remeasure)
        results_path.write_text(json.dumps(results, indent=1))
    if "residual_steps" in results:
        r = results["residual_steps"]
        print(
            f"\nResidual CHGNet FIRE steps (fmax 0.01) on {r['structures']} held-out starts: from start "
            f"mean {r['start_mean']:.1f} (median {r['start_median']:.0f}), from prediction mean "
            f"{r['predicted_mean']:.1f} (median {r['predicted_median']:.0f}): "
            f"{100 * r['reduction_mean']:.0f}% fewer; converged {r['converged']}"
        )
    if args.throughput:
        results[f"throughput_{args.threads}_threads"] = throughput(
            predictor, test + read_pairs(pairs_dir / "train.xyz")[:200], args.throughput, 3
        )
        t = results[f"throughput_{args.threads}_threads"]
        print(
            f"\nThroughput ({args.threads} threads, {t['atoms']}-atom cells): median "
            f"{t['median_per_minute']:.0f} predictions/min over {t['structures']} structures x 3"
        )
    results_path.write_text(json.dumps(results, indent=1))
    print(f"\nWrote {results_path}")


if __name__ == "__main__":
    main()
