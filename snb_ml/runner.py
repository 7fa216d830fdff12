"""Relax every distortion of a ShakeNBreak tree and write the ML tree, one defect at a time."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ase import Atoms

from snb_ml import __version__
from snb_ml.batch.memory import peak_resident
from snb_ml.batch.tree import choose_engine, relax_runs_batched
from snb_ml.errors import InputError, OutputError, SnbMlError
from snb_ml.plugins import get_relaxer
from snb_ml.records import (
    ERROR,
    FINAL_STATUSES,
    DistortionRecord,
    energies_of,
    judge_all,
    judge_high_energy,
    output_name,
    output_of,
    reuse_problem,
    set_aside,
    write_failure_message,
)
from snb_ml.relax import EXPLODED, RelaxResult, min_interatomic_distance, relax
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel, resolve_device
from snb_ml.safe_write import atomic_path, remove_stale_temporaries, write_text
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import (
    DEFAULT_ML_TREE,
    TRAJECTORY_FILE,
    DefectInput,
    check_ml_defect_dir,
    check_output_location,
    input_structure_hash,
    input_tree_identity,
    locate_defects,
    read_input_structure,
    write_energies_yaml,
    write_tree_marker,
)
from snb_ml.tree.metadata import METADATA_FILE, charge_from_folder, defect_site_fractional, read_metadata
from snb_ml.tree.provenance import PROVENANCE_FILE, Provenance, read_provenance, write_provenance

LOCK_FILE = ".snb_ml.lock"


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
        return self.error is not None or any(r.status == ERROR for r in self.records.values())


@dataclass
class RunReport:
    """Result of a whole run, with the ML tree location."""

    ml_tree: Path
    defects: list[DefectReport]
    model: dict[str, Any]
    seconds: float
    engine: str = "sequential"
    peak_memory: int | None = None  # bytes resident at most in this process (local runs)

    @property
    def failed(self) -> bool:
        """True if any defect or distortion failed."""
        return any(defect.failed for defect in self.defects)


def load_model(settings: RunSettings) -> LoadedModel:
    """Resolve the relaxer plugin and load its model for ``settings``."""
    backend = get_relaxer(settings.relaxer)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    request = CalculatorRequest(
        model=settings.model,
        head=settings.head,
        device=resolve_device(settings.device),
        dtype=settings.dtype,
        options=dict(settings.calculator_options),
    )
    return backend.load(request)


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


class _DefectRun:
    """Relaxes the distortions of one defect into its ML tree folder.

    ``open`` takes the defect's lock and lists the distortions still to relax (``pending``); each
    relaxation's outcome goes through ``finish``, whichever engine produced it; ``close`` judges every
    result against the Unperturbed energy of this run, renames folders to match, and unlocks.
    """

    def __init__(
        self,
        defect: DefectInput,
        ml_top: Path,
        model: LoadedModel,
        settings: RunSettings,
        input_label: str | None = None,
    ):
        self.defect = defect
        self.input_label = input_label or str(defect.directory)
        self.ml_dir = ml_top / defect.name
        self.model = model
        self.settings = settings
        self.report = DefectReport(name=defect.name, ml_directory=self.ml_dir)
        self.provenance = Provenance(defect=defect.name)
        self.pending: list[tuple[str, Atoms]] = []
        self.reference: float | None = None
        self._lock: Any = None
        self.folders: list[str] = []
        self._deferred: list[tuple[str, RelaxResult | Exception]] = []
        self._sources: dict[str, str | None] = {}  # sha256 of each distortion's starting structure
        self._write_error: str | None = None
        self._ready = False  # the distortions are listed: results may be judged at close

    def open(self, warn_charge_blind: list[bool]) -> None:
        """Lock the defect's ML folder, start its provenance and list the pending distortions."""
        from filelock import FileLock, Timeout

        check_ml_defect_dir(self.ml_dir, self.defect.name)
        try:
            self.ml_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.ml_dir / LOCK_FILE), timeout=0)
            lock.acquire()
        except Timeout as exc:
            raise OutputError(
                f"Another snb_ml run is relaxing {self.defect.name} into {self.ml_dir} (lock {LOCK_FILE} is "
                "held). Wait for it to finish, or write to another tree (--output / output=)."
            ) from exc
        except OSError as exc:  # after Timeout (an OSError subclass): read-only, full, a file in the way
            raise OutputError(
                f"Cannot write the ML tree at {self.ml_dir} ({exc.strerror or exc}). Pass --output a "
                "writable directory."
            ) from exc
        self._lock = lock
        try:
            self._prepare(warn_charge_blind)
        except OSError as exc:  # metadata copy or provenance: nothing of this defect is relaxed
            self.close()
            raise OutputError(write_failure_message(self.ml_dir, exc, [], {})) from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Write results still waiting for Unperturbed, judge every result, release the lock."""
        try:
            deferred, self._deferred = self._deferred, []
            for folder, outcome in deferred:  # Unperturbed never finished: judged without a reference
                self._finish_now(folder, outcome, print)
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

    def _prepare(self, warn_charge_blind: list[bool]) -> None:
        remove_stale_temporaries(self.ml_dir)
        charge = (
            self.settings.charge
            if self.settings.charge is not None
            else charge_from_folder(self.defect.directory, self.defect.name)
        )
        self.report.charge = charge
        legacy_charge = self._start_provenance(charge)
        if charge != 0 and not self.model.charge_aware and warn_charge_blind[0]:
            warn_charge_blind[0] = False
            warnings.warn(
                f"Model '{self.model.name}' has no charge embedding: defect charges (e.g. {charge:+d} for "
                f"{self.defect.name}) are ignored; every charge state is relaxed as the same neutral-like "
                "system.",
                stacklevel=3,
            )
        self._copy_metadata()
        self.folders = self.defect.distortion_folders()
        if "Unperturbed" not in self.folders:
            warnings.warn(
                f"{self.defect.directory} has no Unperturbed folder: without its energy no distortion of "
                f"{self.defect.name} is marked _High_Energy, and `snb-ml select` has no reference energy "
                "for it. Regenerate the defect with snb-generate to get one.",
                stacklevel=3,
            )
        self._set_aside_vanished()
        self.reference = self._reference_distance()
        site = defect_site_fractional(self.defect.directory)
        redone: dict[str, int] = {}
        for folder in self.folders:
            self._sources[folder] = input_structure_hash(self.defect.directory / folder)
            stored = self.provenance.distortions.get(folder)
            problem = None
            if stored and not self.settings.force:
                problem = reuse_problem(stored, self._sources[folder], charge, legacy_charge, self.ml_dir)
                if problem is None and stored.status in FINAL_STATUSES:
                    record = replace(stored, input_sha256=self._sources[folder], charge=charge, skipped=True)
                    if output_of(self.ml_dir, record) is not None:
                        self.report.records[folder] = record
                        continue
                if problem is not None and stored.status != ERROR:
                    redone[problem] = redone.get(problem, 0) + 1
            try:
                # An unconverged run of this very input continues from where it stopped.
                atoms = self._starting_structure(
                    folder, charge, site, restart=bool(stored) and problem is None
                )
            except SnbMlError as exc:
                record = DistortionRecord(folder=folder, status=ERROR, message=str(exc))
                print(f"Error in {self.defect.name}/{folder}: {exc}")
                self._save(record)
                self.report.records[folder] = record
                continue
            self.pending.append((folder, atoms))
        for problem, count in redone.items():
            print(f"{self.defect.name}: {count} result(s) redone: {problem}.")
        self._ready = True

    def _set_aside_vanished(self) -> None:
        """Move results of distortion folders no longer in the input tree out of ShakeNBreak's sight."""
        vanished = [f for f in self.provenance.distortions if f not in self.folders]
        if vanished:
            aside = set_aside(self.ml_dir, {f: self.provenance.distortions.pop(f) for f in vanished})
            self._write_provenance()
            print(
                f"{self.defect.name}: {len(vanished)} result(s) of distortions no longer in "
                f"{self.defect.directory} moved to {aside} ({', '.join(vanished)})."
            )

    def _starting_structure(self, folder: str, charge: int, site: Any, restart: bool) -> Atoms:
        atoms = read_input_structure(self.defect.directory / folder)
        self.model.check_elements(atoms.get_chemical_symbols(), f"{self.defect.name}/{folder}")
        atoms.info["charge"] = charge
        if site is not None:
            atoms.info["defect_site"] = [float(x) for x in atoms.cell.cartesian_positions(site)]
        prepare = getattr(self.model, "prepare_atoms", None)
        if prepare is not None:  # e.g. defect markers of site-charge models, from the starting geometry
            prepare(atoms)
        # An unconverged earlier run continues from where it stopped, like a DFT restart.
        restart_file = self.ml_dir / folder / "CONTCAR"
        if restart and restart_file.is_file():
            from ase.io import read

            previous = read(restart_file, format="vasp")
            if len(previous) == len(atoms):
                atoms.positions = previous.positions
        return atoms

    def relax_sequentially(self) -> None:
        """Relax the pending distortions one after the other with the model's ASE calculator."""
        if self.settings.progress:
            from tqdm.auto import tqdm
        else:  # tqdm.auto warns in notebooks without ipywidgets even for a disabled bar
            from tqdm.std import tqdm

        with tqdm(
            total=len(self.folders),
            initial=len(self.folders) - len(self.pending),
            desc=self.defect.name,
            unit="relax",
            mininterval=0.5,
            leave=True,
            disable=not self.settings.progress,
        ) as bar:
            for folder, atoms in list(self.pending):  # finish() takes each one off the list
                if self._write_error is not None:  # nowhere to put further results
                    break
                bar.set_postfix_str(folder)

                def on_step(step: int, folder: str = folder) -> None:
                    if step % 10 == 0:
                        bar.set_postfix_str(f"{folder} step {step}")

                try:
                    outcome: RelaxResult | Exception = relax(
                        atoms, self.model.calculator, self.settings.relax, self.reference, on_step
                    )
                except SnbMlError:
                    raise
                except Exception as exc:  # the model crashed on this structure: report it, go on
                    outcome = exc
                self.finish(folder, outcome, bar.write)
                bar.update(1)
        self.pending = []

    def finish(self, folder: str, outcome: RelaxResult | Exception, echo: Any = print) -> None:
        """Write one relaxation's outputs (or its error) into the ML tree.

        A distortion that finishes before Unperturbed waits for it: ``_High_Energy`` is judged
        against the Unperturbed energy.
        """
        # The run owns its pending list, whichever engine relaxed the structure.
        self.pending = [(f, atoms) for f, atoms in self.pending if f != folder]
        unperturbed_running = folder != "Unperturbed" and any(f == "Unperturbed" for f, _ in self.pending)
        if unperturbed_running and "Unperturbed" not in self.report.records:
            self._deferred.append((folder, outcome))
            return
        self._finish_now(folder, outcome, echo)
        if folder == "Unperturbed":
            deferred, self._deferred = self._deferred, []
            for other, other_outcome in deferred:
                self._finish_now(other, other_outcome, echo)

    def _finish_now(self, folder: str, outcome: RelaxResult | Exception, echo: Any) -> None:
        where = f"{self.defect.name}/{folder}"
        if self._write_error is not None:  # reported once for the defect; this result is not written
            self.report.records[folder] = DistortionRecord(
                folder=folder, status=ERROR, message="not written (see the defect's error)"
            )
            return
        try:
            if isinstance(outcome, Exception):
                record = DistortionRecord(
                    folder=folder, status=ERROR, message=f"{type(outcome).__name__}: {outcome}"
                )
                echo(f"Error in {where}: {record.message}")
                self._save(record)
            else:
                outcome.status, message = judge_high_energy(
                    folder,
                    outcome.status,
                    outcome.energy,
                    self.report.unperturbed_energy,
                    self.settings.relax.high_energy_threshold,
                )
                outcome.message = message or outcome.message
                source = self.defect.directory / folder
                record = self._write_outputs(folder, source, outcome, self.report.charge or 0)
                if record.status == EXPLODED:
                    echo(f"{where}: stopped ({outcome.message}); saved as {record.output_folder}")
        except OSError as exc:  # disk full, quota, I/O error: the defect stops, the others go on
            self._failed_write(exc, echo)
            self.report.records[folder] = DistortionRecord(folder=folder, status=ERROR, message=str(exc))
            return
        self.report.records[folder] = record

    def _failed_write(self, error: OSError, echo: Any) -> None:
        if self._write_error is None:
            message = write_failure_message(self.ml_dir, error, self.folders, self.provenance.distortions)
            self._write_error = self.report.error = message
            echo(f"Error for {self.defect.name}: {message}")

    def _start_provenance(self, charge: int) -> int | None:
        """Start this run's provenance from the stored one; return the stored defect charge."""
        previous = read_provenance(self.ml_dir)
        signature = self.settings.signature()
        model = {
            "name": self.model.name,
            "version": self.model.version,
            "charge_aware": self.model.charge_aware,
            "head": self.model.head,
            "file": self.model.file_record(),
        }
        if previous is not None and not self.settings.force:
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
        self.provenance = Provenance(
            snb_ml_version=__version__,
            defect=self.defect.name,
            charge=charge,
            input_directory=self.input_label,
            signature=signature,
            model=model,
            settings=self.settings.as_dict(),
            distortions={} if self.settings.force or previous is None else dict(previous.distortions),
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

    def _reference_distance(self) -> float | None:
        try:
            return min_interatomic_distance(read_input_structure(self.defect.directory / "Unperturbed"))
        except (SnbMlError, OSError):
            return None

    def _judge_all(self) -> None:
        """Judge every result against this run's Unperturbed energy; rename folders that changed status."""
        threshold = self.settings.relax.high_energy_threshold
        changed = judge_all(self.ml_dir, self.report.records, self.report.unperturbed_energy, threshold)
        for folder, record in self.report.records.items():
            if record.status != ERROR:
                self.provenance.distortions[folder] = replace(record, skipped=False)
        self._write_provenance()
        if changed:
            print(f"{self.defect.name}: judged again against this run's Unperturbed energy: {changed}.")

    def _write_outputs(self, folder: str, source: Path, result: RelaxResult, charge: int) -> DistortionRecord:
        output_folder = output_name(folder, result.status)
        output = self.ml_dir / output_folder
        output.mkdir(parents=True, exist_ok=True)
        # Only structures are copied: INCAR/KPOINTS would make the ML tree look submittable to DFT.
        if (source / "POSCAR").is_file():
            write_text(output / "POSCAR", (source / "POSCAR").read_text())
        else:
            _write_structure(read_input_structure(source), output / "POSCAR")
        _write_structure(result.atoms, output / "CONTCAR")
        info = {"defect": self.defect.name, "distortion": folder, "charge": charge, "model": self.model.name}
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
            energy=None if result.status == EXPLODED else result.energy,
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
        self.provenance.distortions[record.folder] = replace(record, skipped=False)
        self._write_provenance()

    def _write_provenance(self) -> None:
        energies = energies_of(self.provenance.distortions)
        if energies:
            write_energies_yaml(self.ml_dir, self.defect.name, energies)
        # Strict JSON: settings are validated finite and records store NaN as null.
        write_provenance(self.ml_dir, self.provenance)


def default_ml_tree(top: Path) -> Path:
    """The ML tree used when no ``--output`` is given: ``<top-level folder>/ml_tree``."""
    return top / DEFAULT_ML_TREE


def run_tree(
    path: str | Path = ".",
    settings: RunSettings | None = None,
    defects: list[str] | None = None,
    output: str | Path | None = None,
    model: LoadedModel | None = None,
    input_label: str | None = None,
) -> RunReport:
    """Relax every distortion of the selected defects and write the ML tree.

    Args:
        path: Top-level ShakeNBreak folder or one defect folder.
        settings: Run settings (defaults: CHGNet, FIRE, fmax 0.01 eV/Å).
        defects: Defect folder names to relax (all if ``None``).
        output: ML tree folder (default ``<top-level folder>/ml_tree``).
        model: An already loaded model to reuse (else loaded from ``settings``).
        input_label: What the provenance records as the input (default: each defect folder's path).

    Returns:
        The run report. Per-defect and per-distortion errors are recorded in it, not raised.

    Raises:
        SnbMlError: For problems that stop the whole run (not a ShakeNBreak tree, model not loadable).
    """
    settings = settings or RunSettings()
    start = time.perf_counter()
    top, selected = locate_defects(path, defects)
    if any((defect.directory / PROVENANCE_FILE).exists() for defect in selected):
        raise InputError(
            f"'{path}' is an ML tree written by snb_ml, not a ShakeNBreak input tree. Pass -p the folder "
            "written by snb-generate."
        )
    ml_top = Path(output).resolve() if output else default_ml_tree(top)
    identity = input_tree_identity(top, input_label)
    check_output_location(ml_top, top, selected, identity, settings.force)
    read_metadata(top / METADATA_FILE)  # one clear error for the whole tree, not one per defect

    choose_engine(settings, None, 0)  # reject impossible engine settings before anything is written
    model = model or load_model(settings)
    # On failure each defect says why it cannot write (read-only, full, a file in the way).
    with contextlib.suppress(OSError):
        write_tree_marker(ml_top, top, identity)
    warn_charge_blind = [True]
    runs: list[_DefectRun] = []
    for defect in selected:
        run = _DefectRun(defect, ml_top, model, settings, input_label)
        try:
            run.open(warn_charge_blind)
        except SnbMlError as exc:
            run.report.error = str(exc)
            print(f"Error for {defect.name}: {exc}")
            run.close()
        runs.append(run)
    opened = [run for run in runs if run.report.error is None]
    engine = choose_engine(settings, model, sum(len(run.pending) for run in opened))
    try:
        if engine == "batched":
            relax_runs_batched(opened, model, settings)
        for run in opened:
            try:
                if run.pending:
                    run.relax_sequentially()
            except SnbMlError as exc:
                run.report.error = str(exc)
                print(f"Error for {run.defect.name}: {exc}")
    finally:
        for run in opened:
            run.close()
    return RunReport(
        ml_tree=ml_top,
        engine=engine,
        defects=[run.report for run in runs],
        model={"name": model.name, "version": model.version, "charge_aware": model.charge_aware},
        seconds=time.perf_counter() - start,
        peak_memory=peak_resident(),
    )
