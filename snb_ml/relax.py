"""The relaxation engine: fixed-cell ASE optimisation with convergence records and explosion guards."""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from snb_ml.errors import InputError
from snb_ml.neighbors import neighbor_list
from snb_ml.tree.status import Status

OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")

# Status values (snb_ml.tree.status); ShakeNBreak names folders of the last two "*_High_Energy".
CONVERGED = Status.CONVERGED
UNCONVERGED = Status.UNCONVERGED
HIGH_ENERGY = Status.HIGH_ENERGY
EXPLODED = Status.EXPLODED


@dataclass(frozen=True)
class RelaxSettings:
    """Settings of one relaxation.

    Attributes:
        fmax: Force convergence threshold in eV/Å (largest atomic force).
        steps: Maximum number of optimizer steps.
        optimizer: ``FIRE`` (default), ``BFGS`` or ``LBFGS``.
        trajectory_frames: Number of evenly spaced frames kept (first and last included).
        min_distance_fraction: Stop when two atoms come closer than this fraction of the reference
            (bulk-like) nearest-neighbour distance.
        max_energy_rise: Stop when the energy rises this many eV above the starting energy.
        high_energy_threshold: Mark a finished relaxation ``_High_Energy`` when it ends this many eV
            above Unperturbed (ShakeNBreak's own job script uses 2 eV).
    """

    fmax: float = 0.01
    steps: int = 1000
    optimizer: str = "FIRE"
    trajectory_frames: int = 10
    min_distance_fraction: float = 0.5
    max_energy_rise: float = 10.0
    high_energy_threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.optimizer.upper() not in OPTIMIZERS:
            raise InputError(f"Unknown optimizer '{self.optimizer}'. Choose one of {', '.join(OPTIMIZERS)}.")
        # NaN passes every comparison and inf never converges; both would also reach the provenance
        # file as NaN/Infinity, which is not JSON.
        for name in ("fmax", "min_distance_fraction", "max_energy_rise", "high_energy_threshold"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                hint = " (--fmax, e.g. 0.01 eV/Å)" if name == "fmax" else ""
                raise InputError(f"{name} must be a finite number{hint}, got {value!r}.")
        if self.fmax <= 0 or self.steps < 0:
            raise InputError(f"--fmax must be > 0 and --steps >= 0 (got {self.fmax}, {self.steps}).")


@dataclass
class RelaxResult:
    """Outcome of one relaxation.

    Attributes:
        atoms: Final structure (the last finite geometry for failed runs).
        energy: Final energy in eV (``nan`` if the model returned non-finite values).
        status: ``converged``, ``unconverged``, ``high_energy`` or ``exploded``.
        steps: Optimizer steps taken.
        seconds: Wall time.
        max_force: Largest atomic force at the end, eV/Å.
        message: Why a run was stopped, empty when it converged.
        frames: Sampled trajectory frames, each with energy and forces attached.
    """

    atoms: Atoms
    energy: float
    status: str
    steps: int
    seconds: float
    max_force: float
    message: str = ""
    frames: list[Atoms] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """True when the force criterion was met."""
        return self.status == CONVERGED


def min_interatomic_distance(atoms: Atoms, cutoff: float = 4.0) -> float:
    """Shortest distance between two atoms, periodic images included.

    Args:
        atoms: The structure.
        cutoff: Search radius in Å; ``inf`` is returned if no pair is closer (or for one atom).
    """
    if len(atoms) < 2:
        return float("inf")

    # pymatgen's cells are the search radius wide, so tiny radii cost more than 3 Å.
    distances = neighbor_list(atoms, max(cutoff, 3.0))[3]
    distances = distances[distances <= cutoff]
    return float(distances.min()) if len(distances) else float("inf")


def _has_pair_closer_than(atoms: Atoms, limit: float) -> float | None:
    # Searching only within the limit keeps this check far cheaper than a model call.
    if limit <= 0:
        return None
    distance = min_interatomic_distance(atoms, cutoff=limit)
    return None if distance == float("inf") else distance


def _snapshot(atoms: Atoms, energy: float, forces: np.ndarray, step: int) -> Atoms:
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces.copy())
    frame.info["step"] = step
    return frame


def _sample(frames: list[Atoms], count: int) -> list[Atoms]:
    if count <= 0 or len(frames) <= count:
        return list(frames)
    indices = np.unique(np.linspace(0, len(frames) - 1, count).round().astype(int))
    return [frames[i] for i in indices]


class RelaxationTracker:
    """Guards, sampled frames and the final record of one relaxation.

    Shared by the sequential engine (:func:`relax`) and the batched engine, so both stop, sample and
    report a structure in exactly the same way.

    Args:
        atoms: The starting structure.
        settings: Relaxation settings.
        reference_distance: Bulk-like nearest-neighbour distance in Å for the explosion guard;
            defaults to the shortest distance in ``atoms``.
    """

    def __init__(self, atoms: Atoms, settings: RelaxSettings, reference_distance: float | None = None):
        self.settings = settings
        start_distance = min_interatomic_distance(atoms)
        self.reference = reference_distance if reference_distance else start_distance
        # A rattled start may already sit below the threshold; only a further collapse counts.
        limit = min(settings.min_distance_fraction * self.reference, 0.8 * start_distance)
        self.distance_limit = limit if np.isfinite(limit) else 0.0  # no neighbours within 4 Å
        self.frames: list[Atoms] = []
        self.last_good = atoms.copy()
        self.status = UNCONVERGED
        self.message = f"not converged to fmax {settings.fmax} eV/Å in {settings.steps} steps"
        self.energy = self.start_energy = self.max_force = float("nan")
        self.step = 0
        self.start = time.perf_counter()

    def observe(self, atoms: Atoms, energy: float, forces: np.ndarray, step: int) -> bool:
        """Record the model's answer at ``step``; return True when the relaxation must stop.

        Args:
            atoms: The current structure (copied, not kept).
            energy: Its energy in eV.
            forces: Its forces in eV/Å.
            step: Optimizer step (0 for the starting structure).
        """
        self.step = step
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            self.status, self.message = EXPLODED, f"model returned non-finite energy/forces at step {step}"
            self.energy = float("nan")
            return True
        self.energy = energy
        if step == 0:
            self.start_energy = energy
        self.max_force = float(np.linalg.norm(forces, axis=1).max())
        self.frames.append(_snapshot(atoms, energy, forces, step))
        self.last_good = atoms.copy()
        self.last_good.calc = None
        distance = _has_pair_closer_than(atoms, self.distance_limit)
        if distance is not None:
            self.status = EXPLODED
            self.message = (
                f"atoms {distance:.2f} Å apart at step {step} (limit {self.distance_limit:.2f} Å, "
                f"{self.settings.min_distance_fraction:g} x reference {self.reference:.2f} Å)"
            )
            return True
        if energy - self.start_energy > self.settings.max_energy_rise:
            self.status = EXPLODED
            self.message = f"energy rose {energy - self.start_energy:.1f} eV above the start at step {step}"
            return True
        if self.max_force < self.settings.fmax:  # ASE's criterion: largest atomic force below fmax
            self.status, self.message = CONVERGED, ""
            return True
        return step >= self.settings.steps

    def result(self) -> RelaxResult:
        """The relaxation's outcome (the last finite geometry for runs stopped by a guard)."""
        return RelaxResult(
            atoms=self.last_good,
            energy=self.energy,
            status=self.status,
            steps=self.step,
            seconds=time.perf_counter() - self.start,
            max_force=self.max_force,
            message=self.message,
            frames=_sample(self.frames, self.settings.trajectory_frames),
        )


def relax(
    atoms: Atoms,
    calculator: Any,
    settings: RelaxSettings | None = None,
    reference_distance: float | None = None,
    on_step: Any = None,
) -> RelaxResult:
    """Relax ``atoms`` at fixed cell with an ASE optimizer, guarding against explosions and NaNs.

    Args:
        atoms: Structure to relax (not modified; a copy is relaxed).
        calculator: ASE calculator.
        settings: Relaxation settings (defaults if ``None``).
        reference_distance: Bulk-like nearest-neighbour distance in Å for the explosion guard;
            defaults to the shortest distance in ``atoms``.
        on_step: Optional callable ``on_step(step)`` called after each force evaluation.

    Returns:
        The relaxation result. Runs stopped by a guard have status ``exploded``.
    """
    from ase import optimize

    settings = settings or RelaxSettings()
    work = atoms.copy()
    work.calc = calculator
    tracker = RelaxationTracker(work, settings, reference_distance)
    optimizer = getattr(optimize, settings.optimizer.upper())(work, logfile=None)
    for step, _ in enumerate(optimizer.irun(fmax=settings.fmax, steps=settings.steps)):
        stop = tracker.observe(work, float(work.get_potential_energy()), work.get_forces(), step)
        if on_step is not None:
            on_step(step)
        if stop:
            break
    return tracker.result()
