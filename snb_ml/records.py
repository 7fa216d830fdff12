"""Per-distortion records of an ML tree: when one may be reused, and its ``_High_Energy`` folder.

Both are functions of the records and inputs of *this* run, never of history: a result is reused only
when its starting structure (sha256 of the input file) and charge are those of this run (the model and
settings are checked per defect, from the provenance signature), and the ``_High_Energy`` status is
judged again on every run against the current Unperturbed energy, with the folder renamed to match.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from snb_ml.high_energy import judge_high_energy as judge_high_energy  # re-exported: its former home
from snb_ml.high_energy import judge_records
from snb_ml.tree.layout import HIGH_ENERGY_SUFFIX
from snb_ml.tree.provenance import DistortionRecord as DistortionRecord  # re-exported: its former home
from snb_ml.tree.status import ENERGY_STATUSES, Status
from snb_ml.tree.status import FINAL_STATUSES as FINAL_STATUSES

CONVERGED, UNCONVERGED, HIGH_ENERGY, EXPLODED = (
    Status.CONVERGED,
    Status.UNCONVERGED,
    Status.HIGH_ENERGY,
    Status.EXPLODED,
)
ERROR = Status.ERROR
PREVIOUS_FOLDER = "snb_ml_previous"  # results of distortions no longer in the input tree


def reuse_problem(
    stored: DistortionRecord, source_hash: str | None, charge: int, legacy_charge: int | None, ml_dir: Path
) -> str | None:
    """Why a stored record does not belong to this run's input, or ``None`` when it does.

    Args:
        stored: The record from the provenance file.
        source_hash: sha256 of this run's starting-structure file (``None``: no file).
        charge: This run's charge of the defect.
        legacy_charge: The defect charge of the provenance file, for records that do not store theirs.
        ml_dir: The defect's ML tree folder (its POSCAR copies check records without a hash).
    """
    recorded_charge = stored.charge if stored.charge is not None else legacy_charge
    if recorded_charge is not None and recorded_charge != charge:
        return f"the charge changed since the last run ({_signed(recorded_charge)} -> {_signed(charge)})"
    recorded = stored.input_sha256
    if recorded is None:
        # Written before hashes were stored: the POSCAR copied into the ML tree is the starting structure.
        copy = ml_dir / stored.result_folder / "POSCAR"
        recorded = _sha256(copy) if copy.is_file() else None
        if recorded is None:
            return "their starting structures were not recorded (older snb_ml)"
    if recorded != source_hash:
        return "starting structures changed since the last run"
    return None


def _signed(charge: int) -> str:
    return f"{charge:+d}" if charge else "0"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_of(ml_dir: Path, record: DistortionRecord) -> Path | None:
    """The record's output folder (plain or ``_High_Energy``; a rename may not be recorded yet)."""
    for name in (record.output_folder or record.folder, record.folder, record.folder + HIGH_ENERGY_SUFFIX):
        if (ml_dir / name / "CONTCAR").is_file():
            return ml_dir / name
    return None


def output_name(folder: str, status: str) -> str:
    """Folder name of a result: ``X_High_Energy`` for high-energy and exploded runs (ShakeNBreak's rule)."""
    return (
        folder + HIGH_ENERGY_SUFFIX
        if status in (HIGH_ENERGY, EXPLODED) and folder != "Unperturbed"
        else folder
    )


def move_output(ml_dir: Path, current: str, target: str) -> None:
    """Rename a result folder atomically; a folder already at ``target`` is kept inside it.

    An earlier attempt must not stay where ShakeNBreak reads it, nor be deleted: it goes into the
    moved folder as ``previous_attempt_N`` (ShakeNBreak does not look there).
    """
    source, destination = ml_dir / current, ml_dir / target
    if destination.exists():
        attempt = 1
        while (source / f"previous_attempt_{attempt}").exists():
            attempt += 1
        os.replace(destination, source / f"previous_attempt_{attempt}")
    os.replace(source, destination)


def judge_all(
    ml_dir: Path, records: dict[str, DistortionRecord], reference: float | None, threshold: float
) -> str:
    """Judge every result again (:func:`~snb_ml.high_energy.judge_records`) and rename its folder to match.

    Args:
        ml_dir: The defect's ML tree folder.
        records: This run's records by distortion folder (updated in place).
        reference: This run's Unperturbed energy (``None``: nothing is high energy).
        threshold: eV above the reference that makes a result ``high_energy``.

    Returns:
        The changes, e.g. ``"Dimer high energy, Rattled converged"`` (empty if none).
    """
    judged = judge_records(records, reference, threshold)
    for folder, record in records.items():
        if record.status == ERROR:
            continue
        if folder in judged:
            record.status, record.message = judged[folder].status, judged[folder].message
        output, target = output_of(ml_dir, record), output_name(folder, record.status)
        if output is not None and output.name != target:
            move_output(ml_dir, output.name, target)
        if output is not None:
            record.output_folder = target
    return ", ".join(f"{folder} {record.status.replace('_', ' ')}" for folder, record in judged.items())


def energies_of(records: dict[str, DistortionRecord]) -> dict[str, float]:
    """Energies for ``{defect}.yaml``: converged and unconverged runs (not ``_High_Energy`` ones)."""
    return {
        folder: record.energy
        for folder, record in records.items()
        if record.status in ENERGY_STATUSES and record.energy is not None
    }


def set_aside(ml_dir: Path, stale: dict[str, DistortionRecord]) -> Path:
    """Move the output folders of ``stale`` records into ``ml_dir/snb_ml_previous`` (kept, unread)."""
    aside = ml_dir / PREVIOUS_FOLDER
    for record in stale.values():
        output = output_of(ml_dir, record)
        if output is not None:
            aside.mkdir(exist_ok=True)
            attempt = 1
            while (aside / f"{output.name}_{attempt}").exists():
                attempt += 1
            os.replace(output, aside / f"{output.name}_{attempt}")
    return aside


def write_failure_message(
    ml_dir: Path, error: OSError, folders: list[str], stored: dict[str, DistortionRecord]
) -> str:
    """One message for a defect whose results could not be written (disk full, quota, I/O error).

    Args:
        ml_dir: The defect's ML tree folder.
        error: The error, naming the file (``snb_ml.safe_write`` adds the target's name).
        folders: The defect's distortion folders.
        stored: The provenance records written so far (their folders estimate one result's size).
    """
    finished = [
        output
        for record in stored.values()
        if record.status != ERROR and (output := output_of(ml_dir, record)) is not None
    ]
    unfinished = max(0, len(folders) - len(finished))
    where = error.filename or ml_dir
    reason = error.strerror or str(error)
    parts = []
    with contextlib.suppress(OSError):
        parts.append(f"{_size(shutil.disk_usage(ml_dir).free)} free there")
    sizes = [sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) for folder in finished]
    if sizes and unfinished:
        parts.append(f"the {unfinished} unfinished distortion(s) need about {_size(unfinished * max(sizes))}")
    detail = f" ({'; '.join(parts)})" if parts else ""
    return (
        f"Cannot write {where}: {reason}{detail}. {len(finished)} distortion(s) already written are kept and "
        "reused: free some space (or pass --output another disk) and rerun."
    )


def _size(count: float) -> str:
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("kB", "MB", "GB"):
        count /= 1000
        if count < 1000 or unit == "GB":
            break
    return f"{count:.1f} {unit}"
