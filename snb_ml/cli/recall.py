"""``snb-ml recall``: how many DFT ground states a model + selection recovers from a finished DFT search."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from snb_ml.cli.errors import cli_errors
from snb_ml.cli.options import ml_parameters, settings_from_options
from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
_NOT_FOR_RECALL = ("output", "executor", "scheduler")  # the ML tree lives in --output; runs locally


@cli_errors
def _recall(path, output, defect, policy, tolerance, threshold, noise, **options) -> None:
    from snb_ml.cli.options import short_warning
    from snb_ml.minima.selection import DEFAULT_THRESHOLD
    from snb_ml.minima.trust import ENERGY_NOISE
    from snb_ml.recall import benchmark_search

    warnings.formatwarning = short_warning
    result = benchmark_search(
        path,
        output,
        settings_from_options(options),
        policy=policy,
        tolerance=tolerance,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        defects=list(defect) or None,
        noise=ENERGY_NOISE if noise is None else noise,
    )
    click.echo(result.table())
    click.echo(f"Reports: {Path(result.output) / f'recall_{policy}'}.json/.txt/.png", err=True)
    if result.failed:
        raise SnbMlError("some defects could not be benchmarked (see above); the others are done.")


recall = click.Command(
    "recall",
    callback=_recall,
    context_settings=CONTEXT_SETTINGS,
    help=(
        "Ground-state recall on a finished ShakeNBreak DFT search: relax the same starts with an ML model, "
        "select, and report per defect whether the selected DFT runs reach the DFT ground state and how many "
        "DFT relaxations they need. The DFT tree is only read."
    ),
    params=[
        click.Option(
            ["--path", "-p"],
            required=True,
            type=click.Path(exists=True, file_okay=False),
            help="The DFT search: top-level folder (or one defect folder) with POSCAR + CONTCAR/OUTCAR per "
            "distortion and {defect}.yaml.",
        ),
        click.Option(
            ["--output", "-o"],
            default="snb_ml_recall",
            show_default=True,
            type=click.Path(file_okay=False),
            help="Benchmark folder: copied starts, the ML tree (reused by reruns) and the reports.",
        ),
        click.Option(["--defect", "-d"], multiple=True, help="Defect folder(s) (default: all)."),
        click.Option(
            ["--policy"],
            default="protect",
            show_default=True,
            help="Selection policy: protect, lean or one a plugin adds (see snb-ml select).",
        ),
        click.Option(
            ["--tolerance"],
            type=float,
            default=0.05,
            show_default=True,
            help="Energy above the DFT minimum (eV) that counts as the ground state.",
        ),
        click.Option(["--threshold"], type=float, default=None, help="Fingerprint threshold of one basin."),
        click.Option(["--noise"], type=float, default=None, help="ML energy noise (eV) for protect [0.1]."),
        *[option for option in ml_parameters("chgnet") if option.name not in _NOT_FOR_RECALL],
    ],
)
