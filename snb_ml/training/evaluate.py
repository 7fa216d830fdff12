"""``snb-ml evaluate``: errors of a model on a dataset split, parity plots and ``report.json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError
from snb_ml.training.frames import annotate_charges, frame_charge, read_dataset
from snb_ml.training.ground_states import compare_ground_states
from snb_ml.training.levels import level_report, levels_table
from snb_ml.training.metrics import all_metrics
from snb_ml.training.predict import Prediction, open_model, predict
from snb_ml.training.record import recorded_setting

REPORT_NAME = "report.json"


def _marker_radius(model_path: Path) -> float | None:
    # A model trained by `snb-ml train` records the marker radius next to it; reuse it.
    return recorded_setting(model_path, "marker_radius")


def parity_plots(predictions: Sequence[Prediction], folder: str | Path) -> dict[str, str]:
    """Write ``energy_parity.png`` (eV/atom) and ``forces_parity.png`` (components); return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    charges = np.array([frame_charge(p.atoms) for p in predictions])
    paths = {}
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    for q in sorted(set(charges.tolist())):
        chosen = [p for p, c in zip(predictions, charges, strict=True) if c == q]
        ref = [p.ref_energy / len(p.atoms) for p in chosen]
        model = [p.energy / len(p.atoms) for p in chosen]
        ax.scatter(ref, model, s=14, label=f"q = {q:+d}" if q else "q = 0")
    _diagonal(ax)
    ax.set(xlabel="DFT energy (eV/atom)", ylabel="model energy (eV/atom)", title="Energy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["energy"] = str(folder / "energy_parity.png")
    fig.savefig(paths["energy"], dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ref = np.concatenate([p.ref_forces.reshape(-1) for p in predictions])
    model = np.concatenate([p.forces.reshape(-1) for p in predictions])
    ax.scatter(ref, model, s=3, alpha=0.5)
    _diagonal(ax)
    ax.set(xlabel="DFT force component (eV/Å)", ylabel="model force component (eV/Å)", title="Forces")
    fig.tight_layout()
    paths["forces"] = str(folder / "forces_parity.png")
    fig.savefig(paths["forces"], dpi=120)
    plt.close(fig)
    return paths


def _diagonal(ax: Any) -> None:
    low = min(ax.get_xlim()[0], ax.get_ylim()[0])
    high = max(ax.get_xlim()[1], ax.get_ylim()[1])
    ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)


def _fmt(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def report_table(report: dict[str, Any]) -> str:
    """Return the printed summary of a report: errors by charge and head, relative energies, ranks."""
    from tabulate import tabulate

    rows = []
    for kind, block in (("charge", report["by_charge"]), ("head", report["by_head"])):
        for label, stats in block.items():
            rows.append(
                [
                    f"{kind} {label}",
                    stats["n_frames"],
                    _fmt(stats.get("energy_mae"), 1000),
                    _fmt(stats.get("energy_mae_per_atom"), 1000, 2),
                    _fmt(stats.get("force_mae"), 1000),
                    _fmt(stats.get("force_rmse"), 1000),
                ]
            )
    overall = report["overall"]
    rows.append(
        [
            "all",
            overall["n_frames"],
            _fmt(overall.get("energy_mae"), 1000),
            _fmt(overall.get("energy_mae_per_atom"), 1000, 2),
            _fmt(overall.get("force_mae"), 1000),
            _fmt(overall.get("force_rmse"), 1000),
        ]
    )
    headers = ["frames", "n", "E MAE (meV/cell)", "E MAE (meV/atom)", "F MAE (meV/Å)", "F RMSE (meV/Å)"]
    lines = [tabulate(rows, headers=headers)]
    relative = report["relative_energy"]
    spearman = report["spearman"]
    lines.append(
        f"\nRelative energy MAE (vs each defect's lowest DFT frame): {_fmt(relative['mae'], 1000)} meV "
        f"over {relative['n_frames']} frames; mean Spearman rho over defects: "
        f"{_fmt(spearman['mean'], 1, 3)} ({len(spearman['per_defect'])} defects with >= "
        f"{spearman['min_frames']} frames)"
    )
    ground = report.get("ground_states")
    if ground:
        lines.append(f"\nGround states (model relaxation from DFT, RMSD threshold {ground['threshold']} Å):")
        for name, row in ground["rmsd"].items():
            verdict = "pass" if row["pass"] else "FAIL"
            lines.append(f"  {name:<16} RMSD {row['rmsd']:.3f} Å  {verdict}")
        for defect, levels in ground["transition_levels"].items():
            for label, level in levels.items():
                lines.append(
                    f"  {defect} ({label}): model {level['model']:.3f} eV, DFT {level['dft']:.3f} eV, "
                    f"error {level['error']:+.3f} eV"
                )
    if report.get("levels"):
        lines.append("\n" + levels_table(report["levels"]))
    return "\n".join(lines)


def evaluate_model(
    model: str | Path,
    dataset_dir: str | Path,
    report_dir: str | Path,
    split: str = "test",
    ground_states: str | Path | None = None,
    device: str = "cpu",
    plots: bool = True,
    echo: Callable[[str], None] = print,
    levels: Any = None,
) -> dict[str, Any]:
    """Evaluate a MACE model on a dataset split; write ``report.json`` (and parity plots).

    Args:
        model: The ``.model`` file (charge mode and heads are read from it).
        dataset_dir: Folder written by ``snb-ml dataset``.
        report_dir: Output folder.
        split: ``train``, ``valid`` or ``test``.
        ground_states: Optional DFT ground states (see :mod:`snb_ml.training.ground_states`).
        device: Torch device.
        plots: Write the parity plots.
        echo: Where the summary table goes.
        levels: :class:`~snb_ml.training.levels.LevelSettings` to compute charge-transition levels
            of model and DFT with doped (``None``: no levels).

    Returns:
        The report (also written to ``report_dir/report.json``): ``model``, ``dataset``, ``split``,
        ``charge_mode``, ``heads``, ``overall``, ``by_charge``, ``by_head``, ``relative_energy``,
        ``spearman``, ``plots`` and, with ground states, ``ground_states``; with ``levels``, ``levels``.

    Raises:
        InputError: If the split is empty or unknown.
    """
    if split not in ("train", "valid", "test"):
        raise InputError(f"--split must be train, valid or test, got {split!r}.")
    handle = open_model(model, device)
    radius = _marker_radius(handle.path)
    data = read_dataset(dataset_dir, (split,))
    if not data[split]:
        raise InputError(f"The {split} split of '{dataset_dir}' is empty.")
    annotate_charges(data, handle.charge_mode, radius)
    predictions = predict(handle, data[split])
    report: dict[str, Any] = {
        "model": str(handle.path),
        "dataset": str(Path(dataset_dir).resolve()),
        "split": split,
        "charge_mode": handle.charge_mode,
        "heads": handle.heads,
        "units": {"energy": "eV", "energy_per_atom": "eV/atom", "force": "eV/Å"},
        **all_metrics(predictions),
    }
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = parity_plots(predictions, report_dir) if plots else {}
    if levels is not None:
        everything = [atoms for frames in read_dataset(dataset_dir).values() for atoms in frames]
        report["levels"] = level_report(handle, predictions, everything, levels)
    if ground_states is not None:
        report["ground_states"] = compare_ground_states(handle, ground_states, radius=radius)
    (report_dir / REPORT_NAME).write_text(json.dumps(report, indent=2))
    echo(report_table(report))
    echo(f"\nReport written to {report_dir / REPORT_NAME}")
    return report
