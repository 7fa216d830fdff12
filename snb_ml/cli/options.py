"""Options shared by ``snb-ml run`` and ShakeNBreak's ``snb-run --relaxer``, and running them."""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Any

import click

from snb_ml.cli.errors import cli_errors
from snb_ml.errors import InputError, SnbMlError
from snb_ml.executors import EXECUTORS
from snb_ml.relax import OPTIMIZERS, RelaxSettings

# Names of the parameters below; snb-run's own parameters never collide with them.
ML_PARAMETER_NAMES = (
    "relaxer",
    "model",
    "head",
    "device",
    "dtype",
    "calc_kwargs",
    "fmax",
    "steps",
    "optimizer",
    "charge",
    "output",
    "force",
    "progress",
    "threads",
    "engine",
    "batch_size",
    "executor",
    "scheduler",
    "cluster",
    "cluster_kwargs",
    "jobs",
)


class DeviceType(click.ParamType):
    """``--device``: one of a few names or ``cuda:N``; anything else fails at parse time, naming the option.

    Args:
        allowed: Plain names accepted besides ``cuda:N``.
    """

    name = "device"

    def __init__(self, allowed: tuple[str, ...] = ("auto", "cpu", "cuda")):
        self.allowed = allowed

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: D102
        return "[" + "|".join((*self.allowed, "cuda:N")) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """Return the device name, or fail with the names accepted."""
        from snb_ml.errors import ModelError
        from snb_ml.relaxers.base import check_device_name

        try:
            return check_device_name(str(value).strip(), self.allowed)
        except ModelError as exc:
            self.fail(str(exc), param, ctx)


DEVICE = DeviceType()


def ml_parameters(relaxer_default: str | None) -> list[click.Option]:
    """The click options of an ML relaxation run.

    Args:
        relaxer_default: Default of ``--relaxer``; ``None`` for ``snb-run``, where leaving it out
            keeps ShakeNBreak's HPC submission.
    """
    relaxer_help = "ML relaxer backend (see `snb-ml plugins`)."
    if relaxer_default is None:
        relaxer_help += " Relax with an ML force field locally instead of submitting DFT jobs (snb_ml)."
    return [
        click.Option(["--relaxer"], default=relaxer_default, show_default=True, help=relaxer_help),
        click.Option(
            ["--model"],
            default=None,
            help="Model file or name (chgnet: 0.3.0; mace: PATH or foundation name; ase: module:Class).",
        ),
        click.Option(["--head"], default=None, help="Readout head of a multi-head model (e.g. pbe, hse)."),
        click.Option(
            ["--device"],
            default="auto",
            show_default=True,
            type=DEVICE,
            help="Where the model runs: auto (a GPU if torch sees one), cpu, cuda or cuda:N.",
        ),
        click.Option(
            ["--dtype"],
            default=None,
            type=click.Choice(["float32", "float64"]),
            help="Precision where the backend supports it.",
        ),
        click.Option(
            ["--calc-kwargs", "calc_kwargs"],
            default=None,
            help="JSON object of calculator keyword arguments.",
        ),
        click.Option(
            ["--fmax"],
            default=RelaxSettings.fmax,
            show_default=True,
            type=float,
            help="Force convergence in eV/Å.",
        ),
        click.Option(
            ["--steps"],
            default=RelaxSettings.steps,
            show_default=True,
            type=int,
            help="Maximum optimizer steps.",
        ),
        click.Option(
            ["--optimizer"],
            default="FIRE",
            show_default=True,
            type=click.Choice(OPTIMIZERS, case_sensitive=False),
        ),
        click.Option(
            ["--charge"], default=None, type=int, help="Override the defect charge read from the folder name."
        ),
        click.Option(
            ["--output", "-o"],
            default=None,
            type=click.Path(file_okay=False),
            help="ML tree folder [default: <top-level>/ml_tree].",
        ),
        click.Option(
            ["--force"],
            is_flag=True,
            default=False,
            help="Redo finished distortions (and accept a different model).",
        ),
        click.Option(
            ["--progress/--no-progress"], default=True, show_default=True, help="Show progress bars."
        ),
        click.Option(
            ["--threads"],
            default=None,
            type=click.IntRange(min=1),
            help="CPU threads for torch (1 per process when several runs share the cores).",
        ),
        click.Option(
            ["--engine"],
            default="auto",
            show_default=True,
            type=click.Choice(["auto", "batched", "sequential"]),
            help="Relax a defect's distortions together in batches, or one after another.",
        ),
        click.Option(
            ["--batch-size", "batch_size"],
            default=None,
            type=click.IntRange(min=1),
            help="Most structures per batch of the batched engine [default: from atoms and memory].",
        ),
        click.Option(
            ["--executor"],
            default="local",
            show_default=True,
            type=click.Choice(EXECUTORS),
            help="Run here (local), or one task per defect on a Dask cluster (dask, needs --scheduler).",
        ),
        click.Option(
            ["--scheduler"],
            default=None,
            metavar="ADDRESS",
            help="Dask scheduler address for --executor dask, e.g. tcp://node01:8786.",
        ),
        click.Option(
            ["--cluster"],
            default=None,
            type=click.Choice(["local", "slurm", "pbs", "sge", "lsf", "htcondor"]),
            help="Start a Dask cluster for --executor dask instead of --scheduler: slurm/pbs/... submit "
            "worker jobs with dask-jobqueue (pip install 'snb_ml[hpc]'); local runs workers here.",
        ),
        click.Option(
            ["--cluster-kwargs", "cluster_kwargs"],
            default=None,
            metavar="JSON",
            help='Arguments of the cluster, e.g. \'{"cores": 8, "memory": "32GB", "walltime": "02:00:00"}\'.',
        ),
        click.Option(
            ["--jobs"],
            default=1,
            show_default=True,
            type=click.IntRange(min=1),
            help="Scheduler jobs of workers for --cluster (worker processes for --cluster local).",
        ),
    ]


def settings_from_options(options: dict[str, Any]):
    """Build :class:`~snb_ml.settings.RunSettings` from parsed click options."""
    from snb_ml.settings import RunSettings

    calc_kwargs = {}
    if options.get("calc_kwargs"):
        try:
            calc_kwargs = json.loads(options["calc_kwargs"])
        except ValueError as exc:
            raise InputError(f"--calc-kwargs must be a JSON object, e.g. '{{\"rc\": 6.0}}' ({exc}).") from exc
        if not isinstance(calc_kwargs, dict):
            raise InputError("--calc-kwargs must be a JSON object, e.g. '{\"rc\": 6.0}'.")
    return RunSettings(
        relaxer=options["relaxer"],
        model=options.get("model"),
        head=options.get("head"),
        device=options.get("device") or "auto",
        dtype=options.get("dtype"),
        calculator_options=calc_kwargs,
        relax=RelaxSettings(
            fmax=options["fmax"], steps=options["steps"], optimizer=options["optimizer"].upper()
        ),
        charge=options.get("charge"),
        force=bool(options.get("force")),
        progress=bool(options.get("progress", True)),
        threads=options.get("threads"),
        engine=options.get("engine") or "auto",
        batch_size=options.get("batch_size"),
    )


def short_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` for the CLI: one line, no file or line number."""
    return f"Warning: {message}\n"


def _run_on_new_cluster(run: Any, options: dict[str, Any]) -> Any:
    """``--cluster KIND``: start that Dask cluster, run on it, close it (its worker jobs end with it)."""
    from snb_ml.clusters import parse_cluster_kwargs, started_cluster

    if (options.get("executor") or "local") != "dask" or options.get("scheduler"):
        raise InputError(
            "--cluster starts a Dask cluster: use it with --executor dask and without --scheduler."
        )
    kwargs = parse_cluster_kwargs(options.get("cluster_kwargs"))
    with started_cluster(options["cluster"], kwargs, int(options.get("jobs") or 1)) as cluster:
        return run(scheduler=cluster)


@cli_errors
def run_from_cli(path: str | Path, defects: list[str] | None, options: dict[str, Any]) -> None:
    """Run an ML relaxation for the CLI: print the summary, exit 1 on any error."""
    from snb_ml.executors import run_with_executor
    from snb_ml.summary import format_summary

    warnings.formatwarning = short_warning
    settings = settings_from_options(options)
    run = functools.partial(
        run_with_executor,
        path,
        settings,
        executor=options.get("executor") or "local",
        defects=defects or None,
        output=options.get("output"),
    )
    if options.get("cluster"):
        report = _run_on_new_cluster(run, options)
    else:
        report = run(scheduler=options.get("scheduler"))
    click.echo(format_summary(report))
    if report.failed:
        raise SnbMlError("some distortions or defects failed (see messages above); the others finished.")
