"""Relax every distortion of a ShakeNBreak tree and write the ML tree, one defect at a time."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ase import Atoms

from snb_ml import __version__
from snb_ml.atomic import atomic_path, remove_stale_temporaries, write_text
from snb_ml.errors import InputError, OutputError, SnbMlError
from snb_ml.relax import (
    CONVERGED,
    EXPLODED,
    HIGH_ENERGY,
    UNCONVERGED,
    RelaxResult,
    min_interatomic_distance,
    relax,
)
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel, resolve_device
from snb_ml.settings import RunSettings
from snb_ml.snbtree import (
    DEFAULT_ML_TREE,
    HIGH_ENERGY_SUFFIX,
    METADATA_FILE,
    PROVENANCE_FILE,
    TRAJECTORY_FILE,
    DefectInput,
    check_ml_defect_dir,
    defect_site_fractional,
    load_json,
    locate_defects,
    parse_charge,
    read_input_structure,
    write_energies_yaml,
)

LOCK_FILE = ".snb_ml.lock"
FINAL_STATUSES = (CONVERGED, HIGH_ENERGY, EXPLODED)


@dataclass
class DistortionRecord:
    """Outcome of one distortion, as stored in the provenance file and shown in the summary."""

    folder: str
    status: str
    energy: float | None = None
    steps: int = 0
    seconds: float = 0.0
    max_force: float | None = None
    message: str = ""
    output_folder: str | None = None
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain-data form for the provenance file (``skipped`` is per run, not stored)."""
        data = dict(self.__dict__)
        data.pop("skipped")
        return data


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
        return self.error is not None or any(r.status == "error" for r in self.records.values())


@dataclass
class RunReport:
    """Result of a whole run, with the ML tree location."""

    ml_tree: Path
    defects: list[DefectReport]
    model: dict[str, Any]
    seconds: float
    engine: str = "sequential"

    @property
    def failed(self) -> bool:
        """True if any defect or distortion failed."""
        return any(defect.failed for defect in self.defects)


def load_model(settings: RunSettings) -> LoadedModel:
    """Resolve the relaxer plugin and load its model for ``settings``."""
    from snb_ml.plugins import get_relaxer

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


def _load_provenance(ml_dir: Path) -> dict[str, Any]:
    return load_json(ml_dir / PROVENANCE_FILE, "move it away and rerun to redo this defect.") or {}


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
    relaxation's outcome goes through ``finish``, whichever engine produced it; ``close`` unlocks.
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
        self.provenance: dict[str, Any] = {}
        self.pending: list[tuple[str, Atoms]] = []
        self.reference: float | None = None
        self._lock: Any = None
        self.folders: list[str] = []
        self._deferred: list[tuple[str, RelaxResult | Exception]] = []

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
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Write results still waiting for Unperturbed, release the lock; records in folder order."""
        deferred, self._deferred = self._deferred, []
        for folder, outcome in deferred:  # Unperturbed never finished: judged without a reference
            self._finish_now(folder, outcome, print)
        self.report.records = {f: self.report.records[f] for f in self.folders if f in self.report.records}
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _prepare(self, warn_charge_blind: list[bool]) -> None:
        remove_stale_temporaries(self.ml_dir)
        charge = self.settings.charge if self.settings.charge is not None else parse_charge(self.defect)
        self.report.charge = charge
        self._start_provenance(charge)
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
        self.reference = self._reference_distance()
        site = defect_site_fractional(self.defect.directory)
        for folder in self.folders:
            existing = self._existing(folder)
            if existing is not None:
                self.report.records[folder] = existing
                continue
            try:
                atoms = self._starting_structure(folder, charge, site)
            except SnbMlError as exc:
                record = DistortionRecord(folder=folder, status="error", message=str(exc))
                print(f"Error in {self.defect.name}/{folder}: {exc}")
                self._save(record)
                self.report.records[folder] = record
                continue
            self.pending.append((folder, atoms))

    def _starting_structure(self, folder: str, charge: int, site: Any) -> Atoms:
        atoms = read_input_structure(self.defect.directory / folder)
        self.model.check_elements(atoms.get_chemical_symbols(), f"{self.defect.name}/{folder}")
        atoms.info["charge"] = charge
        if site is not None:
            atoms.info["defect_site"] = [float(x) for x in atoms.cell.cartesian_positions(site)]
        prepare = getattr(self.model, "prepare_atoms", None)
        if prepare is not None:  # e.g. defect markers of site-charge models, from the starting geometry
            prepare(atoms)
        # An unconverged earlier run continues from where it stopped, like a DFT restart.
        restart = self.ml_dir / folder / "CONTCAR"
        if restart.is_file() and not self.settings.force:
            from ase.io import read

            atoms.positions = read(restart, format="vasp").positions
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
            for folder, atoms in self.pending:
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
        if isinstance(outcome, Exception):
            record = DistortionRecord(
                folder=folder, status="error", message=f"{type(outcome).__name__}: {outcome}"
            )
            echo(f"Error in {where}: {record.message}")
            self._save(record)
        else:
            self._classify_high_energy(folder, outcome)
            source = self.defect.directory / folder
            record = self._write_outputs(folder, source, outcome, self.report.charge or 0)
            if record.status == EXPLODED:
                echo(f"{where}: stopped ({outcome.message}); saved as {record.output_folder}")
        self.report.records[folder] = record

    def _start_provenance(self, charge: int) -> None:
        previous = _load_provenance(self.ml_dir)
        signature = self.settings.signature()
        if previous and previous.get("signature") != signature and not self.settings.force:
            raise OutputError(
                f"{self.ml_dir} holds results of other settings ({previous.get('signature')}); this run "
                f"uses {signature}. Write to another tree (--output / output=), or redo them "
                "(--force / force=True)."
            )
        self.provenance = {
            "snb_ml_version": __version__,
            "defect": self.defect.name,
            "charge": charge,
            "input_directory": self.input_label,
            "signature": signature,
            "model": {
                "name": self.model.name,
                "version": self.model.version,
                "charge_aware": self.model.charge_aware,
                "head": self.model.head,
                "file": self.model.file_record(),
            },
            "settings": self.settings.as_dict(),
            "distortions": {} if self.settings.force else previous.get("distortions", {}),
        }

    def _copy_metadata(self) -> None:
        for source, target in (
            (self.defect.directory / METADATA_FILE, self.ml_dir / METADATA_FILE),
            (self.defect.directory.parent / METADATA_FILE, self.ml_dir.parent / METADATA_FILE),
        ):
            if source.is_file():
                write_text(target, source.read_text())

    def _reference_distance(self) -> float | None:
        try:
            return min_interatomic_distance(read_input_structure(self.defect.directory / "Unperturbed"))
        except (SnbMlError, OSError):
            return None

    def _existing(self, folder: str) -> DistortionRecord | None:
        stored = self.provenance["distortions"].get(folder)
        if not stored or self.settings.force or stored.get("status") not in FINAL_STATUSES:
            return None
        output = self.ml_dir / (stored.get("output_folder") or folder)
        if not (output / "CONTCAR").is_file():
            return None
        return DistortionRecord(**stored, skipped=True)

    def _classify_high_energy(self, folder: str, result: RelaxResult) -> None:
        reference = self.report.unperturbed_energy
        # Only finished relaxations are judged; an unconverged one is continued on the next run.
        if folder == "Unperturbed" or reference is None or result.status != CONVERGED:
            return
        excess = result.energy - reference
        if excess > self.settings.relax.high_energy_threshold:
            result.status = HIGH_ENERGY
            result.message = (
                f"{excess:.2f} eV above Unperturbed (> {self.settings.relax.high_energy_threshold} eV)"
            )

    def _write_outputs(self, folder: str, source: Path, result: RelaxResult, charge: int) -> DistortionRecord:
        marked = result.status in (HIGH_ENERGY, EXPLODED) and folder != "Unperturbed"
        output_folder = folder + HIGH_ENERGY_SUFFIX if marked else folder
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
        if marked and (self.ml_dir / folder).is_dir():
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
        self.provenance["distortions"][record.folder] = record.to_json()
        energies = {
            folder: data["energy"]
            for folder, data in self.provenance["distortions"].items()
            if data["status"] in (CONVERGED, UNCONVERGED) and data.get("energy") is not None
        }
        if energies:
            write_energies_yaml(self.ml_dir, self.defect.name, energies)
        write_text(self.ml_dir / PROVENANCE_FILE, json.dumps(self.provenance, indent=2, default=str))


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
    if ml_top == top.resolve() or any(ml_top == d.directory.resolve() for d in selected):
        raise OutputError(
            f"The ML tree {ml_top} would be the DFT tree itself; choose a separate folder "
            "(--output / output=)."
        )
    from snb_ml.batch.tree import choose_engine, relax_runs_batched

    choose_engine(settings, None, 0)  # reject impossible engine settings before anything is written
    model = model or load_model(settings)
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
    )
