"""Builders of free-energy terms for :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics`.

Each function returns a term in one of the forms the drop-in accepts (a ``(T array, value array)`` pair
or a callable ``f(T) -> eV``), to be put in ``terms={defect name: {term name: term}}``:

- :func:`vibrational_term_from_json`: ΔF_vib(T) tabulated from a ``snb-ml free-energy`` JSON;
- :func:`structural_term`: coarse-grained correction ``g_eff(T) - U_ground`` over distinct minima
  (e.g. the clusters kept by ``snb-ml select`` and their ML/DFT energies);
- :func:`electronic_term`: ``-T (S_el,defect - S_el,bulk)`` from two densities of states.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError
from snb_ml.thermo.entropy import (
    check_temperature,
    coarse_grained_free_energy,
    electronic_entropy_from_dos,
)
from snb_ml.thermo.free_energy_json import load_free_energy_json


def vibrational_term_from_json(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Tabulated ΔF_vib(T) (eV) from the JSON written by ``snb-ml free-energy``.

    Temperatures at or below 0 K are dropped (the drop-in evaluates terms only at T > 0). The drop-in
    refuses temperatures outside the table unless it was made with ``extrapolate=True``.

    Args:
        path: The ``snb-ml free-energy`` output file.

    Returns:
        ``(temperatures in K, ΔF_vib in eV)``, usable directly as a term, e.g.
        ``terms={"v_Cd": {"vib": vibrational_term_from_json("v_Cd_0_fvib.json")}}``.
    """
    data = load_free_energy_json(path)
    temps, delta = data["temperatures"], data["delta_free_energy"]
    keep = temps > 0
    if temps.shape != delta.shape or not keep.any():
        raise InputError(
            f"{path}: needs equal-length 'temperatures' and 'delta_free_energy' with at least one T > 0 K; "
            "rerun `snb-ml free-energy` with --tmax > 0."
        )
    if not np.all(np.isfinite(delta[keep])):
        raise InputError(
            f"{path}: ΔF_vib contains non-finite values (imaginary modes?); check the 'imaginary_modes' "
            "of the defect and bulk in the JSON and relax the structures further."
        )
    return temps[keep].copy(), delta[keep].copy()


def _minima(energies_by_minimum: Mapping[str, float] | Sequence[float]) -> tuple[list[str], np.ndarray]:
    """Labels and energies (eV) of the minima, from a mapping or a sequence."""
    if isinstance(energies_by_minimum, Mapping):
        labels = [str(k) for k in energies_by_minimum]
        values = list(energies_by_minimum.values())
    else:
        values = list(energies_by_minimum)
        labels = [str(i) for i in range(len(values))]
    try:
        energies = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"structural_term: energies must be numbers in eV, got {energies_by_minimum!r}."
        ) from exc
    if energies.size == 0 or not np.all(np.isfinite(energies)):
        raise InputError(
            "structural_term: give at least one finite energy (eV) per distinct minimum, e.g. "
            "{'Unperturbed': -100.2, 'Bond_Distortion_-30.0%': -100.15}."
        )
    return labels, energies


def _per_minimum(
    values: Mapping[str, float] | Sequence[float] | None, labels: list[str], name: str
) -> np.ndarray | None:
    """Per-minimum values aligned with ``labels`` (a mapping must have exactly those keys)."""
    if values is None:
        return None
    if isinstance(values, Mapping):
        if set(map(str, values)) != set(labels):
            raise InputError(
                f"structural_term: {name} keys {sorted(map(str, values))} differ from the minima "
                f"{sorted(labels)}; give one value per minimum with the same labels."
            )
        values = [values[k] for k in labels]
    array = np.asarray(list(values), dtype=float).ravel()
    if array.size != len(labels):
        raise InputError(
            f"structural_term: {array.size} {name} for {len(labels)} minima; give one per minimum."
        )
    return array


def structural_term(
    energies_by_minimum: Mapping[str, float] | Sequence[float],
    degeneracies: Mapping[str, float] | Sequence[float] | None = None,
    vibrational_entropies: Mapping[str, float] | Sequence[float] | None = None,
) -> Callable[[float], float]:
    """Coarse-grained structural correction ``f(T) = g_eff(T) - U_ground`` (eV) over distinct minima.

    ``g_eff = -kT ln sum_i (N_i/N) exp(-(U_i - T S_vib,i)/kT)``
    (:func:`~snb_ml.thermo.entropy.coarse_grained_free_energy`) and ``U_ground = min_i U_i``. The
    defect's formation energy in doped is that of the ground-state minimum, so adding ``f(T)`` gives
    the coarse-grained formation free energy. Two degenerate minima with unit weights give
    ``-kT ln 2``.

    Args:
        energies_by_minimum: Energies U_i (eV, common reference, e.g. total ML or DFT energies of the
            minima kept by ``snb-ml select``), as ``{label: energy}`` or a sequence.
        degeneracies: N_i/N per minimum: equivalent copies relative to those doped's orientational
            degeneracy already counts for the ground state (default 1 each).
        vibrational_entropies: S_vib,i per minimum in eV/K relative to any common reference (default 0).

    Returns:
        Callable ``f(T) -> eV`` accepted by the drop-in as a term.
    """
    labels, energies = _minima(energies_by_minimum)
    weights = _per_minimum(degeneracies, labels, "degeneracies")
    entropies = _per_minimum(vibrational_entropies, labels, "vibrational_entropies")
    if weights is not None and np.any(weights <= 0):
        raise InputError(f"structural_term: degeneracies must be > 0, got {weights.tolist()}.")
    ground = float(energies.min())

    def term(temperature: float) -> float:
        t = check_temperature(temperature, "structural term")
        free = energies - ground if entropies is None else energies - ground - t * entropies
        return coarse_grained_free_energy(free, t, weights)

    term.__doc__ = f"g_eff(T) - U_ground over minima {labels} (eV)."
    return term


def electronic_term(
    defect_dos: Any,
    bulk_dos: Any | None = None,
    defect_fermi_level: float | None = None,
    bulk_fermi_level: float | None = None,
) -> Callable[[float], float]:
    """Electronic correction ``f(T) = -T (S_el,defect(T) - S_el,bulk(T))`` (eV) in the fixed-DOS picture.

    Entropies from :func:`~snb_ml.thermo.entropy.electronic_entropy_from_dos` (Fermi level mid-gap
    by default). Both densities of states should be of supercells with the same lattice, so that the
    difference is the defect's contribution.

    Args:
        defect_dos: pymatgen ``Dos``/``CompleteDos``/``FermiDos`` of the defect supercell.
        bulk_dos: Same for the pristine supercell (default: no bulk subtraction).
        defect_fermi_level: Fermi level (eV) for the defect DOS; default mid-gap.
        bulk_fermi_level: Fermi level (eV) for the bulk DOS; default mid-gap.

    Returns:
        Callable ``f(T) -> eV`` accepted by the drop-in as a term.
    """
    for name, dos in (("defect_dos", defect_dos), ("bulk_dos", bulk_dos)):
        if dos is not None and not hasattr(dos, "densities"):
            raise InputError(
                f"electronic_term: {name} is a {type(dos).__name__}, not a pymatgen Dos; load it e.g. "
                "with Vasprun('vasprun.xml').complete_dos."
            )

    def term(temperature: float) -> float:
        t = check_temperature(temperature, "electronic term")
        s = electronic_entropy_from_dos(defect_dos, t, defect_fermi_level)
        if bulk_dos is not None:
            s -= electronic_entropy_from_dos(bulk_dos, t, bulk_fermi_level)
        return -t * s

    return term
