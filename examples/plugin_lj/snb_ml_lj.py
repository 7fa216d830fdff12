"""A complete third-party snb_ml relaxer plugin: a Lennard-Jones calculator as relaxer "lj"."""

from ase.calculators.lj import LennardJones

from snb_ml import hookimpl


@hookimpl
def register_relaxers(register):
    """Register ``--relaxer lj`` (options via --calc-kwargs, e.g. '{"sigma": 2.3}')."""
    register("lj", lambda req: LennardJones(**req.options), description="Lennard-Jones (example plugin)")
