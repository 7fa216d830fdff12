"""Training settings and the ``mace_run_train`` YAML they become."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY, STRESS_KEY
from snb_ml.errors import InputError, ModelError
from snb_ml.models import charge_embedding_specs
from snb_ml.models.charge_reference import REFERENCE_ORDERS, dielectric_tensor
from snb_ml.relaxers.base import check_device_name
from snb_ml.training.frames import NO_CHARGE
from snb_ml.training.targets import ENERGY_LOSSES

#: Charge modes accepted by ``snb-ml train --charge-mode``.
TRAIN_CHARGE_MODES = ("site", "global", "intensive", NO_CHARGE)


@dataclass
class TrainSettings:
    """What ``snb-ml train`` does; every field has a small-data default.

    Attributes:
        name: Model name: the result is ``MODEL_DIR/<name>.model``.
        charge_mode: ``site`` (default), ``global``, ``intensive`` or ``none`` (charge-blind).
        foundation: A MACE ``.model`` to fine-tune (the charge embedding is grafted onto it first);
            ``None`` trains from scratch.
        epochs: Training epochs (stage two, with the higher energy weight, starts at 75 %).
        device: ``cpu`` or ``cuda``.
        seed: Random seed (MACE's weights, shuffling and validation split).
        batch_size: Structures per batch (capped by the number of training frames).
        lr: Learning rate of stage one; ``None``: 1e-2 from scratch, 5e-3 when fine-tuning (from
            scratch 1e-2 fitted small defect datasets faster and more reliably than 5e-3).
        swa_lr: Learning rate of stage two.
        energy_loss: ``per_cell`` (default): the energy term is the squared error of the whole cell
            (eV²), what transition levels are made of; ``per_atom``: MACE's own, squared error per
            atom (see :mod:`snb_ml.training.targets`).
        energy_weight: Energy weight of stage one (``None``: 1 per cell, 100 per atom).
        forces_weight: Forces weight of stage one.
        swa_energy_weight: Energy weight of stage two, raised because defect energies matter most
            (``None``: 10 per cell, 1000 per atom).
        swa_forces_weight: Forces weight of stage two.
        balance_charge_states: Give each charge state of each defect the same total energy weight
            (a charge state with a single ionic step otherwise hardly counts next to long relaxations).
        charge_reference: Explicit charge terms per head, fitted by least squares before the network
            trains (:mod:`snb_ml.models.charge_reference`): ``quadratic`` (reservoir ``q · E_ref``
            and curvature ``½ U q²``), ``linear`` (``q · E_ref``) or ``none``; ``None``:
            ``quadratic`` for charge-aware modes, ``none`` for charge mode ``none``.
        dielectric: Dielectric constant (scalar, 3 diagonal values or 3x3) of the explicit
            point-charge image term ``−E_pc(q; cell, ε)``; ``None``: no such term.
        start_swa: Epoch at which stage two starts (``None``: 75 % of ``epochs``; 0 or more than
            ``epochs``: never).
        ema_decay: Decay of MACE's exponential moving average of the weights.
        r_max: Cut-off radius in Å (scratch only; a foundation keeps its own).
        num_channels: Channels per irrep (scratch only).
        max_L: Highest irrep of the hidden features (scratch only).
        max_ell: Highest spherical harmonic of the edges (scratch only).
        num_interactions: Message-passing layers (scratch only).
        correlation: Product-basis correlation order (scratch only).
        radial_mlp: Hidden widths of the radial MLP (scratch only).
        emb_dim: Width of the charge embedding.
        embedding_readout: Add MACE's per-atom energy readout of the embedded features, a direct
            path from the charge feature to the energy: on the doped MgO example it cut the held-out
            energy error after 6 epochs from 8.8 to 1.4 eV per cell.
        marker_radius: Defect marker radius (Å) for ``site`` mode; ``None``: 1.3 bond lengths.
        e0s: MACE ``E0s``: ``None`` picks ``average`` from scratch and ``estimated`` (fitted with the
            foundation's predictions) when fine-tuning.
        scaling: MACE's interaction-energy scaling (``no_scaling``, ``rms_forces_scaling``,
            ``std_scaling``). ``no_scaling`` by default: DFT relaxations end with tiny forces, and
            scaling by their RMS shrinks the model's energy range until charge offsets cannot be learnt.
        valid_fraction: Fraction of training frames MACE holds out for a head without validation
            frames.
        restart: Continue from the latest checkpoint in ``MODEL_DIR`` (MACE's ``--restart_latest``).
        threads: Torch threads of the training process (``None``: torch's default).
        extra: Further ``mace_run_train`` options, written into the YAML as given (override ours).
    """

    name: str = "defect_model"
    charge_mode: str = "site"
    foundation: str | None = None
    epochs: int = 60
    device: str = "cpu"
    seed: int = 123
    batch_size: int = 2
    lr: float | None = None
    swa_lr: float = 1e-3
    energy_loss: str = "per_cell"
    energy_weight: float | None = None
    forces_weight: float = 10.0
    swa_energy_weight: float | None = None
    swa_forces_weight: float = 10.0
    balance_charge_states: bool = True
    charge_reference: str | None = None
    dielectric: Any = None
    start_swa: int | None = None
    ema_decay: float = 0.99
    r_max: float = 5.0
    num_channels: int = 16
    max_L: int = 0
    max_ell: int = 2
    num_interactions: int = 2
    correlation: int = 2
    radial_mlp: tuple[int, ...] = (32, 32)
    emb_dim: int = 8
    embedding_readout: bool = True
    marker_radius: float | None = None
    e0s: str | None = None
    scaling: str = "no_scaling"
    valid_fraction: float = 0.1
    restart: bool = False
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`InputError` for values MACE would reject late or misread."""
        if self.charge_mode not in TRAIN_CHARGE_MODES:
            raise InputError(
                f"Unknown charge mode {self.charge_mode!r}; use one of {', '.join(TRAIN_CHARGE_MODES)}."
            )
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}.")
        try:
            check_device_name(self.device, ("cpu", "cuda"))
        except ModelError as exc:
            raise InputError(f"--device: {exc}") from exc
        if self.foundation is not None and not Path(self.foundation).is_file():
            raise InputError(f"Foundation model '{self.foundation}' is not a file.")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise InputError(f"Model name {self.name!r} must be a plain file stem (no spaces or slashes).")
        if self.energy_loss not in ENERGY_LOSSES:
            raise InputError(
                f"--energy-loss must be one of {', '.join(ENERGY_LOSSES)}, got {self.energy_loss!r}."
            )
        if self.dielectric is not None:
            dielectric_tensor(self.dielectric)
        if self.charge_reference not in (None, "none", *REFERENCE_ORDERS):
            raise InputError(
                f"--charge-reference must be one of quadratic, linear, none; got {self.charge_reference!r}."
            )

    def reference_order(self) -> str | None:
        """Return the fitted explicit terms: ``quadratic``, ``linear`` or ``None`` (resolved)."""
        if self.charge_reference is None:
            return None if self.charge_mode == NO_CHARGE else "quadratic"
        return None if self.charge_reference == "none" else self.charge_reference

    def energy_weights(self) -> tuple[float, float]:
        """Return the (stage one, stage two) energy weights, defaults resolved for the energy loss."""
        per_cell = self.energy_loss == "per_cell"
        first = self.energy_weight if self.energy_weight is not None else (1.0 if per_cell else 100.0)
        second = (
            self.swa_energy_weight if self.swa_energy_weight is not None else (10.0 if per_cell else 1000.0)
        )
        return float(first), float(second)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON-friendly data."""
        data = asdict(self)
        data["radial_mlp"] = list(self.radial_mlp)
        if self.dielectric is not None:
            data["dielectric"] = dielectric_tensor(self.dielectric).tolist()
        return data


def stage_two_start(settings: TrainSettings) -> int | None:
    """Return the epoch at which stage two starts, or ``None`` when it never does."""
    if settings.start_swa is None:
        start = max(1, (settings.epochs * 3) // 4)
        return start if start < settings.epochs else None
    return settings.start_swa if 0 < settings.start_swa < settings.epochs else None


def mace_config(
    settings: TrainSettings,
    heads: dict[str, dict[str, str]],
    work_dir: str | Path,
    n_train: int,
    foundation: str | Path | None = None,
) -> dict[str, Any]:
    """Return the ``mace_run_train`` YAML options for ``settings``.

    Args:
        settings: The training settings.
        heads: ``{head: {"train_file": ..., "valid_file": ...}}`` from
            :func:`snb_ml.training.frames.write_head_files`.
        work_dir: MACE's working folder (checkpoints, logs, results, the trained models).
        n_train: Number of training frames (caps the batch size: MACE drops incomplete batches).
        foundation: The (grafted) foundation model file to fine-tune, if any.

    Returns:
        A dict ready for ``yaml.safe_dump``.
    """
    work_dir = str(Path(work_dir).resolve())
    head_entries = {}
    for head, files in heads.items():
        entry = dict(files)
        if "valid_file" not in entry:
            entry["valid_fraction"] = settings.valid_fraction
        head_entries[head] = entry
    config: dict[str, Any] = {
        "name": settings.name,
        "seed": settings.seed,
        "work_dir": work_dir,
        "model_dir": work_dir,
        # MACE's --device takes "cuda" only; cuda:N is passed as CUDA_VISIBLE_DEVICES=N (see trainer.py).
        "device": "cuda" if settings.device.startswith("cuda") else settings.device,
        "default_dtype": "float64",
        "energy_key": ENERGY_KEY,
        "forces_key": FORCES_KEY,
        "stress_key": STRESS_KEY,
        "loss": "weighted",
        "energy_weight": settings.energy_weights()[0],
        "forces_weight": settings.forces_weight,
        "lr": settings.lr or (5e-3 if foundation is not None else 1e-2),
        "ema": True,
        "ema_decay": settings.ema_decay,
        "max_num_epochs": settings.epochs,
        "batch_size": max(1, min(settings.batch_size, n_train)),
        "valid_batch_size": max(1, min(settings.batch_size * 2, 16)),
        "scaling": settings.scaling,
        "error_table": "TotalMAE",  # energy error per cell: what transition levels are made of
        "eval_interval": 1,
        "keep_checkpoints": False,
        "save_cpu": True,
        "restart_latest": bool(settings.restart),
        "heads": head_entries,
    }
    start = stage_two_start(settings)
    if start is not None:
        config.update(
            swa=True,
            start_swa=start,
            swa_lr=settings.swa_lr,
            swa_energy_weight=settings.energy_weights()[1],
            swa_forces_weight=settings.swa_forces_weight,
        )
    if settings.charge_mode != NO_CHARGE:
        # A string: mace parses it with ast.literal_eval. The data keys follow from it.
        config["embedding_specs"] = repr(charge_embedding_specs(settings.charge_mode, settings.emb_dim))
        config["use_embedding_readout"] = bool(settings.embedding_readout)
    if foundation is not None:
        config.update(
            foundation_model=str(Path(foundation).resolve()),
            multiheads_finetuning=False,
            E0s=settings.e0s or "estimated",
        )
    else:
        config.update(
            model="MACE",
            E0s=settings.e0s or "average",
            r_max=settings.r_max,
            num_channels=settings.num_channels,
            max_L=settings.max_L,
            max_ell=settings.max_ell,
            num_interactions=settings.num_interactions,
            correlation=settings.correlation,
            radial_MLP=repr(list(settings.radial_mlp)),
            MLP_irreps=f"{settings.num_channels}x0e",
        )
    config.update(settings.extra)
    return config
