"""Training the single-step predictor on a pair dataset: resumable, with a progress bar.

Loss: mean squared error of the displacements of real atoms (ghosts excluded), per Cartesian component.
Adam with a cosine learning-rate decay to 5 % over the epochs. After every epoch a checkpoint
(``<name>.ckpt``: weights, optimizer, epoch, best validation error, random states) is written
atomically, so ``--restart`` continues exactly where a killed run stopped; the model with the lowest
validation coordinate MAE is written as ``<name>.pt`` (the training split when there is no validation
split).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError
from snb_ml.predictor.dataset import check_dataset, read_pairs
from snb_ml.predictor.metrics import site_distances
from snb_ml.predictor.model import CHECKPOINT_KIND, Hyperparameters, SingleStepPredictor, collate
from snb_ml.progress import progress_bar
from snb_ml.safe_write import atomic_path, write_text

DEFAULT_LR = 2e-3
FINAL_LR_FRACTION = 0.05


@dataclass
class SingleStepTrainSettings:
    """What ``snb-ml train --kind single-step`` does.

    Attributes:
        name: The model is ``MODEL_DIR/<name>.pt``.
        epochs: Passes over the training pairs.
        batch_size: Structures per optimisation step.
        lr: Peak learning rate (``None``: 2e-3).
        seed: Seed of the weights and the shuffling.
        device: ``cpu`` or ``cuda``.
        features: Channels of the network.
        layers: Interaction blocks.
        radial: Radial basis functions.
        cutoff: Neighbour cutoff (Å).
        marker_radius: Radius (Å) of the site-charge shell; ``None``: 1.3 bond lengths.
        threads: Torch threads (``None``: torch's default).
        restart: Continue from ``<name>.ckpt``.
        max_pairs: Use at most this many training pairs (a seeded subset; ``None``: all).
    """

    name: str = "single_step"
    epochs: int = 60
    batch_size: int = 8
    lr: float | None = None
    seed: int = 0
    device: str = "cpu"
    features: int = 64
    layers: int = 3
    radial: int = 16
    cutoff: float = 5.0
    marker_radius: float | None = None
    threads: int | None = None
    restart: bool = False
    max_pairs: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.features < 1 or self.layers < 1:
            raise InputError("--epochs, --batch-size, --channels and the layer count must be at least 1.")
        if self.cutoff <= 0 or (self.lr is not None and self.lr <= 0):
            raise InputError("--r-max and --lr must be positive.")

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The network size."""
        return Hyperparameters(self.features, self.layers, self.radial, self.cutoff)

    def signature(self) -> dict[str, Any]:
        """Settings a restart must share with the checkpoint."""
        return {
            "hyperparameters": asdict(self.hyperparameters),
            "marker_radius": self.marker_radius,
            "batch_size": self.batch_size,
            "lr": self.lr or DEFAULT_LR,
            "epochs": self.epochs,
            "seed": self.seed,
            "max_pairs": self.max_pairs,
        }


@dataclass
class _Prepared:
    graph: Any
    displacement: np.ndarray  # (real atoms, 3)
    distances: np.ndarray  # distance of each real atom to the defect site (Å)


def _prepare(predictor: SingleStepPredictor, pairs: list, progress: bool, label: str) -> list[_Prepared]:
    prepared = []
    for marked, target, _ in progress_bar(pairs, desc=f"Graphs ({label})", unit="pair", enabled=progress):
        prepared.append(
            _Prepared(predictor.graph(marked), target - marked.atoms.positions, site_distances(marked))
        )
    return prepared


def _batch_tensors(items: list[_Prepared], device: str):
    import torch

    batch = collate([item.graph for item in items], device)
    target = torch.as_tensor(np.concatenate([item.displacement for item in items]), dtype=torch.float32)
    return batch, target.to(device)


def evaluate_prepared(predictor: SingleStepPredictor, items: list[_Prepared], batch_size: int = 32) -> dict:
    """Coordinate MAE (Å) of the model and of the dummy baseline on prepared pairs, all atoms and A5."""
    import torch

    model_error = [0.0, 0.0]
    dummy_error = [0.0, 0.0]
    counts = [0, 0]
    predictor.network.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            batch, target = _batch_tensors(chunk, predictor.device)
            real = batch["real"]
            out = predictor.network(batch)[real].cpu().numpy()
            target = target.cpu().numpy()
            near = np.concatenate([item.distances for item in chunk]) <= 5.0
            for slot, mask in enumerate((np.ones(len(near), dtype=bool), near)):
                model_error[slot] += np.abs(out[mask] - target[mask]).sum()
                dummy_error[slot] += np.abs(target[mask]).sum()
                counts[slot] += 3 * int(mask.sum())
    return {
        "mae": float(model_error[0] / max(counts[0], 1)),
        "dummy_mae": float(dummy_error[0] / max(counts[0], 1)),
        "mae_a5": float(model_error[1] / max(counts[1], 1)),
        "dummy_mae_a5": float(dummy_error[1] / max(counts[1], 1)),
    }


def _lr_factor(epoch: int, epochs: int) -> float:
    progress = min(epoch / max(epochs, 1), 1.0)
    return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))


def train_single_step(
    dataset_dir: str | Path,
    model_dir: str | Path,
    settings: SingleStepTrainSettings,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> Path:
    """Train a single-step predictor on ``dataset_dir`` (``snb-ml single-step dataset`` output).

    Args:
        dataset_dir: Folder with ``train.xyz``, ``valid.xyz``, ``test.xyz`` and ``dataset.json``.
        model_dir: Output folder: ``<name>.pt`` (best model), ``<name>.ckpt``, ``<name>_log.json``.
        settings: Training settings.
        echo: Where messages go.
        progress: Show progress bars.

    Returns:
        The path of the model file.

    Raises:
        InputError: Not a pair dataset, no training pairs, or a restart that does not match.
    """
    import torch

    dataset_dir, model_dir = Path(dataset_dir), Path(model_dir)
    document = check_dataset(dataset_dir)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    train_pairs = read_pairs(dataset_dir / "train.xyz")
    valid_pairs = read_pairs(dataset_dir / "valid.xyz")
    if not train_pairs:
        raise InputError(f"{dataset_dir}/train.xyz holds no pairs; harvest more relaxations.")
    if settings.max_pairs is not None and len(train_pairs) > settings.max_pairs:
        order = np.random.default_rng(settings.seed).permutation(len(train_pairs))[: settings.max_pairs]
        train_pairs = [train_pairs[i] for i in sorted(order)]
    elements = sorted({s for marked, _, _ in train_pairs for s in marked.atoms.get_chemical_symbols()})
    model_dir.mkdir(parents=True, exist_ok=True)
    model_path = model_dir / f"{settings.name}.pt"
    checkpoint_path = model_dir / f"{settings.name}.ckpt"
    log_path = model_dir / f"{settings.name}_log.json"

    torch.manual_seed(settings.seed)
    predictor = SingleStepPredictor(
        elements,
        settings.hyperparameters,
        marker_radius=settings.marker_radius,
        device=settings.device,
        training={"dataset": str(dataset_dir.resolve()), "settings": asdict(settings)},
    )
    lr = settings.lr or DEFAULT_LR
    optimizer = torch.optim.Adam(predictor.network.parameters(), lr=lr)
    first_epoch, best, history = 0, math.inf, []
    rng = random.Random(settings.seed)
    if settings.restart:
        first_epoch, best, history = _resume(checkpoint_path, predictor, optimizer, settings, elements, rng)
        echo(f"Resuming from {checkpoint_path} after epoch {first_epoch}.")
    elif checkpoint_path.exists():
        raise InputError(
            f"{checkpoint_path} exists: a training run already wrote to {model_dir}. Pass --restart to "
            "continue it, or choose another --output/--name."
        )
    unseen = sorted(
        {s for marked, _, _ in valid_pairs for s in marked.atoms.get_chemical_symbols()} - set(elements)
    )
    if unseen:
        echo(f"Validation pairs with elements not in training ({', '.join(unseen)}) are left out.")
        valid_pairs = [p for p in valid_pairs if set(p[0].atoms.get_chemical_symbols()) <= set(elements)]
    train_items = _prepare(predictor, train_pairs, progress, "train")
    valid_items = _prepare(predictor, valid_pairs, progress, "valid")
    echo(
        f"Training on {len(train_items)} pairs ({document['counts']['train']} in the dataset), validating "
        f"on {len(valid_items)}; elements {', '.join(elements)}; "
        f"{sum(p.numel() for p in predictor.network.parameters())} parameters."
    )
    bar = progress_bar(
        range(first_epoch, settings.epochs),
        initial=first_epoch,
        total=settings.epochs,
        desc="Epochs",
        unit="epoch",
        enabled=progress,
    )
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(epoch, settings.epochs)
        predictor.network.train()
        order = list(range(len(train_items)))
        rng.shuffle(order)
        started, total_loss, batches = time.perf_counter(), 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            items = [train_items[i] for i in order[start : start + settings.batch_size]]
            batch, target = _batch_tensors(items, settings.device)
            out = predictor.network(batch)[batch["real"]]
            loss = torch.mean((out - target) ** 2)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(predictor.network.parameters(), 10.0)
            optimizer.step()
            total_loss += float(loss.detach())
            batches += 1
        metrics = evaluate_prepared(predictor, valid_items or train_items)
        record = {
            "epoch": epoch + 1,
            "loss": total_loss / max(batches, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 2),
            **{f"{'valid' if valid_items else 'train'}_{k}": round(v, 5) for k, v in metrics.items()},
        }
        history.append(record)
        if metrics["mae"] < best:
            best = metrics["mae"]
            predictor.training.update({"epoch": epoch + 1, "metrics": record})
            predictor.save(model_path)
        bar.set_postfix_str(f"MAE {metrics['mae']:.4f} Å (dummy {metrics['dummy_mae']:.4f}), best {best:.4f}")
        state = {
            "kind": CHECKPOINT_KIND,
            "epoch": epoch + 1,
            "best": best,
            "elements": elements,
            "signature": settings.signature(),
            "model": predictor.network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": rng.getstate(),
            "history": history,
        }
        with atomic_path(checkpoint_path) as temporary:
            torch.save(state, temporary)
        write_text(log_path, json.dumps(history, indent=1) + "\n")
    bar.close()
    if not model_path.exists():  # restarted after the last epoch: nothing new, keep what is there
        predictor.save(model_path)
    echo(
        f"Best {'validation' if valid_items else 'training'} coordinate MAE {best:.4f} Å; model: {model_path}"
    )
    return model_path


def _resume(path: Path, predictor, optimizer, settings, elements, rng) -> tuple[int, float, list]:
    import torch

    if not path.is_file():
        raise InputError(f"--restart: no checkpoint {path}; start without --restart.")
    state = torch.load(path, map_location=settings.device, weights_only=False)
    if state.get("kind") != CHECKPOINT_KIND:
        raise InputError(f"{path} is not a single-step training checkpoint.")
    if state["signature"] != settings.signature() or state["elements"] != elements:
        raise InputError(
            f"--restart: {path} was written with other settings or data ({state['signature']}, elements "
            f"{state['elements']}); restart with the same options and dataset, or train into a new folder."
        )
    predictor.network.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    rng.setstate(state["python_rng"])
    return int(state["epoch"]), float(state["best"]), list(state["history"])


#: ``snb-ml train`` options that only make sense for MACE.
#: ``snb-ml train`` options that only mean something for a force field (MACE or CHGNet).
_FORCE_FIELD_ONLY = (
    "base", "foundation", "charge_mode", "start_stage_two", "charge_reference", "dielectric", "model",
    "freeze",
    "energy_loss", "energy_weight", "force_weight", "stress_weight", "energy_reference", "minima_forces",
    "augment", "rattle", "head",
)  # fmt: skip


def train_from_cli(
    context, dataset_dir: str, model_dir: str, echo: Callable[[str], None], progress: bool
) -> Path:
    """``snb-ml train --kind single-step``: map the shared options, refuse the MACE-only ones.

    Options not given take the predictor's defaults.

    Args:
        context: The click context of ``snb-ml train`` (to tell given options from defaults).
        dataset_dir: The pair dataset folder.
        model_dir: Output folder.
        echo: Where messages go.
        progress: Show progress bars.

    Raises:
        InputError: A MACE-only option was given.
    """
    from click.core import ParameterSource

    params = context.params

    def given(name: str) -> bool:
        return context.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    refused = [f"--{n.replace('_', '-')}" for n in _FORCE_FIELD_ONLY if n in params and given(n)]
    if refused:
        raise InputError(
            f"{', '.join(refused)} apply to force-field training only (--kind force-field); the single-step "
            "predictor always reads the "
            "charge as a site feature and trains from scratch."
        )
    defaults = SingleStepTrainSettings()
    settings = SingleStepTrainSettings(
        name=params["name"] if given("name") else defaults.name,
        epochs=params["epochs"] if given("epochs") else defaults.epochs,
        batch_size=params["batch_size"] if given("batch_size") else defaults.batch_size,
        lr=params["lr"] if given("lr") else defaults.lr,
        seed=params["seed"] if given("seed") else defaults.seed,
        device=params["device"],
        features=params["channels"] if given("channels") else defaults.features,
        cutoff=params["r_max"] if given("r_max") else defaults.cutoff,
        threads=params["threads"],
        restart=params["restart"],
    )
    return train_single_step(dataset_dir, model_dir, settings, echo=echo, progress=progress)
