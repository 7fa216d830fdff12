"""The sequential relaxation engine: one structure after the other with the model's ASE calculator.

Beside the batched engine (:mod:`snb_ml.batch`): both take :class:`~snb_ml.jobs.RelaxJob` objects and
yield :class:`~snb_ml.jobs.RelaxOutcome` objects, and neither writes anything. The next relaxation
starts only when the caller asks for the next outcome, so a caller that cannot store results stops the
engine by no longer iterating.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from snb_ml.errors import SnbMlError
from snb_ml.jobs import RelaxJob, RelaxOutcome
from snb_ml.progress import progress_bar
from snb_ml.relax import RelaxResult, RelaxSettings, relax


def relax_sequentially(
    jobs: Iterable[RelaxJob],
    calculator: Any,
    settings: RelaxSettings | None = None,
    *,
    progress: bool = False,
    label: str = "relaxing",
    total: int | None = None,
) -> Iterator[RelaxOutcome]:
    """Relax the jobs one after the other; yield each one's outcome as it finishes.

    Args:
        jobs: The structures to relax, in order.
        calculator: The model's ASE calculator.
        settings: Relaxation settings (defaults if ``None``).
        progress: Show a progress bar (messages printed between outcomes should go through
            ``tqdm.write`` to keep it intact).
        label: The progress bar's description (e.g. the defect's name).
        total: Relaxations the bar counts in all, including ones already done (default: the jobs).

    Yields:
        One outcome per job; a model error on one structure is that job's outcome, not raised.

    Raises:
        SnbMlError: A problem of the run rather than of one structure (raised by the model).
    """
    jobs = list(jobs)
    total = len(jobs) if total is None else total
    with progress_bar(
        total=total,
        initial=total - len(jobs),
        desc=label,
        unit="relax",
        mininterval=0.5,
        leave=True,
        enabled=progress,
    ) as bar:
        for job in jobs:
            bar.set_postfix_str(job.folder)

            def on_step(step: int, folder: str = job.folder) -> None:
                if step % 10 == 0:
                    bar.set_postfix_str(f"{folder} step {step}")

            try:
                answer: RelaxResult | Exception = relax(
                    job.atoms, calculator, settings, job.reference_distance, on_step
                )
            except SnbMlError:
                raise
            except Exception as exc:  # the model crashed on this structure: its outcome, go on
                answer = exc
            yield RelaxOutcome.of(job, answer)
            bar.update(1)
