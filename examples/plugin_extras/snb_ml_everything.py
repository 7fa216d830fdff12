"""Example selection-policy plugin "everything": every usable start also goes to DFT as generated."""

from snb_ml import hookimpl
from snb_ml.minima import ExtraStart


def everything(selection, usable):
    """Hand every start that is not already a representative to DFT (the most careful, costliest policy)."""
    chosen = set(selection.representatives)
    return [ExtraStart(f, "exploration", "policy everything: every start") for f in usable if f not in chosen]


@hookimpl
def register_selection_policies(register):
    """Register ``--policy everything``."""
    register("everything", everything, description="every start relaxed with DFT (example plugin)")
