"""When the model's minima cannot stand for the DFT landscape, and which extra starts DFT should explore.

A foundation force field often relaxes every ShakeNBreak distortion back into the undistorted basin,
even where DFT reconstructs (the Te-Te dimer of V_Cd0 in CdTe: DFT reaches it from 14 of 26 starts,
CHGNet 0.3.0 from none). Selecting one structure per *ML* basin then keeps Unperturbed only, and the
DFT ground state is never relaxed. :func:`assess_minima` flags such landscapes and
:func:`exploration_starts` picks a small, fixed set of *original* ShakeNBreak starts to relax with
DFT on top of the distinct basins (the ``protect`` policy of :func:`~snb_ml.minima.select_defect`).

Flags (any one makes the minima untrustworthy):

* ``one_basin``: every converged minimum falls in one structural basin;
* ``no_reconstruction``: no minimum lies outside Unperturbed's basin (the model saw no
  reconstruction at all; always warned about);
* ``motifs_collapsed``: at least half of the starts that began in a distinct motif (``Dimer``,
  ``Rattled``, ``|bond distortion| >= 30 %``) relaxed back into Unperturbed's basin;
* ``flat_energies``: the ML energies of all minima lie within ``noise`` (default 0.1 eV) of each
  other, so the model cannot rank what it found;
* ``unconfirmed_fine_tune``: the model was fine-tuned (``snb-ml train``) on the DFT of other defects
  or charge states, never this one. Fine-tuning makes a model confident, so the four flags above
  fall silent, but on an unseen defect its basins are not checked: fine-tuned on Mg_O_0 and +1,
  CHGNet found an off-centre Mg_O_+2 structure near DFT's, yet outside DFT's basin by the
  benchmark's threshold, and only the exploration set reached DFT's ground state
  (``docs/training.md``). The flag clears once the defect's own DFT is in the training data (the
  loop's next round).

The exploration rule, measured on 15 published ShakeNBreak DFT searches (``bench/exploration_rule.py``,
table in ``docs/selection.md``): per side of the bond-distortion range (compressive < 0, tensile > 0)
the start nearest the middle of that side's magnitudes (ties to the smaller magnitude); a search with
one side only gets the starts nearest 1/3 and 2/3 of it; plus the first ``Dimer`` and ``Rattled``
start. Folders already selected are skipped (the next nearest is taken). So at most 4 extra DFT
relaxations, 2 on a plain bond-distortion grid. These starts go to DFT as generated, not as the ML
minimum, since that minimum is exactly what is not trusted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from snb_ml.tree.metadata import split_charge

LARGE_DISTORTION = 0.3  # |bond distortion| from which a start counts as a distinct motif
ENERGY_NOISE = 0.1  # eV: an ML energy spread below this cannot rank basins
MOTIF_FAMILIES = ("Dimer", "Rattled")
POLICIES = ("protect", "lean")


@dataclass(frozen=True)
class TrustFlag:
    """One reason not to trust the model's minima.

    Attributes:
        code: ``one_basin``, ``no_reconstruction``, ``motifs_collapsed`` or ``flat_energies``.
        message: What was seen, in words.
    """

    code: str
    message: str


@dataclass
class TrustReport:
    """Whether the ML minima of one defect can stand for its DFT landscape.

    Attributes:
        flags: Reasons not to trust them (empty: trusted).
        motif_starts: Starts that began in a distinct motif (Dimer, Rattled, large bond distortion).
        collapsed: Those of them whose minimum lies in Unperturbed's basin.
        energy_spread: Highest minus lowest ML energy of the converged minima (eV).
        noise: The energy noise used for ``flat_energies`` (eV).
        reconstruction_seen: False when every minimum lies in Unperturbed's basin.
    """

    flags: list[TrustFlag] = field(default_factory=list)
    motif_starts: list[str] = field(default_factory=list)
    collapsed: list[str] = field(default_factory=list)
    energy_spread: float = 0.0
    noise: float = ENERGY_NOISE
    reconstruction_seen: bool = True

    @property
    def trusted(self) -> bool:
        """True when no flag was raised."""
        return not self.flags

    @property
    def codes(self) -> list[str]:
        """The flag codes, in order."""
        return [flag.code for flag in self.flags]

    def to_json(self) -> dict[str, Any]:
        """Plain-data form for the selection file."""
        return {
            "trusted": self.trusted,
            "flags": [{"code": f.code, "message": f.message} for f in self.flags],
            "motif_starts": list(self.motif_starts),
            "collapsed": list(self.collapsed),
            "energy_spread": round(float(self.energy_spread), 6),
            "noise": self.noise,
            "reconstruction_seen": self.reconstruction_seen,
        }


def bond_distortion(folder: str) -> float | None:
    """The bond distortion of a plain ``Bond_Distortion_x%`` folder (-0.3 for -30 %), else ``None``.

    ShakeNBreak's own rule (``shakenbreak.analysis._format_distortion_names``), without importing
    ShakeNBreak's analysis module, whose import (doped, pymatgen defects) takes seconds.
    """
    if not (folder.startswith("Bond_Distortion") and folder.endswith("%")):
        return None
    try:
        return float(folder.split("Bond_Distortion_")[-1].split("%")[0]) / 100
    except ValueError:
        return None


def motif_family(folder: str) -> str | None:
    """``Dimer`` or ``Rattled`` for starts of those ShakeNBreak motifs, else ``None``."""
    return next((family for family in MOTIF_FAMILIES if folder.startswith(family)), None)


def is_motif_start(folder: str) -> bool:
    """True for starts that began in a distinct motif: Dimer, Rattled, a bond distortion of 30 % or more."""
    value = bond_distortion(folder)
    if value is not None:
        return abs(value) >= LARGE_DISTORTION - 1e-9
    return motif_family(folder) is not None


def assess_minima(
    members: Sequence[Sequence[str]],
    energies: dict[str, float],
    distance_to_unperturbed: dict[str, float],
    threshold: float,
    noise: float = ENERGY_NOISE,
    *,
    defect: str | None = None,
    fine_tuned_on: Sequence[str] | None = None,
) -> TrustReport:
    """Flag ML minima that cannot be trusted to stand for the DFT landscape.

    Args:
        members: The clusters' members (one sequence per structural basin).
        energies: ML energy of every clustered minimum (eV).
        distance_to_unperturbed: Fingerprint distance of every clustered minimum to the relaxed
            Unperturbed structure (to the Unperturbed start when it did not converge).
        threshold: Distance below which two minima share a basin (the selection threshold).
        noise: ML energy spread (eV) below which the model cannot rank its minima.
        defect: The defect folder name (``Mg_O_+2``), for ``unconfirmed_fine_tune``.
        fine_tuned_on: The defect folders a fine-tuned model was trained on (the provenance's
            ``model.fine_tuned_on``); ``None`` for a model that was not fine-tuned.

    Returns:
        The flags and what they were computed from.
    """
    labels = [label for cluster in members for label in cluster]
    in_unperturbed = {label for label in labels if distance_to_unperturbed[label] < threshold}
    motifs = [label for label in labels if label != "Unperturbed" and is_motif_start(label)]
    collapsed = [label for label in motifs if label in in_unperturbed]
    spread = max(energies[label] for label in labels) - min(energies[label] for label in labels)
    report = TrustReport(
        motif_starts=sorted(motifs, key=_start_order),
        collapsed=sorted(collapsed, key=_start_order),
        energy_spread=float(spread),
        noise=noise,
        reconstruction_seen=bool(set(labels) - in_unperturbed),
    )
    if len(members) == 1 and len(labels) > 1:
        report.flags.append(TrustFlag("one_basin", f"all {len(labels)} ML minima fall in one basin"))
    if not report.reconstruction_seen:
        report.flags.append(
            TrustFlag(
                "no_reconstruction",
                "every ML minimum lies in Unperturbed's basin: the model saw no reconstruction",
            )
        )
    if motifs and 2 * len(collapsed) >= len(motifs):
        report.flags.append(
            TrustFlag(
                "motifs_collapsed",
                f"{len(collapsed)} of {len(motifs)} starts that began in a distinct motif (Dimer, Rattled, "
                f"|bond distortion| >= {LARGE_DISTORTION:.0%}) relaxed back into Unperturbed's basin",
            )
        )
    if len(labels) > 1 and spread < noise:
        report.flags.append(
            TrustFlag(
                "flat_energies",
                f"the ML energies of all {len(labels)} minima lie within {spread:.3f} eV, below the model's "
                f"noise ({noise:g} eV)",
            )
        )
    if defect is not None and fine_tuned_on is not None:
        seen = {split_charge(name) for name in fine_tuned_on}
        if split_charge(defect) not in seen:
            named = ", ".join(fine_tuned_on)
            trained = f"the DFT of {named}" if fine_tuned_on else "DFT its file does not name"
            report.flags.append(
                TrustFlag(
                    "unconfirmed_fine_tune",
                    f"the model was fine-tuned on {trained}, never on {defect}: its minima here are not "
                    "checked against DFT",
                )
            )
    return report


def _start_order(folder: str) -> tuple:
    value = bond_distortion(folder)
    return (0, value, folder) if value is not None else (1, 0.0, folder)


def _nearest(values: list[float], target: float, taken: set[float]) -> float | None:
    """The value nearest ``target`` in magnitude (ties to the smaller magnitude), skipping ``taken``."""
    free = [v for v in values if v not in taken]
    if not free:
        return None
    # Percent rounded to 0.01 so that 30 and 40 are an exact tie around 35 (no float noise).
    return min(free, key=lambda v: (round(abs(abs(v) - target) * 100, 2), abs(v)))


def _side_targets(side: list[float], both_sides: bool) -> list[tuple[str, float]]:
    magnitudes = [abs(v) for v in side]
    low, high = min(magnitudes), max(magnitudes)
    fractions = (("the middle", 0.5),) if both_sides else (("1/3", 1 / 3), ("2/3", 2 / 3))
    return [(where, low + fraction * (high - low)) for where, fraction in fractions]


def exploration_starts(candidates: Sequence[str], selected: Sequence[str]) -> list[tuple[str, str]]:
    """The exploration set: original ShakeNBreak starts spread over the distortion range.

    Args:
        candidates: Distortion folders that may be relaxed with DFT (Unperturbed is ignored).
        selected: Folders already selected (never picked again).

    Returns:
        ``(folder, why)`` pairs, compressive first, then tensile, then motifs.
    """
    chosen = set(selected)
    values = {value: f for f in candidates if (value := bond_distortion(f)) is not None}
    sides = [
        ("compressive", sorted(v for v in values if v < 0)),
        ("tensile", sorted(v for v in values if v > 0)),
    ]
    present = [(name, side) for name, side in sides if side]
    picks: list[tuple[str, str]] = []
    for name, side in present:
        taken = {v for v in side if values[v] in chosen}
        for where, target in _side_targets(side, len(present) == 2):
            value = _nearest(side, target, taken)
            if value is None:
                break
            taken.add(value)
            why = f"{name} start nearest {where} of the {name} range ({target:.0%} magnitude)"
            picks.append((values[value], why))
    for family in MOTIF_FAMILIES:
        folders = sorted(f for f in candidates if motif_family(f) == family and f not in chosen)
        if folders:
            plain = family if family in folders else folders[0]
            picks.append((plain, f"{family} motif start"))
    return picks
