"""Adds ``--relaxer`` to ShakeNBreak's own ``snb-run`` (and ``snb run``) command.

ShakeNBreak has no plugin hook, so :mod:`snb_ml._shakenbreak_hook` calls :func:`extend_run_command`
right after ``shakenbreak.cli`` is imported. Without ``--relaxer`` the original callback runs with
exactly its original arguments, so HPC submission is unchanged.
"""

from __future__ import annotations

import functools
from types import ModuleType

from snb_ml.cli.errors import cli_errors
from snb_ml.cli.options import ML_PARAMETER_NAMES, ml_parameters, run_from_cli

MARKER = "_snb_ml_extended"


def _given(names: tuple[str, ...]) -> bool:
    """True when any of the named snb-run options was given on the command line (not a default)."""
    import click

    context = click.get_current_context(silent=True)
    if context is None:
        return False
    return any(context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE for name in names)


@cli_errors
def submit_from_cli(path: str, ml_options: dict, snb_options: dict) -> None:
    """Submit one ML job per defect for ``snb-run --relaxer ... -s ... -j ...``; exit 1 on an error."""
    import click

    from snb_ml.submit import submit_defects

    submitted = submit_defects(
        path,
        ml_options,
        snb_options["submit_command"],
        snb_options["job_script"],
        snb_options.get("job_name_option"),
        output=ml_options.get("output"),
        echo=click.echo,
    )
    click.echo(f"{len(submitted)} ML job(s) submitted, one per defect.")


def extend_run_command(cli_module: ModuleType) -> None:
    """Add the ML options to ``cli_module.run`` in place (idempotent).

    Args:
        cli_module: The imported ``shakenbreak.cli`` module.
    """
    command = cli_module.run
    if getattr(command, MARKER, False):
        return
    original = command.callback

    @functools.wraps(original)
    def callback(**kwargs):
        ml_options = {name: kwargs.pop(name) for name in ML_PARAMETER_NAMES if name in kwargs}
        if ml_options.get("relaxer") is None:
            return original(**kwargs)
        from snb_ml.logs import setup_logging

        setup_logging(1 if kwargs.get("verbose") else 0)  # snb-run's own -v/--verbose
        if _given(("submit_command", "job_script", "job_name_option")):
            # -s/-j/-n given: one ML job per defect on the user's scheduler, like ShakeNBreak's DFT jobs.
            return submit_from_cli(".", ml_options, kwargs)
        # Same folder logic as ShakeNBreak's snb-run: a defect folder, or all defects below cwd.
        return run_from_cli(".", None, ml_options)

    command.params.extend(ml_parameters(relaxer_default=None))
    command.help = (command.help or "") + (
        "\n\nWith --relaxer and -s/-j (e.g. snb-run --relaxer chgnet -s sbatch -j job), one ML job per "
        "defect is submitted instead: the job script is copied into the defect's ML-tree folder with the "
        "snb-ml run command at its {snb_ml_command} line (or appended), and submitted there."
    )
    command.callback = callback
    command.help = (command.help or "") + (
        "\n\nWith --relaxer NAME (snb_ml), relax the distortions locally with an ML force field instead "
        "and write the results to an ML tree (default <top-level>/ml_tree) that snb-parse, snb-analyse, "
        "snb-plot and snb-groundstate read with -p. With --executor dask --scheduler ADDRESS the defects "
        "are relaxed on a Dask cluster instead, one task per defect."
    )
    setattr(command, MARKER, True)
