"""A small fitted force field for loop tests and examples: EMT whose per-element parameters are refitted.

:class:`FittedEMT` is ASE's EMT with some elements' seven parameters (``E0, s0, V0, eta2, kappa,
lambda, n0`` in ASE's units) replaced by the values of a JSON model file. :func:`fit_emt` refits the
chosen parameters of the chosen elements to DFT energies and forces by least squares, starting from (and
regularised towards) the previous model, so what the data do not determine stays where it was. It is a
real fit of a real potential, cheap enough (seconds) to run a whole screen -> DFT -> learn loop in a test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.emt import EMT
from ase.calculators.emt import parameters as EMT_PARAMETERS

from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY
from snb_ml.errors import InputError, ModelError
from snb_ml.safe_write import write_text

PARAMETER_NAMES = ("E0", "s0", "V0", "eta2", "kappa", "lambda", "n0")
MODEL_FORMAT = "snb_ml_fitted_emt/1"


def read_model(path: str | Path | None) -> dict[str, list[float]]:
    """Return the per-element parameter overrides of a model file (``None``: plain EMT, no overrides).

    Raises:
        ModelError: The file is missing or not a fitted-EMT model.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read the fitted EMT model {path} ({exc}).") from exc
    if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path} is not a fitted EMT model (no format '{MODEL_FORMAT}').")
    overrides = document.get("parameters", {})
    for element, values in overrides.items():
        if element not in EMT_PARAMETERS or len(values) != len(PARAMETER_NAMES):
            raise ModelError(f"{path}: parameters of '{element}' must be 7 numbers of an EMT element.")
    return {element: [float(v) for v in values] for element, values in overrides.items()}


def write_model(path: str | Path, overrides: dict[str, Sequence[float]], note: dict[str, Any]) -> None:
    """Write a fitted-EMT model file atomically."""
    document = {
        "format": MODEL_FORMAT,
        "parameter_names": list(PARAMETER_NAMES),
        "parameters": {element: [float(v) for v in values] for element, values in overrides.items()},
        **note,
    }
    write_text(path, json.dumps(document, indent=2) + "\n")


class FittedEMT(EMT):
    """ASE's EMT with the parameters of some elements taken from a fitted model.

    Args:
        model: A model file written by :func:`write_model` (``None``: plain EMT).
        overrides: Element -> 7 parameters, used instead of (or on top of) ``model``.
        **kwargs: Passed to :class:`ase.calculators.emt.EMT`.
    """

    def __init__(self, model: str | None = None, overrides: dict | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.overrides = {**read_model(model), **(overrides or {})}

    def initialize(self, atoms) -> None:
        """Set up EMT as usual, then replace the overridden elements' parameters (ASE's own unit rules)."""
        from ase.data import chemical_symbols
        from ase.units import Bohr

        super().initialize(atoms)
        for i, number in enumerate(self.par["Z"]):
            values = self.overrides.get(chemical_symbols[int(number)])
            if values is None:
                continue
            e0, s0, v0, eta2, kappa, lam, n0 = values
            s0, eta2, kappa = s0 * Bohr, eta2 / Bohr, kappa / Bohr
            gamma1, gamma2 = self._calc_gammas(s0, eta2, kappa)
            self.par["E0"][i], self.par["s0"][i], self.par["V0"][i] = e0, s0, v0
            self.par["eta2"][i], self.par["kappa"][i] = eta2, kappa
            self.par["lambda"][i], self.par["n0"][i] = lam / Bohr, n0 / Bohr**3
            self.par["inv12gamma1"][i] = 1.0 / (12.0 * gamma1)
            self.par["neghalfv0overgamma2"][i] = -0.5 * v0 / gamma2
        self.chi = self.par["n0"][None, :] / self.par["n0"][:, None]


def check_elements(frames: Sequence) -> None:
    """Refuse frames with elements EMT has no parameters for.

    Raises:
        InputError: Naming the elements and the first frame that holds them.
    """
    for atoms in frames:
        missing = sorted(set(atoms.get_chemical_symbols()) - set(EMT_PARAMETERS))
        if missing:
            where = atoms.info.get("source", "a training frame")
            raise InputError(
                f"{where} contains {', '.join(missing)}: the fitted-EMT model has parameters for "
                f"{', '.join(sorted(EMT_PARAMETERS))} only. Leave those calculations out or use another "
                "trainer."
            )


def predict(overrides: dict[str, list[float]], frames: Sequence) -> tuple[np.ndarray, list[np.ndarray]]:
    """Energies (eV) and forces (eV/Å) of ``frames`` under the model."""
    calculator = FittedEMT(overrides=overrides)
    energies, forces = [], []
    for atoms in frames:
        copy = atoms.copy()
        copy.calc = calculator
        energies.append(copy.get_potential_energy())
        forces.append(copy.get_forces())
    return np.array(energies), forces


def fit_emt(
    frames: Sequence,
    previous: dict[str, list[float]],
    elements: Sequence[str],
    names: Sequence[str] = ("E0", "n0"),
    prior: float = 0.1,
    max_evaluations: int = 60,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Refit EMT parameters to DFT energies and forces.

    ``E0`` moves additively (eV), the others by a log factor; the residuals are the energy errors (eV per
    cell), every force component (eV/Å) and ``prior`` times each log factor (a pull towards the previous
    model, so directions the data do not constrain keep their values).

    Args:
        frames: Labelled frames (``REF_energy`` and ``REF_forces``).
        previous: The previous model's overrides (elements not in it start from ASE's EMT values).
        elements: Elements whose parameters are fitted.
        names: Which of :data:`PARAMETER_NAMES` are fitted.
        prior: Weight of the pull towards the previous model.
        max_evaluations: Most residual evaluations of the optimizer.

    Returns:
        The new overrides and a record (cost before/after, evaluations).
    """
    from scipy.optimize import least_squares

    unknown = sorted(set(names) - set(PARAMETER_NAMES))
    if unknown:
        raise InputError(f"Unknown EMT parameter(s) {', '.join(unknown)}; choose from {PARAMETER_NAMES}.")
    start = {e: list(previous.get(e, EMT_PARAMETERS[e])) for e in elements}
    slots = [(e, PARAMETER_NAMES.index(n)) for e in elements for n in names]
    labels = [(float(a.info[ENERGY_KEY]), np.asarray(a.arrays[FORCES_KEY], dtype=float)) for a in frames]

    def unpack(x: np.ndarray) -> dict[str, list[float]]:
        params = {e: list(v) for e, v in start.items()}
        for value, (element, index) in zip(x, slots, strict=True):
            base = start[element][index]
            params[element][index] = base + value if index == 0 else base * float(np.exp(value))
        return {**previous, **params}

    def residuals(x: np.ndarray) -> np.ndarray:
        energies, forces = predict(unpack(x), frames)
        parts = [energies - np.array([e for e, _ in labels])]
        parts += [(f - label).ravel() for f, (_, label) in zip(forces, labels, strict=True)]
        pull = [prior * v for v, (_, index) in zip(x, slots, strict=True) if index != 0]
        return np.concatenate([*parts, np.array(pull)])

    x0 = np.zeros(len(slots))
    before = float(0.5 * np.sum(residuals(x0) ** 2))
    solution = least_squares(residuals, x0, x_scale=0.1, max_nfev=max_evaluations)
    return unpack(solution.x), {
        "cost_before": before,
        "cost_after": float(solution.cost),
        "evaluations": int(solution.nfev),
        "fitted": [f"{e}:{PARAMETER_NAMES[i]}" for e, i in slots],
    }
