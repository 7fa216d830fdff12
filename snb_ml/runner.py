"""Relax every distortion of a ShakeNBreak tree and write the ML tree.

The run is put together from three parts, each with one job: the tree writer
(:class:`~snb_ml.tree.writer.DefectWriter`: lock, provenance, outputs, resume, one per defect), the
engines (:func:`~snb_ml.sequential.relax_sequentially`, one defect at a time, or
:func:`~snb_ml.batch.tree.relax_jobs_batched`, all defects together), which take
:class:`~snb_ml.jobs.RelaxJob` objects and yield :class:`~snb_ml.jobs.RelaxOutcome` objects, and the
``_High_Energy`` policy (:mod:`snb_ml.high_energy`) the writer applies.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.std import tqdm

from snb_ml.batch.memory import peak_resident
from snb_ml.batch.tree import choose_engine, relax_jobs_batched
from snb_ml.errors import InputError, OutputError, SnbMlError
from snb_ml.jobs import RelaxJob, reference_distance, starting_structure
from snb_ml.plugins import get_relaxer
from snb_ml.records import FINAL_STATUSES as FINAL_STATUSES  # re-exported: imported from here
from snb_ml.records import write_failure_message
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel, resolve_device
from snb_ml.sequential import relax_sequentially
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import (
    DEFAULT_ML_TREE,
    check_output_location,
    input_tree_identity,
    locate_defects,
    write_tree_marker,
)
from snb_ml.tree.metadata import METADATA_FILE, charge_from_folder, defect_site_fractional, read_metadata
from snb_ml.tree.provenance import PROVENANCE_FILE
from snb_ml.tree.writer import LOCK_FILE as LOCK_FILE  # re-exported: its former home
from snb_ml.tree.writer import DefectReport, DefectWriter, RunIdentity


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


def run_identity(settings: RunSettings, model: LoadedModel) -> RunIdentity:
    """What the provenance of a run with ``settings`` and ``model`` records, and its high-energy threshold."""
    return RunIdentity(
        model={
            "name": model.name,
            "version": model.version,
            "charge_aware": model.charge_aware,
            "head": model.head,
            "file": model.file_record(),
            "fine_tuned_on": None if model.fine_tuned_on is None else list(model.fine_tuned_on),
        },
        signature=settings.signature(),
        settings=settings.as_dict(),
        force=settings.force,
        high_energy_threshold=settings.relax.high_energy_threshold,
    )


def _open_defect(
    writer: DefectWriter,
    model: LoadedModel,
    charge_override: int | None,
    warn_charge_blind: list[bool],
) -> list[RelaxJob]:
    """Lock the defect's ML folder, resume from what it holds, and make the jobs still to run.

    Raises:
        SnbMlError: If nothing of this defect can be relaxed (the writer is closed again).
    """
    defect = writer.defect
    writer.lock()
    try:
        charge = charge_override
        if charge is None:
            charge = charge_from_folder(defect.directory, defect.name)
        pending = writer.start(charge)
        if charge != 0 and not model.charge_aware and warn_charge_blind[0]:
            warn_charge_blind[0] = False
            warnings.warn(
                f"Model '{model.name}' has no charge embedding: defect charges (e.g. {charge:+d} for "
                f"{defect.name}) are ignored; every charge state is relaxed as the same neutral-like "
                "system.",
                stacklevel=2,
            )
        reference = reference_distance(defect.directory)
        site = defect_site_fractional(defect.directory)
        jobs = []
        for start in pending:
            try:
                atoms = starting_structure(model, defect, start.folder, charge, site, start.restart_file)
            except SnbMlError as exc:
                writer.record_error(start.folder, str(exc))
                continue
            jobs.append(RelaxJob(defect.name, start.folder, atoms, charge, reference))
        writer.expect(jobs)
    except OSError as exc:  # metadata copy or provenance: nothing of this defect is relaxed
        writer.close()
        raise OutputError(write_failure_message(writer.ml_dir, exc, [], {})) from exc
    except BaseException:
        writer.close()
        raise
    return jobs


def _relax_each_defect(
    opened: list[tuple[DefectWriter, list[RelaxJob]]], model: LoadedModel, settings: RunSettings
) -> None:
    """The sequential engine, one defect after the other; a defect's run error stops that defect only."""
    for writer, jobs in opened:
        if not jobs:
            continue
        outcomes = relax_sequentially(
            jobs,
            model.calculator,
            settings.relax,
            progress=settings.progress,
            label=writer.defect.name,
            total=len(writer.folders),
        )
        try:
            for outcome in outcomes:
                writer.finish(outcome, tqdm.write)
                if writer.stopped:  # nowhere to put further results
                    break
        except SnbMlError as exc:
            writer.fail(str(exc))
        finally:
            outcomes.close()


def _relax_all_batched(
    opened: list[tuple[DefectWriter, list[RelaxJob]]], model: LoadedModel, settings: RunSettings
) -> None:
    """The batched engine over every defect's jobs together."""
    writers = {writer.defect.name: writer for writer, _ in opened}
    outcomes = relax_jobs_batched(
        [job for _, jobs in opened for job in jobs],
        model,
        settings.relax,
        batch_size=settings.batch_size,
        progress=settings.progress,
        total=sum(len(writer.folders) for writer, _ in opened),
    )
    for outcome in outcomes:
        writers[outcome.job.defect].finish(outcome, tqdm.write)


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
    produced_by = run_identity(settings, model)
    warn_charge_blind = [True]
    writers: list[DefectWriter] = []
    opened: list[tuple[DefectWriter, list[RelaxJob]]] = []
    for defect in selected:
        writer = DefectWriter(defect, ml_top, produced_by, input_label)
        writers.append(writer)
        try:
            opened.append((writer, _open_defect(writer, model, settings.charge, warn_charge_blind)))
        except SnbMlError as exc:
            writer.fail(str(exc))
            writer.close()
    engine = choose_engine(settings, model, sum(len(jobs) for _, jobs in opened))
    try:
        if engine == "batched":
            _relax_all_batched(opened, model, settings)
        else:
            _relax_each_defect(opened, model, settings)
    finally:
        for writer, _ in opened:
            writer.close()
    return RunReport(
        ml_tree=ml_top,
        engine=engine,
        defects=[writer.report for writer in writers],
        model={"name": model.name, "version": model.version, "charge_aware": model.charge_aware},
        seconds=time.perf_counter() - start,
        peak_memory=peak_resident(),
    )
