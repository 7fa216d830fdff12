"""Example free-energy-term plugin "linear": a term a + b T (eV), e.g. a fitted configurational entropy."""

from snb_ml import hookimpl


def linear(a, b):
    """Return ``f(T) = a + b T`` in eV (``b`` in eV/K)."""
    return lambda temperature: a + b * temperature


@hookimpl
def register_free_energy_terms(register):
    """Register the term ``linear``."""
    register("linear", linear, description="a + b T (example plugin)")
