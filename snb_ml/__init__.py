"""snb_ml: machine-learning force fields and finite-temperature physics for ShakeNBreak + doped.

This module is imported at interpreter start-up by the ``snb-run --relaxer`` hook, so it stays tiny:
everything heavy is imported lazily on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "hookimpl": ("snb_ml.hookspecs", "hookimpl"),
    "relax_distortions": ("snb_ml.api", "relax_distortions"),
    "relax_tree": ("snb_ml.api", "relax_tree"),
    "relax_defect_entries": ("snb_ml.api", "relax_defect_entries"),
    "get_relaxer": ("snb_ml.plugins", "get_relaxer"),
    "get_relaxers": ("snb_ml.plugins", "get_relaxers"),
    "RunSettings": ("snb_ml.settings", "RunSettings"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        return getattr(import_module(module_name), attribute)
    raise AttributeError(f"module 'snb_ml' has no attribute {name!r}")
