"""What ``snb-ml train --base chgnet`` does: one typed settings object, every default measured.

The defaults are the recipe measured best on a real ShakeNBreak search (docs/training.md, "Fine-tuning
CHGNet": a model fine-tuned on one defect's earlier DFT search recovers its ground state from unseen
starting structures and ranks it lowest).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError, ModelError
from snb_ml.relaxers.base import check_device_name

#: Bundled CHGNet weights (they ship in the chgnet wheel: no download).
PRETRAINED = ("0.3.0", "0.2.0", "r2scan")
FREEZE_CHOICES = ("none", "embeddings", "readout")
ENERGY_LOSS_CHOICES = ("per-cell", "per-atom")
REFERENCE_CHOICES = ("atomref", "none")
MINIMA_FORCE_CHOICES = ("zero", "none")
#: Settings that may differ between a run and its ``--restart`` (they do not change the result).
RESTART_FREE = ("restart", "threads")


@dataclass
class ChgnetSettings:
    """Options of a CHGNet fine-tune (``snb-ml train --base chgnet``).

    Attributes:
        name: Model name: the result is ``MODEL_DIR/<name>.pth.tar`` (loads with ``CHGNet.from_file`` and
            ``--relaxer chgnet --model``).
        model: Base weights: a bundled name (``0.3.0``, ``0.2.0``, ``r2scan``) or a saved CHGNet file
            (e.g. the previous round's fine-tuned model).
        epochs: Training epochs (cosine learning-rate decay over all of them, CHGNet's default).
        lr: Initial learning rate (Adam).
        batch_size: Structures per batch.
        freeze: ``none`` trains every weight; ``embeddings`` freezes the atom/bond/angle embeddings and
            basis expansions; ``readout`` also freezes every interaction block but the last atom
            convolution (the freezing of CHGNet's fine-tuning example). The composition model
            (AtomRef) is never trained by gradient descent (see ``energy_reference``).
        energy_loss: ``per-cell``: the loss compares total energies (eV per cell), so a 0.75 eV error in a
            64-atom cell weighs what it costs the ranking; ``per-atom``: CHGNet's own loss on eV/atom, in
            which the same error is 12 meV.
        energy_weight: Weight of the energy term (CHGNet's ``energy_loss_ratio``).
        force_weight: Weight of the force term (eV/Å components).
        stress_weight: Weight of the stress term (GPa); ``0`` trains energies and forces only (defect
            relaxations keep the cell fixed). Above 0 every training frame needs ``REF_stress``.
        energy_reference: ``atomref``: before training, refit CHGNet's per-element reference energies
            (its AtomRef) by least squares to the neutral frames' residuals, so a different functional,
            code or POTCAR set costs a per-element shift, not network capacity; charged defect states
            (CHGNet is charge-blind) get one energy offset per defect and charge removed from their
            labels, so only their relative energies are learnt. ``none``: labels as they are.
        minima_forces: ``zero``: the zero forces of ``CONTCAR`` + yaml minima are trained (a DFT minimum
            is a stationary point); ``none``: only their energies are.
        augment: Rattled copies per DFT minimum added to training, labelled by Δ-learning from the base
            model: ``E = E_DFT(min) + E_base(rattled) − E_base(min)``,
            ``F = F_base(rattled) − F_base(min)``; they keep the base model's curvature around each DFT
            minimum while moving the minimum's energy. ``0``: none.
        rattle: Standard deviation (Å) of the Gaussian displacements of those copies.
        head: Level of theory to train on when the dataset holds several (CHGNet has one energy scale).
        seed: Seed of weights shuffling and rattling.
        device: ``cpu`` or ``cuda``.
        threads: Torch threads (``None``: torch's default).
        restart: Resume from the run's checkpoint in ``MODEL_DIR``.
    """

    name: str = "chgnet_model"
    model: str = "0.3.0"
    epochs: int = 60
    lr: float = 1e-3
    batch_size: int = 4
    freeze: str = "none"
    energy_loss: str = "per-cell"
    energy_weight: float = 1.0
    force_weight: float = 1.0
    stress_weight: float = 0.0
    energy_reference: str = "atomref"
    minima_forces: str = "zero"
    augment: int = 0
    rattle: float = 0.05
    head: str | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    restart: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for a value CHGNet would reject late or misread."""
        for value, choices, option in (
            (self.freeze, FREEZE_CHOICES, "--freeze"),
            (self.energy_loss, ENERGY_LOSS_CHOICES, "--energy-loss"),
            (self.energy_reference, REFERENCE_CHOICES, "--energy-reference"),
            (self.minima_forces, MINIMA_FORCE_CHOICES, "--minima-forces"),
        ):
            if value not in choices:
                raise InputError(f"{option} must be one of {', '.join(choices)}, got {value!r}.")
        try:
            check_device_name(self.device, ("cpu", "cuda"))
        except ModelError as exc:
            raise InputError(f"--device: {exc}") from exc
        if self.epochs < 1:
            raise InputError(f"--epochs must be at least 1, got {self.epochs}.")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr}.")
        if min(self.energy_weight, self.force_weight, self.stress_weight) < 0:
            raise InputError("Loss weights must not be negative.")
        if self.augment < 0 or self.rattle < 0:
            raise InputError("--augment and --rattle must not be negative.")
        if self.model not in PRETRAINED and not Path(self.model).is_file():
            raise InputError(
                f"CHGNet base model '{self.model}' is neither a bundled model ({', '.join(PRETRAINED)}) "
                "nor an existing file (a model written by `snb-ml train --base chgnet`)."
            )
        if not self.name or any(c in self.name for c in "/\\ "):
            raise InputError(f"Model name {self.name!r} must be a plain file stem (no spaces or slashes).")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-friendly data."""
        return asdict(self)

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """Return ``name: recorded -> now`` for each setting (but ``restart``/``threads``) that changed."""
        changed = []
        for item in fields(self):
            if item.name in RESTART_FREE:
                continue
            now = getattr(self, item.name)
            if recorded.get(item.name) != now:
                changed.append(f"{item.name}: {recorded.get(item.name)!r} -> {now!r}")
        return changed
