"""``snb-ml train``: fine-tune or train a (charge-aware, multi-fidelity) MACE model with ``mace_run_train``.

MACE's own training script does the work, in a subprocess: it keeps MACE's global state (default
dtype, logging) out of the caller, lets ``--restart_latest`` resume after a crash, and its log lines
are streamed as the progress display. We prepare what it cannot do itself: charge checks, the per-atom
``defect_charge`` feature, one file per level of theory (head), and the charge embedding grafted onto a
foundation model (``mace_run_train`` drops ``--embedding_specs`` for a charge-blind foundation).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError, SnbMlError
from snb_ml.models import detect_charge_mode, graft_charge_embedding
from snb_ml.models.charge_reference import attach_reference, fit_charge_reference
from snb_ml.progress import progress_bar
from snb_ml.relaxers.base import cuda_index
from snb_ml.relaxers.mace_loading import load_torch_model
from snb_ml.safe_write import atomic_path
from snb_ml.training.config import TrainSettings, mace_config, stage_two_start
from snb_ml.training.frames import (
    NO_CHARGE,
    annotate_charges,
    defect_states,
    frame_charge,
    frame_head,
    read_dataset,
    write_head_files,
)
from snb_ml.training.record import write_record
from snb_ml.training.targets import prepare_targets

CONFIG_NAME = "mace_config.yaml"
LOG_NAME = "train.log"
_EPOCH_LINE = re.compile(r"(Initial|Epoch (\d+)): head: (\S+), loss=\s*([-\d.eE+na]+)")


class TrainingError(SnbMlError):
    """``mace_run_train`` failed; the message holds the end of its log."""


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_path: The trained model, ``MODEL_DIR/<name>.model`` (use with ``--relaxer mace --model``).
        model_dir: The output folder (config, data, log, MACE work folder, ``training.json``).
        heads: Heads of the model (levels of theory).
        charge_mode: Charge mode of the model (``none`` for charge-blind).
        history: Validation loss per epoch and head, ``[{"epoch", "head", "loss", ...}]``; epoch
            ``None`` is the untrained model.
        seconds: Wall time of the MACE run.
    """

    model_path: Path
    model_dir: Path
    heads: list[str]
    charge_mode: str
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _prepare_foundation(settings: TrainSettings, model_dir: Path) -> Path | None:
    """Return the foundation file to fine-tune, with the charge embedding grafted on when needed."""
    if settings.foundation is None:
        return None

    source = load_torch_model(str(settings.foundation), "cpu")
    existing = detect_charge_mode(source)
    if settings.charge_mode == NO_CHARGE or existing is not None:
        if existing is not None and existing != settings.charge_mode:
            raise InputError(
                f"Foundation '{settings.foundation}' already has a '{existing}' charge embedding; train "
                f"with --charge-mode {existing} (or start from a charge-blind model)."
            )
        if existing is None and getattr(source, "embedding_specs", None):
            raise InputError(f"Foundation '{settings.foundation}' has a non-charge embedding; not supported.")
        return Path(settings.foundation).resolve()
    import torch

    grafted = graft_charge_embedding(
        source,
        mode=settings.charge_mode,
        emb_dim=settings.emb_dim,
        embedding_readout=settings.embedding_readout,
    )
    path = model_dir / "foundation_grafted.model"
    torch.save(grafted, path)
    return path


def _summarise(data: dict[str, list]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for split, frames in data.items():
        counts: dict[str, int] = {}
        for atoms in frames:
            key = f"{frame_head(atoms)} q={frame_charge(atoms):+d}"
            counts[key] = counts.get(key, 0) + 1
        summary[split] = {"frames": len(frames), "by_head_and_charge": dict(sorted(counts.items()))}
    return summary


def _run_mace(
    config_path: Path, model_dir: Path, settings: TrainSettings, echo: Callable[[str], None], progress: bool
) -> None:
    """Run ``python -m mace.cli.run_train --config`` and stream its epoch lines."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if settings.threads:
        env["OMP_NUM_THREADS"] = str(settings.threads)
        env["MKL_NUM_THREADS"] = str(settings.threads)
    index = cuda_index(settings.device)
    if index is not None:  # MACE's run_train knows only "cuda": show it just the GPU asked for
        visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
    command = [sys.executable, "-m", "mace.cli.run_train", "--config", str(config_path)]
    bar = (
        progress_bar(total=settings.epochs, desc="epochs", unit="epoch", file=sys.stderr)
        if progress
        else None
    )
    tail: list[str] = []
    with (
        open(model_dir / LOG_NAME, "w") as log,
        subprocess.Popen(
            command, cwd=model_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-30:]
            match = _EPOCH_LINE.search(line)
            if match:
                if bar is not None:
                    if match.group(2) is not None:
                        bar.n = min(settings.epochs, int(match.group(2)) + 1)
                    bar.set_postfix_str(f"{match.group(3)} loss={float(match.group(4)):.4g}")
                    bar.refresh()
                else:
                    echo(line.split("INFO: ", 1)[-1].rstrip())
            elif " ERROR" in line or "Error" in line.split(":", 1)[0]:
                echo(line.rstrip())
        returncode = process.wait()
    if bar is not None:
        bar.close()
    if returncode != 0:
        raise TrainingError(
            f"mace_run_train failed (exit code {returncode}); full log: {model_dir / LOG_NAME}. Last lines:\n"
            + "\n".join(tail)
        )


def read_history(work_dir: str | Path) -> list[dict[str, Any]]:
    """Return MACE's validation metrics per epoch and head from its ``results/*_train.txt``."""
    history = []
    for path in sorted(Path(work_dir, "results").glob("*_train.txt")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("mode") == "eval":
                history.append(
                    {k: entry.get(k) for k in ("epoch", "head", "loss", "mae_e", "mae_e_per_atom", "mae_f")}
                )
    return history


def _trained_model(work_dir: Path, name: str, stage_two: bool) -> Path:
    candidates = ([work_dir / f"{name}_stagetwo.model"] if stage_two else []) + [work_dir / f"{name}.model"]
    for path in candidates:
        if path.is_file():
            return path
    raise TrainingError(f"mace_run_train finished but wrote no model in {work_dir}.")


def train_model(
    dataset_dir: str | Path,
    model_dir: str | Path,
    settings: TrainSettings | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> TrainResult:
    """Train (or fine-tune) a MACE model on an ``snb-ml dataset`` folder.

    Args:
        dataset_dir: Folder with ``train.xyz`` (and ``valid.xyz``) from ``snb-ml dataset``.
        model_dir: Output folder; the model is ``model_dir/<settings.name>.model``.
        settings: Training settings (defaults: :class:`TrainSettings`).
        echo: Where messages go.
        progress: Show a progress bar over epochs (else echo MACE's epoch lines).

    Returns:
        The :class:`TrainResult`.

    Raises:
        InputError: For unusable data or settings (missing charges, sites, foundation file).
        TrainingError: If ``mace_run_train`` fails.
    """
    import yaml

    settings = settings or TrainSettings()
    settings.check()
    model_dir = Path(model_dir).resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    data = read_dataset(dataset_dir, ("train", "valid"))
    annotate_charges(data, settings.charge_mode, settings.marker_radius)
    reference, targets = _explicit_terms(data, settings, echo)
    heads = write_head_files(data, model_dir / "data")
    foundation = _prepare_foundation(settings, model_dir)
    work_dir = model_dir / "mace"
    config = mace_config(settings, heads, work_dir, len(data["train"]), foundation)
    config_path = model_dir / CONFIG_NAME
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    counts = _summarise(data)
    how = f"fine-tuning {settings.foundation}" if foundation else "from scratch"
    echo(
        f"Training '{settings.name}' ({how}, charge mode {settings.charge_mode}, heads {', '.join(heads)}) "
        f"on {counts['train']['frames']} training / {counts['valid']['frames']} validation frames for "
        f"{settings.epochs} epochs; MACE config: {config_path}"
    )
    start = time.perf_counter()
    _run_mace(config_path, model_dir, settings, echo, progress)
    seconds = time.perf_counter() - start
    trained = _trained_model(work_dir, settings.name, stage_two_start(settings) is not None)
    model_path = model_dir / f"{settings.name}.model"
    fine_tuned_on = defect_states(data["train"])
    _save_model(trained, model_path, settings.marker_radius, reference, fine_tuned_on)
    history = read_history(work_dir)
    record = {
        "model": model_path.name,
        "dataset": str(Path(dataset_dir).resolve()),
        "settings": settings.to_dict(),
        "heads": list(heads),
        "charge_mode": settings.charge_mode,
        "frames": counts,
        "fine_tuned_on": fine_tuned_on,
        "charge_reference": reference.to_dict() if reference is not None else None,
        "targets": targets,
        "mace_model": str(trained.relative_to(model_dir)),
        "seconds": round(seconds, 1),
        "history": history,
    }
    write_record(model_dir, record)
    final = [h for h in history if h.get("mae_e") is not None]
    if final:
        echo(
            f"Validation energy MAE of the final epoch: {1000 * final[-1]['mae_e']:.1f} meV per cell "
            f"({1000 * final[-1]['mae_e_per_atom']:.2f} meV/atom); "
            f"forces {1000 * final[-1]['mae_f']:.1f} meV/Å."
        )
    echo(f"Model written to {model_path} ({seconds:.0f} s). Use it with: --relaxer mace --model {model_path}")
    return TrainResult(model_path, model_dir, list(heads), settings.charge_mode, history, seconds)


def _save_model(
    trained: Path,
    target: Path,
    marker_radius: float | None,
    reference: Any,
    fine_tuned_on: list[str],
) -> None:
    """Copy the trained model into place atomically, carrying snb_ml's own settings inside it.

    The relaxer backend reads ``snb_ml_marker_radius`` (a non-default marker radius, so ``snb-ml run``
    builds the same site features as training did), ``snb_ml_charge_reference`` (the explicit
    charge terms, :mod:`snb_ml.models.charge_reference`) and ``snb_ml_fine_tuned_on`` (the defect
    states trained on, :mod:`snb_ml.minima.trust`) from the model.
    """
    import torch

    with atomic_path(target) as temporary:
        model = torch.load(trained, map_location="cpu", weights_only=False)
        if marker_radius is not None:
            model.snb_ml_marker_radius = float(marker_radius)
        model.snb_ml_fine_tuned_on = list(fine_tuned_on)
        attach_reference(model, reference)
        torch.save(model, temporary)


def _explicit_terms(
    data: dict[str, list], settings: TrainSettings, echo: Callable[[str], None]
) -> tuple[Any, dict[str, Any]]:
    """Fit the explicit charge terms on the training frames and rewrite the MACE targets and weights."""
    reference = None
    order = settings.reference_order()
    if order is not None or settings.dielectric is not None:
        reference = fit_charge_reference(data["train"], settings.dielectric, order=order)
        fitted = ", ".join(
            f"{head}: E_ref {value:+.3f} eV, U {reference.curvature(head):+.3f} eV"
            for head, value in reference.e_ref.items()
        )
        echo(
            "Explicit charge terms: "
            + (f"per head {fitted}" if fitted else "no reservoir term")
            + ("; point-charge image term with the given dielectric constant" if reference.dielectric else "")
        )
    targets = prepare_targets(data, reference, settings.energy_loss, settings.balance_charge_states)
    return reference, targets
