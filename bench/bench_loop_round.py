"""Time per round of ``snb-ml loop`` (harvest, score, fine-tune, re-screen, hand off) with CHGNet on CPU.

One defect, V_Cd0 in 63-atom CdTe (the published ShakeNBreak search in
``examples/dft_searches/CdTe_vac_1_Cd_0``): the loop's tree holds ``--starts`` of its 26 starting
structures (Unperturbed and evenly spaced bond distortions). The DFT step is played by the published
search itself: after each round, every handed-off folder gets that start's real DFT ``CONTCAR`` and its
yaml energy, which is what ``snb-run`` + ``snb-parse`` leave behind (a representative handed over as
its ML minimum is credited with the DFT result of its own start, so this bench times the loop, it does
not score the selection; ``snb-ml recall`` does that).

Usage::

    python bench/bench_loop_round.py --out /tmp/loop_bench --epochs 10 --rounds 3 --threads 1

Prints and writes ``OUT/result.json``: per round, seconds of each step, DFT relaxations spent, model
errors before/after fine-tuning and the hand-off.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEARCH = HERE.parent / "examples" / "dft_searches" / "CdTe_vac_1_Cd_0" / "vac_1_Cd_0"


def pick_starts(search: Path, count: int) -> list[str]:
    """Unperturbed plus ``count - 1`` bond distortions evenly spaced over the search's range."""
    from snb_ml.minima.trust import bond_distortion

    bonds = sorted(
        (p.name for p in search.iterdir() if bond_distortion(p.name) is not None),
        key=lambda name: -bond_distortion(name),
    )
    step = (len(bonds) - 1) / max(1, count - 2)
    return ["Unperturbed"] + [bonds[round(i * step)] for i in range(count - 1)]


def write_tree(search: Path, names: list[str], tree: Path) -> Path:
    """The loop's ShakeNBreak tree: the chosen starts' POSCARs and the defect's metadata."""
    defect = tree / search.name
    for name in names:
        (defect / name).mkdir(parents=True, exist_ok=True)
        shutil.copy(search / name / "POSCAR", defect / name / "POSCAR")
    shutil.copy(search / "distortion_metadata.json", defect / "distortion_metadata.json")
    return tree


def play_dft(search: Path, pending_dir: Path, pending: dict[str, list[str]]) -> int:
    """Give every handed-off folder its real DFT result (CONTCAR + yaml energy); return how many."""
    import yaml

    from snb_ml.data.minima import energies_yaml, energy_of, read_dft_energies, yaml_key

    energies = read_dft_energies(search)
    count = 0
    for defect, names in pending.items():
        document = {"distortions": {}}
        for name in names:
            shutil.copy(search / name / "CONTCAR", pending_dir / defect / name / "CONTCAR")
            energy = energy_of(search / name, energies)
            if yaml_key(name) == "Unperturbed":
                document["Unperturbed"] = energy
            else:
                document["distortions"][yaml_key(name)] = energy
            count += 1
        energies_yaml(pending_dir / defect).write_text(yaml.safe_dump(document))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Work folder (emptied first).")
    parser.add_argument("--search", type=Path, default=SEARCH, help="A ShakeNBreak DFT search (one defect).")
    parser.add_argument("--starts", type=int, default=12, help="Starts in the loop's tree.")
    parser.add_argument("--epochs", type=int, default=10, help="CHGNet fine-tuning epochs per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from snb_ml.loop.rounds import format_status, init_loop, run_round
    from snb_ml.loop.state import read_state

    torch.set_num_threads(args.threads)
    shutil.rmtree(args.out, ignore_errors=True)
    names = pick_starts(args.search, args.starts)
    tree = write_tree(args.search, names, args.out / "tree")
    init_loop(
        tree, args.out / "loop", trainer="chgnet",
        trainer_options={"epochs": args.epochs, "threads": args.threads},
    )  # fmt: skip
    rows = []
    for _ in range(args.rounds):
        state = read_state(args.out / "loop")
        if len(state.finished) == len(state.defects):
            break
        played = play_dft(args.search, Path(state.pending_dir), state.pending) if state.pending_dir else 0
        started = time.perf_counter()
        record = run_round(args.out / "loop")
        wall = time.perf_counter() - started
        rows.append({"round": record.index, "dft_played": played, "wall": round(wall, 1), **json.loads(
            json.dumps(record.__dict__, default=str))})  # fmt: skip
        print(f"round {record.index}: {wall:.0f} s {record.seconds} handed {record.handed_off}", flush=True)
    state = read_state(args.out / "loop")
    print(format_status(state))
    result = {"starts": names, "epochs": args.epochs, "threads": args.threads, "rounds": rows}
    (args.out / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
