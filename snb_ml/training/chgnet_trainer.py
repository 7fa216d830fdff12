"""``snb-ml train --base chgnet``: fine-tune CHGNet (weights from its wheel, so offline) with its own Trainer.

CHGNet's ``Trainer`` runs the epochs (Adam, cosine learning-rate decay); snb_ml prepares the labels
(:mod:`snb_ml.training.chgnet_data`), replaces its loss by :class:`SnbLoss` (per-cell energies, force
labels that may be missing), freezes what the settings say, writes one atomic checkpoint per epoch
(``--restart`` resumes from it) and saves a file that ``CHGNet.from_file`` — and so
``--relaxer chgnet --model FILE`` — loads.

Output folder: ``<name>.pth.tar`` (the model, with the defect states it was fine-tuned on),
``training.json`` (settings, frame counts, the defect states, energy references, per-epoch errors,
errors before/after), ``settings.json`` (what a restart must match),
``data/`` (the prepared training labels), ``checkpoint.pth.tar`` and ``train.log`` (CHGNet's output).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY
from snb_ml.errors import InputError, OutputError
from snb_ml.progress import progress_bar
from snb_ml.safe_write import atomic_path, write_text
from snb_ml.training.chgnet_config import PRETRAINED, ChgnetSettings
from snb_ml.training.chgnet_data import (
    AUGMENTED,
    EnergyReference,
    FrameDataset,
    apply_reference,
    check_training_frames,
    fit_reference,
    group_of,
    has_stress,
    is_minimum,
    predict_frames,
    rattled_copies,
)
from snb_ml.training.frames import defect_states, read_dataset, read_split, write_frames
from snb_ml.training.record import write_record

SETTINGS_NAME = "settings.json"
CHECKPOINT_NAME = "checkpoint.pth.tar"
LOG_NAME = "train.log"
BASE_NAME = "chgnet"  # training.json "base": how snb-ml evaluate tells the two routes apart
#: Layers each ``freeze`` choice fixes (attribute names of chgnet.model.CHGNet).
FROZEN = {
    "none": (),
    "embeddings": (
        "atom_embedding",
        "bond_basis_expansion",
        "angle_basis_expansion",
        "bond_embedding",
        "angle_embedding",
        "bond_weights_ag",
        "bond_weights_bg",
    ),
}
FROZEN["readout"] = FROZEN["embeddings"] + ("atom_conv_layers[:-1]", "bond_conv_layers", "angle_layers")


@dataclass
class ChgnetTrainResult:
    """What a CHGNet fine-tune produced (everything a caller such as an active-learning loop needs).

    Attributes:
        model_path: The model file (``--relaxer chgnet --model model_path``).
        model_dir: The output folder.
        history: Per epoch ``{"epoch", "train": {"e", "f"}, "valid": {"e", "f"}}`` mean absolute errors
            (``e`` in eV per cell with the per-cell loss, eV/atom with the per-atom one; ``f`` eV/Å).
        before: Errors of the base model on the training and validation frames (``{"train": {...},
            "valid": {...}}``, see :func:`frame_errors`).
        after: The same for the fine-tuned model.
        reference: The energy references applied (element shifts, group offsets).
        frames: Frame counts (train, valid, minima, augmented).
        seconds: Wall time of the whole run.
    """

    model_path: Path
    model_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def load_base(model: str, device: str = "cpu"):
    """Return a CHGNet model: bundled weights by name or a saved file."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(_Sink()):
        if model in PRETRAINED:
            return CHGNet.load(model_name=model, use_device=device, verbose=False)
        return CHGNet.from_file(model)


class _Sink:
    """A write-only stream that drops CHGNet's banners."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


def freeze_layers(model, choice: str) -> int:
    """Fix the layers of a ``freeze`` choice; return the number of trainable parameters left."""
    for parameter in model.parameters():
        parameter.requires_grad = True
    for name in FROZEN[choice]:
        modules = list(getattr(model, name[:-5]))[:-1] if name.endswith("[:-1]") else [getattr(model, name)]
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad = False
    for parameter in model.composition_model.parameters():
        parameter.requires_grad = False
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _make_loss(settings: ChgnetSettings, targets: str):
    """Build :class:`SnbLoss` (torch is imported only when training)."""
    import torch
    from torch import nn

    class SnbLoss(nn.Module):
        """Energy (per cell or per atom), forces and stress; missing (NaN) labels are skipped.

        Returns the keys CHGNet's Trainer reads: ``loss`` and ``{e,f,s}_MAE`` with ``_MAE_size``.
        """

        def __init__(self) -> None:
            super().__init__()
            self.per_cell = settings.energy_loss == "per-cell"
            self.weights = {
                "e": settings.energy_weight,
                "f": settings.force_weight,
                "s": settings.stress_weight,
            }

        @staticmethod
        def _term(target, prediction):
            mask = ~torch.isnan(target)
            if not bool(mask.any()):
                zero = prediction.sum() * 0.0
                return zero, zero.detach(), 0
            diff = prediction[mask] - target[mask]
            return (diff**2).mean(), diff.abs().mean().detach(), int(mask.sum())

        def forward(self, labels: dict, prediction: dict) -> dict:
            out: dict[str, Any] = {"loss": 0.0}
            energy_target, energy = labels["e"], prediction["e"]
            if self.per_cell:
                atoms = prediction["atoms_per_graph"].to(energy.dtype)
                energy_target, energy = energy_target * atoms, energy * atoms
            pairs = {"e": (energy_target, energy)}
            if "f" in targets:
                pairs["f"] = (torch.cat(labels["f"], dim=0), torch.cat(prediction["f"], dim=0))
            if "s" in targets:
                pairs["s"] = (torch.cat(labels["s"], dim=0), torch.cat(prediction["s"], dim=0))
            for key, (target, predicted) in pairs.items():
                loss, mae, size = self._term(target, predicted)
                out["loss"] = out["loss"] + self.weights[key] * loss
                out[f"{key}_MAE"], out[f"{key}_MAE_size"] = mae, size
            return out

    return SnbLoss()


def _trainer_class(on_epoch: Callable[[int, dict, dict], None]):
    """CHGNet's Trainer whose per-epoch checkpoint is one atomic file and a progress callback."""
    import torch
    from chgnet.trainer import Trainer

    class SnbTrainer(Trainer):
        def save_checkpoint(self, epoch: int, mae_error: dict, save_dir: str) -> None:
            """Write ``checkpoint.pth.tar`` atomically (CHGNet deletes the old file first)."""
            state = {
                "model": self.model.as_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "training_history": self.training_history,
                "trainer_args": self.trainer_args,
            }
            with atomic_path(Path(save_dir) / CHECKPOINT_NAME) as temporary:
                torch.save(state, temporary)
            train = {k: v["train"][-1] for k, v in self.training_history.items()}
            on_epoch(epoch, train, dict(mae_error))

    return SnbTrainer


def frame_errors(model, frames: Sequence, labels_energy: Sequence[float] | None = None) -> dict[str, Any]:
    """Errors of a CHGNet model on frames: per-cell energy, relative energy, forces, ranking.

    Args:
        model: A CHGNet model.
        frames: Frames with ``REF_energy`` and ``REF_forces`` (minima's zero forces are left out of the
            force error).
        labels_energy: Energies to compare with instead of ``REF_energy`` (e.g. offset labels).

    Returns:
        ``n_frames``, ``energy_mae`` (eV/cell), ``relative_energy_mae`` (eV/cell, energies measured
        from each group's lowest-label frame), ``force_mae`` (eV/Å, frames with real force labels),
        ``spearman`` (mean over groups of at least 3 frames).
    """
    from scipy.stats import spearmanr

    if not frames:
        return {"n_frames": 0}
    energies, forces = predict_frames(model, frames)
    labels = np.array(
        labels_energy if labels_energy is not None else [float(a.info[ENERGY_KEY]) for a in frames]
    )
    groups: dict[str, list[int]] = {}
    for index, atoms in enumerate(frames):
        groups.setdefault(group_of(atoms), []).append(index)
    relative, rhos = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        ref = min(members, key=lambda i: labels[i])
        relative += [(energies[i] - energies[ref]) - (labels[i] - labels[ref]) for i in members if i != ref]
        if len(members) >= 3 and np.ptp(labels[members]) > 0 and np.ptp(energies[members]) > 0:
            rhos.append(float(spearmanr(labels[members], energies[members]).statistic))
    real = [i for i, atoms in enumerate(frames) if not is_minimum(atoms)]
    force_errors = [np.abs(forces[i] - np.asarray(frames[i].arrays[FORCES_KEY])).ravel() for i in real]
    return {
        "n_frames": len(frames),
        "energy_mae": float(np.mean(np.abs(energies - labels))),
        "relative_energy_mae": float(np.mean(np.abs(relative))) if relative else None,
        "force_mae": float(np.mean(np.concatenate(force_errors))) if force_errors else None,
        "spearman": float(np.mean(rhos)) if rhos else None,
    }


def _prepare(
    data: dict[str, list], model_dir: Path, settings: ChgnetSettings, model, echo: Callable[[str], None]
) -> tuple[dict[str, list], EnergyReference, dict[str, int]]:
    """Augment and reference the checked frames; write them to ``model_dir/data``."""
    train, valid = data["train"], data.get("valid", [])
    minima = [a for a in train if is_minimum(a)]
    augmented = rattled_copies(minima, model, settings.augment, settings.rattle, settings.seed)
    reference = EnergyReference()
    if settings.energy_reference == "atomref":
        base_energies, _ = predict_frames(model, train)
        reference = fit_reference(train, base_energies)
        apply_reference(model, train + augmented + valid, reference)
        shifts = ", ".join(f"{s} {x:+.4f}" for s, x in reference.element_shifts.items())
        echo(
            f"Energy reference: AtomRef shifts (eV/atom) {shifts}; "
            + (f"offsets of charged states {reference.group_offsets}; " if reference.group_offsets else "")
            + f"mean |label - base| {reference.residual_mae['before']:.3f} -> "
            f"{reference.residual_mae['after']:.3f} eV/cell"
        )
    for atoms in train + valid:
        atoms.info["snb_ml_label_energy"] = float(atoms.info[ENERGY_KEY])
    write_frames(train + augmented, model_dir / "data" / "train.xyz")
    write_frames(valid, model_dir / "data" / "valid.xyz")
    counts = {
        "train": len(train),
        "valid": len(valid),
        "minima": len(minima),
        AUGMENTED: len(augmented),
        "bulk": sum(str(a.info.get("config_type")) == "bulk" for a in train),
    }
    return {"train": train + augmented, "valid": valid}, reference, counts


def _loaders(data: dict[str, list], model, settings: ChgnetSettings, targets: str):
    import torch
    from chgnet.data.dataset import collate_graphs
    from torch.utils.data import DataLoader

    with_stress = "s" in targets
    train = FrameDataset(data["train"], model.graph_converter, settings.minima_forces, with_stress)
    # Without validation frames, CHGNet's Trainer still needs a loader: the training frames stand in.
    valid_frames = data["valid"] or data["train"]
    valid = FrameDataset(valid_frames, model.graph_converter, settings.minima_forces, with_stress)
    generator = torch.Generator().manual_seed(settings.seed)
    size = max(1, min(settings.batch_size, len(train)))
    return (
        DataLoader(train, batch_size=size, shuffle=True, collate_fn=collate_graphs, generator=generator),
        DataLoader(valid, batch_size=size, shuffle=False, collate_fn=collate_graphs),
    )


def _check_output(model_dir: Path, settings: ChgnetSettings) -> dict[str, Any] | None:
    """Return the recorded settings of a run to resume, or ``None`` for a fresh start.

    Raises:
        OutputError: A previous run is there and ``restart`` is off, or the settings changed.
    """
    recorded_path = model_dir / SETTINGS_NAME
    if not recorded_path.is_file():
        if model_dir.is_dir() and any(model_dir.iterdir()) and not settings.restart:
            raise OutputError(f"{model_dir} exists and is not empty; choose another -o.")
        return None
    if not settings.restart:
        raise OutputError(
            f"{model_dir} holds a previous CHGNet training; pass --restart to resume it, or choose another "
            "-o (nothing was overwritten)."
        )
    recorded = json.loads(recorded_path.read_text())
    changed = settings.differences(recorded["settings"])
    if changed:
        raise InputError(
            f"--restart with other settings than the run in {model_dir} ({'; '.join(changed)}); resume with "
            "the same options or train into another folder."
        )
    return recorded


def train_chgnet(
    dataset_dir: str | Path,
    model_dir: str | Path,
    settings: ChgnetSettings | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> ChgnetTrainResult:
    """Fine-tune CHGNet on an ``snb-ml dataset`` folder.

    Args:
        dataset_dir: Folder with ``train.xyz`` (and ``valid.xyz``) from ``snb-ml dataset``.
        model_dir: Output folder (created; must be new or empty unless ``settings.restart``).
        settings: Options (defaults: :class:`ChgnetSettings`, the measured recipe).
        echo: Where messages go.
        progress: Show a progress bar over epochs.
        on_epoch: Called after each epoch's checkpoint is written with ``{"epoch", "train", "valid"}``
            (mean absolute errors); an exception raised there stops the run, which ``restart`` resumes.

    Returns:
        The :class:`ChgnetTrainResult`.

    Raises:
        InputError: Unusable data (one frame, mixed heads, elements beyond Z = 94) or settings.
        OutputError: A previous run in ``model_dir`` without ``restart``.
    """
    import torch

    start = time.perf_counter()
    settings = settings or ChgnetSettings()
    settings.check()
    if settings.model not in PRETRAINED:
        settings.model = str(Path(settings.model).resolve())
    dataset_dir = Path(dataset_dir).resolve()
    model_dir = Path(model_dir).resolve()
    recorded = _check_output(model_dir, settings)
    checkpoint = model_dir / CHECKPOINT_NAME
    resume = recorded is not None and checkpoint.is_file()
    if not resume:  # checked before anything is written
        checked = check_training_frames(read_dataset(dataset_dir, ("train", "valid")), settings.head)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model_dir.mkdir(parents=True, exist_ok=True)
    base = load_base(settings.model, settings.device)
    model = load_base(settings.model, settings.device)
    if resume:
        data = {split: read_split(model_dir / "data", split) for split in ("train", "valid")}
        reference = EnergyReference(**{k: v for k, v in recorded["reference"].items()})
        counts = recorded["frames"]
        echo(f"Resuming the training in {model_dir} from its checkpoint.")
    else:
        data, reference, counts = _prepare(checked, model_dir, settings, model, echo)
        write_text(
            model_dir / SETTINGS_NAME,
            json.dumps(
                {
                    "dataset": str(dataset_dir),
                    "settings": settings.to_dict(),
                    "reference": reference.to_dict(),
                    "frames": counts,
                },
                indent=2,
            ),
        )
    fine_tuned_on = defect_states(data["train"])
    has_s = settings.stress_weight > 0
    if has_s and not has_stress(data["train"]):
        raise InputError(
            "--stress-weight > 0 needs REF_stress on every training frame; yaml minima and rattled copies "
            "have none. Train with --stress-weight 0 or leave them out."
        )
    # Forces cost a second derivative through the model in every step (time and memory); a dataset
    # whose training frames carry no force label at all (yaml minima with --minima-forces none)
    # trains on energies alone.
    has_f = any(not (settings.minima_forces == "none" and is_minimum(a)) for a in data["train"])
    targets = "e" + ("f" if has_f else "") + ("s" if has_s else "")
    history: list[dict[str, Any]] = []
    bar = (
        progress_bar(total=settings.epochs, desc="epochs", unit="epoch", file=sys.stderr)
        if progress
        else None
    )

    def after_epoch(epoch: int, train: dict, valid: dict) -> None:
        entry = {"epoch": epoch, "train": train, "valid": valid}
        history.append(entry)
        if on_epoch is not None:
            on_epoch(entry)
        if bar is not None:
            bar.n = epoch + 1
            bar.set_postfix_str(
                f"val e {valid.get('e', float('nan')):.3g} f {valid.get('f', float('nan')):.3g}"
            )
            bar.refresh()

    trainer_class = _trainer_class(after_epoch)
    trainer_args = dict(
        targets=targets,
        energy_loss_ratio=settings.energy_weight,
        force_loss_ratio=settings.force_weight,
        stress_loss_ratio=settings.stress_weight,
        optimizer="Adam",
        scheduler="CosLR",
        criterion="MSE",
        epochs=settings.epochs,
        learning_rate=settings.lr,
        print_freq=10**6,
        torch_seed=settings.seed,
        data_seed=settings.seed,
        use_device=settings.device,
    )
    try:
        with open(model_dir / LOG_NAME, "a") as log, contextlib.redirect_stdout(log):
            if resume:
                trainer = trainer_class.load(str(checkpoint))
                model = trainer.model
                if bar is not None:
                    bar.n = trainer.starting_epoch
                    bar.refresh()
            else:
                trainer = trainer_class(model=model, **trainer_args)
            trainable = freeze_layers(model, settings.freeze)
            trainer.criterion = _make_loss(settings, targets)
            train_loader, valid_loader = _loaders(data, model, settings, targets)
            print(f"snb_ml: {trainable:,} trainable parameters, freeze={settings.freeze}")
            trainer.train(train_loader, valid_loader, save_dir=str(model_dir))
    finally:
        if bar is not None:
            bar.close()
    model = trainer.model.to("cpu").eval()
    for stage in (base, model):
        stage.eval()
    model_path = model_dir / f"{settings.name}.pth.tar"
    with atomic_path(model_path) as temporary:
        torch.save(
            {
                "model": model.as_dict(),
                "snb_ml": {
                    "base": settings.model,
                    "settings": settings.to_dict(),
                    "fine_tuned_on": fine_tuned_on,
                },
            },
            temporary,
        )
    before, after = _before_after(base, model, data)
    seconds = time.perf_counter() - start
    past = [
        {"epoch": e, "train": {k: v["train"][e] for k, v in trainer.training_history.items()},
         "valid": {k: v["val"][e] for k, v in trainer.training_history.items()}}
        for e in range(len(trainer.training_history["e"]["train"]))
    ]  # fmt: skip
    record = {
        "base": BASE_NAME,
        "model": model_path.name,
        "dataset": str(dataset_dir),
        "settings": settings.to_dict(),
        "frames": counts,
        "fine_tuned_on": fine_tuned_on,
        "reference": reference.to_dict(),
        "energy_mae_unit": "eV/cell" if settings.energy_loss == "per-cell" else "eV/atom",
        "history": past,
        "before": before,
        "after": after,
        "seconds": round(seconds, 1),
    }
    write_record(model_dir, record)
    echo(
        f"Model written to {model_path} ({seconds:.0f} s). "
        f"Use it with: --relaxer chgnet --model {model_path}\n" + _summary(before, after)
    )
    return ChgnetTrainResult(model_path, model_dir, past, before, after, reference.to_dict(), counts, seconds)


def _before_after(base, model, data: dict[str, list]) -> tuple[dict, dict]:
    """Errors of the base and the fine-tuned model on the (non-augmented) training and validation frames.

    Both are compared with the labels the model was trained on (``snb_ml_label_energy``: DFT energies,
    less the offset of a charged state), so a charged state's offset is not counted as an error.
    """
    before, after = {}, {}
    for split in ("train", "valid"):
        frames = [a for a in data[split] if a.info.get("label_kind") != AUGMENTED]
        labels = [float(a.info.get("snb_ml_label_energy", a.info["REF_energy"])) for a in frames]
        before[split] = frame_errors(base, frames, labels)
        after[split] = frame_errors(model, frames, labels)
    return before, after


def _summary(before: dict, after: dict) -> str:
    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["split  frames  E MAE (eV/cell) base -> tuned  rel. E MAE (eV/cell)  F MAE (eV/Å)  Spearman"]
    for split in ("train", "valid"):
        b, a = before.get(split, {}), after.get(split, {})
        if not b.get("n_frames"):
            continue
        lines.append(
            f"{split:<6} {b['n_frames']:>6}  {fmt(b['energy_mae']):>8} -> {fmt(a['energy_mae']):<8}"
            f"  {fmt(b['relative_energy_mae'])} -> {fmt(a['relative_energy_mae'])}"
            f"  {fmt(b['force_mae'])} -> {fmt(a['force_mae'])}"
            f"  {fmt(b['spearman'], 2)} -> {fmt(a['spearman'], 2)}"
        )
    return "\n".join(lines)
