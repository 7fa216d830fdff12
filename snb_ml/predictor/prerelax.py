"""Pre-relaxation for DFT: the single-step predictions become the starting POSCARs of a ShakeNBreak tree.

Two existing pieces do the work: the runner writes the predictions as an ML tree (``--relaxer
predict``), and the DFT hand-off (:func:`snb_ml.handoff.prepare_dft_tree`) copies them into the DFT
tree with every distortion selected, keeping the originals and a record for a byte-identical undo
(``snb-ml select --undo --dft-tree TREE``). A defect with any failed prediction is left untouched.
"""

from __future__ import annotations

from pathlib import Path

from snb_ml.errors import InputError
from snb_ml.handoff import RECORD_FILE, prepare_dft_tree
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import locate_defects
from snb_ml.tree.status import Status

DEFAULT_ML_TREE = "ml_tree_single_step"  # must not end in a digit (ShakeNBreak's job script)


def prerelax_tree(
    dft_tree: str | Path,
    model: str | Path,
    defects: list[str] | None = None,
    ml_tree: str | Path | None = None,
    steps: int = 0,
    polish: str = "chgnet",
    polish_model: str | None = None,
    bulk: str | Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    progress: bool = True,
):
    """Predict every distortion of ``dft_tree`` and hand the predictions to DFT.

    Args:
        dft_tree: Top-level snb-generate folder (or one defect folder).
        model: Single-step model file.
        defects: Defect folder names (default: all).
        ml_tree: ML tree for the predictions (default ``<top>/ml_tree_single_step``).
        steps: Force-field FIRE steps after the prediction (0: prediction only).
        polish: Force-field relaxer for the energies and the steps.
        polish_model: Its model.
        bulk: Bulk supercell file for defects without ShakeNBreak metadata.
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: Torch threads.
        progress: Show progress bars.

    Returns:
        The runner's :class:`~snb_ml.runner.RunReport` and the hand-off's
        :class:`~snb_ml.handoff.HandoffRecord`.

    Raises:
        InputError: The tree was already handed off, or no defect was predicted completely.
    """
    top, selected = locate_defects(dft_tree, defects)
    handed = [d.name for d in selected if (d.directory / RECORD_FILE).exists()]
    if handed:
        raise InputError(
            f"{', '.join(handed)} already hold a DFT hand-off ({RECORD_FILE}); their POSCARs are no longer "
            f"the original starts. Undo it first: snb-ml select --undo --dft-tree {dft_tree}"
        )
    options: dict = {"polish": polish}
    if polish_model:
        options["polish_model"] = polish_model
    if bulk:
        options["bulk"] = str(Path(bulk).resolve())
    settings = RunSettings(
        relaxer="predict",
        model=str(Path(model).resolve()),
        device=device,
        calculator_options=options,
        relax=RelaxSettings(steps=steps),
        threads=threads,
        progress=progress,
    )
    output = Path(ml_tree) if ml_tree else top / DEFAULT_ML_TREE
    report = run_tree(dft_tree, settings, defects=[d.name for d in selected], output=output)
    chosen = {
        defect.name: list(defect.records)
        for defect in report.defects
        if not defect.failed
        and defect.records
        and all(r.status != Status.EXPLODED for r in defect.records.values())
    }
    if not chosen:
        raise InputError(
            "No defect was predicted completely (see the errors above), so the DFT tree was left untouched."
        )
    record = prepare_dft_tree(Path(dft_tree), output, chosen)
    return report, record
