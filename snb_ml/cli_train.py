"""``snb-ml train`` (fine-tune / train a defect-aware MACE model) and ``snb-ml evaluate``."""

from __future__ import annotations

import sys

import click

from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _fail(exc: Exception) -> None:
    click.echo(f"Error: {exc}", err=True)
    sys.exit(1)


def _dielectric(text: str | None) -> list[float] | None:
    # "8.9", "9.1,9.1,8.7" (diagonal) or nine numbers (3x3); checked by snb_ml.models.charge_reference.
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(",", " ").split()]
    except ValueError as exc:
        message = f"expected 1, 3 or 9 numbers, got {text!r}"
        raise click.BadParameter(message, param_hint="--dielectric") from exc


_DIELECTRIC_HELP = (
    "Total (ionic + electronic) dielectric constant of the host: one number, 3 (diagonal) or 9 (3x3), "
    "comma-separated."
)


def _charge_physics_options(command):
    """Options of the explicit charge terms and the energy loss, passed to the command as ``physics``."""
    names = ("energy_loss", "energy_weight", "charge_reference", "dielectric")
    options = [
        click.option(
            "--energy-loss",
            type=click.Choice(["per-cell", "per-atom"]),
            default="per-cell",
            show_default=True,
            help="Energy term of the loss: squared error of the whole cell (what transition levels are made "
            "of) or MACE's per-atom error.",
        ),
        click.option(
            "--energy-weight",
            type=float,
            default=None,
            help="Energy weight of stage one [1 per cell, 100 per atom]; stage two uses 10x.",
        ),
        click.option(
            "--charge-reference",
            type=click.Choice(["quadratic", "linear", "none"]),
            default=None,
            help="Explicit charge terms per level of theory, fitted by least squares before training: "
            "reservoir q*E_ref and curvature U*q^2/2, q*E_ref alone, or none [quadratic for charge-aware "
            "modes, none for --charge-mode none].",
        ),
        click.option(
            "--dielectric",
            default=None,
            help=_DIELECTRIC_HELP + " Adds the explicit point-charge image term -E_pc(q; cell, eps).",
        ),
    ]

    def wrapper(**kwargs):
        physics = {name: kwargs.pop(name) for name in names}
        physics["energy_loss"] = physics["energy_loss"].replace("-", "_")
        physics["dielectric"] = _dielectric(physics["dielectric"])
        if physics["energy_weight"] is not None:
            physics["swa_energy_weight"] = 10 * physics["energy_weight"]
        return command(physics=physics, **kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def _level_options(command):
    """Options of ``snb-ml evaluate --levels``, passed to the command as ``levels`` (``None``: off)."""
    names = ("levels", "dielectric", "correction", "vbm", "band_gap")
    options = [
        click.option(
            "--levels",
            is_flag=True,
            help="Also compute charge-transition levels of model and DFT with doped (needs the bulk in the "
            "dataset and --dielectric for charged states).",
        ),
        click.option("--dielectric", default=None, help=_DIELECTRIC_HELP),
        click.option(
            "--correction",
            type=click.Choice(["efnv", "pc"]),
            default="efnv",
            show_default=True,
            help="Finite-size correction: doped's eFNV (from the OUTCAR core potentials) or the point-charge "
            "term alone.",
        ),
        click.option("--vbm", type=float, default=None, help="VBM eigenvalue (eV) [from the bulk OUTCAR]."),
        click.option("--band-gap", type=float, default=None, help="Band gap (eV) [from the bulk OUTCAR]."),
    ]

    def wrapper(**kwargs):
        values = {name: kwargs.pop(name) for name in names}
        levels = None
        if values.pop("levels"):
            from snb_ml.training.levels import LevelSettings

            levels = LevelSettings(**{**values, "dielectric": _dielectric(values["dielectric"])})
        return command(levels=levels, **kwargs)

    wrapper.__name__, wrapper.__doc__ = command.__name__, command.__doc__
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


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
@_charge_physics_options
def train(dataset_dir, kind, model_dir, name, foundation, charge_mode, epochs, device, seed, batch_size, lr,
          start_stage_two, channels, r_max, threads, restart, quiet, physics) -> None:  # fmt: skip
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
        **physics,
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
@_level_options
def evaluate(model, dataset_dir, split, report_dir, ground_states, device, no_plots, levels) -> None:
    """Energy/force errors by charge and level of theory, relative energies, rankings, parity plots.

    With --levels, also the charge-transition levels computed by doped from model and DFT energies.
    """
    from snb_ml.training.evaluate import evaluate_model

    try:
        evaluate_model(
            model, dataset_dir, report_dir, split, ground_states, device, plots=not no_plots, echo=click.echo,
            levels=levels,
        )  # fmt: skip
    except SnbMlError as exc:
        _fail(exc)
