"""Relaxer backends: each turns a :class:`CalculatorRequest` into an ASE calculator."""

from snb_ml.relaxers.base import CalculatorRequest, LoadedModel, RelaxerBackend, resolve_device

__all__ = ["CalculatorRequest", "LoadedModel", "RelaxerBackend", "resolve_device"]
