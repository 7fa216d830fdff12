"""Drop-in doped ``DefectThermodynamics`` with temperature-dependent free-energy terms per defect.

How the terms reach doped: every concentration path of doped's ``DefectThermodynamics`` goes through
``get_equilibrium_concentrations(temperature=T)`` (``get_equilibrium_fermi_level`` calls it inside its
charge-neutrality root search at the annealing T, ``get_fermi_level_and_concentrations`` calls it for the
frozen annealing totals at ``annealing_temperature`` and, via ``_get_constrained_concentrations``, for the
charge-state redistribution at ``quenched_temperature``). There, ``DefectEntry.formation_energy`` sums
``DefectEntry.corrections`` into the energy and ``DefectEntry.equilibrium_concentration`` uses
``g * exp(-E_f/kT)`` with ``g = prod(degeneracy_factors)``. ``DefectEntry.__hash__``/``__eq__`` include
the corrections, so doped's ``clustered_defect_entries`` sets (site-competition grouping) are rebuilt
while the terms are applied and restored afterwards. This class overrides
``get_equilibrium_concentrations`` to put the summed terms at that T under the corrections key
:data:`CORRECTION_KEY` for the call, and removes them afterwards, so annealing totals use the terms at
the annealing T and quenched charge-state populations those at the quenched T.

Terms are per defect entry name (``"v_Cl_+1"``) or per defect name without charge (``"v_Cl"``, all
charge states), each ``{term name: term}`` with a term being a float (constant, eV), a callable
``f(T) -> eV`` or a tabulated ``(T array, value array)`` pair (linearly interpolated). A tabulated term
asked for outside its temperature range raises :class:`~snb_ml.errors.InputError` unless the object
was made with ``extrapolate=True`` (then the end values are held); a term that is not finite (NaN,
inf) raises, naming the defect and the term. In JSON, callables are stored tabulated on ``t_grid``
(default 100-2000 K every 25 K).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from doped.thermodynamics import DefectThermodynamics

from snb_ml.errors import InputError
from snb_ml.thermo.entropy import K_B, check_temperature, degeneracy_entropies

CORRECTION_KEY = "snb_ml finite-T free energy"
"""Key in ``DefectEntry.corrections`` under which the summed terms sit during an evaluation."""
DEFAULT_T_GRID = np.arange(100.0, 2000.0 + 1e-9, 25.0)
"""Temperatures (K) on which callables are tabulated for JSON."""

Term = float | Callable[[float], float] | tuple[Any, Any]


def _evaluate(term: Any, temperature: float, where: str, extrapolate: bool = False) -> float:
    """Value (eV) of one term at ``temperature``.

    Raises:
        InputError: If the value is not finite, or ``temperature`` is outside a tabulated term's range
            and ``extrapolate`` is off.
    """
    if callable(term):
        value = float(term(temperature))
    elif isinstance(term, int | float | np.floating | np.integer):
        value = float(term)
    else:
        temps, values = (np.asarray(x, dtype=float) for x in term)
        if not extrapolate and not temps[0] <= temperature <= temps[-1]:
            raise InputError(
                f"{where} is tabulated for {temps[0]:g}-{temps[-1]:g} K only, but is needed at "
                f"{temperature:g} K. Tabulate it over the temperatures you use (e.g. `snb-ml free-energy "
                "--tmax`), or pass extrapolate=True to FiniteTemperatureThermodynamics to hold its end "
                "values."
            )
        value = float(np.interp(temperature, temps, values))
    if not np.isfinite(value):
        raise InputError(
            f"{where} is {value} eV at {temperature:g} K; a free-energy term must be a finite number "
            "(a NaN would make every concentration NaN). Check how the term was computed."
        )
    return value


def _check_term(term: Any, where: str) -> Any:
    """Validate a term and return it in stored form (float, callable or (T, value) arrays)."""
    if callable(term):
        return term
    if isinstance(term, int | float | np.floating | np.integer):
        if not np.isfinite(term):
            raise InputError(f"{where} is {float(term)} eV; a free-energy term must be a finite number.")
        return float(term)
    try:
        temps, values = (np.asarray(x, dtype=float).ravel() for x in term)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{where}: a term must be a float, a callable f(T) or a (temperatures, values) pair."
        ) from exc
    if temps.size < 1 or temps.shape != values.shape or np.any(np.diff(temps) <= 0):
        raise InputError(
            f"{where}: tabulated term needs equal-length arrays with strictly increasing temperatures."
        )
    bad = ~(np.isfinite(values) & np.isfinite(temps))
    if bad.any():
        raise InputError(
            f"{where} is not finite at {temps[bad][:5].tolist()} K ({values[bad][:5].tolist()}); a "
            "free-energy term must be finite everywhere it is tabulated (imaginary modes give NaN ΔF_vib)."
        )
    return (temps, values)


class FiniteTemperatureThermodynamics(DefectThermodynamics):
    """doped ``DefectThermodynamics`` whose concentrations include temperature-dependent free energies.

    Build it with :meth:`from_thermodynamics`. Terms are in eV and added to the formation energy (e.g.
    ΔF_vib(T), -T s_struc, -T S_el); a term switched off with :meth:`disable_term` is ignored everywhere.
    """

    def __init__(
        self,
        *args: Any,
        terms: Mapping[str, Mapping[str, Term]] | None = None,
        disabled_terms: Iterable[str] = (),
        t_grid: Iterable[float] | None = None,
        extrapolate: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create from doped ``DefectThermodynamics`` arguments plus terms.

        Args:
            *args: Passed to ``DefectThermodynamics``.
            terms: ``{defect or entry name: {term name: term}}`` (see module docstring).
            disabled_terms: Term names switched off.
            t_grid: Temperatures (K) used to tabulate callables in :meth:`as_dict`.
            extrapolate: Hold the end values of tabulated terms outside their temperature range
                (default: refuse, naming the defect, the term and the range).
            **kwargs: Passed to ``DefectThermodynamics``.
        """
        super().__init__(*args, **kwargs)
        self._init_terms(terms, disabled_terms, t_grid, extrapolate)

    def _init_terms(
        self,
        terms: Mapping[str, Mapping[str, Term]] | None,
        disabled_terms: Iterable[str],
        t_grid: Iterable[float] | None,
        extrapolate: bool = False,
    ) -> None:
        self.extrapolate = bool(extrapolate)
        self._ft_terms: dict[str, dict[str, Any]] = {}
        self.disabled_terms: set[str] = set(disabled_terms)
        self.t_grid = np.asarray(DEFAULT_T_GRID if t_grid is None else list(t_grid), dtype=float)
        self._ft_depth = 0
        for name, group in (terms or {}).items():
            for term_name, term in group.items():
                self.set_term(name, term_name, term)

    @classmethod
    def from_thermodynamics(
        cls,
        thermodynamics: DefectThermodynamics,
        terms: Mapping[str, Mapping[str, Term]] | None = None,
        disabled_terms: Iterable[str] = (),
        t_grid: Iterable[float] | None = None,
        extrapolate: bool = False,
    ) -> FiniteTemperatureThermodynamics:
        """Deep-copy a doped ``DefectThermodynamics`` into this class (the original is not changed).

        Args:
            thermodynamics: Existing doped object.
            terms: ``{defect or entry name: {term name: term}}``.
            disabled_terms: Term names switched off.
            t_grid: Temperatures (K) used to tabulate callables for JSON.
            extrapolate: Hold the end values of tabulated terms outside their range (default: refuse).

        Returns:
            The new object.
        """
        if not isinstance(thermodynamics, DefectThermodynamics):
            raise InputError(
                f"from_thermodynamics: expected a doped DefectThermodynamics, got {type(thermodynamics)}."
            )
        new = copy.deepcopy(thermodynamics)
        new.__class__ = cls
        new._init_terms(terms, disabled_terms, t_grid, extrapolate)
        return new

    # ----- terms -----
    def _entries_for(self, name: str) -> list[str]:
        """Entry names that a term key (entry name or defect name without charge) applies to."""
        if name in self.defect_entries:
            return [name]
        matches = [k for k, v in self.defect_entries.items() if self._defect_name(k, v) == name]
        if not matches:
            raise InputError(
                f"terms given for {name!r}, which is not in this DefectThermodynamics; use one of the "
                f"entry names {sorted(self.defect_entries)} or defect names {sorted(self.defect_names)}."
            )
        return matches

    def _defect_name(self, entry_name: str, entry: Any) -> str:
        return next((d for d, lst in self.all_entries.items() if entry in lst), entry_name.rsplit("_", 1)[0])

    def set_term(self, name: str, term_name: str, term: Term) -> None:
        """Add or replace the term ``term_name`` (eV) for an entry or defect ``name``."""
        self._entries_for(name)
        self._ft_terms.setdefault(name, {})[term_name] = _check_term(term, f"term {term_name!r} of {name!r}")

    @property
    def terms(self) -> dict[str, dict[str, Any]]:
        """The stored terms, ``{defect or entry name: {term name: term}}`` (a shallow copy)."""
        return {k: dict(v) for k, v in self._ft_terms.items()}

    @property
    def term_names(self) -> list[str]:
        """All term names present."""
        return sorted({t for group in self._ft_terms.values() for t in group})

    def enable_term(self, term_name: str, enabled: bool = True) -> None:
        """Switch the term ``term_name`` on (or off with ``enabled=False``) for all defects."""
        if term_name not in self.term_names:
            raise InputError(f"no term named {term_name!r}; terms present: {self.term_names}.")
        (self.disabled_terms.discard if enabled else self.disabled_terms.add)(term_name)

    def disable_term(self, term_name: str) -> None:
        """Switch the term ``term_name`` off for all defects."""
        self.enable_term(term_name, enabled=False)

    def term_values(self, entry_name: str, temperature: float) -> dict[str, float]:
        """Enabled term values (eV) applying to the entry ``entry_name`` at ``temperature``."""
        t = check_temperature(temperature, f"term_values({entry_name!r})")
        if entry_name not in self.defect_entries:
            raise InputError(
                f"{entry_name!r} is not an entry name; use one of {sorted(self.defect_entries)}."
            )
        values: dict[str, float] = {}
        for key, group in self._ft_terms.items():
            if entry_name in self._entries_for(key):
                for term_name, term in group.items():
                    if term_name not in self.disabled_terms:
                        where = f"term {term_name!r} of {key!r}"
                        value = _evaluate(term, t, where, self.extrapolate)
                        values[term_name] = values.get(term_name, 0.0) + value
        return values

    def free_energy_correction(self, entry_name: str, temperature: float) -> float:
        """Sum (eV) of enabled terms for ``entry_name`` at ``temperature``."""
        return float(sum(self.term_values(entry_name, temperature).values()))

    @contextmanager
    def terms_applied(self, temperature: float) -> Iterator[None]:
        """Context in which ``DefectEntry.corrections[CORRECTION_KEY]`` holds the terms at ``temperature``."""
        saved = {k: e.corrections.get(CORRECTION_KEY) for k, e in self.defect_entries.items()}
        clusters = self.clustered_defect_entries
        try:
            for name, entry in self.defect_entries.items():
                value = self.free_energy_correction(name, temperature)
                if value:
                    entry.corrections[CORRECTION_KEY] = value
                else:
                    entry.corrections.pop(CORRECTION_KEY, None)
            # DefectEntry.__hash__ includes the corrections: rebuild doped's sets of entries
            self.clustered_defect_entries = {k: set(list(v)) for k, v in clusters.items()}
            yield
        finally:
            self.clustered_defect_entries = clusters
            for name, entry in self.defect_entries.items():
                if saved[name] is None:
                    entry.corrections.pop(CORRECTION_KEY, None)
                else:
                    entry.corrections[CORRECTION_KEY] = saved[name]

    # ----- doped hooks -----
    def get_equilibrium_concentrations(  # type: ignore[override]
        self, temperature: float = 300, *args: Any, **kwargs: Any
    ) -> pd.DataFrame:
        """Run doped's ``get_equilibrium_concentrations`` with the terms at ``temperature`` applied.

        ``Formation Energy (eV)`` in the result includes the terms. See doped for all arguments.
        """
        with self.terms_applied(temperature):
            return super().get_equilibrium_concentrations(temperature, *args, **kwargs)

    def get_formation_energies(self, *args: Any, temperature: float | None = None, **kwargs: Any) -> Any:
        """Run doped's ``get_formation_energies``; with ``temperature`` set, includes the terms at that T.

        doped's method has no temperature argument, so by default (``None``) no terms are applied; with a
        temperature the terms appear in the ``Σ corrections`` and ``ΔH_f`` columns.
        """
        if temperature is None:
            return super().get_formation_energies(*args, **kwargs)
        with self.terms_applied(temperature):
            return super().get_formation_energies(*args, **kwargs)

    def plot(self, *args: Any, temperature: float | None = None, **kwargs: Any) -> Any:
        """Run doped's ``plot``; with ``temperature`` set, formation energies include the terms at that T.

        The plotted lines and transition levels (re-parsed, see :meth:`transition_levels_at`) include the
        terms at ``temperature``.
        """
        if temperature is None:
            return super().plot(*args, **kwargs)
        with self.transition_levels_at(temperature):
            return super().plot(*args, **kwargs)

    @contextmanager
    def transition_levels_at(self, temperature: float) -> Iterator[None]:
        """Context in which doped's transition levels and stable entries include the terms at ``temperature``.

        doped parses ``transition_level_map``/``stable_entries`` once at construction (0 K energies); here
        they are re-parsed by doped's own ``_parse_transition_levels`` with the terms applied (so the
        levels are those of the free energies g_f(T)) and restored afterwards.
        """
        names = (
            "transition_level_map",
            "stable_entries",
            "all_entries",
            "defect_charge_map",
            "transition_levels",
            "stable_charges",
            "clustered_defect_entries_by_type",
        )
        saved = {name: getattr(self, name) for name in names if name in self.__dict__}
        try:
            with self.terms_applied(temperature):
                self._parse_transition_levels()
                yield
        finally:
            for name in names:  # also drop what the re-parse created, so no T-dependent state lingers
                if name in saved:
                    setattr(self, name, saved[name])
                else:
                    self.__dict__.pop(name, None)

    def get_transition_levels(self, *args: Any, temperature: float | None = None, **kwargs: Any) -> Any:
        """Run doped's ``get_transition_levels``; with ``temperature`` set, levels of g_f(T) with the terms.

        A level between charges q and q' moves by ``(ΔF_q'(T) - ΔF_q(T)) / (q - q')``; ``None`` (default)
        gives doped's 0 K levels unchanged.
        """
        if temperature is None:
            return super().get_transition_levels(*args, **kwargs)
        with self.transition_levels_at(temperature):
            return super().get_transition_levels(*args, **kwargs)

    def print_transition_levels(self, *args: Any, temperature: float | None = None, **kwargs: Any) -> Any:
        """Run doped's ``print_transition_levels``; with ``temperature`` set, levels of g_f(T) (terms on)."""
        if temperature is None:
            return super().print_transition_levels(*args, **kwargs)
        with self.transition_levels_at(temperature):
            return super().print_transition_levels(*args, **kwargs)

    # ----- breakdown -----
    def entropy_breakdown(
        self, temperature: float, entropies: Mapping[str, Mapping[str, float]] | None = None
    ) -> pd.DataFrame:
        """Table of formation-entropy contributions s_f in units of k_B per defect entry at ``temperature``.

        Spin and orientational columns come from ``DefectEntry.degeneracy_factors`` (k_B ln g). Other
        columns (``vib``, ``struc``, ``electronic`` or any term name) are -dF/dT / k_B of the stored terms,
        by central finite difference (step 1 K), unless given directly in ``entropies``
        (``{entry name: {column: s in k_B}}``).

        Args:
            temperature: Temperature in K (> 0).
            entropies: Optional explicit entropies in k_B overriding the finite-difference values.

        Returns:
            ``pandas.DataFrame`` indexed by entry name, columns vib, struc, spin, orientational,
            electronic (plus any other term names) and total.
        """
        t = check_temperature(temperature, "entropy_breakdown")
        rows: dict[str, dict[str, float]] = {}
        step = min(1.0, 0.5 * t)
        for name, entry in self.defect_entries.items():
            row = {"vib": 0.0, "struc": 0.0}
            row.update(degeneracy_entropies(entry))
            row = {k: (v / K_B if k in ("spin", "orientational") else v) for k, v in row.items()}
            row["electronic"] = 0.0
            upper = self.term_values(name, t + step)
            lower = self.term_values(name, t - step)
            for term_name in upper:
                column = _column_for(term_name)
                row[column] = row.get(column, 0.0) - (upper[term_name] - lower[term_name]) / (2 * step) / K_B
            row.update((entropies or {}).get(name, {}))
            row["total"] = sum(row.values())
            rows[name] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    # ----- serialisation -----
    def as_dict(self) -> dict[str, Any]:
        """MSONable dict, with callables tabulated on ``t_grid``."""
        d = super().as_dict()
        d["@module"], d["@class"] = type(self).__module__, type(self).__name__
        d["terms"] = {
            name: {tn: _serialise_term(term, self.t_grid) for tn, term in group.items()}
            for name, group in self._ft_terms.items()
        }
        d["disabled_terms"] = sorted(self.disabled_terms)
        d["t_grid"] = self.t_grid.tolist()
        d["extrapolate"] = self.extrapolate
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FiniteTemperatureThermodynamics:
        """Rebuild from :meth:`as_dict` output."""
        d = dict(d)
        terms = {
            name: {tn: (tuple(term) if isinstance(term, list) else term) for tn, term in group.items()}
            for name, group in (d.pop("terms", None) or {}).items()
        }
        disabled, t_grid = d.pop("disabled_terms", []), d.pop("t_grid", None)
        extrapolate = bool(d.pop("extrapolate", False))
        base = DefectThermodynamics.from_dict(d)
        return cls.from_thermodynamics(
            base, terms=terms, disabled_terms=disabled, t_grid=t_grid, extrapolate=extrapolate
        )


def _column_for(term_name: str) -> str:
    """Breakdown column for a term name (vib*, struc*, elec* map to vib, struc, electronic)."""
    lowered = term_name.lower()
    for prefix, column in (("vib", "vib"), ("struc", "struc"), ("elec", "electronic")):
        if lowered.startswith(prefix):
            return column
    return term_name


def _serialise_term(term: Any, t_grid: np.ndarray) -> Any:
    if callable(term):
        return [t_grid.tolist(), [float(term(t)) for t in t_grid]]
    if isinstance(term, float):
        return term
    return [np.asarray(term[0]).tolist(), np.asarray(term[1]).tolist()]
