"""The batched relaxation engine: FIRE on many structures, one model call per step for the whole batch.

Each structure keeps its own FIRE state, guards and convergence test (the same
:class:`~snb_ml.relax.RelaxationTracker` as the sequential engine). Finished structures leave the
batch and queued ones join at the next step, so the batch stays full. A structure whose forces are
not finite is stopped alone; an out-of-memory error halves the batch and the step is retried.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.batch import memory
from snb_ml.batch.evaluators import BatchEvaluator, is_out_of_memory
from snb_ml.batch.fire import FireState
from snb_ml.errors import InputError, SnbMlError
from snb_ml.relax import RelaxationTracker, RelaxResult, RelaxSettings

# Atoms per model call on CPU: bench/bench_batched.py shows throughput flat beyond ~1,000 atoms on
# 2 cores, and larger batches only delay the first results.
CPU_ATOMS_PER_BATCH = 1024
# Resident size the default CPU batch keeps the process under: CHGNet needs 5-9 MB per atom of dense
# 216-atom MgO in one call (bench/bench_memory.py), so 1024 atoms reached 5-9 GB. The first call
# holds one structure; every call's peak is measured, and the next batch fills what is left of this
# (never less than one structure, whatever that costs).
CPU_MEMORY_LIMIT = 2.0e9
# Freed memory is handed back to the system once the process holds this fraction of the limit.
RELEASE_FRACTION = 0.75
# Per-atom cost assumed where the peak of a call cannot be measured (not Linux).
CPU_BYTES_PER_ATOM = 5.0e6
# On a GPU the budget is set from the memory the first batch used; this is where it starts.
GPU_START_ATOMS = 4096
GPU_MEMORY_FRACTION = 0.6


@dataclass(eq=False)  # hashable by identity: callers map jobs to results
class BatchJob:
    """One structure to relax.

    Attributes:
        key: Anything that identifies the job to the caller; returned with its result.
        atoms: The starting structure (not modified).
        reference_distance: Bulk-like nearest-neighbour distance for the explosion guard.
    """

    key: Any
    atoms: Atoms
    reference_distance: float | None = None


class _Member:
    """A structure inside the batch: its geometry, FIRE state and tracker."""

    def __init__(self, job: BatchJob, settings: RelaxSettings):
        self.job = job
        self.atoms = job.atoms.copy()
        self.atoms.calc = None
        self.tracker = RelaxationTracker(self.atoms, settings, job.reference_distance)
        self.fire = FireState()
        self.step = 0

    def advance(self, energy: float, forces: np.ndarray) -> bool:
        """Record the model's answer; move the atoms unless the relaxation has finished."""
        for constraint in self.atoms.constraints:  # as Atoms.get_forces() does in the sequential engine
            constraint.adjust_forces(self.atoms, forces)
        if self.tracker.observe(self.atoms, energy, forces, self.step):
            return True
        self.atoms.set_positions(self.fire.step(self.atoms.positions, forces), apply_constraint=True)
        self.step += 1
        return False


class _Budget:
    """How many atoms (and structures) go into one model call."""

    def __init__(self, evaluator: BatchEvaluator, max_structures: int | None, max_atoms: int | None):
        self.max_structures = max_structures or 10**9
        on_gpu = str(evaluator.device).startswith("cuda")
        self.measure_gpu = on_gpu and max_atoms is None
        # The default CPU budget is bounded by memory too: one structure first, measured.
        self.measure_cpu = not on_gpu and max_atoms is None and max_structures is None
        self.release = not on_gpu and max_atoms is None  # give freed memory back after each call
        if max_atoms is not None:
            self.atoms = max_atoms
        elif max_structures is not None:
            self.atoms = 10**9
        else:
            self.atoms = GPU_START_ATOMS if on_gpu else 1
        self.device = evaluator.device
        self.baseline = 0
        self.cpu_start: int | None = None
        self.bytes_per_atom: float | None = None  # largest resident cost per atom of a CPU call
        self.ceiling = CPU_ATOMS_PER_BATCH
        if self.measure_gpu:
            import torch

            # The peak is per process: measure this run's batches above what is already allocated.
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)

    def admits(self, members: list[_Member], atoms: Atoms) -> bool:
        if not members:
            return True
        if len(members) >= self.max_structures:
            return False
        return sum(len(m.atoms) for m in members) + len(atoms) <= self.atoms

    def shrink(self, members: list[_Member]) -> int:
        """Halve the batch after an out-of-memory error; return how many members must leave."""
        keep = max(1, len(members) // 2)
        self.atoms = self.ceiling = max(1, sum(len(m.atoms) for m in members[:keep]))
        self.max_structures = keep
        self.measure_gpu = False
        return len(members) - keep

    def before_call(self) -> None:
        """Start measuring the peak resident memory of this CPU call."""
        if self.measure_cpu:
            self.cpu_start = memory.start_peak_measurement()

    def after_call(self, members: list[_Member]) -> None:
        """Size the next batch from the memory this call took; hand freed memory back on CPU.

        The cost per atom is the largest seen so far: it differs between structures of one defect
        (an unrattled Unperturbed cell has more bonds within CHGNet's 3 Å than the rattled starts).
        """
        self.calibrate(members)
        # Handing memory back costs ~13 % of a 4 x 216-atom CdTe call (pages fault in again), so only
        # when the heap kept from earlier calls nears the limit.
        if self.release and (memory.resident() or 0) > RELEASE_FRACTION * CPU_MEMORY_LIMIT:
            memory.release_free_memory()
        if not self.measure_cpu:
            return
        atoms = sum(len(m.atoms) for m in members)
        peak = memory.peak_since_start()
        measured = (peak - self.cpu_start) / atoms if peak and self.cpu_start else CPU_BYTES_PER_ATOM
        self.bytes_per_atom = max(self.bytes_per_atom or 1.0, measured)
        room = CPU_MEMORY_LIMIT - (memory.resident() or 0)
        self.atoms = int(min(self.ceiling, max(1, room / self.bytes_per_atom)))

    def calibrate(self, members: list[_Member]) -> None:
        """After the first GPU call: fill a fraction of the device memory, measured per atom."""
        if not self.measure_gpu:
            return
        self.measure_gpu = False
        import torch

        used = torch.cuda.max_memory_allocated(self.device) - self.baseline
        atoms = sum(len(m.atoms) for m in members)
        free = torch.cuda.get_device_properties(self.device).total_memory - self.baseline
        if used > 0 and atoms > 0:
            self.atoms = max(atoms, int(GPU_MEMORY_FRACTION * free / (used / atoms)))


def _evaluate_each(
    evaluator: BatchEvaluator, members: list[_Member]
) -> list[tuple[float, np.ndarray] | Exception]:
    # One bad structure must not stop the batch: find it by evaluating the members one by one.
    answers: list[tuple[float, np.ndarray] | Exception] = []
    for member in members:
        try:
            energies, forces = evaluator.evaluate([member.atoms])
            answers.append((float(energies[0]), forces[0]))
        except SnbMlError:  # a problem of the run, not of this structure
            raise
        except Exception as exc:  # reported as this structure's error
            answers.append(exc)
    return answers


def relax_batched(
    jobs: Iterable[BatchJob],
    evaluator: BatchEvaluator,
    settings: RelaxSettings | None = None,
    max_structures: int | None = None,
    max_atoms: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[tuple[BatchJob, RelaxResult | Exception]]:
    """Relax many structures together; yield each one's result as soon as it finishes.

    Args:
        jobs: The structures to relax.
        evaluator: Batched model evaluation (see :func:`~snb_ml.batch.batch_evaluator_for`).
        settings: Relaxation settings; the optimizer must be FIRE.
        max_structures: Most structures per model call (``None``: no limit besides atoms).
        max_atoms: Most atoms per model call (``None``: chosen from the device).
        on_step: Optional callable ``on_step(n)`` after each batched call of ``n`` structures.

    Yields:
        ``(job, result)`` pairs in the order the relaxations finish; ``result`` is the exception
        raised by the model when it failed on that structure alone.

    Raises:
        InputError: If the optimizer is not FIRE.
    """
    settings = settings or RelaxSettings()
    if settings.optimizer.upper() != "FIRE":
        raise InputError(
            f"The batched engine runs FIRE only (asked for {settings.optimizer}). Use --optimizer FIRE "
            "or --engine sequential."
        )
    queue: collections.deque[BatchJob | _Member] = collections.deque(jobs)
    budget = _Budget(evaluator, max_structures, max_atoms)
    members: list[_Member] = []
    while queue or members:
        while queue and budget.admits(members, _atoms_of(queue[0])):
            waiting = queue.popleft()
            members.append(waiting if isinstance(waiting, _Member) else _Member(waiting, settings))
        budget.before_call()
        try:
            energies, forces = evaluator.evaluate([m.atoms for m in members])
            answers: list[tuple[float, np.ndarray] | Exception] = [
                (float(e), f) for e, f in zip(energies, forces, strict=True)
            ]
            budget.after_call(members)
        except SnbMlError:
            raise
        except Exception as exc:
            if is_out_of_memory(exc) and len(members) > 1:
                _free_device_memory(evaluator)
                leaving = budget.shrink(members)
                # Members keep their FIRE state while they wait, so nothing is recomputed.
                queue.extendleft(reversed(members[-leaving:]))
                del members[-leaving:]
                continue
            answers = [exc] if len(members) == 1 else _evaluate_each(evaluator, members)
        if on_step is not None:
            on_step(len(members))
        still_running = []
        for member, answer in zip(members, answers, strict=True):
            if isinstance(answer, Exception):
                yield member.job, answer
            elif member.advance(*answer):
                yield member.job, member.tracker.result()
            else:
                still_running.append(member)
        members = still_running


def _atoms_of(item: BatchJob | _Member) -> Atoms:
    return item.atoms


def _free_device_memory(evaluator: BatchEvaluator) -> None:
    if str(evaluator.device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
