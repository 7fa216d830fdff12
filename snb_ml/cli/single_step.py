"""``snb-ml single-step``: pair datasets for the single-step predictor and DFT pre-relaxation with it.

Training is ``snb-ml train --kind single-step``; relaxing an ML tree is ``snb-ml run --relaxer predict``.
"""

from __future__ import annotations

from pathlib import Path

import click

from snb_ml.cli.dataset import force_option, quiet_option, split_options, xyz_output_option
from snb_ml.cli.errors import cli_errors
from snb_ml.cli.options import DEVICE
from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group("single-step", context_settings=CONTEXT_SETTINGS)
def single_step() -> None:
    """Single-step relaxed-structure predictor: pair datasets and DFT pre-relaxation."""


@single_step.command("dataset", context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@xyz_output_option
@click.option(
    "--bulk",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Bulk supercell file(s), to locate defects that have no distortion_metadata.json.",
)
@click.option(
    "--split",
    type=click.Choice(["defect", "composition", "relaxation"]),
    default="defect",
    show_default=True,
    help="Unit kept on one side of the split.",
)
@split_options
@click.option(
    "--frames",
    type=int,
    default=3,
    show_default=True,
    help="Intermediate trajectory/OUTCAR frames per relaxation added as extra pairs (frame -> final).",
)
@force_option
@quiet_option
@cli_errors
def dataset(paths, output, bulk, split, fractions, seed, frames, force, quiet) -> None:
    """Harvest (unrelaxed, relaxed) pairs from ML trees and ShakeNBreak DFT trees (POSCAR -> CONTCAR).

    PATHS are ML trees written by `snb-ml run` / `snb-run --relaxer` and/or snb-generate trees holding
    DFT CONTCARs (and OUTCARs, whose ionic steps become extra pairs).
    """
    from snb_ml.data.harvest import prepare_output
    from snb_ml.data.splits import parse_fractions
    from snb_ml.predictor.dataset import PairSettings, harvest_pairs, write_pairs

    settings = PairSettings(frames=frames, split=split, fractions=parse_fractions(fractions), seed=seed)
    out = Path(output)
    prepare_output(out, force)
    report = harvest_pairs(list(paths), list(bulk), settings, progress=not quiet)
    write_pairs(report, out, list(paths), settings)
    click.echo(report.table())
    click.echo(f"Wrote {out}/train.xyz, valid.xyz, test.xyz and dataset.json.")


@single_step.command("prerelax", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--path",
    "-p",
    "dft_tree",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The snb-generate tree whose starting POSCARs are to be replaced by predictions.",
)
@click.option(
    "--model", required=True, type=click.Path(exists=True, dir_okay=False), help="Single-step model."
)
@click.option("--defect", "-d", multiple=True, help="Defect folder(s) (default: all).")
@click.option(
    "--output",
    "-o",
    "ml_tree",
    default=None,
    type=click.Path(file_okay=False),
    help="ML tree for the predicted structures [default: <tree>/ml_tree_single_step].",
)
@click.option(
    "--steps", type=int, default=0, show_default=True, help="Force-field FIRE steps after the prediction."
)
@click.option("--polish", default="chgnet", show_default=True, help="Force-field relaxer for energies/steps.")
@click.option("--polish-model", default=None, help="Model of the polishing relaxer.")
@click.option("--bulk", type=click.Path(exists=True, dir_okay=False), default=None, help="Bulk supercell.")
@click.option("--device", default="auto", show_default=True, type=DEVICE, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@cli_errors
def prerelax(dft_tree, model, defect, ml_tree, steps, polish, polish_model, bulk, device, threads,
             progress) -> None:  # fmt: skip
    """Predict the relaxed structure of every distortion and make it the DFT starting POSCAR.

    The predictions go through `snb-ml run --relaxer predict` into an ML tree, then the DFT hand-off
    writes them into the tree (originals kept as POSCAR.snb_ml_original; undo with
    `snb-ml select --undo --dft-tree TREE`).
    """
    from snb_ml.predictor.prerelax import prerelax_tree

    report, record = prerelax_tree(
        dft_tree,
        model,
        defects=list(defect) or None,
        ml_tree=ml_tree,
        steps=steps,
        polish=polish,
        polish_model=polish_model,
        bulk=bulk,
        device=device,
        threads=threads,
        progress=progress,
    )
    from snb_ml.summary import format_summary

    click.echo(format_summary(report))
    click.echo("\nDFT hand-off:\n" + record.summary())
    click.echo(
        f"Submit with plain `snb-run` in {dft_tree}; undo with `snb-ml select --undo --dft-tree {dft_tree}`."
    )
    if report.failed:
        raise SnbMlError("some distortions could not be predicted (see above); the others were handed off.")
