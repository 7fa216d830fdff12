"""``snb-ml free-energy``: vibrational free energies of a defect, its bulk and references with an ML model.

Harmonic (and optionally quasi-harmonic) free energies, and the vibrational part of the formation free energy.
Only options and messages live here; the workflow is :mod:`snb_ml.thermo.workflow`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import numpy as np

from snb_ml.cli.attach_terms import LOAD_LINE, term_option, thermo_option
from snb_ml.cli.errors import cli_errors
from snb_ml.cli.options import ml_parameters, settings_from_options, short_warning
from snb_ml.errors import InputError, SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
#: Model options of ``snb-ml run`` that apply here too.
MODEL_OPTIONS = ("relaxer", "model", "head", "device", "dtype", "calc_kwargs", "threads", "engine")


def parse_references(values: tuple[str, ...]) -> dict[str, Path]:
    """Parse ``--reference EL=PATH`` values."""
    references = {}
    for value in values:
        element, sep, path = value.partition("=")
        if not sep or not element.strip() or not path.strip():
            raise InputError(f"--reference must look like Cd=POSCAR_Cd (element=path), got {value!r}.")
        if not Path(path).exists():
            raise InputError(f"--reference {element}: {path} does not exist.")
        references[element.strip()] = Path(path)
    return references


def _model_options(function):
    options = [o for o in ml_parameters("chgnet") if o.name in MODEL_OPTIONS]
    for option in options:
        if option.name == "engine":  # fresh Option objects: the run command's help is untouched
            option.help = (
                "Phonon displacement forces many cells per model call (batched) or one at a time; auto "
                "batches on a GPU and for CHGNet on CPU."
            )
    for option in reversed(options):
        function.__click_params__ = [*getattr(function, "__click_params__", []), option]
    return function


def _temperatures(tmin: float, tmax: float, tstep: float) -> np.ndarray:
    if not np.all(np.isfinite([tmin, tmax, tstep])) or tstep <= 0 or tmax < tmin or tmin < 0:
        raise InputError(f"Need 0 <= --tmin <= --tmax and --tstep > 0 (got {tmin}, {tmax}, {tstep}).")
    return np.arange(tmin, tmax + tstep / 2, tstep)


@click.command("free-energy", context_settings=CONTEXT_SETTINGS)
@click.option("--defect", "defect", default=None, type=click.Path(exists=True), help="Defect supercell.")
@click.option(
    "--bulk",
    "bulk",
    default=None,
    type=click.Path(exists=True),
    help="Pristine supercell (with --thermo: taken from the doped entries).",
)
@thermo_option(
    required=False,
    help="doped DefectThermodynamics JSON(.gz): every defect entry (all charge states) in one run.",
)
@click.option(
    "--tree",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="ShakeNBreak DFT or ML tree: the lowest-energy structure of every defect folder (needs --bulk).",
)
@click.option(
    "--only",
    multiple=True,
    help="With --thermo/--tree: only these entries (doped's names, e.g. ``v_Cd_-1``) or defects "
    "(``v_Cd``: all its charge states).",
)
@click.option(
    "--doped-output",
    default=None,
    type=click.Path(dir_okay=False),
    help="With --thermo: also write the doped DefectThermodynamics JSON with ΔF_vib(T) attached "
    "(load with DefectThermodynamics.from_json).",
)
@click.option(
    "--reference",
    "references",
    multiple=True,
    help="Elemental reference phase EL=PATH (structure, or a JSON from an earlier run), one per exchanged "
    "element.",
)
@click.option("--tmin", default=0.0, show_default=True, type=float, help="Lowest temperature (K).")
@click.option("--tmax", default=1000.0, show_default=True, type=float, help="Highest temperature (K).")
@click.option("--tstep", default=50.0, show_default=True, type=float, help="Temperature step (K).")
@click.option("--qha", is_flag=True, help="Also quasi-harmonic G(T) of the bulk and references (slow).")
@click.option(
    "--charge", default=None, type=int, help="Total charge of the defect cell (charge-aware models)."
)
@click.option(
    "--symprec",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Phonopy symmetry tolerance (Å); looser finds more symmetry, so fewer displacements.",
)
@click.option(
    "--relax-cells/--no-relax-cells",
    default=True,
    show_default=True,
    help="Scale defect and bulk to the model's zero-pressure bulk lattice (and relax reference cells) "
    "before the phonon step. The model's pressure on the given bulk is always reported. Keep it on for DFT "
    "cells of another functional: CdTe V_Cd at 873 K, ΔF_vib -1.48 eV as given (1.5 GPa) vs +0.10 eV scaled.",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Progress bar over the defects."
)
@click.option(
    "--output", "-o", default="free_energy.json", show_default=True, type=click.Path(dir_okay=False)
)
@term_option(where="--doped-output")
@_model_options
@cli_errors
def free_energy(
    defect, bulk, thermo, tree, only, doped_output, references, tmin, tmax, tstep, qha, charge, symprec,
    relax_cells, progress, output, terms, **options
) -> None:  # fmt: skip
    """Vibrational free energies F_vib(T) and ΔF_vib(T) with an ML model (JSON).

    One defect: --defect and --bulk. Every defect (and charge state) at once: --thermo with a doped
    DefectThermodynamics JSON (and --doped-output to write it back with the terms attached), or --tree with
    a ShakeNBreak tree and --bulk. Whole-tree runs write one JSON after every defect and resume from it.
    """
    from snb_ml.runner import load_model
    from snb_ml.safe_write import write_text
    from snb_ml.thermo import workflow

    warnings.formatwarning = short_warning
    modes = [name for name, value in (("--defect", defect), ("--thermo", thermo), ("--tree", tree)) if value]
    if len(modes) != 1:
        raise InputError(
            "Give exactly one of --defect (one defect, with --bulk), --thermo (every entry of a doped "
            "DefectThermodynamics JSON) or --tree (a ShakeNBreak tree, with --bulk); got "
            f"{modes or 'none'}."
        )
    if (defect or tree) and not bulk:
        raise InputError(f"{modes[0]} needs --bulk (the pristine supercell).")
    if doped_output and not thermo:
        raise InputError("--doped-output needs --thermo (the doped DefectThermodynamics to attach terms to).")
    if (only or doped_output) and defect:
        raise InputError("--only and --doped-output work with --thermo or --tree, not --defect.")
    if (thermo or tree) and (qha or charge is not None):
        raise InputError("--qha and --charge apply to one defect (--defect); charges come from the entries.")
    if terms and not doped_output:
        raise InputError("--term needs --doped-output: terms are attached to the doped DefectThermodynamics.")
    temperatures = _temperatures(tmin, tmax, tstep)
    settings = settings_from_options({**options, "fmax": 1e-3, "steps": 3000, "optimizer": "BFGS"})
    refs = parse_references(references)
    extra_terms = workflow.plugin_terms(terms)  # an unknown name fails here, before any phonon step
    if defect:
        loaded = load_model(settings)
        evaluator = workflow.phonon_evaluator(loaded, options.get("engine") or "auto")
        data = workflow.compute_free_energies(
            defect,
            bulk,
            refs,
            loaded.calculator,
            temperatures,
            qha=qha,
            charge=charge,
            model=loaded.name,
            log=click.echo,
            symprec=symprec,
            relax_cells=relax_cells,
            check_elements=loaded.check_elements,
            evaluator=evaluator,
        )
        data["settings"] = settings.as_dict()
        write_text(output, json.dumps(data, indent=1))
        delta = data["delta_free_energy"]
        click.echo(f"ΔF_vib({temperatures[-1]:g} K) = {delta[-1]:+.4f} eV; written to {output}.")
        return
    if doped_output and Path(doped_output).resolve() == Path(thermo).resolve():
        raise InputError("--doped-output must differ from --thermo: the doped input is never overwritten.")
    cells, bulk_atoms, doped = workflow.defect_cells(thermo, tree, bulk, only)
    if doped is not None:
        extra_terms = workflow.expand_terms(extra_terms, doped.defect_entries)
        workflow.check_terms(doped, extra_terms)
    loaded = load_model(settings)
    evaluator = workflow.phonon_evaluator(loaded, options.get("engine") or "auto")
    data = workflow.whole_tree_free_energies(
        cells, bulk_atoms, refs, loaded, evaluator, temperatures, settings.as_dict(), output,
        symprec=symprec, relax_cells=relax_cells, progress=progress, log=click.echo,
    )  # fmt: skip
    done = len(data["defects"])
    click.echo(f"{done} defect(s) in {output}; bulk at {data['bulk_pressure_GPa']:.2f} GPa with the model.")
    if doped_output and doped is not None and done:
        from snb_ml.thermo.tree import write_doped_json

        write_doped_json(doped, data, doped_output, extra_terms=extra_terms)
        click.echo(f"doped DefectThermodynamics with ΔF_vib attached: {doped_output}. Load it with\n")
        click.echo("  " + LOAD_LINE.format(path=doped_output))
    failed = sorted(data["failed"])
    if failed:
        raise SnbMlError(f"{len(failed)} defect(s) failed ({', '.join(failed)}); the others are in {output}.")
