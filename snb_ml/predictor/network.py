"""A compact PaiNN-style equivariant network that maps an unrelaxed defect cell to atomic displacements.

Nodes carry a scalar feature vector ``s_i`` (``F`` channels) and a vector feature ``v_i`` (``F`` x 3).
Scalars start from three embeddings summed: the species (vacancy ghosts have their own entry), the
defect marker (0 host / 1 defect atom / 2 ghost) and the bias-free linear embedding of the site charge
``q * m_i`` (zero away from the defect, so a charge acts only near it whatever the cell size); vectors
start at zero. Each of ``L`` interaction blocks (Schütt et al., PaiNN, ICML 2021) sends messages
along the edges of a periodic neighbour list within the cutoff, filtered by a Bessel radial basis times
a cosine cutoff, then mixes each node's scalar and vector channels.

The output is a gated equivariant readout: per atom a linear combination of the vector channels,
weighted by gates computed from scalars. Vectors enter only through edge directions, so the output
rotates with the input (equivariant), does not change when the cell is translated, and is permuted
with the atoms. The mean displacement over real atoms is removed: a fixed-cell relaxation with
translation-invariant forces (FIRE, VASP's optimisers) keeps the centroid of the atoms in place.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    """``sqrt(2/rc) sin(n pi r / rc) / r`` for ``n = 1..count``, times a cosine cutoff."""

    def __init__(self, count: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer(
            "frequencies", torch.arange(1, count + 1, dtype=torch.float32) * math.pi / cutoff
        )

    def forward(self, distances: torch.Tensor) -> torch.Tensor:
        """Radial features, shape ``(E, count)``; zero at and beyond the cutoff."""
        r = distances.clamp(min=1e-6).unsqueeze(-1)
        basis = math.sqrt(2.0 / self.cutoff) * torch.sin(self.frequencies * r) / r
        envelope = 0.5 * (torch.cos(math.pi * distances / self.cutoff) + 1.0)
        envelope = envelope * (distances < self.cutoff)
        return basis * envelope.unsqueeze(-1)


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class Message(nn.Module):
    """PaiNN message block: scalar and vector updates summed over neighbours."""

    def __init__(self, features: int, radial: int):
        super().__init__()
        self.features = features
        self.scalar = _mlp(features, features, 3 * features)
        self.filter = nn.Linear(radial, 3 * features)

    def forward(self, s, v, source, target, unit, radial, first: bool = False):
        """Return ``(ds, dv)`` for every node from the edges ``source -> target``.

        ``first``: the vector features are still zero, so their term is skipped (it is the costliest).
        """
        f = self.features
        x = self.scalar(s)[source] * self.filter(radial)
        ds, dvv, dvs = torch.split(x, f, dim=-1)
        dv = dvs.unsqueeze(-1) * unit.unsqueeze(1)
        if not first:
            dv = dv + v[source] * dvv.unsqueeze(-1)
        out_s = torch.zeros_like(s).index_add_(0, target, ds)
        out_v = torch.zeros_like(v).index_add_(0, target, dv)
        return out_s, out_v


class Update(nn.Module):
    """PaiNN update block: mixes each node's scalar and vector channels."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.u = nn.Linear(features, features, bias=False)
        self.w = nn.Linear(features, features, bias=False)
        self.mix = _mlp(2 * features, features, 3 * features)

    def forward(self, s, v):
        """Return ``(ds, dv)``."""
        uv = self.u(v.transpose(1, 2)).transpose(1, 2)
        wv = self.w(v.transpose(1, 2)).transpose(1, 2)
        norm = torch.sqrt((wv**2).sum(-1) + 1e-8)
        a = self.mix(torch.cat([s, norm], dim=-1))
        avv, asv, ass = torch.split(a, self.features, dim=-1)
        dv = avv.unsqueeze(-1) * uv
        ds = asv * (uv * wv).sum(-1) + ass
        return ds, dv


class SingleStepNet(nn.Module):
    """The displacement network (see the module docstring).

    Args:
        species: Number of element types (the ghost gets one more embedding row).
        features: Channels ``F`` of the scalar and vector features.
        layers: Interaction blocks.
        radial: Radial basis functions.
        cutoff: Neighbour cutoff in Å.
    """

    def __init__(
        self, species: int, features: int = 64, layers: int = 3, radial: int = 16, cutoff: float = 5.0
    ):
        super().__init__()
        self.cutoff = cutoff
        self.species_embedding = nn.Embedding(species + 1, features)
        self.marker_embedding = nn.Embedding(3, features)
        self.charge_embedding = nn.Linear(1, features, bias=False)
        self.basis = BesselBasis(radial, cutoff)
        self.messages = nn.ModuleList(Message(features, radial) for _ in range(layers))
        self.updates = nn.ModuleList(Update(features) for _ in range(layers))
        self.readout_vectors = nn.Linear(features, features, bias=False)
        self.readout_gates = _mlp(2 * features, features, features)
        self.readout = nn.Linear(features, 1, bias=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Displacements (Å) of every node, shape ``(nodes, 3)``; ghosts get zero.

        ``batch`` holds ``species`` (node, long), ``marker`` (node, long), ``charge`` (node, float),
        ``positions`` (node, 3), ``source``/``target`` (edge, long), ``shift`` (edge, 3, Cartesian
        lattice translation of the source image), ``graph`` (node, long: structure of each node),
        ``real`` (node, bool: not a ghost) and ``graphs`` (number of structures, 0-d long).
        """
        positions, source, target = batch["positions"], batch["source"], batch["target"]
        vectors = positions[source] + batch["shift"] - positions[target]
        distances = torch.linalg.norm(vectors, dim=-1)
        unit = vectors / distances.clamp(min=1e-6).unsqueeze(-1)
        radial = self.basis(distances)
        s = (
            self.species_embedding(batch["species"])
            + self.marker_embedding(batch["marker"])
            + self.charge_embedding(batch["charge"].unsqueeze(-1))
        )
        v = torch.zeros(s.shape[0], s.shape[1], 3, dtype=s.dtype, device=s.device)
        for layer, (message, update) in enumerate(zip(self.messages, self.updates, strict=True)):
            ds, dv = message(s, v, source, target, unit, radial, first=layer == 0)
            s, v = s + ds, v + dv
            ds, dv = update(s, v)
            s, v = s + ds, v + dv
        wv = self.readout_vectors(v.transpose(1, 2)).transpose(1, 2)
        norm = torch.sqrt((wv**2).sum(-1) + 1e-8)
        gates = self.readout_gates(torch.cat([s, norm], dim=-1))
        displacement = self.readout((wv * gates.unsqueeze(-1)).transpose(1, 2)).squeeze(-1)
        real = batch["real"].to(displacement.dtype).unsqueeze(-1)
        displacement = displacement * real
        # Remove each structure's mean displacement over its real atoms (centroid conservation).
        graph, graphs = batch["graph"], int(batch["graphs"])
        totals = torch.zeros(graphs, 3, dtype=displacement.dtype, device=displacement.device)
        totals.index_add_(0, graph, displacement)
        counts = torch.zeros(graphs, dtype=displacement.dtype, device=displacement.device)
        counts.index_add_(0, graph, real.squeeze(-1))
        return (displacement - (totals / counts.clamp(min=1).unsqueeze(-1))[graph]) * real
