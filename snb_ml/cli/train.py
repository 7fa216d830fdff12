"""``snb-ml train`` (fine-tune CHGNet or train a defect-aware MACE model) and ``snb-ml evaluate``."""

from __future__ import annotations

import click

from snb_ml.cli.errors import cli_errors
from snb_ml.cli.options import DeviceType
from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


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


def _dielectric_option(prefix: str = "", suffix: str = ""):
    """``--dielectric`` (text, parsed by ``_dielectric``), shared by ``train`` and ``evaluate --levels``."""
    return click.option("--dielectric", default=None, help=prefix + _DIELECTRIC_HELP + suffix)


#: ``--device`` of ``train`` and ``evaluate``: training runs on the CPU unless a GPU is asked for.
_device_option = click.option(
    "--device",
    type=DeviceType(("cpu", "cuda")),
    default="cpu",
    show_default=True,
    help="cpu, cuda or cuda:N.",
)


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
        _dielectric_option(),
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


MACE_ONLY = (
    "foundation",
    "charge_mode",
    "start_stage_two",
    "channels",
    "r_max",
    "charge_reference",
    "dielectric",
)
CHGNET_ONLY = (
    "model",
    "freeze",
    "force_weight",
    "stress_weight",
    "energy_reference",
    "minima_forces",
    "augment",
    "rattle",
    "head",
)


@click.command("train", context_settings=CONTEXT_SETTINGS)
@click.argument("dataset_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--kind",
    type=click.Choice(["force-field", "single-step"]),
    default="force-field",
    show_default=True,
    help="force-field: MACE or CHGNet (--base) on an `snb-ml dataset` folder; single-step: the relaxed-"
    "structure predictor on an `snb-ml single-step dataset` folder (docs: single_step).",
)
@click.option(
    "--output", "-o", "model_dir", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--base",
    type=click.Choice(["mace", "chgnet"]),
    default="mace",
    show_default=True,
    help="mace: a charge-aware MACE model (from scratch or --foundation); chgnet: fine-tune CHGNet, "
    "whose weights ship in its wheel (offline).",
)
@click.option(
    "--name",
    default=None,
    help="Model name: MODEL_DIR/<name>.model [defect_model] or .pth.tar [chgnet_model].",
)
@click.option("--epochs", type=int, default=None, help="Training epochs [mace 60, chgnet 60].")
@click.option(
    "--lr",
    type=float,
    default=None,
    help="Learning rate [mace 1e-2 scratch / 5e-3 fine-tuning; chgnet 1e-3].",
)
@click.option("--batch-size", type=int, default=None, help="Structures per batch [mace 2, chgnet 4].")
@click.option("--seed", type=int, default=None, help="Random seed [mace 123, chgnet 0].")
@_device_option
@click.option("--threads", type=int, default=None, help="Torch threads of the training process.")
@click.option("--restart", is_flag=True, help="Resume from the latest checkpoint in MODEL_DIR.")
@click.option("--quiet", is_flag=True, help="No progress bar (mace: print its epoch lines instead).")
@click.option(
    "--foundation",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="[mace] MACE .model to fine-tune (the charge embedding is grafted onto it); default: from scratch.",
)
@click.option(
    "--charge-mode",
    type=click.Choice(["site", "global", "intensive", "none"]),
    default=None,
    help="[mace] How the model sees the defect charge: per-atom q near the defect site (default), MACE's "
    "total charge, q/N on every atom, or not at all.",
)
@click.option(
    "--start-stage-two",
    type=int,
    default=None,
    help="[mace] Epoch at which the energy weight is raised (MACE stage two) [75% of --epochs; 0: never].",
)
@click.option("--channels", type=int, default=None, help="[mace] Channels (scratch only) [16].")
@click.option("--r-max", type=float, default=None, help="[mace] Cut-off in Å (scratch only) [5.0].")
@click.option(
    "--model", default=None, help="[chgnet] Base weights: 0.3.0 (default), 0.2.0, r2scan or a CHGNet file."
)
@click.option(
    "--freeze",
    type=click.Choice(["none", "embeddings", "readout"]),
    default=None,
    help="[chgnet] Layers kept fixed: none (default), embeddings, readout (all but the last interaction).",
)
@click.option(
    "--energy-loss",
    type=click.Choice(["per-cell", "per-atom"]),
    default=None,
    help="Energy term of the loss: squared error of the whole cell (default; what rankings and transition "
    "levels are made of) or per atom (CHGNet's and MACE's own).",
)
@click.option(
    "--energy-weight",
    type=float,
    default=None,
    help="Energy loss weight [chgnet 1; mace 1 per cell or 100 per atom, 10x in stage two].",
)
@click.option(
    "--charge-reference",
    type=click.Choice(["quadratic", "linear", "none"]),
    default=None,
    help="[mace] Explicit charge terms per level of theory, fitted by least squares before training: "
    "reservoir q*E_ref and curvature U*q^2/2, q*E_ref alone, or none [quadratic for charge-aware modes, "
    "none for --charge-mode none].",
)
@_dielectric_option("[mace] ", " Adds the explicit point-charge image term -E_pc(q; cell, eps).")
@click.option("--force-weight", type=float, default=None, help="[chgnet] Force loss weight [1].")
@click.option(
    "--stress-weight", type=float, default=None, help="[chgnet] Stress loss weight [0: not trained]."
)
@click.option(
    "--energy-reference",
    type=click.Choice(["atomref", "none"]),
    default=None,
    help="[chgnet] atomref (default): refit CHGNet's per-element energies to the data and offset charged "
    "states; none: train on the energies as they are.",
)
@click.option(
    "--minima-forces",
    type=click.Choice(["zero", "none"]),
    default=None,
    help="[chgnet] Train the zero forces of CONTCAR + yaml minima (zero, default) or only their energies.",
)
@click.option(
    "--augment", type=int, default=None, help="[chgnet] Δ-labelled rattled copies per DFT minimum [0]."
)
@click.option("--rattle", type=float, default=None, help="[chgnet] Rattle of those copies in Å [0.05].")
@click.option(
    "--head", default=None, help="[chgnet] Level of theory to train on when the dataset has several."
)
@cli_errors
def train(dataset_dir, kind, model_dir, base, name, epochs, lr, batch_size, seed, device, threads, restart,
          quiet, **specific) -> None:  # fmt: skip
    """Fine-tune CHGNet or train a charge-aware (multi-fidelity) MACE model on an `snb-ml dataset` folder.

    --base mace (default): one readout head per level of theory in the dataset (e.g. pbe and hse on a
    shared body); MODEL_DIR/<name>.model works with `--relaxer mace --model FILE`.

    --base chgnet: CHGNet's own trainer from its bundled weights (no download) with the recipe measured
    best on a real ShakeNBreak search (docs/training.md); MODEL_DIR/<name>.pth.tar works with
    `--relaxer chgnet --model FILE`.

    --kind single-step: the relaxed-structure predictor on an `snb-ml single-step dataset` folder,
    MODEL_DIR/<name>.pt, for `snb-ml run --relaxer predict --model FILE`.
    """
    if kind == "single-step":
        from snb_ml.predictor.training import train_from_cli

        train_from_cli(click.get_current_context(), dataset_dir, model_dir, click.echo, not quiet)
        return
    context = click.get_current_context()
    given = {
        key for key, value in specific.items()
        if value is not None and context.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE
    }  # fmt: skip
    wrong = sorted(given & set(MACE_ONLY if base == "chgnet" else CHGNET_ONLY))
    if wrong:
        options = ", ".join("--" + key.replace("_", "-") for key in wrong)
        raise SnbMlError(f"{options} only apply to --base {'mace' if base == 'chgnet' else 'chgnet'}.")
    shared = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "name": name}
    shared = {key: value for key, value in shared.items() if value is not None}
    chosen = {key: value for key, value in specific.items() if value is not None}
    if base == "chgnet":
        from snb_ml.training.chgnet_config import ChgnetSettings
        from snb_ml.training.chgnet_trainer import train_chgnet

        settings = ChgnetSettings(device=device, threads=threads, restart=restart, **shared, **chosen)
        train_chgnet(dataset_dir, model_dir, settings, echo=click.echo, progress=not quiet)
        return
    from snb_ml.training.config import TrainSettings
    from snb_ml.training.trainer import train_model

    renamed = {"start_stage_two": "start_swa", "channels": "num_channels"}
    mace_options = {renamed.get(key, key): value for key, value in chosen.items()}
    if "energy_loss" in mace_options:
        mace_options["energy_loss"] = mace_options["energy_loss"].replace("-", "_")
    if "energy_weight" in mace_options:
        mace_options["swa_energy_weight"] = 10 * mace_options["energy_weight"]
    if "dielectric" in mace_options:
        mace_options["dielectric"] = _dielectric(mace_options["dielectric"])
    settings = TrainSettings(device=device, threads=threads, restart=restart, **shared, **mace_options)
    train_model(dataset_dir, model_dir, settings, echo=click.echo, progress=not quiet)


@click.command("evaluate", context_settings=CONTEXT_SETTINGS)
@click.argument("model")
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
@_device_option
@click.option("--no-plots", is_flag=True, help="Skip the parity plots.")
@_level_options
@cli_errors
def evaluate(model, dataset_dir, split, report_dir, ground_states, device, no_plots, levels) -> None:
    """Energy/force errors by charge and level of theory, relative energies, rankings, parity plots.

    MODEL is a MACE .model file, a CHGNet file (`snb-ml train --base chgnet`), or chgnet:0.3.0 for
    CHGNet's bundled weights (to compare a fine-tuned model with the one it started from). With
    --levels, also the charge-transition levels computed by doped from model and DFT energies.
    """
    from snb_ml.training.evaluate import evaluate_model

    evaluate_model(
        model, dataset_dir, report_dir, split, ground_states, device, plots=not no_plots, echo=click.echo,
        levels=levels,
    )  # fmt: skip
