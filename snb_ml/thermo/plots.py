"""Plots of finite-temperature defect thermodynamics: g_f(T) and concentrations vs T with/without terms.

Both functions take a :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics` and return a
``matplotlib.figure.Figure`` built without pyplot (no global state, safe under the Agg backend). The
plotted values are computed by doped's own methods on the drop-in, with the terms switched on/off, so
the "no terms" curves are doped's numbers. The enabled/disabled state of the terms is restored on exit.
The arrays plotted are also in ``fig.snb_ml_data`` (``{label: ndarray}``, with ``"T"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from snb_ml.errors import InputError
from snb_ml.thermo.entropy import check_temperature

CONC_COLUMN = "Concentration (cm^-3)"


def _temperatures(temperatures: Iterable[float], where: str) -> np.ndarray:
    temps = np.asarray(list(temperatures), dtype=float).ravel()
    if temps.size == 0:
        raise InputError(f"{where}: no temperatures given; pass e.g. numpy.arange(300, 1501, 50).")
    for t in temps:
        check_temperature(t, where)
    return temps


@contextmanager
def _only_terms(ft: Any, enabled: Iterable[str] | None) -> Iterator[None]:
    """Context with only the terms in ``enabled`` switched on (``None``: keep the current selection)."""
    saved = set(ft.disabled_terms)
    try:
        if enabled is not None:
            ft.disabled_terms = set(ft.term_names) - set(enabled)
        yield
    finally:
        ft.disabled_terms = saved


def _new_axes(ax: Any, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.0, 4.2), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def formation_free_energies(
    ft: Any,
    defect_entry_name: str,
    temperatures: Iterable[float],
    fermi_level: float | None = None,
    chempots: dict | None = None,
    limit: str | None = None,
    el_refs: dict | None = None,
) -> dict[str, np.ndarray]:
    """g_f(T) (eV) of one entry with all enabled terms, without terms, and with each enabled term alone.

    Args:
        ft: The drop-in thermodynamics object.
        defect_entry_name: Entry name, e.g. ``"v_Cl_+1"``.
        temperatures: Temperatures in K (> 0).
        fermi_level: Fermi level relative to the VBM (eV); doped's default (mid-gap) if ``None``.
        chempots: Chemical potentials as doped takes them (default: those of ``ft``).
        limit: Chemical-potential limit name as doped takes it.
        el_refs: Elemental reference energies as doped takes them.

    Returns:
        ``{"T": temps, "all terms": ..., "no terms": ..., "<term>": ...}``.
    """
    temps = _temperatures(temperatures, "formation_free_energies")
    if defect_entry_name not in ft.defect_entries:
        raise InputError(
            f"formation_free_energies: no entry {defect_entry_name!r}; "
            f"use one of {sorted(ft.defect_entries)}."
        )
    kwargs = {"chempots": chempots, "limit": limit, "el_refs": el_refs, "fermi_level": fermi_level}
    active = [t for t in ft.term_names if t not in ft.disabled_terms]
    data: dict[str, np.ndarray] = {"T": temps}
    with _only_terms(ft, []):
        base = float(ft.get_formation_energy(defect_entry_name, **kwargs))
    data["no terms"] = np.full(temps.shape, base)
    for label, enabled in [("all terms", active), *((name, [name]) for name in active)]:
        values = []
        with _only_terms(ft, enabled):
            for t in temps:
                with ft.terms_applied(t):
                    values.append(float(ft.get_formation_energy(defect_entry_name, **kwargs)))
        data[label] = np.asarray(values)
    return data


def plot_formation_free_energy_vs_T(
    ft: Any,
    defect_entry_name: str,
    temperatures: Iterable[float],
    fermi_level: float | None = None,
    chempots: dict | None = None,
    limit: str | None = None,
    el_refs: dict | None = None,
    ax: Any = None,
) -> Any:
    """Plot g_f(T) of one entry: all enabled terms, no terms (doped), and each enabled term alone.

    Args:
        ft: The drop-in thermodynamics object.
        defect_entry_name: Entry name, e.g. ``"v_Cl_+1"``.
        temperatures: Temperatures in K (> 0).
        fermi_level: Fermi level relative to the VBM (eV); doped's default if ``None``.
        chempots: Chemical potentials as doped takes them.
        limit: Chemical-potential limit name as doped takes it.
        el_refs: Elemental reference energies as doped takes them.
        ax: Existing matplotlib axes to draw on (default: a new figure).

    Returns:
        The ``matplotlib.figure.Figure`` (``2 + number of enabled terms`` lines).
    """
    data = formation_free_energies(ft, defect_entry_name, temperatures, fermi_level, chempots, limit, el_refs)
    fig, ax = _new_axes(ax, "Temperature (K)", f"g_f of {defect_entry_name} (eV)")
    styles = {"all terms": {"color": "k", "lw": 2.0}, "no terms": {"color": "0.5", "ls": "--"}}
    for label, values in data.items():
        if label != "T":
            name = label if label in styles else f"{label} only"
            ax.plot(data["T"], values, label=name, **styles.get(label, {"ls": ":"}))
    where = "" if fermi_level is None else f" at E_F - E_VBM = {fermi_level:g} eV"
    ax.set_title(f"Formation free energy{where}", fontsize="medium")
    ax.legend(fontsize="small")
    fig.snb_ml_data = data
    return fig


def _totals(
    ft: Any,
    t: float,
    fermi_level: float | None,
    quenched_temperature: float | None,
    kwargs: dict[str, Any],
) -> Any:
    """Total concentration (cm^-3) per defect at ``t`` as a pandas Series."""
    if fermi_level is not None:
        df = ft.get_equilibrium_concentrations(
            t, fermi_level=fermi_level, per_charge=False, skip_formatting=True, **kwargs
        )
    elif quenched_temperature is not None:
        df = ft.get_fermi_level_and_concentrations(
            annealing_temperature=t,
            quenched_temperature=quenched_temperature,
            per_charge=False,
            skip_formatting=True,
            **kwargs,
        )[3]
    else:
        e_f = ft.get_equilibrium_fermi_level(temperature=t, **kwargs)
        df = ft.get_equilibrium_concentrations(
            t, fermi_level=e_f, per_charge=False, skip_formatting=True, **kwargs
        )
    return df[CONC_COLUMN]


def concentrations_vs_T(
    ft: Any,
    temperatures: Iterable[float],
    fermi_level: float | None = None,
    quenched_temperature: float | None = None,
    chempots: dict | None = None,
    limit: str | None = None,
    el_refs: dict | None = None,
) -> dict[str, np.ndarray]:
    """Total defect concentrations (cm^-3) vs T, with the enabled terms and without any.

    Fermi level: fixed at ``fermi_level`` if given; otherwise from charge neutrality with ``ft.bulk_dos``,
    either in equilibrium at each T (``get_equilibrium_fermi_level``) or, with ``quenched_temperature``,
    annealed at each T and quenched (``get_fermi_level_and_concentrations``, totals frozen at T).

    Returns:
        ``{"T": temps, "<defect> (terms)": ..., "<defect> (no terms)": ...}``.
    """
    temps = _temperatures(temperatures, "concentrations_vs_T")
    if fermi_level is None and getattr(ft, "bulk_dos", None) is None:
        raise InputError(
            "concentrations_vs_T: no fermi_level given and the thermodynamics object has no bulk_dos; pass "
            "fermi_level=... (eV above the VBM) or build DefectThermodynamics with bulk_dos=FermiDos(...)."
        )
    if quenched_temperature is not None:
        check_temperature(quenched_temperature, "concentrations_vs_T quenched_temperature")
    kwargs = {"chempots": chempots, "limit": limit, "el_refs": el_refs}
    data: dict[str, np.ndarray] = {"T": temps}
    for suffix, enabled in (("terms", None), ("no terms", [])):
        with _only_terms(ft, enabled):
            series = [_totals(ft, t, fermi_level, quenched_temperature, kwargs) for t in temps]
        for defect in series[0].index:
            data[f"{defect} ({suffix})"] = np.array([float(s[defect]) for s in series])
    return data


def plot_concentrations_vs_T(
    ft: Any,
    temperatures: Iterable[float],
    fermi_level: float | None = None,
    quenched_temperature: float | None = None,
    chempots: dict | None = None,
    limit: str | None = None,
    el_refs: dict | None = None,
    ax: Any = None,
) -> Any:
    """Plot total defect concentrations vs T (log scale) with the enabled terms (solid) and without (dashed).

    Args:
        ft: The drop-in thermodynamics object.
        temperatures: Temperatures in K (> 0).
        fermi_level: Fixed Fermi level relative to the VBM (eV); ``None``: charge neutrality (needs
            ``ft.bulk_dos``), see :func:`concentrations_vs_T`.
        quenched_temperature: With ``fermi_level=None``, anneal at each T and quench to this T (K).
        chempots: Chemical potentials as doped takes them.
        limit: Chemical-potential limit name as doped takes it.
        el_refs: Elemental reference energies as doped takes them.
        ax: Existing matplotlib axes to draw on (default: a new figure).

    Returns:
        The ``matplotlib.figure.Figure`` (two lines per defect).
    """
    data = concentrations_vs_T(ft, temperatures, fermi_level, quenched_temperature, chempots, limit, el_refs)
    fig, ax = _new_axes(ax, "Temperature (K)", "Concentration (cm$^{-3}$)")
    colors: dict[str, Any] = {}
    for label, values in data.items():
        if label == "T":
            continue
        defect, _, kind = label.rpartition(" (")
        line = ax.plot(
            data["T"], values, label=label, color=colors.get(defect), ls="--" if kind == "no terms)" else "-"
        )[0]
        colors.setdefault(defect, line.get_color())
    ax.set_yscale("log")
    ax.set_title("Total defect concentrations", fontsize="medium")
    ax.legend(fontsize="small")
    fig.snb_ml_data = data
    return fig
