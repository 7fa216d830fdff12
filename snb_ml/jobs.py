"""What the relaxation engines take and give back: typed jobs and outcomes.

Both engines (:mod:`snb_ml.sequential`, one structure at a time, and :mod:`snb_ml.batch.tree`, many
per model call) take :class:`RelaxJob` objects and yield one :class:`RelaxOutcome` per job; the tree
writer (:mod:`snb_ml.tree.writer`) consumes the outcomes. Neither side reaches into the other's state.
This module also builds a job's starting structure from the ShakeNBreak tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ase import Atoms

from snb_ml.errors import SnbMlError
from snb_ml.relax import RelaxResult, min_interatomic_distance
from snb_ml.relaxers.base import LoadedModel
from snb_ml.tree.layout import DefectInput, read_input_structure


@dataclass(frozen=True, eq=False)  # hashable by identity: engines map jobs to results
class RelaxJob:
    """One distortion to relax.

    Attributes:
        defect: The defect's folder name (one writer per defect in a run).
        folder: The distortion folder, e.g. ``Bond_Distortion_-30.0%`` or ``Unperturbed``.
        atoms: The starting structure, ready for the model (charge and defect site in ``atoms.info``).
        charge: The defect's charge.
        reference_distance: Bulk-like nearest-neighbour distance in Å for the explosion guard.
    """

    defect: str
    folder: str
    atoms: Atoms
    charge: int = 0
    reference_distance: float | None = None

    @property
    def where(self) -> str:
        """``defect/folder``, for messages."""
        return f"{self.defect}/{self.folder}"


@dataclass(frozen=True)
class RelaxOutcome:
    """How one job ended: its result, or the error the model raised on that structure alone.

    Attributes:
        job: The job.
        result: The relaxation result (``None`` when ``error`` is set).
        error: The exception the model raised on this structure (``None`` when it relaxed).
    """

    job: RelaxJob
    result: RelaxResult | None = None
    error: Exception | None = None

    @classmethod
    def of(cls, job: RelaxJob, answer: RelaxResult | Exception) -> RelaxOutcome:
        """The outcome of ``job`` from an engine's answer (a result or an exception)."""
        if isinstance(answer, Exception):
            return cls(job, error=answer)
        return cls(job, result=answer)


def starting_structure(
    model: LoadedModel,
    defect: DefectInput,
    folder: str,
    charge: int,
    site: Any = None,
    restart_file: Path | None = None,
) -> Atoms:
    """Read a distortion's starting structure and make it ready for ``model``.

    Args:
        model: The loaded model (checks its elements; its ``prepare_atoms`` hook runs on the structure).
        defect: The defect in the ShakeNBreak tree.
        folder: The distortion folder.
        charge: The defect's charge (``atoms.info["charge"]``).
        site: The defect site in fractional coordinates (``atoms.info["defect_site"]``, Cartesian).
        restart_file: An earlier unconverged run's ``CONTCAR``: its positions are the start, like a
            DFT restart (ignored if missing or of another size).

    Raises:
        SnbMlError: If the structure cannot be read or the model lacks one of its elements.
    """
    atoms = read_input_structure(defect.directory / folder)
    model.check_elements(atoms.get_chemical_symbols(), f"{defect.name}/{folder}")
    atoms.info["charge"] = charge
    if site is not None:
        atoms.info["defect_site"] = [float(x) for x in atoms.cell.cartesian_positions(site)]
    prepare = getattr(model, "prepare_atoms", None)
    if prepare is not None:  # e.g. defect markers of site-charge models, from the starting geometry
        prepare(atoms)
    if restart_file is not None and restart_file.is_file():
        from ase.io import read

        previous = read(restart_file, format="vasp")
        if len(previous) == len(atoms):
            atoms.positions = previous.positions
    return atoms


def reference_distance(defect_dir: Path) -> float | None:
    """Shortest interatomic distance of the defect's Unperturbed input (``None`` if unreadable)."""
    try:
        return min_interatomic_distance(read_input_structure(defect_dir / "Unperturbed"))
    except (SnbMlError, OSError):
        return None
