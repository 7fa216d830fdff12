"""Whole-tree ``snb-ml free-energy --thermo/--tree`` and ``snb-ml attach-terms`` (ΔF_vib onto doped JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import numpy as np

from snb_ml.cli.errors import cli_errors
from snb_ml.errors import InputError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
#: The one line a doped user needs to load the written file (shown in the docs and after a run).
LOAD_LINE = (
    'from doped.thermodynamics import DefectThermodynamics; thermo = DefectThermodynamics.from_json("{path}")'
)


def _selected(cells: list, only: tuple[str, ...]) -> list:
    if not only:
        return cells
    chosen = [c for c in cells if c.name in only or c.defect in only]
    unknown = sorted(set(only) - {c.name for c in cells} - {c.defect for c in cells})
    if unknown:
        raise InputError(
            f"--only {', '.join(unknown)}: not among the entries ({', '.join(c.name for c in cells)}) or "
            f"defects ({', '.join(sorted({c.defect for c in cells}))})."
        )
    return chosen


def _references(references: dict[str, Path]) -> dict[str, Any]:
    """Reference structures (ASE) or earlier results (``VibrationalFreeEnergy``) by element."""
    from snb_ml.thermo.inputs import read_structure, reference_from_json
    from snb_ml.thermo.phonons import VibrationalFreeEnergy

    out: dict[str, Any] = {}
    for element, path in references.items():
        if path.suffix == ".json":
            out[element] = reference_from_json(path, element, VibrationalFreeEnergy)
        else:
            out[element] = read_structure(path, f"--reference {element}")
    return out


def write_doped_json(thermo: Any, data: dict[str, Any], path: str | Path, extrapolate: bool = False) -> Any:
    """Attach the ΔF_vib terms to ``thermo`` and write the doped JSON atomically (``.gz`` compressed).

    Returns:
        The :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics` written.
    """
    from monty.serialization import dumpfn

    from snb_ml.safe_write import atomic_path
    from snb_ml.thermo.tree import attach_terms

    with_terms = attach_terms(thermo, data, extrapolate=extrapolate)
    target = Path(path)
    # monty picks gzip from the name, so the temporary file keeps the target's suffixes.
    with atomic_path(target) as temporary:
        named = temporary.with_name(temporary.name + "".join(target.suffixes))
        try:
            dumpfn(with_terms, str(named))
            named.replace(temporary)
        finally:
            named.unlink(missing_ok=True)
    return with_terms


def run_whole_tree(
    thermo_path: str | None,
    tree: str | None,
    bulk_path: str | None,
    only: tuple[str, ...],
    doped_output: str | None,
    references: dict[str, Path],
    loaded: Any,
    evaluator: Any,
    temperatures: np.ndarray,
    settings: Any,
    symprec: float,
    relax_cells: bool,
    progress: bool,
    output: str,
) -> list[str]:
    """Run ``snb-ml free-energy --thermo/--tree``; return the names of the defects that failed."""
    from snb_ml.thermo.inputs import read_structure
    from snb_ml.thermo.tree import (
        cells_from_thermodynamics,
        cells_from_tree,
        load_thermodynamics,
        tree_free_energies,
    )

    thermo = None
    if doped_output and thermo_path and Path(doped_output).resolve() == Path(thermo_path).resolve():
        raise InputError("--doped-output must differ from --thermo: the doped input is never overwritten.")
    if thermo_path:
        thermo = load_thermodynamics(thermo_path)
        cells, bulk = cells_from_thermodynamics(thermo, Path(thermo_path).name)
        if bulk_path:
            bulk = read_structure(bulk_path, "--bulk")
    else:
        cells, bulk = cells_from_tree(tree), read_structure(bulk_path, "--bulk")
    cells = _selected(cells, only)
    run_settings = {
        "model": settings.as_dict(),
        "temperatures": np.asarray(temperatures).tolist(),
        "symprec": symprec,
        "relax_cells": relax_cells,
        "references": {e: str(p) for e, p in sorted(references.items())},
        "batched_phonons": evaluator is not None,
    }
    click.echo(
        f"{len(cells)} defect cells ({', '.join(c.name for c in cells)}); phonon forces "
        f"{'batched (' + evaluator.name + ')' if evaluator is not None else 'one at a time'}"
    )
    data = tree_free_energies(
        cells,
        bulk,
        _references(references),
        loaded.calculator,
        temperatures,
        output,
        run_settings,
        evaluator=evaluator,
        relax_cells=relax_cells,
        symprec=symprec,
        model=loaded.name,
        check_elements=loaded.check_elements,
        progress=progress,
        log=click.echo,
    )
    done = len(data["defects"])
    click.echo(f"{done} defect(s) in {output}; bulk at {data['bulk_pressure_GPa']:.2f} GPa with the model.")
    if doped_output and thermo is not None and done:
        write_doped_json(thermo, data, doped_output)
        click.echo(f"doped DefectThermodynamics with ΔF_vib attached: {doped_output}. Load it with\n")
        click.echo("  " + LOAD_LINE.format(path=doped_output))
    return sorted(data["failed"])


@click.command("attach-terms", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--thermo",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="doped DefectThermodynamics JSON(.gz).",
)
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
@cli_errors
def attach_terms_command(thermo: str, free_energies: str, output: str, extrapolate: bool) -> None:
    """Write a doped DefectThermodynamics JSON with the ΔF_vib(T) of a whole-tree run attached.

    The file loads with doped's own DefectThermodynamics.from_json (snb_ml installed); with the terms
    switched off (thermo.disable_term("vib")) every number equals doped's.
    """
    from snb_ml.thermo.tree import load_thermodynamics, read_tree_json

    if Path(output).resolve() == Path(thermo).resolve():
        raise InputError("--output must differ from --thermo: the doped input is never overwritten.")
    base, data = load_thermodynamics(thermo), read_tree_json(free_energies)
    with_terms = write_doped_json(base, data, output, extrapolate=extrapolate)
    names = ", ".join(sorted(with_terms.terms))
    click.echo(f"ΔF_vib attached to {names}; written to {output}. Load it with\n")
    click.echo("  " + LOAD_LINE.format(path=output))
