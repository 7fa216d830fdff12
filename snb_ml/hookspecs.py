"""Hook specifications: what a snb_ml plugin can provide."""

import pluggy

hookspec = pluggy.HookspecMarker("snb_ml")
hookimpl = pluggy.HookimplMarker("snb_ml")


@hookspec
def register_relaxers(register):
    """Register relaxer backends: call ``register(name, factory, description=...)`` once per backend."""
