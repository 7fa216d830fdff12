"""``snb-ml select`` (SOAP minima selection + DFT hand-off) and ``snb-ml pairs`` (pair distortions)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from snb_ml.cli.errors import cli_errors
from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.command("select", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--path",
    "-p",
    "ml_tree",
    default="ml_tree",
    show_default=True,
    type=click.Path(file_okay=False),
    help="ML tree written by `snb-run --relaxer` / `snb-ml run`.",
)
@click.option("--defect", "-d", multiple=True, help="Defect folder(s) (default: all in the ML tree).")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Cosine-distance threshold of one basin [calibrated default].",
)
@click.option(
    "--window",
    type=float,
    default=None,
    help="Energy window (eV above the lowest ML minimum); default: none.",
)
@click.option("--neighbours", is_flag=True, help="Also fingerprint the distorted neighbour shell.")
@click.option(
    "--policy",
    default="protect",
    show_default=True,
    help="protect: distinct basins, plus a small exploration set of original starts when the model's "
    "minima cannot be trusted (one basin, motifs collapsed, flat energies, or a model fine-tuned on other "
    "defects only), plus Unperturbed. "
    "lean: distinct basins only. Plugins may add others (snb-ml plugins lists them).",
)
@click.option(
    "--fingerprint",
    default="soap",
    show_default=True,
    help="Defect-site fingerprint: soap (calibrated with the default threshold) or one a plugin adds.",
)
@click.option(
    "--noise",
    type=float,
    default=None,
    help="ML energy spread (eV) below which the model cannot rank its minima [0.1].",
)
@click.option(
    "--dft-tree",
    type=click.Path(file_okay=False),
    default=None,
    help="Prepare this snb-generate tree for DFT: representatives start from their ML structure, the rest "
    "are moved aside (reversible with --undo).",
)
@click.option("--undo", is_flag=True, help="Undo the DFT hand-off in --dft-tree (byte-identical restore).")
@cli_errors
def select(
    ml_tree, defect, threshold, window, neighbours, policy, fingerprint, noise, dft_tree, undo
) -> None:
    """Group ML minima by defect-site SOAP and pick one representative per distinct basin for DFT."""
    from snb_ml.handoff import prepare_dft_tree, undo_handoff

    if undo:
        if not dft_tree:
            raise click.UsageError("--undo needs --dft-tree, the tree to restore.")
        restored = undo_handoff(Path(dft_tree), list(defect) or None)
        tree = Path(dft_tree).resolve()
        where = tree.parent if restored == [tree.name] and not (tree / tree.name).is_dir() else tree
        click.echo(f"Restored {', '.join(restored)} in {where} as before the hand-off (byte-identical).")
        return
    from snb_ml.minima.selection import DEFAULT_THRESHOLD, select_tree
    from snb_ml.minima.trust import ENERGY_NOISE

    selection = select_tree(
        ml_tree,
        list(defect) or None,
        threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
        window=window,
        include_neighbours=neighbours,
        policy=policy,
        noise=ENERGY_NOISE if noise is None else noise,
        fingerprint=fingerprint,
    )
    click.echo(selection.table())  # holds each defect's reasons and warnings
    if dft_tree and selection.defects:
        defects = selection.defects.items()
        record = prepare_dft_tree(
            Path(dft_tree),
            Path(ml_tree),
            {name: s.representatives for name, s in defects},
            original={name: s.original_starts for name, s in defects},
            reasons={name: s.reasons for name, s in defects},
        )
        click.echo("\nDFT hand-off:\n" + record.summary())
        click.echo(
            f"Submit with plain `snb-run` in {shlex.quote(dft_tree)}; "
            f"undo with `snb-ml select --undo --dft-tree {shlex.quote(dft_tree)}`."
        )
    if selection.failed:
        raise SnbMlError("some defects could not be selected (see above); the others are done.")


@click.command("pairs", context_settings=CONTEXT_SETTINGS)
@click.option(
    "--path",
    "-p",
    "defect_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="A defect folder written by snb-generate (holding Unperturbed/ and distortion_metadata.json).",
)
@click.option(
    "--output",
    "-o",
    default="pairs_tree",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Top-level folder of the pair tree (relax it with `snb-ml run -p` or `snb-run --relaxer`).",
)
@click.option(
    "--bond-distortions",
    default="-0.6,-0.5,-0.4,-0.3,-0.2",
    show_default=True,
    help="Comma-separated bond distortions applied to each pair.",
)
@click.option(
    "--dimer-distance", type=float, default=2.0, show_default=True, help="Pair distance of the dimer (Å)."
)
@click.option("--no-dimer", is_flag=True, help="Do not add a dimer per pair.")
@click.option(
    "--num-neighbours", type=int, default=None, help="Neighbours to pair up (default: the first shell)."
)
@cli_errors
def pairs(defect_dir, output, bond_distortions, dimer_distance, no_dimer, num_neighbours) -> None:
    """Write bond distortions and dimers for every symmetry-unique pair of a defect's neighbours."""
    from snb_ml.pairs import pair_distortions_from_folder, write_pair_tree

    try:
        values = tuple(float(v) for v in bond_distortions.split(",") if v.strip())
    except ValueError:
        raise SnbMlError(
            f"--bond-distortions must be comma-separated numbers, got {bond_distortions!r}."
        ) from None
    distortions = pair_distortions_from_folder(
        defect_dir,
        bond_distortions=values,
        dimer_distance=None if no_dimer else dimer_distance,
        num_neighbours=num_neighbours,
    )
    directory = write_pair_tree(distortions, output, Path(defect_dir).resolve().name)
    count = len(distortions["distortions"])
    click.echo(
        f"{len(distortions['pairs'])} symmetry-unique pair(s), {count} structures written to {directory}."
    )
    click.echo(f"Relax them with: snb-ml run -p {shlex.quote(str(directory))}")
