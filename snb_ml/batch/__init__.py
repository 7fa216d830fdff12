"""Batched relaxation: many structures per model call, with the results of :func:`snb_ml.relax.relax`."""

from snb_ml.batch.engine import BatchJob, relax_batched
from snb_ml.batch.evaluators import BatchEvaluator, batch_evaluator_for

__all__ = ["BatchEvaluator", "BatchJob", "batch_evaluator_for", "relax_batched"]
