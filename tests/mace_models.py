"""Tiny, deterministic MACE models for tests, saved exactly like MACE's own ``.model`` files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CHARGE_SPEC = {
    "total_charge": {
        "type": "continuous",
        "per": "graph",
        "in_dim": 1,
        "emb_dim": 8,
        "use_bias": False,
    }
}


def build_tiny_mace(
    path: str | Path,
    z_list: Sequence[int] = (48, 52),
    charge_embedding: bool = False,
    heads: Sequence[str] | None = None,
    seed: int = 0,
    charge_mode: str | None = None,
) -> Path:
    """Build a small random ``ScaleShiftMACE`` (r_max 5, 8 channels, max_L 0, 2 interactions) and save it.

    Args:
        path: Where to write the ``.model`` file.
        z_list: Atomic numbers the model covers.
        charge_embedding: Add a global ``total_charge`` embedding (MACE's ``embedding_specs``), so
            the model reads ``atoms.info["charge"]`` through ``MACECalculator``.
        heads: Readout heads (e.g. ``["pbe", "hse"]``); ``None`` for a single ``Default`` head.
        seed: Seed of the random weights (same seed, same model).
        charge_mode: Instead of ``charge_embedding``, a charge mode of :mod:`snb_ml.models`
            (``"site"``, ``"global"``, ``"intensive"``) whose embedding spec to use.

    Returns:
        The path written.
    """
    import importlib

    import numpy as np
    import torch
    from mace import modules

    # Only after mace: importing mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn's import needs.
    o3 = importlib.import_module("e3nn.o3")

    path = Path(path)
    specs = {k: dict(v) for k, v in CHARGE_SPEC.items()} if charge_embedding else None
    if charge_mode is not None:
        from snb_ml.models import charge_embedding_specs

        specs = charge_embedding_specs(charge_mode, emb_dim=8)
    z_list = sorted(int(z) for z in z_list)
    head_names = list(heads) if heads else None
    n_heads = len(head_names) if head_names else 1
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(seed)
        # One row of isolated-atom energies per head, so different heads give different totals.
        atomic_energies = np.array(
            [[-1.0 - 0.1 * i - 0.5 * h for i in range(len(z_list))] for h in range(n_heads)]
        )
        if n_heads == 1:
            atomic_energies = atomic_energies[0]
        model = modules.ScaleShiftMACE(
            r_max=5.0,
            num_bessel=4,
            num_polynomial_cutoff=5,
            max_ell=1,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2,
            num_elements=len(z_list),
            hidden_irreps=o3.Irreps("8x0e"),  # max_L 0: scalars only, quick to build
            MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=atomic_energies,
            avg_num_neighbors=8.0,
            atomic_numbers=z_list,
            correlation=2,
            gate=torch.nn.functional.silu,
            radial_MLP=[8, 8],
            heads=head_names,
            embedding_specs=specs,
            # Random weights give gentle forces (~0.01-0.1 eV/Å on CdTe): a few FIRE steps, no explosions.
            atomic_inter_scale=[1.0] * n_heads if n_heads > 1 else 1.0,
            atomic_inter_shift=[0.0] * n_heads if n_heads > 1 else 0.0,
        )
        if specs:
            # PyTorch's default init is random (not zero), but make sure the charge really moves the
            # energy: a deterministic, clearly non-zero perturbation of every embedding weight.
            generator = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():
                for parameter in model.joint_embedding.parameters():
                    parameter.add_(0.5 * torch.randn(parameter.shape, generator=generator))
        model = model.double().eval()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model, path)
    finally:
        torch.set_default_dtype(previous_dtype)
    return path
