"""Tables, JSON and the plot of a ground-state recall benchmark, written atomically into its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from snb_ml.safe_write import atomic_path, write_text

if TYPE_CHECKING:
    from snb_ml.recall.results import DefectRecall, RecallResult


def _energy(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _flag(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def defect_table(defect: DefectRecall) -> str:
    """Per-start table of one defect."""
    from tabulate import tabulate

    rows = []
    for start in defect.starts:
        run = ""
        if start.selected:
            reached = "unknown" if start.expected_energy is None else f"{start.expected_energy:+.3f}"
            run = f"{'ML minimum' if start.start_from == 'ml_minimum' else 'as generated'} -> {reached}"
        rows.append(
            [
                start.folder.replace("Bond_Distortion_", ""),
                _energy(start.dft_energy),
                _flag(start.dft_ground_state),
                _energy(start.ml_energy),
                start.ml_status,
                _flag(start.ml_in_dft_basin),
                _flag(start.ml_in_gs_basin) + ("" if start.ml_to_gs is None else f" ({start.ml_to_gs:.3f})"),
                run,
            ]
        )
    headers = [
        "start",
        "DFT E-E_min",
        "DFT GS",
        "ML E-E_min",
        "ML status",
        "ML in own DFT basin",
        "ML in GS basin (distance)",
        "DFT run (starts from -> reaches)",
    ]
    table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
    found = f"yes, by {', '.join(defect.found_by)}" if defect.found_by else "NO"
    lines = [f"{defect.name} (policy {defect.policy}):", table]
    lines += [f"  {start.folder}: {start.reason}" for start in defect.starts if start.selected]
    lines += [f"  note: {note}" for note in defect.notes]
    lines.append(
        f"  ground state found: {found}; DFT relaxations {defect.k} of {defect.n} ({defect.saved:.0%} saved)"
    )
    return "\n".join(lines)


def summary_table(result: RecallResult) -> str:
    """One row per defect and a total row."""
    from tabulate import tabulate

    rows = []
    for d in result.defects.values():
        rows.append(
            [
                d.name,
                d.n,
                d.k,
                f"{d.saved:.0%}",
                "yes" if d.ground_state_found else "NO",
                "yes" if d.found_from_starts else "no",
                _flag(d.ml_lowest_is_gs),
                "-" if d.spearman is None else f"{d.spearman:+.2f}",
                ", ".join(d.trust_flags) or "-",
            ]
        )
    saved = (result.n - result.k) / result.n if result.n else 0.0
    rows.append(
        ["total", result.n, result.k, f"{saved:.0%}", f"{result.found}/{len(result.defects)}", "", "", "", ""]
    )
    headers = [
        "defect",
        "n",
        "k",
        "saved",
        "GS found",
        "GS among starts",
        "ML lowest = GS",
        "Spearman",
        "untrusted (protect adds exploration)",
    ]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def format_result(result: RecallResult) -> str:
    """Every defect's table, the summary table, errors and timings, ending in the summary line."""
    parts = [defect_table(d) for d in result.defects.values()]
    parts.append(summary_table(result))
    parts += [f"Error for {name}: {message}" for name, message in result.errors.items()]
    t = result.timings
    parts.append(
        f"Model: {result.model['name']} ({result.model['version']}); tolerance {result.tolerance:g} eV; "
        f"{t.get('total', 0):.1f} s in total, {t.get('relaxation', 0):.1f} s relaxing, "
        f"{t.get('overhead', 0):.1f} s besides (model loading {t.get('model_load', 0):.1f} s)."
    )
    parts.append(result.summary_line())
    return "\n\n".join(parts)


def plot_result(result: RecallResult, path: str | Path) -> Path:
    """ML vs DFT energy per start, one panel per defect: basins, selected starts and the ground state.

    Colour: the DFT basin of each start's DFT result (blue: the ground state's). Filled: the ML
    minimum lies in that same basin; hollow: it does not (the model relaxed elsewhere). A black ring
    marks a start relaxed with DFT from its ML minimum, a black diamond one relaxed as generated.
    """
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    defects = list(result.defects.values())
    columns = min(3, max(1, len(defects)))
    rows = max(1, math.ceil(len(defects) / columns))
    figure = Figure(figsize=(max(7.0, 4.6 * columns), 3.9 * rows + 1.2))
    FigureCanvasAgg(figure)
    for index, defect in enumerate(defects):
        axes = figure.add_subplot(rows, columns, index + 1)
        for start in defect.starts:
            if start.dft_energy is None or start.ml_energy is None:
                continue
            colour = f"C{start.dft_basin % 10}" if start.dft_basin is not None else "grey"
            filled = start.ml_in_dft_basin is not False
            axes.scatter(
                [start.dft_energy],
                [start.ml_energy],
                s=34,
                facecolor=colour if filled else "none",
                edgecolor=colour,
                linewidth=1.4,
                zorder=3,
            )
            if start.selected:
                axes.scatter(
                    [start.dft_energy],
                    [start.ml_energy],
                    s=170,
                    marker="o" if start.start_from == "ml_minimum" else "D",
                    facecolor="none",
                    edgecolor="black",
                    linewidth=1.3,
                    zorder=4,
                )
        axes.axvspan(-1e-3, result.tolerance, color="gold", alpha=0.25, zorder=1)
        axes.set_xlabel("DFT energy - DFT minimum (eV)")
        axes.set_ylabel("ML energy - ML minimum (eV)")
        found = "GS found" if defect.ground_state_found else "GS LOST"
        axes.set_title(f"{defect.name}: {found}, DFT {defect.k}/{defect.n}", fontsize=9)
    legend = [
        Line2D([], [], marker="o", linestyle="", color="C0", label="DFT ground-state basin"),
        Line2D([], [], marker="o", linestyle="", color="C1", label="other DFT basin"),
        Line2D(
            [], [], marker="o", linestyle="", markerfacecolor="none", color="C0", label="ML minimum elsewhere"
        ),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="none",
            color="black",
            markersize=11,
            label="DFT from ML minimum",
        ),  # fmt: skip
        Line2D(
            [],
            [],
            marker="D",
            linestyle="",
            markerfacecolor="none",
            color="black",
            markersize=9,
            label="DFT as generated",
        ),  # fmt: skip
    ]
    figure.legend(handles=legend, loc="lower center", ncol=3, fontsize=7, frameon=False)
    figure.suptitle(f"{result.model['name']}, policy {result.policy}:\n{result.summary_line()}", fontsize=9)
    figure.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, metadata={"Software": None})
    return path


def write_result(result: RecallResult) -> dict[str, Path]:
    """Write ``recall_<policy>.json``, ``.txt`` and ``.png`` into the benchmark folder (atomically)."""
    stem = result.output / f"recall_{result.policy}"
    paths = {
        "json": stem.with_suffix(".json"),
        "table": stem.with_suffix(".txt"),
        "plot": stem.with_suffix(".png"),
    }
    write_text(paths["json"], json.dumps(result.to_json(), indent=2) + "\n")
    write_text(paths["table"], result.table() + "\n")
    if result.defects:
        plot_result(result, paths["plot"])
    return paths
