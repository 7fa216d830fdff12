"""Hook specifications: what a snb_ml plugin can provide."""

import pluggy

hookspec = pluggy.HookspecMarker("snb_ml")
hookimpl = pluggy.HookimplMarker("snb_ml")


@hookspec
def register_relaxers(register):
    """Register relaxer backends: call ``register(name, factory, description=...)`` once per backend."""


@hookspec
def register_fingerprints(register):
    """Register defect-site fingerprints for minima selection (``snb-ml select --fingerprint NAME``).

    Call ``register(name, factory, description=...)``; ``factory(species, site, soap, include_neighbours)``
    gets every chemical symbol of the defect's structures, the
    :class:`~snb_ml.minima.fingerprints.DefectSite`, the
    :class:`~snb_ml.minima.fingerprints.SoapParameters` and a flag, and returns a callable mapping one
    relaxed structure (ASE ``Atoms``) to a 1-D vector; minima are clustered by the cosine distance of
    these vectors.
    """


@hookspec
def register_selection_policies(register):
    """Register selection policies (``snb-ml select --policy NAME``).

    Call ``register(name, policy, description=...)``; ``policy(selection, usable)`` gets the
    :class:`~snb_ml.minima.results.DefectSelection` (clusters, representatives, trust report) and the
    distortion folders that may be relaxed with DFT, and returns the
    :class:`~snb_ml.minima.results.ExtraStart` list to relax with DFT besides the representatives.
    A policy function with the attribute ``unperturbed_represents_its_basin = True`` (``protect``
    has it) makes Unperturbed the representative of its own basin.
    """


@hookspec
def register_free_energy_terms(register):
    """Register free-energy terms for :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics`.

    Call ``register(name, builder, description=...)``; ``builder(*args, **kwargs)`` returns a term
    that :class:`~snb_ml.thermo.doped_thermo.FiniteTemperatureThermodynamics` accepts: a float (eV),
    a callable ``f(T) -> eV`` or a tabulated ``(T, value)`` pair.
    """
