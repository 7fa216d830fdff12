"""The built-in fingerprint, selection policies and free-energy terms, registered like any plugin.

Advertised in ``snb_ml``'s own ``pyproject.toml`` under the entry-point group ``snb_ml`` (as
``builtins``), exactly as a third-party package advertises its plugin. This module is imported whenever
plugins load (``snb-run`` start-up), so the implementations are imported only when used.
"""

from __future__ import annotations

from typing import Any

from snb_ml.hookspecs import hookimpl


def soap_fingerprint(species: list[str], site: Any, soap: Any, include_neighbours: bool = False) -> Any:
    """The defect-site SOAP fingerprint (:class:`~snb_ml.minima.fingerprints.DefectFingerprinter`)."""
    # deferred: dscribe and the minima package load only when minima are selected.
    from snb_ml.minima.fingerprints import DefectFingerprinter

    return DefectFingerprinter(species, site, soap, include_neighbours=include_neighbours)


def protect_policy(selection: Any, usable: list[str]) -> list:
    """``protect``: exploration starts when the ML minima are not trusted, then Unperturbed."""
    # deferred: the minima package loads only when minima are selected.
    from snb_ml.minima.selection import protect_extras

    return protect_extras(selection, usable)


# Unperturbed, which the hand-off relaxes anyway, represents its own basin (no second DFT run there).
protect_policy.unperturbed_represents_its_basin = True  # type: ignore[attr-defined]


def lean_policy(selection: Any, usable: list[str]) -> list:
    """``lean``: the distinct basins only, nothing else."""
    return []


def structural(*args: Any, **kwargs: Any) -> Any:
    """:func:`snb_ml.thermo.terms.structural_term`."""
    # deferred: the thermo package (phonopy, doped) loads only when terms are built.
    from snb_ml.thermo.terms import structural_term

    return structural_term(*args, **kwargs)


def electronic(*args: Any, **kwargs: Any) -> Any:
    """:func:`snb_ml.thermo.terms.electronic_term`."""
    # deferred: the thermo package (phonopy, doped) loads only when terms are built.
    from snb_ml.thermo.terms import electronic_term

    return electronic_term(*args, **kwargs)


def vibrational(path: Any) -> Any:
    """:func:`snb_ml.thermo.terms.vibrational_term_from_json` (the JSON of ``snb-ml free-energy``)."""
    # deferred: the thermo package (phonopy, doped) loads only when terms are built.
    from snb_ml.thermo.terms import vibrational_term_from_json

    return vibrational_term_from_json(path)


@hookimpl
def register_fingerprints(register):
    """Register the ``soap`` fingerprint."""
    register("soap", soap_fingerprint, description="Defect-site SOAP (dscribe); the calibrated default")


@hookimpl
def register_selection_policies(register):
    """Register the ``protect`` and ``lean`` policies."""
    register(
        "protect",
        protect_policy,
        description="distinct basins + exploration starts when the minima are not trusted + Unperturbed",
    )
    register("lean", lean_policy, description="distinct basins only")


@hookimpl
def register_free_energy_terms(register):
    """Register the ``structural``, ``electronic`` and ``vibrational`` terms."""
    register("structural", structural, description="coarse-grained over distinct minima: g_eff(T) - U_ground")
    register("electronic", electronic, description="-T ΔS_el from the defect and bulk DOS")
    register("vibrational", vibrational, description="tabulated ΔF_vib(T) from snb-ml free-energy JSON")
