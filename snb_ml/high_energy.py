"""The ``_High_Energy`` policy: which finished relaxations ShakeNBreak should not read as minima.

Pure functions of this run's results (no files are read or written): the tree writer
(:mod:`snb_ml.tree.writer`) applies their answer, renaming folders with :func:`snb_ml.records.judge_all`.
A result is judged against the Unperturbed energy of *this* run, never of history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from snb_ml.tree.provenance import DistortionRecord
from snb_ml.tree.status import Status


def judge_high_energy(
    folder: str, status: str, energy: float | None, reference: float | None, threshold: float
) -> tuple[str, str]:
    """Status and message of a finished relaxation judged against the Unperturbed energy.

    A converged distortion ending more than ``threshold`` eV above ``reference`` is ``high_energy``
    (ShakeNBreak's ``_High_Energy``); without a reference nothing is. Unconverged runs (continued on
    the next run), exploded ones and Unperturbed are not judged.

    Args:
        folder: The distortion folder (``Unperturbed`` is the reference, never judged).
        status: The relaxation's status.
        energy: Its final ML energy in eV (``None``: not known).
        reference: This run's Unperturbed energy in eV (``None``: nothing is high energy).
        threshold: eV above the reference that makes a result ``high_energy``.

    Returns:
        ``(status, message)``; the message is empty for a plain converged result.
    """
    if folder == "Unperturbed" or status not in (Status.CONVERGED, Status.HIGH_ENERGY):
        return status, ""
    if reference is None or energy is None or energy - reference <= threshold:
        return Status.CONVERGED, ""
    return Status.HIGH_ENERGY, f"{energy - reference:.2f} eV above Unperturbed (> {threshold} eV)"


def judge_records(
    records: Mapping[str, DistortionRecord], reference: float | None, threshold: float
) -> dict[str, DistortionRecord]:
    """The records whose status changes when judged again against ``reference``.

    Args:
        records: One defect's records by distortion folder (not modified).
        reference: This run's Unperturbed energy in eV (``None``: nothing is high energy).
        threshold: eV above the reference that makes a result ``high_energy``.

    Returns:
        New records, with the judged status and message, for the folders whose status changed
        (errors are not judged); the others keep theirs.
    """
    changed = {}
    for folder, record in records.items():
        if record.status == Status.ERROR:
            continue
        status, message = judge_high_energy(folder, record.status, record.energy, reference, threshold)
        if status != record.status:
            changed[folder] = replace(record, status=status, message=message)
    return changed
