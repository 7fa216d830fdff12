"""Per-cell energies and doped charge-transition levels of charge-aware MACE models on real MgO data.

Data: ../shared/data/MgO_Mg_O (doped's public example, VASP PBEsol, MIT): Mg on O in a 216-atom MgO
cell, one relaxation per charge state 0..+4 (37, 2, 16, 17, 11 near-relaxed ionic steps, with the
OUTCAR core potentials doped's eFNV correction needs) and the bulk cell with its eigenvalues (VBM,
band gap).

Two protocols, each a fresh training run per model variant (same seed, same small model):

- ``a`` (all charge states seen): the last ~25 % of the ionic steps of every relaxation are held out
  (test), the step before them validates when a relaxation has >= 6 steps, the rest trains.
- ``b`` (one charge state left out, ``--holdout Q``): every step of charge state ``Q`` is held out, and
  of the other charge states the last ~25 % as in ``a``.

Every model is scored by ``snb_ml.training.evaluate.evaluate_model`` on the test frames: energy MAE per
cell, and charge-transition levels computed by doped (``DefectThermodynamics.get_transition_levels``,
all single-electron levels) from model and DFT energies of each charge state's DFT ground state (its
lowest test frame) with the same eFNV corrections (doped, from the OUTCAR core potentials, dielectric
``--dielectric``) and the same VBM (bulk OUTCAR). For ``b`` the "interpolation oracle" is printed too:
the held-out state's level errors if its corrected energy were the cubic through the other charge
states' DFT energies (what a model smooth in ``q`` at best achieves without more physics or data).

Variants (``--variants``; one ingredient changed at a time):

======================  ===========================================================================
``blind``               charge-blind (``--charge-mode none``), the former recipe (per-atom loss)
``blind_new``           charge-blind, per-cell loss and balanced charge states
``site_atom``           site charge embedding, former recipe: MACE's per-atom energy loss, no
                        explicit terms (the former default)
``site_cell``           + per-cell energy loss
``site_cell_bal``       + balanced charge states (equal energy weight per charge state)
``site_cell_bal_ref``   + explicit reservoir term q·E_ref (least squares)
``full_linear``         + explicit point-charge image term (ε)
``full``                + explicit curvature ½ U q² (least squares): the new default with --dielectric
``full_nopc``           ``full`` without the point-charge image term
``physics``             the explicit terms of ``full`` only, no learned charge term (mode none)
``full_noswa``          ``full`` without stage two
``full_nobulk``         ``full`` without the bulk frame in training
``full_long``           ``full`` with ``--long-epochs`` epochs
======================  ===========================================================================

Run: ``python bench/bench_charge_levels_mgo.py --protocol a`` and
``python bench/bench_charge_levels_mgo.py --protocol b --holdout 2`` (``--reuse`` evaluates models
already trained in ``--out``). About 5-7 min per variant on 2 shared CPU cores, one torch thread.
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
#: Total (ionic + electronic) dielectric constant of this PBEsol MgO: the value doped's own test suite
#: uses for this example (doped, tests/test_corrections_qe.py, MGO_DIELECTRIC). Experiment: 9.90.
MGO_DIELECTRIC = 8.8963

_OLD = {"energy_loss": "per_atom", "balance": False, "charge_reference": "none"}
_NEW = {"energy_loss": "per_cell", "balance": True, "charge_reference": "quadratic", "pc": True}
VARIANTS = {
    "blind": {"charge_mode": "none", **_OLD},
    "blind_new": {"charge_mode": "none", **_NEW, "charge_reference": "none", "pc": False},
    "site_atom": {"charge_mode": "site", **_OLD},
    "site_cell": {"charge_mode": "site", **_OLD, "energy_loss": "per_cell"},
    "site_cell_bal": {"charge_mode": "site", **_OLD, "energy_loss": "per_cell", "balance": True},
    "site_cell_bal_ref": {"charge_mode": "site", **_NEW, "charge_reference": "linear", "pc": False},
    "full_linear": {"charge_mode": "site", **_NEW, "charge_reference": "linear"},
    "full": {"charge_mode": "site", **_NEW},
    "full_nopc": {"charge_mode": "site", **_NEW, "pc": False},
    "physics": {"charge_mode": "none", **_NEW},
    "full_noswa": {"charge_mode": "site", **_NEW, "start_swa": 0},
    "full_nobulk": {"charge_mode": "site", **_NEW, "no_bulk": True},
    "full_long": {"charge_mode": "site", **_NEW, "long": True},
}  # fmt: skip


def harvest(data: Path, out: Path, holdout: int | None, per_relaxation: int) -> Path:
    """Harvest the ionic steps with `snb-ml dataset`, then split as the protocol says."""
    from ase.io import read, write

    from snb_ml.cli import main

    raw = out / f"harvested_{per_relaxation}"
    if not (raw / "train.xyz").is_file():
        args = [
            "dataset", str(data), "-o", str(raw), "--split", "frames", "--fractions", "1,0,0",
            "--frames-per-relaxation", str(per_relaxation), "-q", "--force",
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
        if (
            holdout is not None
            and int(frames[0].info["total_charge"]) == holdout
            and (frames[0].info.get("config_type") != "bulk")
        ):
            splits["test"] += frames
            continue
        n = len(frames)
        n_test = max(1, round(0.25 * n)) if n >= 2 else 0
        n_valid = 1 if n >= 6 else 0
        n_train = n - n_test - n_valid
        splits["train"] += frames[:n_train]
        splits["valid"] += frames[n_train : n_train + n_valid]
        splits["test"] += frames[n_train + n_valid :]
    name = ("a" if holdout is None else f"b{holdout:+d}") + f"_{per_relaxation}"
    dataset = out / name
    dataset.mkdir(parents=True, exist_ok=True)
    for split, frames in splits.items():
        write(dataset / f"{split}.xyz", frames, format="extxyz")
    counts = {split: len(frames) for split, frames in splits.items()}
    print(f"{name}: {counts}", flush=True)
    return dataset


def without_bulk(dataset: Path, out: Path) -> Path:
    """A copy of ``dataset`` whose training split has no bulk frames."""
    from ase.io import read, write

    target = out / (dataset.name + "_nobulk")
    target.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        path = dataset / f"{split}.xyz"
        frames = read(path, index=":") if path.stat().st_size else []
        if split == "train":
            frames = [a for a in frames if a.info.get("config_type") != "bulk"]
        write(target / f"{split}.xyz", frames, format="extxyz")
    return target


def settings_for(variant: str, args: argparse.Namespace):
    """The TrainSettings of a variant: one small model, one seed; only the variant's ingredient differs."""
    from snb_ml.training.config import TrainSettings

    spec = dict(VARIANTS[variant])
    return TrainSettings(
        name=variant,
        charge_mode=spec["charge_mode"],
        energy_loss=spec["energy_loss"],
        balance_charge_states=spec["balance"],
        charge_reference=spec["charge_reference"],
        dielectric=args.dielectric if spec.get("pc") else None,
        epochs=args.long_epochs if spec.get("long") else args.epochs,
        start_swa=spec.get("start_swa"),
        seed=args.seed,
        num_channels=args.channels,
        r_max=args.r_max,
        max_ell=1,
        lr=args.lr,
        threads=args.threads,
    )


def oracle(report: dict, holdout: int) -> dict[str, float]:
    """Level errors if E_corr(holdout) were the cubic in q through the other charge states' DFT values."""
    import numpy as np

    states = report["levels"]["states"]
    rows = {int(s["charge"]): s["dft_corrected_energy"] for s in states.values()}
    known = sorted(q for q in rows if q != holdout)
    if holdout not in rows or len(known) < 2:
        return {}
    coefficients = np.polyfit(known, [rows[q] for q in known], min(3, len(known) - 1))
    guess = dict(rows)
    guess[holdout] = float(np.polyval(coefficients, holdout))
    errors = {}
    for q_low, q_high in ((holdout - 1, holdout), (holdout, holdout + 1)):
        if q_low in rows and q_high in rows:
            dft = rows[q_low] - rows[q_high]
            errors[f"{q_high:+d}/{q_low:+d}"] = (guess[q_low] - guess[q_high]) - dft
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--protocol", choices=["a", "b"], default="a")
    parser.add_argument("--holdout", type=int, default=2, help="Charge state left out (protocol b).")
    parser.add_argument(
        "--variants", default="site_atom,full,blind,site_cell,site_cell_bal,site_cell_bal_ref,physics"
    )
    parser.add_argument(
        "--frames-per-relaxation",
        type=int,
        default=12,
        help="Evenly spaced ionic steps kept per relaxation (0: all 84 steps; 12: 50, about 40%% less "
        "training time; consecutive steps of these near-relaxed runs differ by meV).",
    )
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--long-epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--r-max", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dielectric", type=float, default=MGO_DIELECTRIC)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "snb_ml_bench_levels"))
    parser.add_argument("--reuse", action="store_true", help="Evaluate models already in --out.")
    args = parser.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"{data} is missing: nothing to benchmark.")
        return 0
    import torch

    from snb_ml.training.evaluate import evaluate_model
    from snb_ml.training.levels import LevelSettings
    from snb_ml.training.record import read_record
    from snb_ml.training.trainer import train_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    holdout = args.holdout if args.protocol == "b" else None
    dataset = harvest(data, out, holdout, args.frames_per_relaxation)
    tag = dataset.name
    levels = LevelSettings(dielectric=args.dielectric, correction="efnv", allow_charge_blind=True)
    summary = {}
    for variant in args.variants.split(","):
        settings = settings_for(variant, args)
        model_dir = out / f"model_{tag}_{variant}"
        model_path = model_dir / f"{variant}.model"
        seconds = None
        if not (args.reuse and model_path.is_file()):
            shutil.rmtree(model_dir, ignore_errors=True)
            train_on = without_bulk(dataset, out) if VARIANTS[variant].get("no_bulk") else dataset
            start = time.perf_counter()
            train_model(train_on, model_dir, settings, echo=lambda _: None, progress=False)
            seconds = time.perf_counter() - start
        report = evaluate_model(
            model_path, dataset, out / f"report_{tag}_{variant}", "test", levels=levels, plots=False,
            echo=lambda _: None,
        )  # fmt: skip
        record = read_record(model_dir)
        errors = [abs(row["error"]) for row in report["levels"]["levels"].values()]
        summary[variant] = {
            "energy_mae_cell": report["overall"]["energy_mae"],
            "by_charge": {q: s["energy_mae"] for q, s in report["by_charge"].items()},
            "force_mae": report["overall"]["force_mae"],
            "ctl_errors": {k: row["error"] for k, row in report["levels"]["levels"].items()},
            "ctl_mae": sum(errors) / len(errors) if errors else None,
            "ctl_max": max(errors) if errors else None,
            "e_ref": (record.get("charge_reference") or {}).get("e_ref"),
            "u": (record.get("charge_reference") or {}).get("u"),
            "train_seconds": seconds if seconds is not None else record.get("seconds"),
        }
        print(json.dumps({variant: summary[variant]}), flush=True)
        if holdout is not None:
            summary["oracle"] = oracle(report, holdout)
    title = "all charge states seen" if holdout is None else f"charge state {holdout:+d} held out"
    print(f"\nProtocol {args.protocol} ({title}); {args.epochs} epochs, seed {args.seed}; errors in eV")
    labels = sorted({k for v in summary.values() if "ctl_errors" in v for k in v["ctl_errors"]})
    header = "".join(f"{k.split(' ')[-1]:>11}" for k in labels)
    print(f"{'variant':<18}{'E MAE/cell':>11}{header}{'CTL MAE':>9}{'CTL max':>9}")
    for variant, row in summary.items():
        if variant == "oracle":
            continue
        cells = "".join(f"{row['ctl_errors'].get(k, float('nan')):>+11.3f}" for k in labels)
        print(
            f"{variant:<18}{row['energy_mae_cell']:>11.3f}{cells}{row['ctl_mae']:>9.3f}{row['ctl_max']:>9.3f}"
        )
    if summary.get("oracle"):
        print("interpolation oracle (cubic in q through the other DFT states):", summary["oracle"])
    (out / f"summary_{tag}.json").write_text(json.dumps({"args": vars(args), "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
