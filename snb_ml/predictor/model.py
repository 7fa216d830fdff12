"""The single-step predictor: graphs of marked structures, batched inference, one-file save and load.

A model file is a ``torch.save`` dictionary of plain data and tensors (read with ``weights_only=True``)::

    {"kind": "snb_ml.single_step", "format": 1, "hyperparameters": {...}, "elements": [...],
     "marker_radius": None | float, "state_dict": {...}, "training": {...}}

``kind`` is checked on load, so a MACE/CHGNet model or a training checkpoint passed by mistake gives a
clear error instead of a prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError, ModelError
from snb_ml.neighbors import neighbor_list
from snb_ml.predictor.markers import GHOST, MarkedStructure, charge_site_markers
from snb_ml.safe_write import atomic_path

KIND = "snb_ml.single_step"
CHECKPOINT_KIND = "snb_ml.single_step.checkpoint"
FORMAT = 1
#: Atoms per forward pass in :meth:`SingleStepPredictor.predict` (larger CPU batches only add memory traffic).
DEFAULT_BATCH_ATOMS = 2048


@dataclass(frozen=True)
class Hyperparameters:
    """Size of the network (see :class:`~snb_ml.predictor.network.SingleStepNet`)."""

    features: int = 64
    layers: int = 3
    radial: int = 16
    cutoff: float = 5.0


@dataclass
class Graph:
    """One structure as node and edge arrays (ghost node last, if any)."""

    species: np.ndarray
    marker: np.ndarray
    charge: np.ndarray
    positions: np.ndarray
    source: np.ndarray
    target: np.ndarray
    shift: np.ndarray
    real: np.ndarray


def build_graph(
    marked: MarkedStructure, elements: Sequence[str], cutoff: float, marker_radius: float | None
) -> Graph:
    """Node features and the periodic neighbour list of one marked structure.

    Raises:
        ModelError: If the structure has an element the model was not trained on.
    """
    from ase import Atoms

    atoms = marked.atoms
    index = {symbol: i for i, symbol in enumerate(elements)}
    symbols = atoms.get_chemical_symbols()
    unknown = sorted({s for s in symbols if s not in index})
    if unknown:
        raise ModelError(
            f"The single-step model was trained on {', '.join(elements)} only; this structure has "
            f"{', '.join(unknown)}. Train a model on data with these elements (snb-ml train --kind "
            "single-step), or relax with a force field (--relaxer chgnet)."
        )
    species = np.array([index[s] for s in symbols], dtype=np.int64)
    marker = marked.markers.astype(np.int64)
    positions = atoms.positions
    real = np.ones(len(atoms) + (marked.ghost is not None), dtype=bool)
    if marked.ghost is not None:
        species = np.append(species, len(elements))
        marker = np.append(marker, GHOST)
        positions = np.vstack([positions, marked.ghost])
        real[-1] = False
    nodes = Atoms(
        numbers=np.zeros(len(positions), dtype=int), positions=positions, cell=atoms.cell, pbc=atoms.pbc
    )
    centers, neighbors, images, distances = neighbor_list(nodes, cutoff)
    charge = np.zeros(len(positions))
    if marked.charge:  # a neutral cell needs no shell: q x markers is zero anyway
        between_atoms = real[centers] & real[neighbors]
        nearest = np.full(len(positions), np.inf)
        np.minimum.at(nearest, centers[between_atoms], distances[between_atoms])
        found = nearest[np.isfinite(nearest)]
        # The median nearest-neighbour distance, as snb_ml.models.charge.bulk_bond_length (which
        # widens its search instead when most atoms have no neighbour within the cutoff).
        bond = float(np.median(found)) if len(found) >= 0.9 * len(atoms) else None
        charge[: len(atoms)] = marked.charge * charge_site_markers(marked, marker_radius, bond)
        if marked.ghost is not None:
            charge[-1] = marked.charge
    return Graph(
        species=species,
        marker=marker,
        charge=charge.astype(np.float32),
        positions=np.asarray(positions, dtype=np.float64),
        source=neighbors,
        target=centers,
        shift=images @ np.asarray(atoms.cell),
        real=real,
    )


def collate(graphs: Sequence[Graph], device: str = "cpu") -> dict[str, Any]:
    """One batch dictionary for :class:`SingleStepNet` from several graphs."""
    import torch

    sizes = [len(g.species) for g in graphs]
    offsets = np.cumsum([0, *sizes])[:-1]

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(g, name) for g in graphs])

    def long(array: np.ndarray):
        return torch.as_tensor(array, dtype=torch.long, device=device)

    def real(array: np.ndarray):
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    return {
        "species": long(cat("species")),
        "marker": long(cat("marker")),
        "charge": real(cat("charge")),
        "positions": real(cat("positions")),
        "source": long(np.concatenate([g.source + o for g, o in zip(graphs, offsets, strict=True)])),
        "target": long(np.concatenate([g.target + o for g, o in zip(graphs, offsets, strict=True)])),
        "shift": real(cat("shift")),
        "graph": long(np.repeat(np.arange(len(graphs)), sizes)),
        "real": torch.as_tensor(cat("real"), device=device),
        "graphs": torch.tensor(len(graphs)),
    }


class SingleStepPredictor:
    """A trained (or new) single-step model with what it needs to read structures.

    Args:
        elements: Chemical symbols the model knows, in embedding order.
        hyperparameters: Network size.
        marker_radius: Radius (Å) of the site-charge shell; ``None``: 1.3 x the bulk-like bond length
            of each structure (:data:`snb_ml.models.charge.MARKER_RADIUS_FACTOR`).
        device: Torch device.
        training: Free-form record of how the model was trained (saved with it).
    """

    def __init__(
        self,
        elements: Sequence[str],
        hyperparameters: Hyperparameters | None = None,
        marker_radius: float | None = None,
        device: str = "cpu",
        training: dict[str, Any] | None = None,
    ):
        # deferred: the network module imports torch at the top; reading a dataset does not need it.
        from snb_ml.predictor.network import SingleStepNet

        if not elements:
            raise InputError("A single-step model needs at least one element.")
        self.elements = list(elements)
        self.hyperparameters = hyperparameters or Hyperparameters()
        self.marker_radius = marker_radius
        self.device = device
        self.training = dict(training or {})
        self.network = SingleStepNet(len(self.elements), **asdict(self.hyperparameters)).to(device)

    @property
    def atomic_numbers(self) -> frozenset[int]:
        """Atomic numbers of the elements the model knows."""
        from ase.data import atomic_numbers

        return frozenset(atomic_numbers[s] for s in self.elements)

    def graph(self, marked: MarkedStructure) -> Graph:
        """The graph of one marked structure (see :func:`build_graph`)."""
        return build_graph(marked, self.elements, self.hyperparameters.cutoff, self.marker_radius)

    def displacements(self, structures: Sequence[MarkedStructure], batch_atoms: int = DEFAULT_BATCH_ATOMS):
        """Predicted displacements (Å) of every real atom, one ``(N_i, 3)`` array per structure.

        Structures are grouped into batches of about ``batch_atoms`` atoms; each batch is one forward
        pass.
        """
        import torch

        results: list[np.ndarray] = []
        self.network.eval()
        batch: list[Graph] = []
        atoms_in_batch = 0

        def flush() -> None:
            nonlocal batch, atoms_in_batch
            if not batch:
                return
            with torch.no_grad():
                out = self.network(collate(batch, self.device)).cpu().numpy().astype(float)
            start = 0
            for graph in batch:
                size = len(graph.species)
                results.append(out[start : start + size][graph.real])
                start += size
            batch, atoms_in_batch = [], 0

        for marked in structures:
            graph = self.graph(marked)
            if batch and atoms_in_batch + len(graph.species) > batch_atoms:
                flush()
            batch.append(graph)
            atoms_in_batch += len(graph.species)
        flush()
        return results

    def predict(self, structures: Sequence[MarkedStructure], batch_atoms: int = DEFAULT_BATCH_ATOMS):
        """Predicted relaxed positions (Cartesian Å), one ``(N_i, 3)`` array per structure."""
        return [
            m.atoms.positions + d
            for m, d in zip(structures, self.displacements(structures, batch_atoms), strict=True)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The model file's content (see the module docstring)."""
        return {
            "kind": KIND,
            "format": FORMAT,
            "hyperparameters": asdict(self.hyperparameters),
            "elements": list(self.elements),
            "marker_radius": self.marker_radius,
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "training": self.training,
        }

    def save(self, path: str | Path) -> Path:
        """Write the model to one file, atomically."""
        import torch

        path = Path(path)
        with atomic_path(path) as temporary:
            torch.save(self.to_dict(), temporary)
        return path

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], device: str = "cpu", where: str = "model"
    ) -> SingleStepPredictor:
        """Rebuild a predictor from :meth:`to_dict` output.

        Raises:
            ModelError: If ``data`` is not a single-step model of a format this version reads.
        """
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != KIND:
            hint = (
                " It is a training checkpoint; pass the final model file (<name>.pt) written next to it."
                if kind == CHECKPOINT_KIND
                else ""
            )
            raise ModelError(
                f"{where} is not a single-step predictor model (kind {kind!r}, expected {KIND!r}).{hint} "
                "Train one with `snb-ml train --kind single-step`."
            )
        if data.get("format") != FORMAT:
            raise ModelError(f"{where} has model format {data.get('format')!r}; this snb_ml reads {FORMAT}.")
        predictor = cls(
            data["elements"],
            Hyperparameters(**data["hyperparameters"]),
            marker_radius=data.get("marker_radius"),
            device=device,
            training=data.get("training"),
        )
        predictor.network.load_state_dict(data["state_dict"])
        predictor.network.eval()
        return predictor


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The raw dictionary of a model or checkpoint file (``weights_only``: no code is unpickled).

    Raises:
        ModelError: If the file is missing or not a plain ``torch.save`` dictionary.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Single-step model file {path} not found. Pass --model PATH to a <name>.pt file.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled module (MACE), a zip of another format, or not torch at all
        raise ModelError(
            f"{path} is not a single-step predictor model (it cannot be read as plain tensors: "
            f"{type(exc).__name__}). Train one with `snb-ml train --kind single-step`."
        ) from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a single-step predictor model (kind None, expected {KIND!r}).")
    return data


def load_predictor(path: str | Path, device: str = "cpu") -> SingleStepPredictor:
    """Load a model file written by :meth:`SingleStepPredictor.save`.

    Raises:
        ModelError: For a missing file or a file of another kind.
    """
    return SingleStepPredictor.from_dict(read_model_file(path), device=device, where=str(path))
