"""Where a run's defects are relaxed: in this process (``local``) or on a Dask cluster (``dask``).

Both executors write the same ML tree through :func:`snb_ml.runner.run_tree`. The Dask executor
submits one task per defect; each task runs ``run_tree`` for that defect on a worker, so the per-defect
file lock, the atomic writes and the resume from ``snb_ml_provenance.json`` work exactly as in a local
run. That is what makes a task whose worker died safe to run again: it skips the distortions that were
recorded as finished and redoes only the one that was interrupted.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError, SnbMlError
from snb_ml.progress import progress_bar
from snb_ml.runner import FINAL_STATUSES, DefectReport, RunReport, default_ml_tree, load_model, run_tree
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import DefectInput, check_output_location, input_tree_identity, locate_defects
from snb_ml.tree.provenance import PROVENANCE_FILE, DistortionRecord, read_provenance
from snb_ml.tree.status import Status

EXECUTORS = ("local", "dask")
DASK_INSTALL_HINT = "pip install 'snb_ml[dask]'"
# Re-runs of a task that raised an unexpected exception (e.g. a transient shared-filesystem error).
# A task whose *worker died* is rescheduled by the scheduler instead, up to its
# ``distributed.scheduler.allowed-failures`` setting (default 3), after which it fails with KilledWorker.
TASK_RETRIES = 1
POLL_SECONDS = 0.5

# The loaded model of each worker thread, with the settings it was loaded for: reused by every task the
# worker runs with those settings. Per thread, because an ASE calculator is not safe to call from two
# threads at once.
_MODELS: dict[int, tuple[tuple, Any]] = {}
_MODELS_LOCK = threading.Lock()


@dataclass
class TaskOutcome:
    """What one Dask task sends back: a picklable defect report, or the error that stops the run.

    Attributes:
        defect: The defect folder name.
        report: The defect's report (``None`` when ``fatal`` is set).
        model: Name, version and charge awareness of the model the worker used.
        fatal: An error that stops the whole run (model not loadable, not a ShakeNBreak tree).
        warnings: Warning messages raised on the worker, shown once on the client.
        engine: The engine the worker used (``batched`` or ``sequential``).
    """

    defect: str
    report: DefectReport | None = None
    model: dict[str, Any] = field(default_factory=dict)
    fatal: SnbMlError | None = None
    engine: str = "sequential"
    warnings: list[str] = field(default_factory=list)


def run_with_executor(
    path: str | Path,
    settings: RunSettings,
    executor: str = "local",
    scheduler: Any = None,
    defects: list[str] | None = None,
    output: str | Path | None = None,
    input_label: str | None = None,
    connect_timeout: float | None = None,
) -> RunReport:
    """Relax the selected defects of a ShakeNBreak tree with the chosen executor.

    Args:
        path: Top-level ShakeNBreak folder or one defect folder.
        settings: Run settings; ``settings.engine`` picks batched or sequential relaxation inside each
            defect, whatever the executor.
        executor: ``local`` (this process) or ``dask`` (one task per defect on a Dask cluster).
        scheduler: For ``dask``: a scheduler address (``tcp://host:8786``), a ``distributed.Client``
            or a cluster object such as ``distributed.LocalCluster``.
        defects: Defect folder names to relax (all if ``None``).
        output: ML tree folder (default ``<top-level folder>/ml_tree``). With ``dask`` it must be on a
            filesystem that every worker sees at the same path.
        input_label: What the provenance records as the input (default: each defect folder's path).
        connect_timeout: Seconds to wait for the scheduler (default: Dask's
            ``distributed.comm.timeouts.connect``).

    Returns:
        The run report, as :func:`snb_ml.runner.run_tree` returns it.

    Raises:
        InputError: For an unknown executor, a missing or unreachable scheduler, or ``distributed``
            not being installed.
        SnbMlError: For problems that stop the whole run, as in :func:`~snb_ml.runner.run_tree`.
    """
    if executor not in EXECUTORS:
        raise InputError(f"Unknown executor '{executor}'. Choose one of {', '.join(EXECUTORS)}.")
    if executor == "local":
        if scheduler is not None:
            raise InputError(
                "A scheduler is only used with the dask executor: add --executor dask (executor='dask'), "
                "or drop --scheduler (scheduler=)."
            )
        return run_tree(path, settings, defects=defects, output=output, input_label=input_label)
    if scheduler is None:
        raise InputError(
            "The dask executor needs the address of a running Dask scheduler: pass --scheduler "
            "tcp://HOST:8786 (scheduler=), as printed by `dask scheduler`."
        )
    _import_distributed()
    # The tree is checked before connecting: a wrong -p fails at once, not after a connection timeout.
    dask_run = _DaskRun(path, settings, defects, output, input_label)
    client, owned = _connect(scheduler, connect_timeout)
    try:
        return dask_run.run(client)
    finally:
        if owned:
            client.close()


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise InputError(
            f"The dask executor needs the 'distributed' package, which is not installed ({exc}). "
            f"Install it with: {DASK_INSTALL_HINT}"
        ) from exc
    return distributed


def _connect(scheduler: Any, timeout: float | None) -> tuple[Any, bool]:
    """Return a client for ``scheduler`` and whether this run owns (and so closes) it."""
    distributed = _import_distributed()
    if isinstance(scheduler, distributed.Client):
        return scheduler, False
    where = getattr(scheduler, "scheduler_address", scheduler)
    try:
        timeouts = {} if timeout is None else {"timeout": timeout}
        client = distributed.Client(scheduler, set_as_default=False, **timeouts)
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        raise InputError(
            f"Cannot connect to the Dask scheduler at {where} ({type(exc).__name__}: {exc}). Start one "
            "with `dask scheduler` (it prints its tcp://HOST:8786 address) and workers with `dask worker "
            "tcp://HOST:8786`, then pass that address to --scheduler; or run without --executor dask. "
            "Nothing was written."
        ) from exc
    return client, True


def _cached_model(settings: RunSettings):
    key = (
        json.dumps(settings.signature(), sort_keys=True, default=str),
        settings.device,
        settings.threads,
    )
    thread = threading.get_ident()
    with _MODELS_LOCK:
        cached = _MODELS.get(thread)
        if cached is None or cached[0] != key:
            # One model per thread: a run with other settings replaces it rather than piling up
            # models (and GPU memory) on a long-lived worker.
            _MODELS.pop(thread, None)
            _MODELS[thread] = (key, load_model(settings))
        return _MODELS[thread][1]


def relax_defect_task(
    path: str, settings: RunSettings, defect: str, output: str | None, input_label: str | None
) -> TaskOutcome:
    """Relax one defect on a Dask worker (the function each task runs).

    Args:
        path: Absolute path of the ShakeNBreak tree, as the workers see it.
        settings: Run settings (progress bars are turned off: the client shows one for all workers).
        defect: The defect folder to relax.
        output: Absolute path of the ML tree, or ``None`` for the default.
        input_label: What the provenance records as the input.

    Returns:
        The defect's report, or the error that stops the whole run.
    """
    settings = replace(settings, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = _cached_model(settings)
            report = run_tree(
                path, settings, defects=[defect], output=output, model=model, input_label=input_label
            )
        except SnbMlError as exc:
            return TaskOutcome(defect=defect, fatal=exc)
    return TaskOutcome(
        defect=defect,
        report=report.defects[0],
        model=report.model,
        warnings=[str(warning.message) for warning in caught],
        engine=report.engine,
    )


class _ProvenanceProgress:
    """Counts finished distortions by reading the ML tree's provenance files from the client.

    Polling the provenance files (written atomically after every distortion) needs no channel back
    from the workers and survives worker deaths: a file never shows a distortion that is not on disk.
    Results reused from an earlier run count at once, as they are skipped; with ``force`` (or for an
    earlier unconverged/error record, which is redone) only records that change count.
    """

    def __init__(self, selected: list[DefectInput], ml_top: Path, force: bool):
        self.folders = {defect.name: defect.distortion_folders() for defect in selected}
        self.files = {defect.name: ml_top / defect.name / PROVENANCE_FILE for defect in selected}
        self.force = force
        self.baseline = {name: self._read(name) for name in self.folders}
        self.finished: set[str] = set()
        self.counted: dict[str, tuple[tuple[int, int], int]] = {}

    @property
    def total(self) -> int:
        """Number of distortions over all selected defects."""
        return sum(len(folders) for folders in self.folders.values())

    def _read(self, name: str) -> dict[str, DistortionRecord]:
        try:
            provenance = read_provenance(self.files[name].parent, "")
            return provenance.distortions if provenance is not None else {}
        except (SnbMlError, OSError):
            return {}

    def count(self) -> int:
        """Distortions done so far (all of a finished defect's, whatever their outcome)."""
        done = 0
        for name, folders in self.folders.items():
            if name in self.finished:
                done += len(folders)
                continue
            # A stat per defect and poll; the file is read again only when it changed, which keeps the
            # polling cheap on a shared filesystem with many defects.
            try:
                stat = self.files[name].stat()
            except OSError:
                continue
            # Every atomic write is a new inode, so this sees changes within one mtime tick too.
            stamp = (stat.st_mtime_ns, stat.st_ino)
            if self.counted.get(name, (None, 0))[0] != stamp:
                self.counted[name] = (stamp, self._count_defect(name, folders))
            done += self.counted[name][1]
        return done

    def _count_defect(self, name: str, folders: list[str]) -> int:
        current, baseline, done = self._read(name), self.baseline[name], 0
        for folder in folders:
            record = current.get(folder)
            if record is None:
                continue
            before = baseline.get(folder)
            reused = before == record and not self.force and record.status in FINAL_STATUSES
            if record != before or reused:
                done += 1
        return done


class _DaskRun:
    """Submits one task per defect and gathers the results into one run report."""

    def __init__(
        self,
        path: str | Path,
        settings: RunSettings,
        defects: list[str] | None,
        output: str | Path | None,
        input_label: str | None,
    ):
        self.client: Any = None
        self.settings = settings
        self.input_label = input_label
        self.start = time.perf_counter()
        # Paths are resolved here: a worker's working directory is not the client's.
        self.top, self.selected = locate_defects(path, defects)
        self.path = Path(path).resolve()
        self.ml_top = Path(output).resolve() if output else default_ml_tree(self.top)
        # Checked here too, so a refused output stops the run before any task is submitted.
        identity = input_tree_identity(self.top, input_label)
        check_output_location(self.ml_top, self.top, self.selected, identity, settings.force)
        self.output = str(self.ml_top)
        self.reports: dict[str, DefectReport] = {}
        self.engines: set[str] = set()
        self.model: dict[str, Any] = {}
        self.warnings: list[str] = []  # shown after the progress bar, which they would break up

    def run(self, client: Any) -> RunReport:
        self.client = client
        info = self.client.scheduler_info()
        if not info.get("workers"):
            print(
                f"No Dask worker is connected to {info.get('address')} yet; the run starts when "
                "one connects (`dask worker ADDRESS`).",
                file=sys.stderr,
            )
        progress = _ProvenanceProgress(self.selected, self.ml_top, self.settings.force)
        futures = self._submit()
        pending = dict(futures)
        with progress_bar(
            total=progress.total,
            desc=f"{len(self.selected)} defect(s) on Dask",
            unit="relax",
            mininterval=0.5,
            enabled=self.settings.progress,
        ) as bar:
            try:
                while pending:
                    finished = [future for future in pending if future.done()]
                    for future in finished:
                        name = pending.pop(future)
                        self._collect(name, future, bar)
                        progress.finished.add(name)
                    advance = progress.count() - bar.n
                    if advance > 0:
                        bar.update(advance)
                    if pending and not finished:
                        time.sleep(POLL_SECONDS)
            except BaseException:
                # A fatal error or Ctrl-C: tasks not yet started are dropped. Running ones finish their
                # current defect on the worker and leave a resumable tree.
                self.client.cancel(list(pending))
                raise
        for message in self.warnings:
            warnings.warn(message, UserWarning, stacklevel=3)
        unknown = {"name": self.settings.model or self.settings.relaxer, "version": "unknown"}
        return RunReport(
            ml_tree=self.ml_top,
            defects=[self.reports[defect.name] for defect in self.selected],
            model=self.model or {**unknown, "charge_aware": False},
            seconds=time.perf_counter() - self.start,
            engine="batched" if "batched" in self.engines else "sequential",
        )

    def _submit(self) -> dict[Any, str]:
        run_id = uuid.uuid4().hex[:8]
        futures = {}
        for defect in self.selected:
            future = self.client.submit(
                relax_defect_task,
                str(self.path),
                self.settings,
                defect.name,
                self.output,
                self.input_label,
                key=f"snb-ml-{defect.name}-{run_id}",
                pure=False,
                retries=TASK_RETRIES,
            )
            futures[future] = defect.name
        return futures

    def _collect(self, name: str, future, bar) -> None:
        if future.status == "finished":
            outcome: TaskOutcome = future.result()
            if outcome.fatal is not None:
                raise outcome.fatal
            self.warnings.extend(m for m in outcome.warnings if m not in self.warnings)
            self.model = self.model or outcome.model
            self.engines.add(outcome.engine)
            self.reports[name] = outcome.report
            for folder, record in outcome.report.records.items():
                if record.status == Status.ERROR:
                    bar.write(f"Error in {name}/{folder}: {record.message}")
                elif record.status == Status.EXPLODED and not record.skipped:
                    bar.write(f"{name}/{folder}: stopped ({record.message}); saved as {record.output_folder}")
            if outcome.report.error:
                bar.write(f"Error for {name}: {outcome.report.error}")
            return
        error = self._describe_failure(future)
        bar.write(f"Error for {name}: {error}")
        self.reports[name] = DefectReport(name=name, ml_directory=self.ml_top / name, error=error)

    @staticmethod
    def _describe_failure(future) -> str:
        if future.status == "cancelled":
            return "its Dask task was cancelled (scheduler restarted?). Rerun to resume this defect."
        exception = future.exception()
        if type(exception).__name__ == "KilledWorker":
            return (
                "the Dask workers relaxing it died repeatedly (out of memory, or a crash in the model); "
                "see the worker logs. Finished distortions are kept: rerun to resume."
            )
        return f"{type(exception).__name__}: {exception} (on a Dask worker). Rerun to resume this defect."
