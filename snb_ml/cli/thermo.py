"""``snb-ml free-energy``: vibrational free energies of a defect, its bulk and references with an ML model.

Harmonic (and optionally quasi-harmonic) free energies, and the vibrational part of the formation free energy.
"""

from __future__ import annotations

import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import click
import numpy as np

from snb_ml.cli.errors import cli_errors
from snb_ml.cli.options import ml_parameters, settings_from_options
from snb_ml.errors import InputError, SnbMlError
from snb_ml.thermo.inputs import read_structure, reference_from_json

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


def _composition_change(defect, bulk) -> dict[str, int]:
    """Atoms added (> 0) or removed (< 0) per element, from two ASE structures."""
    defect_counts, bulk_counts = (Counter(atoms.get_chemical_symbols()) for atoms in (defect, bulk))
    change = {e: defect_counts[e] - bulk_counts[e] for e in sorted(set(defect_counts) | set(bulk_counts))}
    return {e: n for e, n in change.items() if n}


def _needed_references(references: dict[str, Path], change: dict[str, int]) -> dict[str, Path]:
    """The references the composition change needs; raise for a missing one, warn for an unneeded one."""
    missing = sorted(set(change) - set(references))
    if missing:
        raise InputError(
            f"The defect changes the composition by {change}; give --reference for {', '.join(missing)} "
            f"(e.g. --reference {missing[0]}=POSCAR_{missing[0]})."
        )
    unneeded = sorted(set(references) - set(change))
    if unneeded:
        warnings.warn(
            f"--reference {', '.join(f'{e}={references[e]}' for e in unneeded)} not used: the defect changes "
            f"the composition by {change} only; not computed and not stored.",
            stacklevel=3,
        )
    return {e: p for e, p in references.items() if e in change}


def compute_free_energies(
    defect_path: str | Path,
    bulk_path: str | Path,
    references: dict[str, Path],
    calculator: Any,
    temperatures: np.ndarray,
    qha: bool = False,
    reference_min_length: float = 10.0,
    charge: int | None = None,
    model: str = "",
    log=print,
    symprec: float = 1e-3,
    relax_cells: bool = True,
    check_elements: Any = None,
    evaluator: Any = None,
) -> dict[str, Any]:
    """Compute everything ``snb-ml free-energy`` writes, as plain JSON data.

    References given as ``.json`` are loaded (``VibrationalFreeEnergy.write_json`` output, or an earlier
    ``snb-ml free-energy`` output holding that element; same temperature grid needed); structures
    are relaxed at fixed cell and their phonons computed in a diagonal supercell of at least
    ``reference_min_length`` Å per lattice vector (q-mesh of length 30).

    Args:
        defect_path: Defect supercell (file or folder).
        bulk_path: Pristine supercell with the same lattice.
        references: Elemental reference phases by element.
        calculator: ASE calculator.
        temperatures: Temperatures in K.
        qha: Also compute quasi-harmonic G(T) of the bulk and the references.
        reference_min_length: Smallest supercell lattice-vector length for the references, Å.
        charge: Total charge of the defect cell, stored in ``atoms.info["charge"]`` for charge-aware models.
        model: Model name recorded in the results.
        log: Progress printer.
        symprec: Phonopy symmetry tolerance (Å) for the defect, bulk and reference phonon steps; a looser
            tolerance finds more symmetry in ML-relaxed cells and needs fewer displacements.
        relax_cells: Scale defect and bulk isotropically to the model's zero-pressure bulk lattice and relax
            reference cells in full (:mod:`snb_ml.thermo.cells`); otherwise a strained bulk only warns.
        check_elements: ``check_elements(symbols, where)`` raising for elements the model lacks
            (:meth:`~snb_ml.relaxers.base.LoadedModel.check_elements`); checked before any phonon step.
        evaluator: Batched evaluator of the model for the displaced supercells (``None``: one at a time).

    Raises:
        InputError: For a missing reference or an unreadable structure; unneeded references only warn
            and are left out.
    """
    from snb_ml.thermo.cells import PRESSURE_WARNING_GPA, bulk_pressure, relax_cell, scale_to_model
    from snb_ml.thermo.phonons import (
        VibrationalFreeEnergy,
        auto_supercell_matrix,
        formation_vibrational_free_energy,
        harmonic_free_energy,
    )
    from snb_ml.thermo.qha import quasi_harmonic_free_energy

    defect_atoms = read_structure(defect_path, "--defect")
    bulk_atoms = read_structure(bulk_path, "--bulk")
    change = _composition_change(defect_atoms, bulk_atoms)
    references = _needed_references(references, change)
    ref_atoms = {
        element: read_structure(path, f"--reference {element}")
        for element, path in references.items()
        if path.suffix != ".json"
    }
    if check_elements is not None:  # before any model call: the whole job or nothing
        check_elements(defect_atoms.get_chemical_symbols(), f"--defect {defect_path}")
        check_elements(bulk_atoms.get_chemical_symbols(), f"--bulk {bulk_path}")
        for element, atoms in ref_atoms.items():
            check_elements(atoms.get_chemical_symbols(), f"--reference {element}={references[element]}")
    pressure, scale = bulk_pressure(bulk_atoms, calculator), 1.0
    if relax_cells:
        defect_atoms, bulk_atoms, scale = scale_to_model(defect_atoms, bulk_atoms, calculator)
        log(f"bulk pressure {pressure:.2f} GPa with the model; cells scaled by {scale:.5f} to zero pressure")
    else:
        log(f"bulk pressure {pressure:.2f} GPa with the model; cells used as given (--no-relax-cells)")
        if abs(pressure) > PRESSURE_WARNING_GPA:
            warnings.warn(
                f"The bulk cell is at {pressure:.2f} GPa with this model (DFT cells strain ML models trained "
                "on another functional); ΔF_vib of a strained cell can be far off (CdTe V_Cd at 873 K: "
                "-1.48 eV as given, +0.10 eV scaled). Drop --no-relax-cells to scale both cells to the "
                "model's own lattice.",
                stacklevel=2,
            )
    if charge is not None:
        defect_atoms.info["charge"] = charge
    results = {}
    for name, atoms in (("defect", defect_atoms), ("bulk", bulk_atoms)):
        start = time.perf_counter()
        results[name] = harmonic_free_energy(
            atoms, calculator, temperatures, symprec=symprec, model=model, evaluator=evaluator
        )
        log(
            f"{name}: {results[name].formula}, {results[name].n_displacements} displacements, "
            f"{time.perf_counter() - start:.1f} s"
        )
    refs = {}
    for element, path in references.items():
        if path.suffix == ".json":
            refs[element] = reference_from_json(path, element, VibrationalFreeEnergy)
            continue
        if relax_cells:
            ref_atoms[element] = relax_cell(ref_atoms[element], calculator)
        matrix = auto_supercell_matrix(ref_atoms[element], reference_min_length)
        refs[element] = harmonic_free_energy(
            ref_atoms[element],
            calculator,
            temperatures,
            supercell_matrix=matrix,
            symprec=symprec,
            model=model,
            evaluator=evaluator,
        )
        log(f"reference {element}: {refs[element].n_displacements} displacements")
    delta = formation_vibrational_free_energy(results["defect"], results["bulk"], refs, change)
    data: dict[str, Any] = {
        "temperatures": np.asarray(temperatures).tolist(),
        "composition_change": change,
        "delta_free_energy": delta.tolist(),
        "delta_free_energy_note": "F_defect - F_bulk - sum_i n_i mu_vib,i (eV); n_i > 0 added, < 0 removed",
        "defect": results["defect"].to_dict(),
        "bulk": results["bulk"].to_dict(),
        "references": {e: r.to_dict() for e, r in refs.items()},
        "defect_path": str(defect_path),
        "bulk_path": str(bulk_path),
        "model": model,
        "symprec": symprec,
        "bulk_pressure_GPa": pressure,
        "relax_cells": relax_cells,
        "cell_scale": scale,
        "qha": {},
    }
    if qha:
        data["qha"]["bulk"] = quasi_harmonic_free_energy(bulk_atoms, calculator, temperatures).to_dict()
        for element, atoms in ref_atoms.items():
            matrix = auto_supercell_matrix(atoms, reference_min_length)
            data["qha"][element] = quasi_harmonic_free_energy(
                atoms, calculator, temperatures, supercell_matrix=matrix
            ).to_dict()
    return data


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


def phonon_evaluator(loaded: Any, engine: str) -> Any:
    """The batched evaluator for the displaced supercells, or ``None`` for one calculator call each.

    ``auto`` batches where it pays (a GPU, or a model whose batched evaluator beats the sequential one on
    CPU in ``bench/``), as ``snb-ml run --engine auto`` does.
    """
    if engine == "sequential":
        return None
    from snb_ml.batch import batch_evaluator_for

    evaluator = batch_evaluator_for(loaded)
    if engine == "batched":
        return evaluator
    fast = evaluator.batched and (evaluator.device.startswith("cuda") or evaluator.faster_on_cpu)
    return evaluator if fast else None


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
@click.option(
    "--thermo",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
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
@_model_options
@cli_errors
def free_energy(
    defect, bulk, thermo, tree, only, doped_output, references, tmin, tmax, tstep, qha, charge, symprec,
    relax_cells, progress, output, **options
) -> None:  # fmt: skip
    """Vibrational free energies F_vib(T) and ΔF_vib(T) with an ML model (JSON).

    One defect: --defect and --bulk. Every defect (and charge state) at once: --thermo with a doped
    DefectThermodynamics JSON (and --doped-output to write it back with the terms attached), or --tree with
    a ShakeNBreak tree and --bulk. Whole-tree runs write one JSON after every defect and resume from it.
    """
    from snb_ml.runner import load_model
    from snb_ml.safe_write import write_text

    warnings.formatwarning = lambda message, *args, **kwargs: f"Warning: {message}\n"
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
    temperatures = _temperatures(tmin, tmax, tstep)
    settings = settings_from_options({**options, "fmax": 1e-3, "steps": 3000, "optimizer": "BFGS"})
    refs = parse_references(references)
    loaded = load_model(settings)
    evaluator = phonon_evaluator(loaded, options.get("engine") or "auto")
    if defect:
        data = compute_free_energies(
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
    from snb_ml.cli.thermo_tree import run_whole_tree

    failed = run_whole_tree(
        thermo, tree, bulk, only, doped_output, refs, loaded, evaluator, temperatures, settings, symprec,
        relax_cells, progress, output,
    )  # fmt: skip
    if failed:
        raise SnbMlError(f"{len(failed)} defect(s) failed ({', '.join(failed)}); the others are in {output}.")
