"""Results of the ground-state recall benchmark: per start, per defect and per search, with JSON forms."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snb_ml.recall.report import format_result

TOLERANCE = 0.05  # eV above the DFT minimum that still counts as the ground state


@dataclass
class StartResult:
    """One start: what DFT reached from it, what the model reached, and whether it was selected.

    Attributes:
        folder: Distortion folder.
        dft_energy: DFT energy relative to the search's lowest (eV); ``None`` if unknown.
        dft_ground_state: ``dft_energy <= tolerance`` (``None`` if unknown).
        dft_basin: Basin of its DFT result among all DFT results, 0 for the ground state's.
        ml_status: Status of the ML relaxation.
        ml_energy: ML energy relative to the lowest ML minimum (eV).
        ml_in_dft_basin: The ML minimum lies in the basin of this start's DFT result.
        ml_in_gs_basin: The ML minimum lies in the basin of a DFT ground-state result.
        ml_to_dft: Fingerprint distance of the ML minimum to this start's DFT result.
        ml_to_gs: Fingerprint distance of the ML minimum to the nearest DFT ground-state result: how
            far an ML minimum outside every DFT basin (an "unknown" DFT outcome) lies from the ground
            state, against the basin threshold.
        selected: Relaxed with DFT in the plan (Unperturbed always is).
        start_from: ``ml_minimum`` or ``original`` for selected starts.
        expected_energy: DFT energy (relative) the plan's run of this start reaches, ``None`` if unknown.
        reason: Why it is in the plan.
    """

    folder: str
    dft_energy: float | None = None
    dft_ground_state: bool | None = None
    dft_basin: int | None = None
    ml_status: str = "missing"
    ml_energy: float | None = None
    ml_in_dft_basin: bool | None = None
    ml_in_gs_basin: bool | None = None
    ml_to_dft: float | None = None
    ml_to_gs: float | None = None
    selected: bool = False
    start_from: str | None = None
    expected_energy: float | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """Plain data, energies rounded to 0.1 meV."""
        data = asdict(self)
        for key in ("dft_energy", "ml_energy", "expected_energy"):
            data[key] = None if data[key] is None else round(data[key], 4)
        for key in ("ml_to_dft", "ml_to_gs"):
            data[key] = None if data[key] is None else float(f"{data[key]:.4g}")
        return data


@dataclass
class DefectRecall:
    """The benchmark of one defect.

    Attributes:
        name: Defect folder name.
        charge: Charge from the folder name.
        policy: Selection policy.
        n: Starts of the DFT search.
        dft_runs: Starts the plan relaxes with DFT (the selection, plus Unperturbed).
        ground_state_starts: Starts DFT brought within tolerance of its lowest energy.
        found_by: Runs of the plan that reach the ground state.
        found_from_starts: A selected start reached the ground state *from its original structure*
            (the structure-search paper's count, which ignores that representatives start from ML).
        ml_lowest: Start with the lowest ML minimum.
        ml_lowest_is_gs: Its ML minimum, handed to DFT, reaches the ground state.
        spearman: Rank correlation of ML and DFT energies over the starts with both.
        trust_flags: Why the model's minima were not trusted (empty: trusted).
        starts: Per start results, in ShakeNBreak order.
        assumed: Outcomes assumed from the start's own DFT energy (no DFT structures to compare).
        notes: Inputs that were missing or inferred, and warnings.
        ml_seconds: Seconds of ML relaxation spent in this call.
    """

    name: str
    charge: int | None
    policy: str
    n: int
    dft_runs: list[str]
    ground_state_starts: list[str]
    found_by: list[str]
    found_from_starts: bool
    ml_lowest: str | None
    ml_lowest_is_gs: bool | None
    spearman: float | None
    trust_flags: list[str]
    starts: list[StartResult]
    assumed: bool = False
    notes: list[str] = field(default_factory=list)
    ml_seconds: float = 0.0

    @property
    def k(self) -> int:
        """DFT relaxations of the plan."""
        return len(self.dft_runs)

    @property
    def ground_state_found(self) -> bool:
        """Some DFT run of the plan reaches the DFT ground state."""
        return bool(self.found_by)

    @property
    def saved(self) -> float:
        """Fraction of the search's DFT relaxations not needed."""
        return 1.0 - self.k / self.n if self.n else 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``recall_<policy>.json``."""
        return {
            "defect": self.name,
            "charge": self.charge,
            "policy": self.policy,
            "n": self.n,
            "k": self.k,
            "saved": round(self.saved, 4),
            "ground_state_found": self.ground_state_found,
            "found_by": list(self.found_by),
            "found_from_starts": self.found_from_starts,
            "ground_state_starts": list(self.ground_state_starts),
            "dft_runs": list(self.dft_runs),
            "ml_lowest": self.ml_lowest,
            "ml_lowest_is_gs": self.ml_lowest_is_gs,
            "spearman": None if self.spearman is None else round(self.spearman, 4),
            "trust_flags": list(self.trust_flags),
            "assumed_outcomes": self.assumed,
            "ml_seconds": round(self.ml_seconds, 2),
            "notes": list(self.notes),
            "starts": [start.to_json() for start in self.starts],
        }


@dataclass
class RecallResult:
    """The benchmark of a whole DFT search (what :func:`benchmark_search` returns).

    Attributes:
        dft_tree: The DFT search read.
        output: The benchmark's folder (starts, ML tree, reports).
        policy: Selection policy.
        tolerance: Energy tolerance of "ground state found" (eV).
        threshold: Fingerprint threshold of one basin.
        model: Name, version and settings of the model.
        defects: Results by defect.
        errors: Defects that could not be benchmarked, with the reason.
        timings: ``total``, ``model_load``, ``relaxation`` (run_tree's wall time) and ``overhead``
            (total minus relaxation) in seconds.
    """

    dft_tree: Path
    output: Path
    policy: str
    tolerance: float
    threshold: float
    model: dict[str, Any]
    defects: dict[str, DefectRecall]
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def found(self) -> int:
        """Defects whose ground state the plan reaches."""
        return sum(d.ground_state_found for d in self.defects.values())

    @property
    def n(self) -> int:
        """Starts over all benchmarked defects."""
        return sum(d.n for d in self.defects.values())

    @property
    def k(self) -> int:
        """DFT relaxations of the plan over all benchmarked defects."""
        return sum(d.k for d in self.defects.values())

    @property
    def failed(self) -> bool:
        """True if some defect could not be benchmarked."""
        return bool(self.errors)

    def summary_line(self) -> str:
        """``ground state found A of B defects, DFT relaxations k of n (x% saved)``."""
        saved = 100.0 * (self.n - self.k) / self.n if self.n else 0.0
        return (
            f"ground state found {self.found} of {len(self.defects)} defects, "
            f"DFT relaxations {self.k} of {self.n} ({saved:.0f}% saved)"
        )

    def table(self) -> str:
        """Per-start tables per defect, the per-defect summary and the summary line."""
        return format_result(self)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``recall_<policy>.json``."""
        return {
            "dft_tree": str(self.dft_tree),
            "output": str(self.output),
            "policy": self.policy,
            "tolerance": self.tolerance,
            "threshold": self.threshold,
            "model": self.model,
            "summary": self.summary_line(),
            "ground_state_found": self.found,
            "defects_benchmarked": len(self.defects),
            "k": self.k,
            "n": self.n,
            "timings": {key: round(value, 2) for key, value in self.timings.items()},
            "defects": {name: d.to_json() for name, d in self.defects.items()},
            "errors": dict(self.errors),
        }
