"""``snb-ml loop``: screen -> DFT on a few -> learn -> screen again, one state file per project."""

from __future__ import annotations

import json
import shlex

import click

from snb_ml.cli.errors import cli_errors
from snb_ml.errors import SnbMlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _options(pairs: tuple[str, ...]) -> dict:
    # KEY=VALUE, VALUE read as JSON when it parses (numbers, lists), else kept as text.
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except ValueError:
            options[key.replace("-", "_")] = value
    return options


@click.group("loop", context_settings=CONTEXT_SETTINGS, no_args_is_help=True)
def loop() -> None:
    """Screen with the model, run DFT on the selection, fine-tune on the results, screen again.

    `init` once per project, then `round` after each DFT batch (the first round screens with the base
    model), `status` any time. Docs: docs/loop.md.
    """


@loop.command("init", context_settings=CONTEXT_SETTINGS)
@click.argument("tree", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--output",
    "-o",
    "loop_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The loop's folder (state file, rounds); outside TREE.",
)
@click.option("--defect", "-d", multiple=True, help="Defect folder(s) of TREE (default: all).")
@click.option(
    "--trainer",
    default="chgnet",
    show_default=True,
    help="Model kind: chgnet (fine-tuned CHGNet) or emt-fit (refitted EMT, for tests and demos).",
)
@click.option(
    "--base-model",
    default=None,
    help="Model of round 0 [chgnet: 0.3.0; emt-fit: plain EMT]: a bundled name or a model file.",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Trainer option, repeatable, e.g. --option epochs=20 (chgnet: any `snb-ml train --base "
    "chgnet` setting).",
)
@click.option("--fmax", type=float, default=None, help="ML relaxation force threshold (eV/Å) [0.01].")
@click.option("--steps", type=int, default=None, help="Most ML relaxation steps [snb-ml run's default].")
@click.option("--policy", type=click.Choice(["protect", "lean"]), default="protect", show_default=True)
@click.option("--min-energy-per-atom", type=float, default=None, help="Harvest filter (eV/atom) [-50].")
@click.option("--max-energy-per-atom", type=float, default=None, help="Harvest filter (eV/atom) [0].")
@cli_errors
def init(
    tree,
    loop_dir,
    defect,
    trainer,
    base_model,
    options,
    fmax,
    steps,
    policy,
    min_energy_per_atom,
    max_energy_per_atom,
) -> None:
    """Start a loop on the ShakeNBreak tree TREE (snb-generate output; only read)."""
    from snb_ml.loop.rounds import init_loop

    relax = {k: v for k, v in {"fmax": fmax, "steps": steps}.items() if v is not None}
    harvest = {
        k: v
        for k, v in {
            "min_energy_per_atom": min_energy_per_atom,
            "max_energy_per_atom": max_energy_per_atom,
        }.items()
        if v is not None
    }
    state = init_loop(
        tree,
        loop_dir,
        trainer,
        base_model,
        list(defect) or None,
        _options(options),
        relax,
        harvest,
        policy,
    )
    click.echo(
        f"Loop started in {state.loop_dir} for {', '.join(state.defects)} ({state.trainer}). "
        f"Next: snb-ml loop round {shlex.quote(state.loop_dir)}"
    )


@loop.command("round", context_settings=CONTEXT_SETTINGS)
@click.argument("loop_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--dft",
    default=None,
    metavar="MODULE:CLASS",
    help="An ASE calculator that stands in for DFT: it relaxes the previous round's hand-off first "
    "(writes CONTCAR + {defect}.yaml), for a fully local loop.",
)
@click.option("--dft-kwargs", default=None, help="JSON keyword arguments of that calculator.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@cli_errors
def round_(loop_dir, dft, dft_kwargs, quiet) -> None:
    """Harvest new DFT, score the model on it, fine-tune, re-screen, hand the new selection to DFT."""
    from snb_ml.loop.rounds import format_status, run_round
    from snb_ml.loop.state import read_state

    try:
        options = json.loads(dft_kwargs) if dft_kwargs else {}
    except ValueError as exc:
        raise SnbMlError(f"--dft-kwargs is not JSON ({exc}).") from exc
    record = run_round(loop_dir, dft=dft, dft_options=options, echo=click.echo, progress=not quiet)
    click.echo(format_status(read_state(loop_dir, check_tree=False)))
    click.echo(f"Round {record.index} done in {record.seconds.get('total', 0):.0f} s.")


@loop.command("status", context_settings=CONTEXT_SETTINGS)
@click.argument("loop_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the state file's rounds as JSON.")
@cli_errors
def status(loop_dir, as_json) -> None:
    """Per round: DFT relaxations spent, model error before/after, ground-state changes, what to run next."""
    from dataclasses import asdict

    from snb_ml.loop.rounds import format_status
    from snb_ml.loop.state import read_state

    state = read_state(loop_dir)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in state.rounds], indent=2))
    else:
        click.echo(format_status(state))
