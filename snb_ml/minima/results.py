"""What a minima selection found: basins, the starts relaxed with DFT and why, tables and totals.

Written by :func:`snb_ml.minima.selection.select_defect`; read by the CLI, the hand-off and the
search-quality benchmark (:mod:`snb_ml.recall`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.minima.trust import TrustReport


@dataclass
class SelectedCluster:
    """One structural basin of a defect and its representative.

    Attributes:
        id: 0 for the basin of the lowest ML minimum, then by increasing ML energy.
        members: Distortion folders that relaxed into this basin, lowest energy first.
        representative: The lowest-energy member, to relax with DFT.
        energy: ML energy of the representative (eV).
        energy_vs_unperturbed: ``energy`` minus the ML energy of Unperturbed (``None`` if unknown).
        distance_to_unperturbed: Cosine distance of the representative to the relaxed Unperturbed.
        in_window: False when the energy window left this basin out.
        by_reference: True when Unperturbed represents the basin although another member is lower in
            ML energy (``protect``: Unperturbed is relaxed with DFT anyway, so a second start in its
            basin would repeat it).
    """

    id: int
    members: list[str]
    representative: str
    energy: float
    energy_vs_unperturbed: float | None
    distance_to_unperturbed: float
    in_window: bool = True
    by_reference: bool = False

    @property
    def reason(self) -> str:
        """Why the representative is relaxed with DFT."""
        if self.by_reference:
            return (
                f"represents basin {self.id} ({len(self.members)} ML minima): ShakeNBreak's energy "
                "reference, relaxed with DFT anyway, so no second start is spent on its basin; DFT starts "
                "from the ML minimum"
            )
        return (
            f"representative of basin {self.id} ({len(self.members)} ML minima), its lowest ML energy; "
            "DFT starts from the ML minimum"
        )

    def to_json(self) -> dict[str, Any]:
        """The cluster's entry in the selection file."""
        return {
            "id": self.id,
            "members": list(self.members),
            "representative": self.representative,
            "energy_vs_unperturbed": _round(self.energy_vs_unperturbed),
            "distance_to_unperturbed": _sig(self.distance_to_unperturbed),
            "in_window": self.in_window,
        }


@dataclass(frozen=True)
class ExtraStart:
    """A start relaxed with DFT as ShakeNBreak generated it, not as an ML minimum (``protect`` policy).

    Attributes:
        folder: The distortion folder.
        kind: ``exploration`` (the model's minima were not trusted) or ``reference`` (Unperturbed,
            ShakeNBreak's energy reference, which the hand-off always keeps).
        reason: Why it was kept.
    """

    folder: str
    kind: str
    reason: str


@dataclass
class DefectSelection:
    """The selection for one defect (in one charge state).

    Attributes:
        defect: Defect folder name in the ML tree.
        directory: That folder.
        threshold: Cosine-distance threshold used.
        window: Energy window in eV above the lowest ML minimum (``None``: no window).
        parameters: SOAP and clustering parameters.
        clusters: The basins, by id.
        excluded: Runs (or window-excluded representatives) not selected, with the reason.
        labels: Clustered distortion folders, in ShakeNBreak order (rows of ``distances``).
        distances: Cosine distance matrix between the clustered minima.
        n_distortions: Number of distortions of this defect in the ML tree.
        energies: ML energies of the clustered minima (eV).
        unperturbed_energy: ML energy of Unperturbed, if known.
        notes: Warnings about the selection (loose fmax, window exclusions).
        policy: ``protect`` (distinct basins + exploration when the minima are not trusted +
            Unperturbed) or ``lean`` (distinct basins only).
        trust: Whether the minima can stand for the DFT landscape (see :mod:`snb_ml.minima.trust`).
        extras: Starts relaxed with DFT as generated (exploration, reference), ``protect`` only.
    """

    defect: str
    directory: Path
    threshold: float
    window: float | None
    parameters: dict[str, Any]
    clusters: list[SelectedCluster]
    excluded: dict[str, str]
    labels: list[str]
    distances: np.ndarray
    n_distortions: int
    energies: dict[str, float]
    unperturbed_energy: float | None = None
    notes: list[str] = field(default_factory=list)
    policy: str = "lean"
    trust: TrustReport = field(default_factory=TrustReport)
    extras: list[ExtraStart] = field(default_factory=list)

    @property
    def representatives(self) -> list[str]:
        """Representatives of the basins in the window, by cluster id: DFT starts from their ML minimum."""
        return [c.representative for c in self.clusters if c.in_window]

    @property
    def original_starts(self) -> list[str]:
        """Selected folders whose DFT run starts from the ShakeNBreak structure (exploration, reference)."""
        return [extra.folder for extra in self.extras]

    @property
    def selected(self) -> list[str]:
        """Every distortion to relax with DFT: representatives, then exploration and reference starts."""
        return self.representatives + self.original_starts

    @property
    def reasons(self) -> dict[str, str]:
        """Why each selected folder is relaxed with DFT."""
        reasons = {c.representative: c.reason for c in self.clusters if c.in_window}
        reasons.update({extra.folder: f"{extra.kind}: {extra.reason}" for extra in self.extras})
        return reasons

    @property
    def warnings(self) -> list[str]:
        """What the user must not miss: the model saw no reconstruction."""
        if self.trust.reconstruction_seen:
            return []
        if self.policy == "lean":
            consequence = (
                "with --policy lean only its basin is selected, so a DFT reconstruction (e.g. a dimer) "
                "would be lost; use --policy protect"
            )
        else:
            explored = sum(extra.kind == "exploration" for extra in self.extras)
            consequence = f"{explored} original start(s) are added for DFT to explore"
        return [
            f"{self.defect}: the model saw no reconstruction: all {len(self.labels)} ML minima lie in "
            f"Unperturbed's basin. Foundation models miss many real reconstructions; {consequence}."
        ]

    @property
    def window_excluded(self) -> list[SelectedCluster]:
        """Structurally distinct basins that the energy window left out."""
        return [c for c in self.clusters if not c.in_window]

    def headline(self) -> str:
        """``DFT relaxations needed: k of n (x% saved)``."""
        return headline(len(self.selected), self.n_distortions)

    def to_json(self) -> dict[str, Any]:
        """The content of ``snb_ml_selection.json``."""
        return {
            "defect": self.defect,
            "threshold": self.threshold,
            "window": self.window,
            "parameters": self.parameters,
            "clusters": [c.to_json() for c in self.clusters],
            "policy": self.policy,
            "selected": self.selected,
            "reasons": self.reasons,
            "start_from": {
                **{f: "ml_minimum" for f in self.representatives},
                **{f: "original" for f in self.original_starts},
            },
            "trust": self.trust.to_json(),
            "warnings": self.warnings,
            "excluded": dict(sorted(self.excluded.items())),
            "distances": {
                "labels": list(self.labels),
                "matrix": [[_sig(x) for x in row] for row in self.distances.tolist()],
            },
            "n_distortions": self.n_distortions,
            "headline": self.headline(),
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """Plain-text table of clusters and excluded runs, ending in the headline."""
        from tabulate import tabulate

        rows = [
            [
                c.id,
                c.representative,
                _members_cell(c.members),
                "" if c.energy_vs_unperturbed is None else f"{c.energy_vs_unperturbed:+.3f}",
                f"{c.distance_to_unperturbed:.1e}",
                "yes" if c.in_window else "no (energy window)",
            ]
            for c in self.clusters
        ]
        headers = ["cluster", "representative", "members", "E - E_Unperturbed (eV)", "d(Unperturbed)", "DFT"]
        table = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)
        lines = [f"{self.defect} (policy {self.policy}):", table, "  relaxed with DFT, and why:"]
        lines += [f"    {folder}: {reason}" for folder, reason in self.reasons.items()]
        lines += [f"  not selected: {folder}: {reason}" for folder, reason in sorted(self.excluded.items())]
        lines += [f"  Warning: {warning}" for warning in self.warnings]
        lines += [f"  untrusted ML minima: {flag.message}" for flag in self.trust.flags]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(self.headline())
        return "\n".join(lines)


@dataclass
class TreeSelection:
    """Selections for every defect of an ML tree.

    Attributes:
        ml_tree: The ML tree.
        defects: Selections by defect folder name.
        errors: Defects that could not be selected, with the reason.
    """

    ml_tree: Path
    defects: dict[str, DefectSelection]
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def needed(self) -> int:
        """DFT relaxations selected over all defects."""
        return sum(len(s.selected) for s in self.defects.values())

    @property
    def total(self) -> int:
        """Distortions in the ML tree over all selected defects."""
        return sum(s.n_distortions for s in self.defects.values())

    @property
    def failed(self) -> bool:
        """True if any defect could not be selected."""
        return bool(self.errors)

    def headline(self) -> str:
        """``DFT relaxations needed: k of n (x% saved)`` for the whole tree."""
        return headline(self.needed, self.total)

    def table(self) -> str:
        """Every defect's table, the errors, and the tree's headline."""
        parts = [selection.table() for selection in self.defects.values()]
        parts += [f"Error for {name}: {message}" for name, message in self.errors.items()]
        parts.append(f"Whole tree: {self.headline()}")
        return "\n\n".join(parts)


def _members_cell(members: list[str], width: int = 48) -> str:
    """Short distortion labels (``Bond_Distortion_-30.0%`` -> ``-30.0%``), wrapped to ``width``."""
    import textwrap

    short = [m.replace("Bond_Distortion_", "") for m in members]
    return "\n".join(textwrap.wrap(f"{len(members)}: " + ", ".join(short), width=width))


def headline(needed: int, total: int) -> str:
    """``DFT relaxations needed: k of n (x% saved)``."""
    saved = 100.0 * (total - needed) / total if total else 0.0
    return f"DFT relaxations needed: {needed} of {total} ({saved:.0f}% saved)"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _sig(value: float) -> float:
    return float(f"{float(value):.6g}")
