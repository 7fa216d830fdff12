"""Adds ``--relaxer`` to ShakeNBreak's own ``snb-run`` (and ``snb run``) command.

ShakeNBreak has no plugin hook, so :mod:`snb_ml._shakenbreak_hook` calls :func:`extend_run_command`
right after ``shakenbreak.cli`` is imported. Without ``--relaxer`` the original callback runs with
exactly its original arguments, so HPC submission is unchanged.
"""

from __future__ import annotations

import functools
from types import ModuleType

from snb_ml.cli_options import ML_PARAMETER_NAMES, ml_parameters, run_from_cli

MARKER = "_snb_ml_extended"


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
        # Same folder logic as ShakeNBreak's snb-run: a defect folder, or all defects below cwd.
        return run_from_cli(".", None, ml_options)

    command.params.extend(ml_parameters(relaxer_default=None))
    command.callback = callback
    command.help = (command.help or "") + (
        "\n\nWith --relaxer NAME (snb_ml), relax the distortions locally with an ML force field instead "
        "and write the results to an ML tree (default <top-level>/ml_tree) that snb-parse, snb-analyse, "
        "snb-plot and snb-groundstate read with -p. With --executor dask --scheduler ADDRESS the defects "
        "are relaxed on a Dask cluster instead, one task per defect."
    )
    setattr(command, MARKER, True)
