"""The known physics of a charged supercell, carried explicitly next to the learned charge term.

Most of the energy difference between charge states of a defect supercell is not local chemistry:

- **Electron reservoir** ``q · E_ref``. Charging a cell by ``+1`` moves an electron to the reservoir;
  in a DFT supercell (VASP: compensating jellium) ``E(q+1) − E(q)`` is roughly minus the energy of the
  emptied level, ``−(E_VBM + ε(q+1/q))`` (Janak): several eV per electron, the same sign for every
  defect of a host.
- **Charging curvature** ``½ U q²``. The levels themselves move as electrons are removed (on-site
  repulsion and lattice relaxation): the second-order term of the same expansion. On the doped MgO
  example it takes the spread of ``E(q) − q E_ref`` over five charge states from 1.5 to 0.3 eV.
- **Finite-size electrostatics** ``−E_pc(q)``. A point charge ``q`` screened by the dielectric tensor
  ``ε`` in a periodic cell with a neutralising background interacts with its images;
  ``E_pc = −q² E_Madelung(cell, ε) > 0`` (∝ q²/L) is the point-charge term of the Freysoldt (FNV)
  and Kumagai (eFNV) corrections, computed here with pydefect's Ewald sum exactly as doped's eFNV
  correction computes it. The raw supercell energy contains ``−E_pc``; doped's correction adds it back
  (plus a potential alignment, which needs the DFT potentials and is left to the learned part).

``E_ref`` and ``U`` are one number each per level of theory (model head), fitted by least squares on
the training frames before the network trains (:func:`fit_charge_reference`) and stored in the model
file. The model's energy of a structure ``S`` of charge ``q`` is then::

    E(S, q) = E_MACE(S, q) + q · E_ref[head] + ½ U[head] q² − E_pc(q; cell, ε)

where the MACE part (with its size-consistent ``site`` charge feature) learns what is left: the local,
defect-specific response to the charge. Size dependence: ``q · E_ref`` and ``½ U q²`` do not depend on
the cell (local quantities); ``E_pc`` falls as 1/L (for a cubic cell ``E_pc(2L) = E_pc(L) / 2``), as the
image interaction of a real DFT supercell does; the learned part keeps the ``site`` mode's guarantee
(no change once the cell is larger than the receptive field). The explicit terms are constant for a
fixed cell, so forces are unaffected; they add no stress (the image term's strain derivative is not
included: relax charged cells at fixed cell, as ShakeNBreak does).

The terms travel in the MACE ``.model`` file as the attribute ``snb_ml_charge_reference`` (a plain
dict). snb_ml's ``mace`` relaxer backend, its batched evaluator and ``snb-ml evaluate`` add them;
MACE's own ``MACECalculator`` does not know them and returns only ``E_MACE``.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError, ModelError

#: Attribute of a MACE model (``torch.nn.Module``) that holds :meth:`ChargeReference.to_dict`.
MODEL_ATTRIBUTE = "snb_ml_charge_reference"
_FORMAT_VERSION = 1
#: pydefect's conversion of its Ewald lattice energy (e²/Å, Gaussian units over 4π) to eV, as used
#: by doped's eFNV correction (``doped.corrections.get_kumagai_correction``).
_EWALD_TO_EV = 180.95128169876497


def dielectric_tensor(
    dielectric: float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
) -> np.ndarray:
    """Return a 3x3 dielectric tensor from a scalar, the 3 diagonal elements or a 3x3 matrix.

    Args:
        dielectric: Total (ionic + electronic) dielectric constant, as doped takes it.

    Returns:
        The symmetric, positive-definite 3x3 tensor.

    Raises:
        InputError: For anything else.
    """
    try:
        value = np.asarray(dielectric, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"The dielectric constant must be numbers, got {dielectric!r}.") from exc
    if value.size == 1:
        value = np.eye(3) * float(value.reshape(-1)[0])
    elif value.size == 3:
        value = np.diag(value.reshape(3))
    elif value.size == 9:
        value = value.reshape(3, 3)
    else:
        raise InputError(
            f"The dielectric constant must be 1, 3 (diagonal) or 9 (3x3) numbers, got {value.size}."
        )
    if not np.isfinite(value).all() or not np.allclose(value, value.T, atol=1e-6):
        raise InputError(f"The dielectric tensor must be finite and symmetric, got {value.tolist()}.")
    if np.linalg.eigvalsh(value).min() <= 0:
        raise InputError(f"The dielectric tensor must be positive definite, got {value.tolist()}.")
    return value


@functools.lru_cache(maxsize=64)
def _madelung(cell: tuple[float, ...], dielectric: tuple[float, ...]) -> float:
    # Imported here: pydefect (a doped dependency) costs ~2 s to import and logs its settings at INFO.
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        from pydefect.corrections.ewald import Ewald
        from pydefect.defaults import defaults

        ewald = Ewald(
            np.reshape(cell, (3, 3)), np.reshape(dielectric, (3, 3)), accuracy=defaults.ewald_accuracy
        )
        return float(-ewald.lattice_energy * _EWALD_TO_EV)
    finally:
        logging.disable(previous)


def point_charge_correction(cell: Any, dielectric: Any, charge: float) -> float:
    """Return the point-charge image correction ``E_pc`` (eV) of a charge in a periodic cell.

    The same number as the point-charge part of doped's Kumagai (eFNV) correction: pydefect's Ewald
    energy of a point charge in a neutralising background screened by ``dielectric``, times ``q²``,
    with the sign of a correction (what is *added* to a raw supercell energy; positive).

    Args:
        cell: The 3x3 cell (Å), e.g. ``atoms.cell``.
        dielectric: Dielectric constant (see :func:`dielectric_tensor`).
        charge: Charge state ``q``.

    Returns:
        ``E_pc`` in eV (0 for ``q = 0``).
    """
    if charge == 0:
        return 0.0
    matrix = np.asarray(cell, dtype=float).reshape(3, 3)
    if abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError("The point-charge correction needs a periodic cell with a non-zero volume.")
    key = tuple(np.round(matrix, 6).reshape(-1).tolist())
    tensor = tuple(np.round(dielectric_tensor(dielectric), 8).reshape(-1).tolist())
    return _madelung(key, tensor) * float(charge) ** 2


#: ``fit_charge_reference`` orders: the reservoir slope alone, or with the curvature ``U``.
REFERENCE_ORDERS = ("linear", "quadratic")


@dataclass
class ChargeReference:
    """The explicit charge terms of a model: ``q · E_ref[head] + ½ U[head] q² − E_pc(q; cell, ε)``.

    Attributes:
        e_ref: Electron-reservoir energy per head (eV per unit charge); 0 for a head whose training
            frames do not fix it (no defect with two charge states: the network then learns the whole
            charge dependence of that head, as without this term).
        dielectric: 3x3 dielectric tensor of the point-charge term; ``None``: no such term.
        fit: How the terms were fitted (defects and charges per head, rms of the fit).
        u: Charging curvature per head (eV per unit charge²); missing or 0: no such term.
    """

    e_ref: dict[str, float] = field(default_factory=dict)
    dielectric: list[list[float]] | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    u: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-data form stored in the model file."""
        return {
            "version": _FORMAT_VERSION,
            "e_ref": dict(self.e_ref),
            "u": dict(self.u),
            "dielectric": self.dielectric,
            "fit": self.fit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChargeReference:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ModelError: For an unknown format version.
        """
        if data.get("version") != _FORMAT_VERSION:
            raise ModelError(
                f"This model's charge reference has format version {data.get('version')!r}; this snb_ml "
                f"reads version {_FORMAT_VERSION}. Retrain it or update snb_ml."
            )
        return cls(
            dict(data.get("e_ref") or {}),
            data.get("dielectric"),
            dict(data.get("fit") or {}),
            dict(data.get("u") or {}),
        )

    def _of_head(self, table: dict[str, float], head: str | None) -> float:
        if not table:
            return 0.0
        if head in table:
            return table[head]
        if len(table) == 1:
            return next(iter(table.values()))
        raise ModelError(f"The charge reference has no head '{head}' (it has {', '.join(table)}).")

    def reservoir(self, head: str | None) -> float:
        """Return ``E_ref`` of ``head`` (the only one when the model has a single head)."""
        return self._of_head(self.e_ref, head)

    def curvature(self, head: str | None) -> float:
        """Return ``U`` of ``head`` (0 without a curvature term)."""
        return self._of_head(self.u, head)

    def energy(self, cell: Any, charge: float, head: str | None = None) -> float:
        """Return the explicit energy ``q · E_ref + ½ U q² − E_pc(q)`` (eV) of a structure.

        Raises:
            ModelError: If the reference has several heads and none is ``head``.
        """
        if charge == 0:
            return 0.0
        q = float(charge)
        total = q * self.reservoir(head) + 0.5 * self.curvature(head) * q**2
        if self.dielectric is not None:
            total -= point_charge_correction(cell, self.dielectric, charge)
        return total

    def atoms_energy(self, atoms: Atoms, head: str | None = None) -> float:
        """Return the explicit energy of ``atoms`` from its ``info["charge"]``.

        Raises:
            ModelError: If the structure has no integer ``info["charge"]``.
        """
        charge = atoms.info.get("charge")
        try:
            value = float(charge)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value) or value != round(value):
            raise ModelError(
                "This model carries explicit charge terms (q·E_ref, point-charge image energy) but the "
                f"structure's atoms.info['charge'] is {charge!r}; set it to the integer charge state."
            )
        return self.energy(atoms.cell, int(round(value)), head)


def _lowest_states(
    frames: Iterable[Atoms], tensor: Any, energy_key: str
) -> dict[str, dict[tuple[str, str, int], tuple[float, float]]]:
    """``{head: {(defect, formula, q): (raw energy, energy + E_pc)}}`` of each charge state's lowest frame."""
    lowest: dict[str, dict[tuple[str, str, int], tuple[float, float]]] = defaultdict(dict)
    for atoms in frames:
        info = atoms.info
        states = lowest[str(info.get("head") or "Default")]  # every head gets an entry, even bulk-only
        if str(info.get("config_type", "defect")) == "bulk":
            continue
        q = int(info["total_charge"])
        key = (str(info.get("defect", "")), atoms.get_chemical_formula(), q)
        energy = float(info[energy_key])
        if key not in states or energy < states[key][0]:
            pc = point_charge_correction(atoms.cell, tensor, q) if tensor is not None else 0.0
            states[key] = (energy, energy + pc)
    return lowest


def fit_charge_reference(
    frames: Iterable[Atoms],
    dielectric: Any = None,
    order: str | None = "quadratic",
    energy_key: str = "REF_energy",
) -> ChargeReference:
    """Fit ``E_ref`` (and ``U``) per head by least squares, before the network trains.

    One row per defect charge state: its lowest-energy frame (the DFT ground state, what transition
    levels are made of), ``E + E_pc(q) ≈ a_defect + q E_ref + ½ U q²`` with a free intercept per defect
    (and composition), so ``E_ref`` and ``U`` are the slope and curvature in ``q`` shared by the
    defects of a level of theory and nothing else leaks into them. Bulk frames and defects with a
    single charge state fix nothing; the slope needs a defect with two charge states, the curvature
    one with three (else it is 0, and the fit says so).

    Args:
        frames: Training frames with ``REF_energy``, ``total_charge``, ``head``, ``defect`` and
            ``config_type`` (as ``snb-ml dataset`` writes them).
        dielectric: Dielectric constant for the point-charge term; ``None`` leaves it out.
        order: ``quadratic`` (``E_ref`` and ``U``), ``linear`` (``E_ref``) or ``None`` (only the
            point-charge term).
        energy_key: Where the DFT energy is.

    Returns:
        The fitted reference.

    Raises:
        InputError: For an unknown order, or if a fit is requested but no defect has two charge states.
    """
    if order is not None and order not in REFERENCE_ORDERS:
        raise InputError(
            f"The charge reference order must be one of {', '.join(REFERENCE_ORDERS)}, got {order!r}."
        )
    tensor = dielectric_tensor(dielectric).tolist() if dielectric is not None else None
    reference = ChargeReference({}, tensor, {})
    if order is None:
        return reference
    for head, states in sorted(_lowest_states(frames, tensor, energy_key).items()):
        charges_of: dict[tuple[str, str], set[int]] = defaultdict(set)
        for defect, formula, q in states:
            charges_of[(defect, formula)].add(q)
        useful = sorted(d for d, qs in charges_of.items() if len(qs) >= 2)
        curved = order == "quadratic" and any(len(charges_of[d]) >= 3 for d in useful)
        summary: dict[str, Any] = {
            "defects": [d for d, _ in useful],
            "charges": {d: sorted(charges_of[(d, f)]) for d, f in useful},
        }
        if not useful:
            reference.e_ref[head] = 0.0
            reference.fit[head] = {**summary, "note": "no defect with two charge states: E_ref set to 0"}
            continue
        rows = [((d, f), q, corrected) for (d, f, q), (_, corrected) in states.items() if (d, f) in useful]
        design = np.zeros((len(rows), len(useful) + 1 + int(curved)))
        targets = np.array([corrected for _, _, corrected in rows])
        for i, (defect, q, _) in enumerate(rows):
            design[i, useful.index(defect)] = 1.0
            design[i, len(useful)] = q
            if curved:
                design[i, len(useful) + 1] = 0.5 * q**2
        solution, *_ = np.linalg.lstsq(design, targets, rcond=None)
        residual = targets - design @ solution
        reference.e_ref[head] = float(solution[len(useful)])
        if order == "quadratic":
            reference.u[head] = float(solution[-1]) if curved else 0.0
            if not curved:
                summary["note"] = "no defect with three charge states: U set to 0"
        reference.fit[head] = {**summary, "rms_eV": float(np.sqrt(np.mean(residual**2)))}
    if not any("rms_eV" in fit for fit in reference.fit.values()):
        raise InputError(
            "The electron-reservoir term q·E_ref needs training frames of at least two charge states of "
            "one defect; none of these defects has two. Train without it (--charge-reference none)."
        )
    return reference


def reference_of(model: Any) -> ChargeReference | None:
    """Return the :class:`ChargeReference` stored in a MACE model, or ``None``."""
    data = getattr(model, MODEL_ATTRIBUTE, None)
    return None if data is None else ChargeReference.from_dict(data)


def attach_reference(model: Any, reference: ChargeReference | None) -> Any:
    """Store ``reference`` in ``model`` (in place; ``None`` removes it) and return the model."""
    if reference is None:
        if hasattr(model, MODEL_ATTRIBUTE):
            delattr(model, MODEL_ATTRIBUTE)
    else:
        setattr(model, MODEL_ATTRIBUTE, reference.to_dict())
    return model


@functools.cache
def _reference_calculator_class() -> type:
    from ase.calculators.calculator import all_changes
    from mace.calculators import MACECalculator

    class ChargeReferenceMACECalculator(MACECalculator):
        """``MACECalculator`` plus the model's explicit charge terms (energy only; forces unchanged)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.charge_reference = reference_of(self.models[0])

        def explicit_energy(self, atoms: Atoms) -> float:
            """The explicit terms of ``atoms`` for this calculator's head."""
            return self.charge_reference.atoms_energy(atoms, self.head)

        def calculate(self, atoms=None, properties=None, system_changes=all_changes):  # noqa: D102
            super().calculate(atoms, properties, system_changes)
            if self.results.get("energy") is not None:
                self.results["energy"] += self.explicit_energy(self.atoms)
                self.results["free_energy"] = self.results["energy"]

    return ChargeReferenceMACECalculator


def mace_calculator_class(model: Any) -> type:
    """Return the ASE calculator class for a MACE model: MACE's own, or one that adds its charge terms."""
    if reference_of(model) is None:
        from mace.calculators import MACECalculator

        return MACECalculator
    return _reference_calculator_class()
