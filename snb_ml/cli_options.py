"""Options shared by ``snb-ml run`` and ShakeNBreak's ``snb-run --relaxer``, and running them."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import click

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
)


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
            ["--device"], default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
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


_short_warning = short_warning  # the old private name, for modules not yet updated


def run_from_cli(path: str | Path, defects: list[str] | None, options: dict[str, Any]) -> None:
    """Run an ML relaxation for the CLI: print the summary, exit 1 on any error."""
    from snb_ml.executors import run_with_executor
    from snb_ml.summary import format_summary

    warnings.formatwarning = _short_warning
    try:
        report = run_with_executor(
            path,
            settings_from_options(options),
            executor=options.get("executor") or "local",
            scheduler=options.get("scheduler"),
            defects=defects or None,
            output=options.get("output"),
        )
    except SnbMlError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    click.echo(format_summary(report))
    if report.failed:
        click.echo(
            "Error: some distortions or defects failed (see messages above); the others finished.", err=True
        )
        sys.exit(1)
