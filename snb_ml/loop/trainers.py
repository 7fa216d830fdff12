"""Model kinds of the loop: each one fits a model on the harvested DFT data and says how to relax with it.

A trainer is any object with the :class:`LoopTrainer` methods, registered by name with
:func:`register_trainer` (``chgnet`` and ``emt-fit`` are built in). The loop (:mod:`snb_ml.loop.rounds`)
only calls these methods, so its control flow is the same for every model kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from snb_ml.errors import InputError
from snb_ml.loop.surrogate import check_elements, fit_emt, predict, read_model, write_model
from snb_ml.settings import RunSettings
from snb_ml.training.chgnet_config import ChgnetSettings
from snb_ml.training.chgnet_data import check_training_frames, predict_frames
from snb_ml.training.chgnet_trainer import load_base, train_chgnet
from snb_ml.training.frames import read_split


class LoopTrainer(Protocol):
    """What the loop needs of a model kind."""

    name: str

    def check_frames(self, frames: Sequence, base_model: str | None) -> None:
        """Raise :class:`~snb_ml.errors.InputError` for data the model kind cannot learn."""

    def fit(
        self,
        dataset_dir: Path,
        previous: str | None,
        output: Path,
        options: dict[str, Any],
        echo: Callable[[str], None],
    ) -> str:
        """Fine-tune ``previous`` (``None``: the base model) on the dataset; return the new model's path."""

    def predict(self, model: str | None, frames: Sequence) -> tuple[np.ndarray, list[np.ndarray]]:
        """Energies (eV per cell) and forces (eV/Å) of ``frames``."""

    def run_settings(self, model: str | None, options: dict[str, Any]) -> RunSettings:
        """How :func:`snb_ml.runner.run_tree` relaxes with ``model``."""


class ChgnetTrainer:
    """CHGNet fine-tuning (:func:`snb_ml.training.chgnet_trainer.train_chgnet`, its default recipe).

    Options: any :class:`~snb_ml.training.chgnet_config.ChgnetSettings` field (e.g. ``epochs``).
    """

    name = "chgnet"

    def check_frames(self, frames: Sequence, base_model: str | None) -> None:
        """One level of theory, two frames or more, elements CHGNet embeds."""
        check_training_frames({"train": list(frames)}, None)

    def fit(self, dataset_dir, previous, output, options, echo) -> str:
        """Fine-tune ``previous`` (or the bundled weights) with ``snb-ml train --base chgnet``'s recipe."""
        settings = ChgnetSettings(**{**options, "model": previous or options.get("model", "0.3.0")})
        result = train_chgnet(dataset_dir, output, settings, echo=echo, progress=False)
        return str(result.model_path)

    def predict(self, model, frames):
        """CHGNet energies and forces."""
        return predict_frames(load_base(model or "0.3.0"), list(frames))

    def run_settings(self, model, options) -> RunSettings:
        """``--relaxer chgnet --model FILE``."""
        return RunSettings(relaxer="chgnet", model=model, progress=False, threads=options.get("threads"))


class FittedEmtTrainer:
    """EMT with refitted per-element parameters (:mod:`snb_ml.loop.surrogate`): seconds per round.

    Options: ``elements`` (fitted elements; default every element of the data), ``parameters``
    (default ``["E0", "n0"]``), ``prior`` (0.1), ``max_evaluations`` (60).
    """

    name = "emt-fit"
    calculator = "snb_ml.loop.surrogate:FittedEMT"

    def check_frames(self, frames, base_model) -> None:
        """Elements EMT has parameters for."""
        check_elements(frames)

    def fit(self, dataset_dir, previous, output, options, echo) -> str:
        """Least-squares refit of the chosen parameters, pulled towards ``previous``."""
        frames = read_split(dataset_dir, "train")
        elements = options.get("elements") or sorted({s for a in frames for s in a.get_chemical_symbols()})
        overrides, record = fit_emt(
            frames,
            read_model(previous),
            elements,
            names=options.get("parameters", ("E0", "n0")),
            prior=float(options.get("prior", 0.1)),
            max_evaluations=int(options.get("max_evaluations", 60)),
        )
        output.mkdir(parents=True, exist_ok=True)
        path = output / "fitted_emt.json"
        write_model(path, overrides, {"previous": previous, "fit": record, "frames": len(frames)})
        fitted = ", ".join(record["fitted"])
        echo(f"Fitted {fitted}: cost {record['cost_before']:.4g} -> {record['cost_after']:.4g}")
        return str(path)

    def predict(self, model, frames):
        """Energies and forces of the fitted EMT."""
        return predict(read_model(model), frames)

    def run_settings(self, model, options) -> RunSettings:
        """``--relaxer ase --model snb_ml.loop.surrogate:FittedEMT`` with the model file."""
        return RunSettings(
            relaxer="ase",
            model=self.calculator,
            calculator_options={"model": model} if model else {},
            progress=False,
        )


_TRAINERS: dict[str, Callable[[], LoopTrainer]] = {"chgnet": ChgnetTrainer, "emt-fit": FittedEmtTrainer}


def register_trainer(name: str, factory: Callable[[], LoopTrainer]) -> None:
    """Make a model kind available to ``snb-ml loop init --trainer NAME``."""
    _TRAINERS[name] = factory


def trainer_names() -> list[str]:
    """Names of the registered trainers."""
    return sorted(_TRAINERS)


def get_trainer(name: str) -> LoopTrainer:
    """Return the trainer registered as ``name``.

    Raises:
        InputError: No trainer of that name.
    """
    if name not in _TRAINERS:
        raise InputError(f"Unknown loop trainer '{name}'; choose one of {', '.join(trainer_names())}.")
    return _TRAINERS[name]()
