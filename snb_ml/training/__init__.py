"""Train and evaluate defect-aware (charge-embedded, multi-fidelity) MACE models.

- :class:`~snb_ml.training.config.TrainSettings` and :func:`~snb_ml.training.trainer.train_model`:
  ``snb-ml train`` (MACE's ``mace_run_train`` on an ``snb-ml dataset`` folder).
- :func:`~snb_ml.training.evaluate.evaluate_model`: ``snb-ml evaluate`` (errors by charge and head,
  relative energies, rank correlations, parity plots, ground-state RMSDs and transition levels).
"""

from snb_ml.training.config import TRAIN_CHARGE_MODES, TrainSettings
from snb_ml.training.evaluate import evaluate_model
from snb_ml.training.trainer import TrainingError, TrainResult, train_model

__all__ = [
    "TRAIN_CHARGE_MODES",
    "TrainResult",
    "TrainSettings",
    "TrainingError",
    "evaluate_model",
    "train_model",
]
