"""ShakeNBreak-style energy-vs-distortion plot of a selection, points coloured by cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from snb_ml.minima.trust import bond_distortion
from snb_ml.safe_write import atomic_path

if TYPE_CHECKING:
    from snb_ml.minima.selection import DefectSelection


def _x_positions(labels: list[str]) -> tuple[dict[str, float], dict[float, str]]:
    numeric = {}
    for folder in labels:
        key = 0.0 if folder == "Unperturbed" else bond_distortion(folder)
        if key is not None:
            numeric[folder] = 100.0 * key
    others = [f for f in labels if f not in numeric]
    values = list(numeric.values()) or [0.0]
    step = 20.0
    start = max(values) + step
    side = {f: start + step * i for i, f in enumerate(others)}
    return {**numeric, **side}, {x: f for f, x in side.items()}


def plot_selection(selection: DefectSelection, path: str | Path) -> Path:
    """ShakeNBreak-style energy-vs-distortion plot of the minima, coloured by cluster.

    Bond distortions are on the x axis in %, Unperturbed at 0, other distortions (Rattled, Dimer)
    at the right; the y axis is the ML energy relative to Unperturbed (or to the lowest minimum).
    Representatives are drawn larger with a black edge (grey when the energy window left them out).

    Returns:
        The path written (atomically).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs, side = _x_positions(selection.labels)
    zero = selection.unperturbed_energy
    zero = zero if zero is not None else min(selection.energies.values())
    figure = Figure(figsize=(6.4, 4.4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(selection.clusters))]
    for cluster, colour in zip(selection.clusters, colours, strict=True):
        points = [(xs[f], selection.energies[f] - zero) for f in cluster.members]
        axes.scatter(*zip(*points, strict=True), color=colour, s=36, zorder=2, label=f"cluster {cluster.id}")
        rep = cluster.representative
        axes.scatter(
            [xs[rep]],
            [selection.energies[rep] - zero],
            s=150,
            facecolor=colour,
            edgecolor="black" if cluster.in_window else "grey",
            linewidth=1.8,
            marker="s" if rep == "Unperturbed" else "o",
            zorder=3,
        )
    numeric = sorted(x for f, x in xs.items() if x not in side)
    ticks = sorted(set(numeric + list(side)))
    axes.set_xticks(ticks, [side.get(x, f"{x:g}") for x in ticks], rotation=45 if side else 0)
    axes.axhline(0.0, color="grey", linewidth=0.6, linestyle="--", zorder=1)
    axes.set_xlabel("Bond distortion (%)")
    axes.set_ylabel(
        "ML energy vs Unperturbed (eV)" if selection.unperturbed_energy is not None else "ML energy (eV)"
    )
    axes.set_title(f"{selection.defect}: {selection.headline()}", fontsize=9)
    axes.legend(fontsize=7, title="black edge: selected", title_fontsize=7)
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, metadata={"Software": None})
    return path
