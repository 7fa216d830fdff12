"""The batched engine in a tree run: choosing the engine, relaxing all defects' jobs together."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from snb_ml.batch.engine import BatchJob, relax_batched
from snb_ml.batch.evaluators import batch_evaluator_for
from snb_ml.errors import InputError
from snb_ml.jobs import RelaxJob, RelaxOutcome
from snb_ml.progress import progress_bar
from snb_ml.relax import RelaxSettings
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


def relax_jobs_batched(
    jobs: Iterable[RelaxJob],
    model: LoadedModel,
    settings: RelaxSettings,
    *,
    batch_size: int | None = None,
    progress: bool = False,
    total: int | None = None,
) -> Iterator[RelaxOutcome]:
    """Relax all jobs together, one model call per step for the batch; yield each outcome as it finishes.

    Each defect's Unperturbed job goes first among that defect's jobs: the others are judged against
    its energy, so their outcomes can be written as soon as they finish.

    Args:
        jobs: The structures to relax, of any number of defects.
        model: The loaded model (its backend's batch evaluator does the work).
        settings: Relaxation settings (FIRE).
        batch_size: Most structures per model call (``None``: chosen from memory).
        progress: Show a progress bar (messages printed between outcomes should go through
            ``tqdm.write`` to keep it intact).
        total: Relaxations the bar counts in all, including ones already done (default: the jobs).

    Yields:
        One outcome per job, in the order the relaxations finish.
    """
    jobs = list(jobs)
    defects: dict[str, int] = {}
    for job in jobs:
        defects.setdefault(job.defect, len(defects))
    queue = sorted(jobs, key=lambda job: (defects[job.defect], job.folder != "Unperturbed"))
    total = len(queue) if total is None else total
    with progress_bar(
        total=total,
        initial=total - len(queue),
        desc="relaxing (batched)",
        unit="relax",
        mininterval=0.5,
        enabled=progress,
    ) as bar:
        calls = 0

        def on_step(size: int) -> None:
            nonlocal calls
            calls += 1
            if calls % 10 == 0:
                bar.set_postfix_str(f"{size} in batch, {calls} model calls")

        answers = relax_batched(
            [BatchJob(job, job.atoms, job.reference_distance) for job in queue],
            batch_evaluator_for(model),
            settings,
            max_structures=batch_size,
            on_step=on_step,
        )
        for batch_job, answer in answers:
            yield RelaxOutcome.of(batch_job.key, answer)
            bar.update(1)
