"""The ``snb-ml`` command line."""

from __future__ import annotations

import click

from snb_ml import __version__
from snb_ml.cli.options import ml_parameters, run_from_cli
from snb_ml.cli.select import pairs, select
from snb_ml.cli.thermo import free_energy

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


@click.group("snb-ml", context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
@click.version_option(__version__, prog_name="snb_ml")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log messages on stderr (-v: info, incl. third-party import notes; -vv: debug).",
)
def main(verbose: int) -> None:
    """Machine-learning relaxers and analysis for ShakeNBreak + doped."""
    from snb_ml.logs import setup_logging

    setup_logging(verbose)


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
    """List installed snb_ml plugins: plugin, package, version and what each registers.

    Also lists the MACE foundation models ``--relaxer mace --model NAME`` accepts, what each was
    trained on, and whether it is already in mace-torch's cache (usable offline).
    """
    from tabulate import tabulate

    from snb_ml.plugins import get_plugin_infos, get_relaxers

    relaxers = get_relaxers()
    rows = []
    for info in get_plugin_infos():
        registered = ", ".join(info.registers) or "-"
        rows.append([info.name, info.distribution, info.version, registered, info.error or "ok"])
    click.echo(tabulate(rows, headers=["plugin", "package", "version", "registers", "status"]))
    click.echo("")
    for name, backend in sorted(relaxers.items()):
        click.echo(f"  {name:<10} {backend.description}")
    if "mace" in relaxers:
        _list_mace_foundations()


def _list_mace_foundations() -> None:
    from tabulate import tabulate

    from snb_ml.relaxers import mace_foundations as foundations

    click.echo("")
    try:
        names = foundations.foundation_names()
        directory = foundations.cache_dir()
    except Exception as exc:  # a broken mace-torch install must not break the listing
        click.echo(f"MACE foundation models: unavailable ({type(exc).__name__}: {exc})")
        return
    rows = []
    for name in names:
        about = foundations.describe(name)
        cached = "yes" if foundations.locate(name) is not None else "-"
        rows.append([name, about.model, about.trained_on, about.theory, about.licence, cached, about.note])
    click.echo(
        f"MACE foundation models (--relaxer mace --model NAME; without --model: "
        f"{foundations.DEFAULT_FOUNDATION}, mace-torch's default):"
    )
    headers = ["name", "model", "trained on", "level of theory", "licence", "cached", "note"]
    click.echo(tabulate(rows, headers=headers))
    click.echo(
        f"Downloaded once on first use into mace-torch's cache {directory} (XDG_CACHE_HOME moves it); "
        f"{foundations.OFFLINE_ENV}=1 forbids downloads. Offline, --relaxer chgnet needs no download."
    )


main.add_command(select)
main.add_command(pairs)
main.add_command(free_energy)

from snb_ml.cli.attach_terms import attach_terms_command  # noqa: E402

main.add_command(attach_terms_command)

from snb_ml.cli.dataset import dataset, pick_hybrid  # noqa: E402

main.add_command(dataset)
main.add_command(pick_hybrid)

from snb_ml.cli.train import evaluate, train  # noqa: E402

main.add_command(train)
main.add_command(evaluate)

from snb_ml.cli.recall import recall  # noqa: E402

main.add_command(recall)

from snb_ml.cli.single_step import single_step  # noqa: E402

main.add_command(single_step)

from snb_ml.cli.loop import loop  # noqa: E402

main.add_command(loop)
