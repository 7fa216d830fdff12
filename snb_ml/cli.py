"""The ``snb-ml`` command line."""

from __future__ import annotations

import click

from snb_ml import __version__
from snb_ml.cli_options import ml_parameters, run_from_cli
from snb_ml.cli_select import pairs, select
from snb_ml.cli_thermo import free_energy

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group("snb-ml", context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
@click.version_option(__version__, prog_name="snb_ml")
def main() -> None:
    """Machine-learning relaxers and analysis for ShakeNBreak + doped."""


def _run(path: str, defect: tuple[str, ...], **options) -> None:
    run_from_cli(path, list(defect), options)


main.add_command(
    click.Command(
        "run",
        callback=_run,
        context_settings=CONTEXT_SETTINGS,
        help=(
            "Relax every distortion of a ShakeNBreak tree with an ML force field and write the ML tree "
            "(CONTCARs, {defect}.yaml, trajectories, provenance) that snb-parse/analyse/plot/groundstate "
            "read with -p <ML tree>."
        ),
        params=[
            click.Option(
                ["--path", "-p"],
                default=".",
                show_default=True,
                type=click.Path(exists=True, file_okay=False),
                help="Top-level folder written by snb-generate, or one defect folder.",
            ),
            click.Option(["--defect", "-d"], multiple=True, help="Defect folder(s) to relax (default: all)."),
            *ml_parameters(relaxer_default="chgnet"),
        ],
    )
)


@main.command("plugins", context_settings=CONTEXT_SETTINGS)
def plugins() -> None:
    """List installed snb_ml plugins: plugin, package, version and what each registers."""
    from tabulate import tabulate

    from snb_ml.plugins import get_plugin_infos, get_relaxers

    relaxers = get_relaxers()
    rows = []
    for info in get_plugin_infos():
        registered = ", ".join(f"relaxer:{name}" for name in info.relaxers) or "-"
        rows.append([info.name, info.distribution, info.version, registered, info.error or "ok"])
    click.echo(tabulate(rows, headers=["plugin", "package", "version", "registers", "status"]))
    click.echo("")
    for name, backend in sorted(relaxers.items()):
        click.echo(f"  {name:<10} {backend.description}")


main.add_command(select)
main.add_command(pairs)
main.add_command(free_energy)

from snb_ml.cli_dataset import dataset, pick_hybrid  # noqa: E402

main.add_command(dataset)
main.add_command(pick_hybrid)

from snb_ml.cli_train import evaluate, train  # noqa: E402

main.add_command(train)
main.add_command(evaluate)

from snb_ml.cli_single_step import single_step  # noqa: E402

main.add_command(single_step)
