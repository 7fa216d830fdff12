"""``snb-ml train`` (fine-tune / train a defect-aware MACE model) and ``snb-ml evaluate``."""

from __future__ import annotations

import sys

import click

from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _fail(exc: Exception) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(1)


@click.command("train", context_settings=CONTEXT_SETTINGS)
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--kind",
    type=click.Choice(["mace", "single-step"]),
    default="mace",
    show_default=True,
    help="mace: a charge-aware force field on an `snb-ml dataset` folder; single-step: the relaxed-"
    "structure predictor on an `snb-ml single-step dataset` folder (docs: single_step).",
)
@click.option(
    "--output", "-o", "model_dir", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option("--name", default="defect_model", show_default=True, help="Model name: MODEL_DIR/<name>.model.")
@click.option(
    "--foundation",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="MACE .model to fine-tune (the charge embedding is grafted onto it); default: train from scratch.",
)
@click.option(
    "--charge-mode",
    type=click.Choice(["site", "global", "intensive", "none"]),
    default="site",
    show_default=True,
    help="How the model sees the defect charge: per-atom q near the defect site, MACE's total charge, "
    "q/N on every atom, or not at all.",
)
@click.option("--epochs", type=int, default=60, show_default=True, help="Training epochs.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--seed", type=int, default=123, show_default=True)
@click.option("--batch-size", type=int, default=2, show_default=True)
@click.option(
    "--lr", type=float, default=None, help="Learning rate of stage one [1e-2 from scratch, 5e-3 fine-tuning]."
)
@click.option(
    "--start-stage-two",
    type=int,
    default=None,
    help="Epoch at which the energy weight is raised (MACE stage two) [75% of --epochs; 0: never].",
)
@click.option("--channels", type=int, default=16, show_default=True, help="Channels (scratch only).")
@click.option("--r-max", type=float, default=5.0, show_default=True, help="Cut-off in Å (scratch only).")
@click.option("--threads", type=int, default=None, help="Torch threads of the training process.")
@click.option("--restart", is_flag=True, help="Resume from the latest checkpoint in MODEL_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar; print MACE's epoch lines instead.")
def train(dataset_dir, kind, model_dir, name, foundation, charge_mode, epochs, device, seed, batch_size, lr,
          start_stage_two, channels, r_max, threads, restart, quiet) -> None:  # fmt: skip
    """Train or fine-tune a charge-aware (and multi-fidelity) MACE model on an `snb-ml dataset` folder.

    One readout head is trained per level of theory found in the dataset (e.g. pbe and hse on a shared
    body). The result, MODEL_DIR/<name>.model, works with `snb-ml run --relaxer mace --model FILE`.
    With --kind single-step: the relaxed-structure predictor, MODEL_DIR/<name>.pt, for
    `snb-ml run --relaxer predict --model FILE`.
    """
    if kind == "single-step":
        from snb_ml.predictor.training import train_from_cli

        try:
            train_from_cli(click.get_current_context(), dataset_dir, model_dir, click.echo, not quiet)
        except SnbMlError as exc:
            _fail(exc)
        return
    from snb_ml.training.config import TrainSettings
    from snb_ml.training.trainer import train_model

    settings = TrainSettings(
        name=name,
        charge_mode=charge_mode,
        foundation=foundation,
        epochs=epochs,
        device=device,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        start_swa=start_stage_two,
        num_channels=channels,
        r_max=r_max,
        threads=threads,
        restart=restart,
    )
    try:
        train_model(dataset_dir, model_dir, settings, echo=click.echo, progress=not quiet)
    except SnbMlError as exc:
        _fail(exc)


@click.command("evaluate", context_settings=CONTEXT_SETTINGS)
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@click.option(
    "--output", "-o", "report_dir", default="report", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--ground-states",
    type=click.Path(exists=True),
    default=None,
    help="DFT ground states (JSON or folder): RMSD of the model-relaxed structures and transition levels.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--no-plots", is_flag=True, help="Skip the parity plots.")
def evaluate(model, dataset_dir, split, report_dir, ground_states, device, no_plots) -> None:
    """Energy/force errors by charge and level of theory, relative energies, rankings, parity plots."""
    from snb_ml.training.evaluate import evaluate_model

    try:
        evaluate_model(
            model, dataset_dir, report_dir, split, ground_states, device, plots=not no_plots, echo=click.echo
        )
    except SnbMlError as exc:
        _fail(exc)
