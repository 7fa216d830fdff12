"""The batched engine in a tree run: choosing the engine, relaxing all defects' distortions together."""

from __future__ import annotations

from snb_ml.batch.engine import BatchJob, relax_batched
from snb_ml.batch.evaluators import batch_evaluator_for
from snb_ml.errors import InputError
from snb_ml.relaxers.base import LoadedModel
from snb_ml.settings import RunSettings

ENGINES = ("auto", "batched", "sequential")


def choose_engine(settings: RunSettings, model: LoadedModel | None, pending: int) -> str:
    """``batched`` or ``sequential`` for a run of ``pending`` relaxations.

    With ``model=None`` only the settings are checked (before a run writes anything).

    ``auto`` batches when the backend has a batched evaluator, the optimizer is FIRE, there is more
    than one structure, and the model runs on a GPU or is one whose batches were measured faster on
    CPU too (``faster_on_cpu``, from bench/bench_batched.py: CHGNet yes, MACE no).

    Raises:
        InputError: If ``batched`` is asked for with an optimizer other than FIRE.
    """
    if settings.engine not in ENGINES:
        raise InputError(f"Unknown engine '{settings.engine}'. Choose one of {', '.join(ENGINES)}.")
    if settings.engine == "sequential":
        return "sequential"
    fire = settings.relax.optimizer.upper() == "FIRE"
    if settings.engine == "batched":
        if not fire:
            raise InputError(
                f"--engine batched runs FIRE only (asked for {settings.relax.optimizer}). Use --optimizer "
                "FIRE or --engine sequential."
            )
        return "batched"
    if model is None:
        return "sequential"
    evaluator = batch_evaluator_for(model)
    pays = str(evaluator.device).startswith("cuda") or evaluator.faster_on_cpu
    return "batched" if fire and pending > 1 and evaluator.batched and pays else "sequential"


def relax_runs_batched(runs: list, model: LoadedModel, settings: RunSettings) -> None:
    """Relax the pending distortions of all defects together, one model call per step for the batch.

    Args:
        runs: The runner's opened per-defect runs (``pending`` structures, ``finish`` for outcomes).
        model: The loaded model.
        settings: Run settings (``relax`` and ``batch_size`` are used).
    """
    if settings.progress:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm

    jobs = [
        BatchJob((run, folder), atoms, run.reference)
        for run in runs
        for folder, atoms in sorted(run.pending, key=lambda item: item[0] != "Unperturbed")
    ]
    total = sum(len(run.folders) for run in runs)
    with tqdm(
        total=total,
        initial=total - len(jobs),
        desc="relaxing (batched)",
        unit="relax",
        mininterval=0.5,
        disable=not settings.progress,
    ) as bar:
        calls = 0

        def on_step(size: int) -> None:
            nonlocal calls
            calls += 1
            if calls % 10 == 0:
                bar.set_postfix_str(f"{size} in batch, {calls} model calls")

        outcomes = relax_batched(
            jobs,
            batch_evaluator_for(model),
            settings.relax,
            max_structures=settings.batch_size,
            on_step=on_step,
        )
        for job, outcome in outcomes:
            run, folder = job.key
            run.finish(folder, outcome, bar.write)  # also takes the folder off run.pending
            bar.update(1)
