"""Single-step relaxed-structure predictor: a marker-aware equivariant network (unrelaxed -> relaxed).

See ``docs/single_step.md``. Public entry points:

- :func:`~snb_ml.predictor.markers.mark_defect`: locate and mark the defect of a starting structure;
- :class:`~snb_ml.predictor.model.SingleStepPredictor` / :func:`~snb_ml.predictor.model.load_predictor`:
  batched prediction, one-file save and load;
- :func:`~snb_ml.predictor.dataset.harvest_pairs`: (start, relaxed) pairs from ML and DFT trees;
- :func:`~snb_ml.predictor.training.train_single_step`: resumable training;
- the ``predict`` relaxer (:mod:`snb_ml.predictor.relaxer`);
- :func:`~snb_ml.predictor.prerelax.prerelax_tree`: predictions as DFT starting POSCARs.

Nothing here imports torch at import time, so loading the plugin costs nothing until it is used.
"""
