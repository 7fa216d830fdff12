"""Ground-state recall of a model + selection on real ShakeNBreak DFT searches, both policies, with timings.

Relaxes the starts of each DFT search once (into --output/<search>/ml_tree; reruns reuse them), scores the
protect and lean selections, prints the per-defect tables, a markdown summary and the benchmark's own cost:
the first call's total minus its relaxation time, and --repeat calls with every relaxation cached (model
loading included, reported apart). Usage:

    python bench/bench_recall.py examples/dft_searches/CdTe_vac_1_Cd_0 ../shared/data/snb_dft/MgO_SnB \
        --output /tmp/recall_bench --threads 1
    python bench/bench_recall.py <search> --relaxer chgnet --model fine_tuned.pth.tar   # a fine-tuned model
    python bench/bench_recall.py ../shared/data/snb_dft/MgO_SnB --defects Mg_O_+3,Mg_O_+4 --batch-size 4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from snb_ml.recall import benchmark_search
from snb_ml.relax import RelaxSettings
from snb_ml.runner import load_model
from snb_ml.settings import RunSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("searches", nargs="+", type=Path, help="DFT search folders (read only)")
    parser.add_argument("--output", type=Path, default=Path("recall_bench"))
    parser.add_argument("--relaxer", default="chgnet")
    parser.add_argument("--model", default=None)
    parser.add_argument("--fmax", type=float, default=RelaxSettings.fmax)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3, help="cached reruns timed for the overhead")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument(
        "--defects", default=None, help="comma-separated defect folders to benchmark (default: all)"
    )
    args = parser.parse_args()
    defects = args.defects.split(",") if args.defects else None
    settings = RunSettings(
        relaxer=args.relaxer,
        model=args.model,
        relax=RelaxSettings(fmax=args.fmax),
        threads=args.threads,
        engine=args.engine,
        batch_size=args.batch_size,
        progress=False,
    )
    summary = []
    totals = {policy: [0, 0, 0, 0] for policy in ("protect", "lean")}  # found, defects, k, n
    for search in args.searches:
        if not search.is_dir():
            print(f"skipped {search}: not found")
            continue
        output = args.output / search.resolve().name
        wall, cpu = time.perf_counter(), time.process_time()
        first = benchmark_search(search, output, settings, tolerance=args.tolerance, defects=defects)
        first_wall, first_cpu = time.perf_counter() - wall, time.process_time() - cpu
        lean = benchmark_search(
            search, output, settings, policy="lean", tolerance=args.tolerance, defects=defects
        )
        print(first.table(), "\n")
        print(lean.table(), "\n")
        model = load_model(settings)
        cached, cached_cpu = [], []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            benchmark_search(search, output, settings, tolerance=args.tolerance, model=model, defects=defects)
            cached.append(time.perf_counter() - wall)
            cached_cpu.append(time.process_time() - cpu)
        print(
            f"{search.name}: first call {first_wall:.1f} s wall ({first_cpu:.1f} s CPU), of which "
            f"{first.timings['relaxation']:.1f} s relaxing (run_tree's wall time) "
            f"and {first.timings['model_load']:.1f} s loading the model; overhead "
            f"{first.timings['overhead']:.1f} s. Cached reruns (model loaded once): median "
            f"{statistics.median(cached):.1f} s wall, {statistics.median(cached_cpu):.1f} s CPU "
            f"over {args.repeat}.\n"
        )
        for result in (first, lean):
            total = totals[result.policy]
            total[0] += result.found
            total[1] += len(result.defects)
            total[2] += result.k
            total[3] += result.n
            for defect in result.defects.values():
                summary.append(
                    f"| {search.name} | {defect.name} | {result.policy} | {defect.n} | {defect.k} | "
                    f"{defect.saved:.0%} | {'yes' if defect.ground_state_found else 'NO'} | "
                    f"{', '.join(defect.trust_flags) or '-'} |"
                )
            summary.append(f"| {search.name} | total | {result.policy} | | | | {result.summary_line()} | |")
    print("| search | defect | policy | n | k | saved | GS found | untrusted |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(summary))
    for policy, (found, defects, k, n) in totals.items():
        saved = 100.0 * (n - k) / n if n else 0.0
        print(
            f"All searches, {policy}: ground state found {found} of {defects} defects, "
            f"DFT relaxations {k} of {n} ({saved:.0f}% saved)"
        )


if __name__ == "__main__":
    main()
