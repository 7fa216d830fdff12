"""Generic backend: any ASE calculator given as ``module:Class`` plus keyword arguments."""

from __future__ import annotations

import importlib

from snb_ml.errors import ModelError
from snb_ml.hookspecs import hookimpl
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel

# Elements a few analytic ASE calculators parametrise; others are checked by the calculator itself.
_KNOWN_ELEMENTS = {
    "ase.calculators.emt:EMT": ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"),
}


def load_ase_calculator(request: CalculatorRequest) -> LoadedModel:
    """Instantiate ``request.model`` (``"package.module:ClassName"``) with ``request.options``.

    Args:
        request: ``model`` is the import string, ``options`` the constructor keyword arguments.

    Returns:
        The calculator wrapped as a :class:`LoadedModel`.
    """
    spec = request.model
    if not spec or ":" not in spec:
        raise ModelError(
            f"The ase relaxer needs --model 'module:Class' (e.g. ase.calculators.emt:EMT), got {spec!r}."
        )
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(
            f"Cannot import module '{module_name}' for --model {spec} ({exc}). Install the package "
            "that provides it, or check the spelling."
        ) from exc
    try:
        calculator_class = getattr(module, class_name)
    except AttributeError as exc:
        raise ModelError(f"Module '{module_name}' has no '{class_name}' (from --model {spec}).") from exc
    try:
        calculator = calculator_class(**request.options)
    except TypeError as exc:
        raise ModelError(f"{spec} rejected the options {request.options}: {exc}") from exc

    from ase.data import atomic_numbers

    known = _KNOWN_ELEMENTS.get(spec)
    version = getattr(importlib.import_module(module_name.split(".")[0]), "__version__", "unknown")
    return LoadedModel(
        calculator=calculator,
        name=spec,
        version=f"{module_name.split('.')[0]} {version}",
        supported_numbers=frozenset(atomic_numbers[s] for s in known) if known else None,
    )


@hookimpl
def register_relaxers(register):
    """Register the ``ase`` relaxer."""
    register(
        "ase",
        load_ase_calculator,
        description="Any ASE calculator: --model module:Class [--calc-kwargs JSON]",
    )
