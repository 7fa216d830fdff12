"""Which CHGNet fine-tuning recipe makes a model recover a defect's DFT ground state from unseen starts?

Data (real DFT, ShakeNBreak's test data, MIT; committed under examples/snb_dft/CdTe_v_Cd):

- ``earlier_search/v_Cd_0``: 8 DFT final structures (``CONTCAR``) of V_Cd0 in 64-atom CdTe with their
  energies (``v_Cd_0.yaml``): three Te-Te dimers 0.75 eV below five open structures. This is the
  "earlier search" a model is fine-tuned on (harvested by ``snb-ml dataset`` as yaml minima).
- ``examples/dft_searches/CdTe_vac_1_Cd_0/vac_1_Cd_0`` (the fixture of ``snb-ml recall``): 26 ShakeNBreak
  starting structures (``POSCAR``, with their DFT ``CONTCAR``, not used here) of another search of the
  same defect (different rattle; 18 of the 26 distortions never appear in training) and the DFT
  energies of their relaxations (``vac_1_Cd_0.yaml``: 14 reach the dimer, 12 the open structure).

Per recipe: ``snb-ml dataset`` (once), ``train_chgnet`` with the recipe's settings, then every unseen start
is relaxed with the fine-tuned model through snb_ml's ``run_tree`` (``--relaxer chgnet --model PATH``).
Reported: how many ML minima are dimers (shortest Te-Te < 3 Å), whether the lowest ML minimum is a dimer,
the ML energy gap lowest dimer - lowest open (DFT: -0.75 eV), the Spearman correlation of the ML and DFT
final energies over the 26 starts, and how many starts end in the same basin as in DFT.

Optional, on the doped MgO example (216-atom cells, Mg_O in charge states 0..+4): fine-tuned vs stock on
a charge state held out of training (``--mgo-holdout``, default +2; trained on ``--mgo-train-charges``,
default 0 and +1, and bulk), from ``--mgo ../shared/data/MgO_Mg_O`` (OUTCAR relaxations: energy MAE per
cell, relative energy MAE per cell, force MAE on the held-out relaxation) and/or ``--mgo-snb
../shared/data/snb_dft/MgO_SnB`` (the ShakeNBreak search as CONTCAR + yaml minima: does training on some
charge states rank the distortions of another one better?).

Usage::

    python bench/bench_chgnet_finetune.py --out /tmp/ft                       # every recipe + stock
    python bench/bench_chgnet_finetune.py --out /tmp/ft --recipes stock,default,per_atom
    python bench/bench_chgnet_finetune.py --out /tmp/ft --recipes none --mgo ../shared/data/MgO_Mg_O
    python bench/bench_chgnet_finetune.py --out ft --recipes none --mgo-snb ../shared/data/snb_dft/MgO_SnB

Each recipe's result is cached in ``OUT/<recipe>/result.json`` (delete it to rerun). Timings are wall
times on whatever machine runs it (on a shared 2-core machine they vary a lot).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "examples" / "snb_dft" / "CdTe_v_Cd"
UNSEEN = HERE.parent / "examples" / "dft_searches" / "CdTe_vac_1_Cd_0"
DIMER_CUTOFF = 3.0  # Å: bulk Te-Te is 4.6 Å, the DFT dimer 2.75 Å
DFT_GAP = None  # filled from the yaml

#: Recipes: ChgnetSettings overrides (the defaults are the chosen recipe) and dataset options.
RECIPES: dict[str, dict] = {
    "default": {},
    "per_atom": {"energy_loss": "per-atom"},
    "per_atom_x100": {"energy_loss": "per-atom", "energy_weight": 100.0},
    "no_reference": {"energy_reference": "none"},
    "frozen_readout": {"freeze": "readout"},
    "frozen_embeddings": {"freeze": "embeddings"},
    "no_minima_forces": {"minima_forces": "none"},
    "augment4": {"augment": 4},
    "augment4_no_minima_forces": {"augment": 4, "minima_forces": "none"},
    "frozen_readout_lr3e-3": {"freeze": "readout", "lr": 3e-3},
    "augment4_rattle0.1": {"augment": 4, "rattle": 0.1},
    "frozen_embeddings_augment4": {"freeze": "embeddings", "augment": 4},
    "forces10": {"force_weight": 10.0},
    "augment4_forces10": {"augment": 4, "force_weight": 10.0},
    "lr3e-4": {"lr": 3e-4},
    "lr3e-3": {"lr": 3e-3},
    "epochs30": {"epochs": 30},
    "epochs120": {"epochs": 120},
    "probe": {"energy_loss": "per-atom", "energy_weight": 100.0, "energy_reference": "none", "epochs": 100},
}


def shortest_te_te(atoms) -> float:
    """Shortest Te-Te distance (Å, periodic)."""
    index = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Te"]
    distances = atoms.get_all_distances(mic=True)[np.ix_(index, index)]
    distances[distances == 0] = np.inf
    return float(distances.min())


def dft_table(unseen: Path) -> dict[str, float]:
    """DFT final energy per start folder, from the search's yaml."""
    from snb_ml.data.minima import energy_of, read_dft_energies

    defect = unseen / "vac_1_Cd_0"
    energies = read_dft_energies(defect)
    table = {}
    for folder in sorted(p for p in defect.iterdir() if p.is_dir()):
        value = energy_of(folder, energies)
        if value is not None:
            table[folder.name] = value
    return table


def relax_unseen(model: str | None, unseen: Path, out: Path, threads: int, fmax: float) -> dict:
    """Relax every start with ``model`` (None: stock CHGNet 0.3.0) and score against DFT."""
    from ase.io import read
    from scipy.stats import spearmanr

    from snb_ml.relax import RelaxSettings
    from snb_ml.runner import run_tree
    from snb_ml.settings import RunSettings

    tree = out / "unseen_starts"
    if tree.exists():
        shutil.rmtree(tree)
    # Starts only: the DFT results (yaml energies, CONTCARs) stay out of the tree the model relaxes.
    shutil.copytree(unseen, tree, ignore=shutil.ignore_patterns("*.yaml", "CONTCAR", "LICENSE*"))
    start = time.perf_counter()
    run_tree(
        tree,
        RunSettings(
            relaxer="chgnet",
            model=model,
            device="cpu",
            threads=threads,
            progress=False,
            relax=RelaxSettings(fmax=fmax),
        ),
        output=out / "ml_tree",
    )
    seconds = time.perf_counter() - start
    dft = dft_table(unseen)
    unperturbed = dft["Unperturbed"]
    rows = []
    ml_dir = out / "ml_tree" / "vac_1_Cd_0"
    ml_energies = {}
    import yaml

    document = yaml.safe_load((ml_dir / "vac_1_Cd_0.yaml").read_text())
    from snb_ml.data.minima import energy_of

    named = {**document.get("distortions", {}), "Unperturbed": document.get("Unperturbed")}
    for folder in dft:
        energy = energy_of(ml_dir / folder, named)
        contcar = ml_dir / folder / "CONTCAR"
        if energy is None or not contcar.is_file():
            continue
        ml_energies[folder] = energy
        rows.append(
            {
                "start": folder,
                "ml_energy": energy,
                "dft_energy": dft[folder],
                "ml_dimer": shortest_te_te(read(contcar, format="vasp")) < DIMER_CUTOFF,
                "dft_dimer": dft[folder] < unperturbed - 0.3,
            }
        )
    dimers = [r for r in rows if r["ml_dimer"]]
    opens = [r for r in rows if not r["ml_dimer"]]
    lowest = min(rows, key=lambda r: r["ml_energy"])
    gap = (
        min(r["ml_energy"] for r in dimers) - min(r["ml_energy"] for r in opens) if dimers and opens else None
    )
    rho = spearmanr([r["dft_energy"] for r in rows], [r["ml_energy"] for r in rows]).statistic
    dft_dimers = [r for r in rows if r["dft_dimer"]]
    dft_gap = min(r["dft_energy"] for r in dft_dimers) - min(
        r["dft_energy"] for r in rows if not r["dft_dimer"]
    )
    return {
        "starts": len(rows),
        "ml_dimers": len(dimers),
        "dimer_found": bool(dimers),
        "dimer_lowest": bool(lowest["ml_dimer"]),
        "gap_ml": gap,
        "gap_dft": dft_gap,
        "spearman": float(rho) if np.isfinite(rho) else None,
        "same_basin": sum(r["ml_dimer"] == r["dft_dimer"] for r in rows),
        "relax_seconds": round(seconds, 1),
        "rows": rows,
    }


def build_dataset(earlier: Path, out: Path) -> Path:
    """``snb-ml dataset`` of the earlier search, every minimum in training."""
    from snb_ml.data.filters import FilterSettings
    from snb_ml.data.harvest import HarvestSettings, harvest, prepare_output, write_dataset

    target = out / "dataset"
    if (target / "train.xyz").is_file():
        return target
    settings = HarvestSettings(filters=FilterSettings(), fractions=(1.0, 0.0, 0.0))
    prepare_output(target, force=True)
    report = harvest([earlier], settings, progress=False)
    write_dataset(report, target, [earlier], settings)
    return target


def run_recipe(name: str, args, dataset: Path) -> dict:
    """Train (unless ``stock``), relax the unseen starts, cache and return the result."""
    from snb_ml.training.chgnet_config import ChgnetSettings
    from snb_ml.training.chgnet_trainer import train_chgnet

    folder = args.out / name
    cached = folder / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    # A training interrupted after its first checkpoint resumes (CHGNet training is hours on a CPU);
    # anything else left from an unfinished run starts over.
    resume = (folder / "model" / "checkpoint.pth.tar").is_file()
    if folder.exists() and not resume:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"recipe": name}
    model = None
    if name != "stock":
        overrides = dict(RECIPES[name])
        settings = ChgnetSettings(threads=args.threads, seed=args.seed, restart=resume, **overrides)
        trained = train_chgnet(dataset, folder / "model", settings, echo=lambda _: None, progress=False)
        model = str(trained.model_path)
        result.update(
            settings=overrides,
            train_seconds=round(trained.seconds, 1),
            train_after=trained.after["train"],
            train_before=trained.before["train"],
        )
    result.update(relax_unseen(model, args.unseen, folder, args.threads, args.fmax))
    cached.write_text(json.dumps(result, indent=2))
    return result


def _held_out_dataset(paths: list[Path], target: Path, frames: int | None, train: set, held: int) -> None:
    """``snb-ml dataset`` of ``paths`` with the frames of charge ``held`` as the test split."""
    from snb_ml.data.filters import FilterSettings
    from snb_ml.data.harvest import HarvestSettings, harvest, prepare_output, write_dataset

    if (target / "train.xyz").is_file():
        return
    settings = HarvestSettings(
        filters=FilterSettings(frames_per_relaxation=frames), fractions=(1.0, 0.0, 0.0)
    )
    report = harvest(paths, settings, progress=False)
    every = [f for split in report.splits.values() for f in split]
    report.splits = {
        "train": [f for f in every if f.info["charge_state"] in train],
        "valid": [],
        "test": [f for f in every if f.info["charge_state"] == held],
    }
    prepare_output(target, force=True)
    write_dataset(report, target, paths, settings)


def mgo(args, source: Path, name: str) -> dict:
    """Fine-tuned vs stock CHGNet on a charge state of Mg_O held out of training (216-atom MgO cells).

    ``source`` is either the doped OUTCAR relaxations (one per charge state, plus bulk: energies and
    forces along each relaxation) or the ShakeNBreak search (CONTCAR + yaml minima per distortion).
    The two are not mixed: the search ran at the Gamma point, the relaxations with 2x2x2 k-points, so
    their energies differ by ~16 eV per cell (``snb-ml dataset``'s window drops the higher set).
    Training: the charge states in ``--mgo-train-charges`` (and bulk); test: ``--mgo-holdout``. Reported
    on the test frames: energy MAE per cell (absolute: a charge-blind model cannot know an unseen charge
    state's offset; and relative to the group's lowest DFT frame), force MAE (OUTCAR frames), Spearman.
    """
    from chgnet.model import CHGNet

    from snb_ml.training.chgnet_config import ChgnetSettings
    from snb_ml.training.chgnet_trainer import frame_errors, load_base, train_chgnet
    from snb_ml.training.frames import read_split

    folder = args.out / name
    cached = folder / "result.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    train_charges = {int(q) for q in args.mgo_train_charges.split(",")} | {0}
    dataset = folder / "dataset"
    _held_out_dataset([source], dataset, args.mgo_frames, train_charges, args.mgo_holdout)
    resume = (folder / "model" / "checkpoint.pth.tar").is_file()  # as in run_recipe: resume a killed run
    settings = ChgnetSettings(
        threads=args.threads, seed=args.seed, epochs=args.mgo_epochs, batch_size=2, restart=resume
    )
    trained = train_chgnet(dataset, folder / "model", settings, echo=print, progress=True)
    test = read_split(dataset, "test")
    stock, tuned = load_base("0.3.0"), CHGNet.from_file(str(trained.model_path))
    result = {
        "source": source.name,
        "train_charges": sorted(train_charges),
        "held_out_charge": args.mgo_holdout,
        "train_frames": trained.frames,
        "epochs": args.mgo_epochs,
        "train_seconds": round(trained.seconds, 1),
        "reference": trained.reference,
        "train_after": trained.after["train"],
        "stock": frame_errors(stock, test),
        "tuned": frame_errors(tuned, test),
    }
    cached.write_text(json.dumps(result, indent=2))
    return result


def table(results: list[dict]) -> str:
    """Markdown table of the recipe results."""
    header = (
        "| recipe | changed | ML dimer minima /26 | dimer found | dimer lowest | gap ML (eV) | gap DFT (eV) "
        "| Spearman | same basin as DFT /26 | train s | relax s |\n" + "|---" * 11 + "|"
    )
    lines = [header]
    for r in results:
        gap = "-" if r.get("gap_ml") is None else f"{r['gap_ml']:+.2f}"
        rho = "-" if r.get("spearman") is None else f"{r['spearman']:+.2f}"
        changed = json.dumps(r.get("settings", {})) if r["recipe"] != "stock" else "stock 0.3.0"
        found, lowest = ("yes" if r[key] else "no" for key in ("dimer_found", "dimer_lowest"))
        lines.append(
            f"| {r['recipe']} | {changed} "
            f"| {r['ml_dimers']} | {found} | {lowest} "
            f"| {gap} | {r['gap_dft']:+.2f} | {rho} | {r['same_basin']} | {r.get('train_seconds', '-')} "
            f"| {r['relax_seconds']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Work folder (results cached per recipe).")
    parser.add_argument("--earlier", type=Path, default=DATA / "earlier_search", help="Training search.")
    parser.add_argument("--unseen", type=Path, default=UNSEEN, help="Unseen starts + DFT yaml.")
    parser.add_argument(
        "--recipes", default="stock," + ",".join(RECIPES), help="Comma-separated recipe names."
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fmax", type=float, default=0.05, help="Force threshold of the ML relaxations (eV/Å)."
    )
    parser.add_argument("--mgo", type=Path, default=None, help="doped MgO example (../shared/data/MgO_Mg_O).")
    parser.add_argument(
        "--mgo-snb", type=Path, default=None, help="Its ShakeNBreak search (snb_dft/MgO_SnB)."
    )
    parser.add_argument(
        "--mgo-train-charges", default="0,1", help="Charge states trained on (0 and bulk always)."
    )
    parser.add_argument("--mgo-holdout", type=int, default=2, help="Charge state held out (the test).")
    parser.add_argument("--mgo-epochs", type=int, default=15)
    parser.add_argument("--mgo-frames", type=int, default=5, help="OUTCAR frames kept per relaxation.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    args.out.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(args.earlier, args.out)
    results = []
    for name in [n for n in args.recipes.split(",") if n and n != "none"]:
        if name != "stock" and name not in RECIPES:
            raise SystemExit(f"Unknown recipe {name!r}; choose from stock, {', '.join(RECIPES)}.")
        result = run_recipe(name, args, dataset)
        results.append(result)
        print(table([result]).splitlines()[-1], flush=True)
    if results:
        print(table(results))
        (args.out / "summary.md").write_text(table(results) + "\n")
    for source, name in ((args.mgo, "mgo_outcars"), (args.mgo_snb, "mgo_snb_minima")):
        if source is None:
            continue
        result = mgo(args, source, name)
        print(
            f"{name}: trained on charges {result['train_charges']}, tested on {result['held_out_charge']:+d}:"
        )
        for model in ("stock", "tuned"):
            e = result[model]
            print(
                f"  {model:5s} n={e['n_frames']:3d} E MAE {e['energy_mae']:.3f} eV/cell, "
                f"relative E MAE {e['relative_energy_mae']} eV/cell, F MAE {e['force_mae']} eV/Å, "
                f"Spearman {e['spearman']}"
            )


if __name__ == "__main__":
    main()
