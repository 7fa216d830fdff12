"""What MACE is trained on: DFT energies minus the explicit charge terms, weighted per cell or per atom.

Two choices made here, before ``mace_run_train`` sees the frames:

- **Explicit charge terms** (:mod:`snb_ml.models.charge_reference`): the network is trained on
  ``REF_energy − (q · E_ref − E_pc)``; the terms are added back by snb_ml's MACE backend. The original
  DFT energy and the explicit part are kept in each training frame as ``DFT_energy`` and
  ``explicit_energy`` (the dataset folder itself is never changed). Forces are untouched: the terms are
  constant for a fixed cell.
- **Energy loss per cell.** MACE's ``weighted`` loss squares the energy error *per atom*; in a
  216-atom cell a 1 eV error of the whole cell then costs as little as a 5 meV/Å force error, and the
  fit trades cell energies (what transition levels are made of) for forces. With ``per_cell`` each
  frame gets MACE's ``config_energy_weight = N²``, so the energy term is the squared error of the whole
  cell (eV²) times the energy weight.
- **Balanced charge states.** A charge state with one ionic step next to one with 40 would otherwise
  count 40 times less in the energy loss, and its energy is the one a transition level needs. With
  ``balance``, each charge state of each defect (and the bulk) gets the same total energy weight in
  its split: a frame's weight is multiplied by ``n_frames / (n_groups · n_frames_of_its_group)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from ase import Atoms

from snb_ml.data.frames import ENERGY_KEY
from snb_ml.errors import InputError
from snb_ml.training.frames import frame_charge, frame_head

ENERGY_LOSSES = ("per_cell", "per_atom")
#: Per-frame keys written into the MACE training files.
DFT_ENERGY_KEY = "DFT_energy"
EXPLICIT_ENERGY_KEY = "explicit_energy"
#: MACE reads ``atoms.info["config_<property>_weight"]`` as a per-frame weight of that property.
ENERGY_WEIGHT_KEY = "config_energy_weight"


def prepare_targets(
    data: dict[str, list[Atoms]], reference: Any = None, energy_loss: str = "per_cell", balance: bool = True
) -> dict[str, Any]:
    """Rewrite the energy labels and weights of the (in-memory) training frames, in place.

    Args:
        data: ``{split: frames}`` as read by :func:`snb_ml.training.frames.read_dataset`.
        reference: A :class:`~snb_ml.models.charge_reference.ChargeReference`, or ``None``.
        energy_loss: ``per_cell`` or ``per_atom`` (see the module docstring).
        balance: Give each charge state of each defect the same total energy weight.

    Returns:
        A summary: the explicit energy per ``head q`` label (eV, first frame of each) and the loss.

    Raises:
        InputError: For an unknown ``energy_loss``.
    """
    if energy_loss not in ENERGY_LOSSES:
        raise InputError(f"--energy-loss must be one of {', '.join(ENERGY_LOSSES)}, got {energy_loss!r}.")
    explicit: dict[str, float] = {}
    balance_weights = _balance_weights(data) if balance else {}
    for atoms in _all_frames(data):
        if reference is not None:
            q = frame_charge(atoms)
            shift = reference.energy(atoms.cell, q, frame_head(atoms))
            energy = float(atoms.info.get(DFT_ENERGY_KEY, atoms.info[ENERGY_KEY]))
            atoms.info[DFT_ENERGY_KEY] = energy
            atoms.info[EXPLICIT_ENERGY_KEY] = shift
            atoms.info[ENERGY_KEY] = energy - shift
            explicit.setdefault(f"{frame_head(atoms)} q={q:+d}", round(shift, 4))
        weight = float(len(atoms)) ** 2 if energy_loss == "per_cell" else 1.0
        weight *= balance_weights.get(id(atoms), 1.0)
        if weight == 1.0:
            atoms.info.pop(ENERGY_WEIGHT_KEY, None)
        else:
            atoms.info[ENERGY_WEIGHT_KEY] = weight
    return {
        "energy_loss": energy_loss,
        "balanced_charge_states": bool(balance),
        "explicit_energy": dict(sorted(explicit.items())),
    }


def _all_frames(data: dict[str, list[Atoms]]) -> Iterable[Atoms]:
    for frames in data.values():
        yield from frames


def _balance_weights(data: dict[str, list[Atoms]]) -> dict[int, float]:
    """``{id(frame): n / (n_groups · n_group)}`` per split, groups = (head, defect or bulk, charge)."""
    weights: dict[int, float] = {}
    for frames in data.values():
        groups: dict[tuple, list[Atoms]] = defaultdict(list)
        for atoms in frames:
            name = "bulk" if atoms.info.get("config_type") == "bulk" else str(atoms.info.get("defect", ""))
            groups[(frame_head(atoms), name, frame_charge(atoms))].append(atoms)
        for members in groups.values():
            for atoms in members:
                weights[id(atoms)] = len(frames) / (len(groups) * len(members))
    return weights
