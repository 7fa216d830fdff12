"""Writes one defect's relaxation outcomes into its ML tree folder.

The writer owns everything on disk for one defect of a run: the lock, the provenance file, the outputs
(``POSCAR``, ``CONTCAR``, trajectory, ``{defect}.yaml``), resuming from an earlier run (which results
are reused, which unconverged runs continue), and keeping earlier attempts and results of vanished
distortions out of ShakeNBreak's sight (``previous_attempt_N``, ``snb_ml_previous``). It consumes
:class:`~snb_ml.jobs.RelaxOutcome` objects from either engine and never relaxes anything itself.

The life of a writer: :meth:`DefectWriter.lock`, :meth:`~DefectWriter.start` (lists what is left to
relax), :meth:`~DefectWriter.expect` (the jobs made from it), :meth:`~DefectWriter.finish` per
outcome, :meth:`~DefectWriter.close` (judges every result against this run's Unperturbed energy,
renames folders to match, unlocks).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from snb_ml import __version__
from snb_ml.errors import OutputError
from snb_ml.high_energy import judge_high_energy
from snb_ml.jobs import RelaxJob, RelaxOutcome
from snb_ml.locks import acquire_lock
from snb_ml.records import (
    FINAL_STATUSES,
    energies_of,
    judge_all,
    output_name,
    output_of,
    reuse_problem,
    set_aside,
    write_failure_message,
)
from snb_ml.relax import RelaxResult
from snb_ml.safe_write import atomic_path, remove_stale_temporaries, write_text
from snb_ml.tree.layout import (
    TRAJECTORY_FILE,
    DefectInput,
    check_ml_defect_dir,
    input_structure_hash,
    read_input_structure,
    write_energies_yaml,
)
from snb_ml.tree.metadata import METADATA_FILE, read_metadata
from snb_ml.tree.provenance import DistortionRecord, Provenance, read_provenance, write_provenance
from snb_ml.tree.status import Status

LOCK_FILE = ".snb_ml.lock"

Echo = Callable[[str], Any]


@dataclass
class DefectReport:
    """What happened to one defect: its distortions, the ML tree folder, and any error."""

    name: str
    charge: int | None = None
    ml_directory: Path | None = None
    records: dict[str, DistortionRecord] = field(default_factory=dict)
    error: str | None = None

    @property
    def unperturbed_energy(self) -> float | None:
        """ML energy of the relaxed Unperturbed structure, if available."""
        record = self.records.get("Unperturbed")
        return record.energy if record and record.energy is not None else None

    @property
    def failed(self) -> bool:
        """True if the defect or any of its distortions ended in an input/model error."""
        return self.error is not None or any(r.status == Status.ERROR for r in self.records.values())


@dataclass(frozen=True)
class RunIdentity:
    """What produces a run's results, as the provenance records it, and how results are judged.

    Attributes:
        model: The model's provenance record (``name``, ``version``, ``charge_aware``, ``head``, ``file``).
        signature: The settings that change results (results of other settings never share a tree).
        settings: The run settings as a JSON-ready dict.
        force: Redo stored results, and accept results of other settings or models.
        high_energy_threshold: eV above Unperturbed that makes a result ``_High_Energy``.
    """

    model: dict[str, Any]
    signature: Any
    settings: dict[str, Any]
    force: bool = False
    high_energy_threshold: float = 2.0


@dataclass(frozen=True)
class PendingDistortion:
    """A distortion still to relax in this run.

    Attributes:
        folder: The distortion folder.
        restart_file: The ``CONTCAR`` of an earlier unconverged run of this very input, to continue
            from (``None``: start from the input structure).
    """

    folder: str
    restart_file: Path | None = None


def _write_structure(atoms, target: Path) -> None:
    from ase.io import write

    with atomic_path(target) as temporary:
        write(str(temporary), atoms, format="vasp", direct=True, sort=False)


def _write_trajectory(frames, target: Path, info: dict[str, Any]) -> None:
    from ase.io import write

    for frame in frames:
        frame.info.update(info)
    with atomic_path(target) as temporary:
        write(str(temporary), frames, format="extxyz")


class DefectWriter:
    """Writes the outcomes of one defect's relaxations into its ML tree folder.

    Args:
        defect: The defect in the ShakeNBreak tree.
        ml_top: The ML tree (the defect's folder is ``ml_top / defect.name``).
        identity: The model and settings of this run.
        input_label: What the provenance records as the input (default: the defect folder's path).
    """

    def __init__(
        self, defect: DefectInput, ml_top: Path, identity: RunIdentity, input_label: str | None = None
    ):
        self.defect = defect
        self.identity = identity
        self.input_label = input_label or str(defect.directory)
        self.ml_dir = ml_top / defect.name
        self.report = DefectReport(name=defect.name, ml_directory=self.ml_dir)
        self.folders: list[str] = []
        self._provenance = Provenance(defect=defect.name)
        self._lock: Any = None
        self._pending: list[str] = []  # folders whose outcomes are still to come
        self._deferred: list[RelaxOutcome] = []  # finished before Unperturbed: wait for its energy
        self._sources: dict[str, str | None] = {}  # sha256 of each distortion's starting structure
        self._redone: dict[str, int] = {}
        self._write_error: str | None = None
        self._ready = False  # the distortions are listed: results may be judged at close

    @property
    def stopped(self) -> bool:
        """True once a write failed: further outcomes of this defect cannot be stored."""
        return self._write_error is not None

    def lock(self) -> None:
        """Create the defect's ML folder and take its lock.

        Raises:
            OutputError: If another run holds the lock, or the folder cannot be written.
        """
        check_ml_defect_dir(self.ml_dir, self.defect.name)
        try:
            self.ml_dir.mkdir(parents=True, exist_ok=True)
            lock = acquire_lock(
                self.ml_dir / LOCK_FILE,
                f"Another snb_ml run is relaxing {self.defect.name} into {self.ml_dir} (lock {LOCK_FILE} is "
                "held). Wait for it to finish, or write to another tree (--output / output=).",
            )
        except OSError as exc:  # read-only, full, a file in the way
            raise OutputError(
                f"Cannot write the ML tree at {self.ml_dir} ({exc.strerror or exc}). Pass --output a "
                "writable directory."
            ) from exc
        self._lock = lock

    def start(self, charge: int) -> list[PendingDistortion]:
        """Start this run's provenance and list the distortions still to relax.

        Stored results of this very input, charge, model and settings are reused (``skipped``);
        results of distortions no longer in the input are set aside.

        Args:
            charge: The defect's charge in this run.

        Returns:
            The distortions to relax, in folder order (Unperturbed first).

        Raises:
            OutputError: If the folder holds results of other settings or another model (without
                ``force``).
            OSError: If the provenance or metadata cannot be written.
        """
        remove_stale_temporaries(self.ml_dir)
        self.report.charge = charge
        legacy_charge = self._start_provenance(charge)
        self._copy_metadata()
        self.folders = self.defect.distortion_folders()
        if "Unperturbed" not in self.folders:
            warnings.warn(
                f"{self.defect.directory} has no Unperturbed folder: without its energy no distortion of "
                f"{self.defect.name} is marked _High_Energy, and `snb-ml select` has no reference energy "
                "for it. Regenerate the defect with snb-generate to get one.",
                stacklevel=3,  # run_tree's line
            )
        self._set_aside_vanished()
        pending = []
        for folder in self.folders:
            self._sources[folder] = input_structure_hash(self.defect.directory / folder)
            stored = self._provenance.distortions.get(folder)
            problem = None
            if stored and not self.identity.force:
                problem = reuse_problem(stored, self._sources[folder], charge, legacy_charge, self.ml_dir)
                if problem is None and stored.status in FINAL_STATUSES:
                    record = replace(stored, input_sha256=self._sources[folder], charge=charge, skipped=True)
                    if output_of(self.ml_dir, record) is not None:
                        self.report.records[folder] = record
                        continue
                if problem is not None and stored.status != Status.ERROR:
                    self._redone[problem] = self._redone.get(problem, 0) + 1
            # An unconverged run of this very input continues from where it stopped.
            restart = bool(stored) and problem is None
            pending.append(PendingDistortion(folder, self.ml_dir / folder / "CONTCAR" if restart else None))
        return pending

    def record_error(self, folder: str, message: str) -> None:
        """Record a distortion that could not start (unreadable input, element unknown to the model)."""
        record = DistortionRecord(folder=folder, status=Status.ERROR, message=message)
        print(f"Error in {self.defect.name}/{folder}: {message}")
        self._save(record)
        self.report.records[folder] = record

    def expect(self, jobs: Iterable[RelaxJob]) -> None:
        """The jobs whose outcomes will come; once called, :meth:`close` judges every result."""
        self._pending = [job.folder for job in jobs]
        for problem, count in self._redone.items():
            print(f"{self.defect.name}: {count} result(s) redone: {problem}.")
        self._ready = True

    def fail(self, message: str) -> None:
        """Record an error that stopped the defect's relaxations (the results so far are kept)."""
        self.report.error = message
        print(f"Error for {self.defect.name}: {message}")

    def finish(self, outcome: RelaxOutcome, echo: Echo = print) -> None:
        """Write one relaxation's outputs (or its error) into the ML tree.

        A distortion that finishes before Unperturbed waits for it: ``_High_Energy`` is judged
        against the Unperturbed energy.

        Args:
            outcome: The outcome of one of this defect's jobs, from either engine.
            echo: Prints a message (``tqdm.write`` while a progress bar runs).
        """
        folder = outcome.job.folder
        self._pending = [f for f in self._pending if f != folder]
        unperturbed_running = folder != "Unperturbed" and "Unperturbed" in self._pending
        if unperturbed_running and "Unperturbed" not in self.report.records:
            self._deferred.append(outcome)
            return
        self._finish_now(outcome, echo)
        if folder == "Unperturbed":
            deferred, self._deferred = self._deferred, []
            for other in deferred:
                self._finish_now(other, echo)

    def close(self) -> None:
        """Write results still waiting for Unperturbed, judge every result, release the lock."""
        try:
            deferred, self._deferred = self._deferred, []
            for outcome in deferred:  # Unperturbed never finished: judged without a reference
                self._finish_now(outcome, print)
            if self._lock is not None and self._write_error is None and self._ready:
                self._judge_all()
        except OSError as exc:
            self._failed_write(exc, print)
        finally:
            self.report.records = {
                f: self.report.records[f] for f in self.folders if f in self.report.records
            }
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def _finish_now(self, outcome: RelaxOutcome, echo: Echo) -> None:
        folder = outcome.job.folder
        where = f"{self.defect.name}/{folder}"
        if self._write_error is not None:  # reported once for the defect; this result is not written
            self.report.records[folder] = DistortionRecord(
                folder=folder, status=Status.ERROR, message="not written (see the defect's error)"
            )
            return
        try:
            if outcome.result is None:
                error = outcome.error
                record = DistortionRecord(
                    folder=folder, status=Status.ERROR, message=f"{type(error).__name__}: {error}"
                )
                echo(f"Error in {where}: {record.message}")
                self._save(record)
            else:
                status, message = judge_high_energy(
                    folder,
                    outcome.result.status,
                    outcome.result.energy,
                    self.report.unperturbed_energy,
                    self.identity.high_energy_threshold,
                )
                result = replace(outcome.result, status=status, message=message or outcome.result.message)
                record = self._write_outputs(folder, result, self.report.charge or 0)
                if record.status == Status.EXPLODED:
                    echo(f"{where}: stopped ({result.message}); saved as {record.output_folder}")
        except OSError as exc:  # disk full, quota, I/O error: the defect stops, the others go on
            self._failed_write(exc, echo)
            error_record = DistortionRecord(folder=folder, status=Status.ERROR, message=str(exc))
            self.report.records[folder] = error_record
            return
        self.report.records[folder] = record

    def _failed_write(self, error: OSError, echo: Echo) -> None:
        if self._write_error is None:
            message = write_failure_message(self.ml_dir, error, self.folders, self._provenance.distortions)
            self._write_error = self.report.error = message
            echo(f"Error for {self.defect.name}: {message}")

    def _start_provenance(self, charge: int) -> int | None:
        """Start this run's provenance from the stored one; return the stored defect charge."""
        previous = read_provenance(self.ml_dir)
        signature = self.identity.signature
        model = self.identity.model
        if previous is not None and not self.identity.force:
            before = previous.model
            if previous.signature != signature:
                raise OutputError(
                    f"{self.ml_dir} holds results of other settings ({previous.signature}); this run "
                    f"uses {signature}. Write to another tree (--output / output=), or redo them "
                    "(--force / force=True)."
                )
            if (before.get("name"), before.get("version")) != (model["name"], model["version"]):
                raise OutputError(
                    f"{self.ml_dir} holds results of model {before.get('name')} ({before.get('version')}); "
                    f"this run uses {model['name']} ({model['version']}). Write to another tree "
                    "(--output / output=), or redo them (--force / force=True)."
                )
            before_sha = (before.get("file") or {}).get("sha256")
            now_sha = (model["file"] or {}).get("sha256")
            # Same name and version can still be another file (a re-trained model written to the same path,
            # a different foundation behind the default name): results of two models never share a tree.
            if before_sha and now_sha and before_sha != now_sha:
                raise OutputError(
                    f"{self.ml_dir} holds results of model file sha256 {before_sha[:12]}…; this run's model "
                    f"file {model['file']['path']} has sha256 {now_sha[:12]}…. Write to another tree "
                    "(--output / output=), or redo them (--force / force=True)."
                )
        self._provenance = Provenance(
            snb_ml_version=__version__,
            defect=self.defect.name,
            charge=charge,
            input_directory=self.input_label,
            signature=signature,
            model=dict(model),
            settings=dict(self.identity.settings),
            distortions={} if self.identity.force or previous is None else dict(previous.distortions),
        )
        # Written now, so an ML defect folder with results always says what it is (see the output guard).
        self._write_provenance()
        return previous.charge if previous is not None else None

    def _copy_metadata(self) -> None:
        for source, target in (
            (self.defect.directory / METADATA_FILE, self.ml_dir / METADATA_FILE),
            (self.defect.directory.parent / METADATA_FILE, self.ml_dir.parent / METADATA_FILE),
        ):
            if read_metadata(source) is not None:  # UTF-8 JSON, checked before it is copied
                write_text(target, source.read_text(encoding="utf-8"))

    def _set_aside_vanished(self) -> None:
        """Move results of distortion folders no longer in the input tree out of ShakeNBreak's sight."""
        vanished = [f for f in self._provenance.distortions if f not in self.folders]
        if vanished:
            aside = set_aside(self.ml_dir, {f: self._provenance.distortions.pop(f) for f in vanished})
            self._write_provenance()
            print(
                f"{self.defect.name}: {len(vanished)} result(s) of distortions no longer in "
                f"{self.defect.directory} moved to {aside} ({', '.join(vanished)})."
            )

    def _judge_all(self) -> None:
        """Judge every result against this run's Unperturbed energy; rename folders that changed status."""
        threshold = self.identity.high_energy_threshold
        changed = judge_all(self.ml_dir, self.report.records, self.report.unperturbed_energy, threshold)
        for folder, record in self.report.records.items():
            if record.status != Status.ERROR:
                self._provenance.distortions[folder] = replace(record, skipped=False)
        self._write_provenance()
        if changed:
            print(f"{self.defect.name}: judged again against this run's Unperturbed energy: {changed}.")

    def _write_outputs(self, folder: str, result: RelaxResult, charge: int) -> DistortionRecord:
        source = self.defect.directory / folder
        output_folder = output_name(folder, result.status)
        output = self.ml_dir / output_folder
        output.mkdir(parents=True, exist_ok=True)
        # Only structures are copied: INCAR/KPOINTS would make the ML tree look submittable to DFT.
        if (source / "POSCAR").is_file():
            write_text(output / "POSCAR", (source / "POSCAR").read_text())
        else:
            _write_structure(read_input_structure(source), output / "POSCAR")
        _write_structure(result.atoms, output / "CONTCAR")
        info = {
            "defect": self.defect.name,
            "distortion": folder,
            "charge": charge,
            "model": self.identity.model["name"],
        }
        _write_trajectory(result.frames, output / TRAJECTORY_FILE, info)
        if output_folder != folder and (self.ml_dir / folder).is_dir():
            # A plain folder from an earlier attempt would make ShakeNBreak read this run as valid; it is
            # kept inside the marked folder (ShakeNBreak does not look there), not deleted.
            attempt = 1
            while (output / f"previous_attempt_{attempt}").exists():
                attempt += 1
            os.replace(self.ml_dir / folder, output / f"previous_attempt_{attempt}")
        record = DistortionRecord(
            folder=folder,
            status=result.status,
            energy=None if result.status == Status.EXPLODED else result.energy,
            steps=result.steps,
            seconds=round(result.seconds, 3),
            max_force=result.max_force,
            message=result.message,
            output_folder=output_folder,
        )
        self._save(record)
        return record

    def _save(self, record: DistortionRecord) -> None:
        record.input_sha256 = self._sources.get(record.folder)
        record.charge = self.report.charge
        self._provenance.distortions[record.folder] = replace(record, skipped=False)
        self._write_provenance()

    def _write_provenance(self) -> None:
        energies = energies_of(self._provenance.distortions)
        if energies:
            write_energies_yaml(self.ml_dir, self.defect.name, energies)
        # Strict JSON: settings are validated finite and records store NaN as null.
        write_provenance(self.ml_dir, self._provenance)
