"""``snb-ml dataset`` (harvest DFT trees into extended XYZ) and ``snb-ml pick-hybrid``."""

from __future__ import annotations

from pathlib import Path

import click

from snb_ml.cli.errors import cli_errors

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

# Options of the two commands that write train/valid/test.xyz (`dataset` and `single-step dataset`).
xyz_output_option = click.option(
    "--output", "-o", required=True, type=click.Path(), help="Folder for train/valid/test.xyz."
)
force_option = click.option("--force", is_flag=True, help="Overwrite the files in a non-empty output folder.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")


def split_options(function):
    """``--fractions`` and ``--seed`` of the train/valid/test split."""
    function = click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")(
        function
    )
    return click.option(
        "--fractions", default="0.8,0.1,0.1", show_default=True, help="train,valid,test fractions."
    )(function)


@click.command("dataset", context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@xyz_output_option
@force_option
@click.option(
    "--split",
    type=click.Choice(["relaxation", "defect", "composition", "frames"]),
    default="relaxation",
    show_default=True,
    help="Unit kept on one side of the split; 'frames' cuts each relaxation into contiguous blocks "
    "(weaker: correlated frames).",
)
@split_options
@click.option(
    "--frames-per-relaxation",
    type=int,
    default=10,
    show_default=True,
    help="Evenly spaced frames kept per relaxation (first and last included); 0 keeps all.",
)
@click.option(
    "--window",
    type=float,
    default=15.0,
    show_default=True,
    help="Drop frames more than this many eV above their defect's lowest frame (negative: no window).",
)
@click.option("--min-energy-per-atom", type=float, default=-50.0, show_default=True, help="eV/atom.")
@click.option("--max-energy-per-atom", type=float, default=0.0, show_default=True, help="eV/atom.")
@click.option("--keep-unconverged", is_flag=True, help="Keep ionic steps that hit NELM (unconverged SCF).")
@click.option(
    "--include-ml-trees",
    is_flag=True,
    help="Also harvest snb_ml ML-tree trajectories (head 'ml:<model>', config_type 'ml').",
)
@quiet_option
@cli_errors
def dataset(
    paths,
    output,
    force,
    split,
    fractions,
    seed,
    frames_per_relaxation,
    window,
    min_energy_per_atom,
    max_energy_per_atom,
    keep_unconverged,
    include_ml_trees,
    quiet,
) -> None:
    """Harvest every ionic step of VASP defect/bulk calculations into train/valid/test extended XYZ files.

    PATHS are ShakeNBreak or doped trees (or single calculation folders); dataset.json and summary.csv
    record provenance and frame counts.
    """
    from snb_ml.data.filters import FilterSettings
    from snb_ml.data.harvest import HarvestSettings, harvest, prepare_output, write_dataset
    from snb_ml.data.splits import parse_fractions

    settings = HarvestSettings(
        filters=FilterSettings(
            min_energy_per_atom=min_energy_per_atom,
            max_energy_per_atom=max_energy_per_atom,
            window=None if window < 0 else window,
            frames_per_relaxation=frames_per_relaxation or None,
            keep_unconverged=keep_unconverged,
        ),
        split=split,
        fractions=parse_fractions(fractions),
        seed=seed,
        include_ml_trees=include_ml_trees,
    )
    out = Path(output)
    prepare_output(out, force)
    report = harvest(list(paths), settings, progress=not quiet)
    write_dataset(report, out, list(paths), settings)
    click.echo(report.table())
    click.echo(
        f"\nWrote {out}/train.xyz, valid.xyz, test.xyz, dataset.json, summary.csv in {report.seconds:.1f} s."
    )


@click.command("pick-hybrid", context_settings=CONTEXT_SETTINGS)
@click.argument("dataset_path", metavar="DATASET", type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(), help="Folder for the VASP input folders.")
@click.option(
    "--fraction", type=float, default=0.1, show_default=True, help="Fraction of GGA frames to pick."
)
@click.option("--force", is_flag=True, help="Write into a non-empty output folder.")
@cli_errors
def pick_hybrid(dataset_path, output, fraction, force) -> None:
    """Pick GGA frames of DATASET for HSE06 single points and write their VASP inputs.

    Picks spread over energy and local structure, at least one per defect and charge; each folder gets
    POSCAR, INCAR and KPOINTS (add POTCARs yourself).
    """
    from snb_ml.data.harvest import prepare_output
    from snb_ml.data.picker import pick_frames, read_dataset, write_inputs

    frames = read_dataset(Path(dataset_path))
    picked = pick_frames(frames, fraction)
    out = Path(output)
    prepare_output(out, force)
    records = write_inputs(picked, out, Path(dataset_path))
    click.echo(
        f"Picked {len(records)} of {len(frames)} frames; inputs in {out} (add POTCARs: see README.md)."
    )
