"""Build charge-aware MACE models, graft a charge embedding onto a trained one, add readout heads.

Everything here returns an ordinary MACE ``ScaleShiftMACE`` module: save it with
``torch.save(model, path)`` and it loads with :func:`snb_ml.relaxers.mace_backend.load_mace`,
``MACECalculator`` and ``mace_run_train --foundation_model path`` alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import ModelError
from snb_ml.models.charge import DEFAULT_CHARGE_MODE, charge_embedding_specs, detect_charge_mode
from snb_ml.relaxers.mace_loading import import_mace, load_torch_model

_EMBEDDING_PREFIXES = ("joint_embedding.", "embedding_readout.")


def _mace_modules() -> Any:
    import_mace()  # sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD before e3nn is imported
    from mace import modules

    return modules


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    # MACE creates buffers (r_max, Clebsch-Gordan tensors) in the default dtype: build in the target one.
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _torch_dtype(dtype: str | Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float64": torch.float64, "float32": torch.float32}
    if dtype not in table:
        raise ModelError(f"Unknown dtype {dtype!r}; use float64 or float32.")
    return table[dtype]


def build_charge_aware_mace(
    atomic_numbers: Sequence[int],
    mode: str | None = DEFAULT_CHARGE_MODE,
    emb_dim: int = 8,
    *,
    r_max: float = 5.0,
    num_interactions: int = 2,
    channels: int = 16,
    max_L: int = 0,
    max_ell: int = 1,
    correlation: int = 2,
    radial_mlp: Sequence[int] = (16, 16),
    mlp_channels: int = 16,
    heads: Sequence[str] | None = None,
    atomic_energies: Sequence[float] | None = None,
    avg_num_neighbors: float = 8.0,
    scale: float = 1.0,
    shift: float = 0.0,
    embedding_readout: bool = False,
    seed: int = 0,
    dtype: str = "float64",
) -> Any:
    """Build a fresh, randomly initialised ``ScaleShiftMACE`` with a charge embedding.

    Args:
        atomic_numbers: Elements the model covers.
        mode: Charge mode (see :mod:`snb_ml.models.charge`); ``None`` builds a charge-blind twin.
        emb_dim: Width of the charge embedding MLP.
        r_max: Cut-off radius (Å).
        num_interactions: Message-passing layers (receptive field ``r_max * num_interactions``).
        channels: Feature channels per irrep.
        max_L: Highest irrep of the hidden features (0: scalars only).
        max_ell: Highest spherical harmonic of the edge features.
        correlation: Body order minus one of the product basis.
        radial_mlp: Hidden widths of the radial MLP.
        mlp_channels: Width of the non-linear readout.
        heads: Readout heads (e.g. ``("pbe", "hse")``); ``None`` for MACE's single ``Default``.
        atomic_energies: Isolated-atom energies per element (eV), shared by all heads; default 0.
        avg_num_neighbors: Normalisation of the message sums.
        scale: Scale of the interaction energy (every head).
        shift: Shift of the interaction energy per atom (every head).
        embedding_readout: Also add MACE's per-atom energy readout of the embedded features.
        seed: Seed of the random weights.
        dtype: ``"float64"`` or ``"float32"``.

    Returns:
        The model (in eval mode).
    """
    import torch

    modules = _mace_modules()
    from e3nn import o3

    zs = sorted(int(z) for z in atomic_numbers)
    head_names = list(heads) if heads else None
    n_heads = len(head_names) if head_names else 1
    e0 = np.zeros(len(zs)) if atomic_energies is None else np.asarray(atomic_energies, dtype=float)
    if e0.shape != (len(zs),):
        raise ModelError(f"atomic_energies needs one value per element ({len(zs)}), got {e0.shape}.")
    parity = {0: "e", 1: "o"}
    hidden = "+".join(f"{channels}x{ell}{parity[ell % 2]}" for ell in range(max_L + 1))
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    torch_dtype = _torch_dtype(dtype)
    with _default_dtype(torch_dtype), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = modules.ScaleShiftMACE(
            r_max=float(r_max),
            num_bessel=8,
            num_polynomial_cutoff=5,
            max_ell=max_ell,
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=num_interactions,
            num_elements=len(zs),
            hidden_irreps=o3.Irreps(hidden),
            MLP_irreps=o3.Irreps(f"{mlp_channels}x0e"),
            atomic_energies=np.tile(e0, (n_heads, 1)) if n_heads > 1 else e0,
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=zs,
            correlation=correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(radial_mlp),
            heads=head_names,
            embedding_specs=charge_embedding_specs(mode, emb_dim) if mode is not None else None,
            use_embedding_readout=embedding_readout and mode is not None,
            atomic_inter_scale=[scale] * n_heads if n_heads > 1 else scale,
            atomic_inter_shift=[shift] * n_heads if n_heads > 1 else shift,
        )
    return model.to(torch_dtype).eval()


def _load_source(source: Any) -> Any:
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ModelError(f"MACE model file '{source}' does not exist or is not a file.")

        return load_torch_model(str(source), "cpu")
    return source


def mace_hyperparameters(model: Any) -> dict[str, Any]:
    """Return a MACE model's constructor arguments, read the way ``mace_run_train`` reads them.

    Args:
        model: A ``ScaleShiftMACE`` module.

    Returns:
        The keyword arguments that rebuild the same architecture
        (``mace.tools.scripts_utils.extract_config_mace_model``).

    Raises:
        ModelError: If ``model`` is not a ``ScaleShiftMACE``.
    """
    import torch

    _mace_modules()
    from mace.tools.scripts_utils import extract_config_mace_model

    if not isinstance(model, torch.nn.Module) or type(model).__name__ != "ScaleShiftMACE":
        raise ModelError(
            f"Expected a MACE ScaleShiftMACE model (what mace_run_train and MACE-MP save), got a "
            f"{type(model).__name__}. Load the .model file with torch.load first, not a checkpoint."
        )
    config = extract_config_mace_model(model)
    if "error" in config:
        raise ModelError(f"Cannot read the hyperparameters of this MACE model: {config['error']}.")
    return config


def _comparable(value: Any) -> Any:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, type):
        return value.__name__
    if value is not None and not isinstance(value, (int, float, str, bool, list, tuple, dict)):
        return str(value)  # e3nn Irreps, classes
    return value


def _check_required(config: Mapping[str, Any], require: Mapping[str, Any]) -> None:
    differences = []
    for name, wanted in require.items():
        if name not in config:
            differences.append(f"{name}: not a MACE hyperparameter")
            continue
        have, want = _comparable(config[name]), _comparable(wanted)
        same = (
            np.allclose(have, want)
            if isinstance(have, (int, float, list)) and isinstance(want, (int, float, list))
            else have == want
        )
        if not same:
            differences.append(f"{name}: model has {have!r}, requested {want!r}")
    if differences:
        raise ModelError(
            "The source model does not have the requested hyperparameters ("
            + "; ".join(differences)
            + "). Graft onto a model built with them, or drop them from the request."
        )


def _construct(source: Any, config: dict[str, Any], seed: int) -> Any:
    """Build ``type(source)(**config)`` in the source's dtype and on its device (random weights)."""
    import torch

    dtype = next(source.parameters()).dtype
    with _default_dtype(dtype), torch.random.fork_rng():
        torch.manual_seed(seed)
        model = type(source)(**config)
    return model.to(dtype=dtype, device=next(source.parameters()).device)


def _rebuild(source: Any, config: dict[str, Any], seed: int) -> Any:
    """Build ``type(source)(**config)`` and load every source weight; only embedding weights may be new."""
    model = _construct(source, config, seed)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    foreign = [key for key in missing if not key.startswith(_EMBEDDING_PREFIXES)] + list(unexpected)
    if foreign:
        raise ModelError(
            "Rebuilding the MACE model from its own hyperparameters did not match its weights "
            f"({', '.join(foreign[:5])}); this MACE variant is not supported."
        )
    return model


def graft_charge_embedding(
    source: Any,
    mode: str = DEFAULT_CHARGE_MODE,
    emb_dim: int = 8,
    *,
    embedding_readout: bool = False,
    require: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Any:
    """Add a charge embedding to a trained, charge-blind MACE model without changing its predictions.

    The new model has the source's hyperparameters and weights plus a bias-free continuous
    ``embedding_specs`` entry for ``mode``. The embedding's inner layers get PyTorch's random
    initialisation; its output projection (and the optional embedding readout) start at zero, so the
    grafted model reproduces the source's energies and forces exactly for every charge. The zero
    projection is not a dead point: its gradient is ``silu'(0) * h(q) = h(q) / 2``, with ``h(q)``
    the (random, non-zero for ``q != 0``) inner embedding, so fine-tuning on charged frames moves it.

    Args:
        source: A ``ScaleShiftMACE`` module or the path of a ``.model`` file.
        mode: Charge mode, one of ``CHARGE_MODES``.
        emb_dim: Width of the embedding MLP.
        embedding_readout: Also add MACE's embedding readout (zero-initialised).
        require: Hyperparameters the source must have (e.g. ``{"r_max": 5.0}``), names as in
            :func:`mace_hyperparameters`; any difference raises.
        seed: Seed of the inner embedding weights.

    Returns:
        The grafted model, same dtype and device as the source, in eval mode.

    Raises:
        ModelError: If the source is not a MACE model, already has an embedding, or differs from
            ``require``.
    """
    import torch

    model = _load_source(source)
    config = mace_hyperparameters(model)
    existing = detect_charge_mode(model)
    if getattr(model, "embedding_specs", None) or hasattr(model, "joint_embedding"):
        raise ModelError(
            f"The source model already has an embedding ({existing or 'not a charge'} mode: "
            f"{sorted(model.embedding_specs)}). Fine-tune it directly instead of grafting another one."
        )
    if require:
        _check_required(config, require)
    config["embedding_specs"] = charge_embedding_specs(mode, emb_dim)
    config["use_embedding_readout"] = bool(embedding_readout)
    grafted = _rebuild(model, config, seed)
    with torch.no_grad():
        # project = Linear(no bias) -> SiLU; a zero weight makes the added features exactly 0.
        grafted.joint_embedding.project[0].weight.zero_()
        if embedding_readout:
            for parameter in grafted.embedding_readout.parameters():
                parameter.zero_()
    return grafted.train(model.training)


def add_readout_heads(source: Any, heads: Sequence[str] = ("pbe", "hse")) -> Any:
    """Give a single-head MACE model several readout heads sharing its body (multi-fidelity).

    Each head starts as an exact copy of the source's readout, isolated-atom energies, scale and
    shift (MACE's own ``load_foundations_elements`` copies the readouts), so every head predicts what
    the source predicts until fine-tuned on its own level of theory. A charge embedding, if any, is
    kept. For training with ``mace_run_train``, heads are declared in the YAML ``heads:`` section
    instead; this function is for grafted models and tests.

    Args:
        source: A single-head ``ScaleShiftMACE`` module or a ``.model`` path.
        heads: Names of the new heads (at least two, unique).

    Returns:
        The multi-head model (same dtype and device as the source).

    Raises:
        ModelError: If the source already has several heads or ``heads`` is invalid.
    """
    _mace_modules()
    from mace.tools.finetuning_utils import load_foundations_elements
    from mace.tools.utils import AtomicNumberTable

    model = _load_source(source)
    config = mace_hyperparameters(model)
    names = [str(h) for h in heads]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ModelError(f"Give at least two distinct head names, got {names!r}.")
    if len(getattr(model, "heads", ["Default"])) > 1:
        raise ModelError(f"The source model already has heads {model.heads}; start from a single-head model.")
    n = len(names)
    config["heads"] = names
    config["atomic_energies"] = np.tile(np.asarray(config["atomic_energies"]).reshape(1, -1), (n, 1))
    config["atomic_inter_scale"] = np.repeat(np.asarray(config["atomic_inter_scale"]).reshape(-1)[:1], n)
    config["atomic_inter_shift"] = np.repeat(np.asarray(config["atomic_inter_shift"]).reshape(-1)[:1], n)
    multi = _construct(model, config, seed=0)
    dtype = next(model.parameters()).dtype
    load_foundations_elements(
        multi,
        model,
        AtomicNumberTable([int(z) for z in model.atomic_numbers]),
        load_readout=True,
        use_shift=True,
        use_scale=True,
        max_L=config["hidden_irreps"].lmax,
        default_dtype=dtype,
    )
    return multi.to(dtype).train(model.training)
