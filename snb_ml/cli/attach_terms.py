"""``snb-ml attach-terms``: ΔF_vib and plugin terms onto a doped JSON; options shared with free-energy.

``--thermo`` and ``--term`` are the same options in ``snb-ml free-energy`` and ``snb-ml attach-terms``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from snb_ml.cli.errors import cli_errors
from snb_ml.errors import InputError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
#: The one line a doped user needs to load the written file (shown in the docs and after a run).
LOAD_LINE = (
    'from doped.thermodynamics import DefectThermodynamics; thermo = DefectThermodynamics.from_json("{path}")'
)


def thermo_option(required: bool, help: str) -> Callable[[Any], Any]:
    """``--thermo``: a doped ``DefectThermodynamics`` JSON(.gz) to read (never written)."""
    return click.option(
        "--thermo", default=None, required=required, type=click.Path(exists=True, dir_okay=False), help=help
    )


def term_option(where: str) -> Callable[[Any], Any]:
    """``--term [DEFECT:]NAME[=JSON]`` (repeatable, parameter ``terms``): free-energy terms from plugins.

    Args:
        where: The option naming the file the terms are written to, for the help text.
    """
    return click.option(
        "--term",
        "terms",
        multiple=True,
        metavar="[DEFECT:]NAME[=JSON]",
        help=f"Also attach a free-energy term registered by a plugin (`snb-ml plugins` lists them) to "
        f"{where}; repeatable. JSON: the builder's arguments (object: keyword, list: positional). "
        "DEFECT: a defect or entry name [default: every entry]. "
        'E.g. --term \'v_Cd:linear={"a": 0.1, "b": -2e-4}\'.',
    )


@click.command("attach-terms", context_settings=CONTEXT_SETTINGS)
@thermo_option(required=True, help="doped DefectThermodynamics JSON(.gz).")
@click.option(
    "--free-energies",
    "free_energies",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Whole-tree output of `snb-ml free-energy --thermo/--tree`.",
)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False),
    help="doped JSON to write (.json or .json.gz).",
)
@click.option(
    "--extrapolate", is_flag=True, help="Hold ΔF_vib at its end values outside the computed temperatures."
)
@term_option(where="the output")
@cli_errors
def attach_terms_command(
    thermo: str, free_energies: str, output: str, extrapolate: bool, terms: tuple[str, ...]
) -> None:
    """Write a doped DefectThermodynamics JSON with the ΔF_vib(T) of a whole-tree run attached.

    The file loads with doped's own DefectThermodynamics.from_json (snb_ml installed); with the terms
    switched off (thermo.disable_term("vib")) every number equals doped's.
    """
    from snb_ml.thermo.tree import load_thermodynamics, read_tree_json, write_doped_json
    from snb_ml.thermo.workflow import expand_terms, plugin_terms

    if Path(output).resolve() == Path(thermo).resolve():
        raise InputError("--output must differ from --thermo: the doped input is never overwritten.")
    extra_terms = plugin_terms(terms)
    base, data = load_thermodynamics(thermo), read_tree_json(free_energies)
    extra_terms = expand_terms(extra_terms, base.defect_entries)
    with_terms = write_doped_json(base, data, output, extrapolate=extrapolate, extra_terms=extra_terms)
    names = ", ".join(sorted(with_terms.terms))
    click.echo(f"ΔF_vib attached to {names}; written to {output}. Load it with\n")
    click.echo("  " + LOAD_LINE.format(path=output))
