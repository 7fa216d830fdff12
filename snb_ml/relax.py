"""The relaxation engine: fixed-cell ASE optimisation with convergence records and explosion guards."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

OPTIMIZERS = ("FIRE", "BFGS", "LBFGS")

# Status values; ShakeNBreak names folders of the last two "*_High_Energy".
CONVERGED = "converged"
UNCONVERGED = "unconverged"
HIGH_ENERGY = "high_energy"
EXPLODED = "exploded"


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
        from snb_ml.errors import InputError

        if self.optimizer.upper() not in OPTIMIZERS:
            raise InputError(f"Unknown optimizer '{self.optimizer}'. Choose one of {', '.join(OPTIMIZERS)}.")
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
    from ase.neighborlist import neighbor_list

    distances = neighbor_list("d", atoms, cutoff=cutoff)
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
    start_distance = min_interatomic_distance(work)
    reference = reference_distance if reference_distance else start_distance
    # A rattled start may already sit below the threshold; only a further collapse counts.
    distance_limit = min(settings.min_distance_fraction * reference, 0.8 * start_distance)
    if not np.isfinite(distance_limit):  # no neighbours within 4 Å: nothing to compare against
        distance_limit = 0.0

    optimizer_class = getattr(optimize, settings.optimizer.upper())
    optimizer = optimizer_class(work, logfile=None)
    frames: list[Atoms] = []
    last_good = work.copy()
    start = time.perf_counter()
    status, message = UNCONVERGED, f"not converged to fmax {settings.fmax} eV/Å in {settings.steps} steps"
    energy = start_energy = float("nan")
    max_force = float("nan")
    step = 0
    for step, is_converged in enumerate(optimizer.irun(fmax=settings.fmax, steps=settings.steps)):
        forces = work.get_forces()
        energy = float(work.get_potential_energy())
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            status, message = EXPLODED, f"model returned non-finite energy/forces at step {step}"
            energy = float("nan")
            break
        if step == 0:
            start_energy = energy
        max_force = float(np.linalg.norm(forces, axis=1).max())
        frames.append(_snapshot(work, energy, forces, step))
        last_good = work.copy()
        if on_step is not None:
            on_step(step)
        distance = _has_pair_closer_than(work, distance_limit)
        if distance is not None:
            status = EXPLODED
            message = (
                f"atoms {distance:.2f} Å apart at step {step} (limit {distance_limit:.2f} Å, "
                f"{settings.min_distance_fraction:g} x reference {reference:.2f} Å)"
            )
            break
        if energy - start_energy > settings.max_energy_rise:
            status = EXPLODED
            message = f"energy rose {energy - start_energy:.1f} eV above the start at step {step}"
            break
        if is_converged:
            status, message = CONVERGED, ""
            break
    seconds = time.perf_counter() - start
    final = last_good
    final.calc = None
    return RelaxResult(
        atoms=final,
        energy=energy,
        status=status,
        steps=step,
        seconds=seconds,
        max_force=max_force,
        message=message,
        frames=_sample(frames, settings.trajectory_frames),
    )
