"""One round of the loop: harvest new DFT -> score the model on it -> fine-tune -> re-screen -> hand off.

:func:`init_loop` starts a project, :func:`run_round` runs one round; all control flow of the loop is
here, and it only calls the existing steps: ``snb-ml dataset``'s harvest, the trainer of the model kind
(:mod:`snb_ml.loop.trainers`), :func:`snb_ml.runner.run_tree`, :func:`snb_ml.minima.select_defect` (the
``protect`` policy by default) and :func:`snb_ml.handoff.prepare_dft_tree`.

Folders of a loop project ``LOOP/``::

    snb_ml_loop.json          the state (snb_ml.loop.state)
    round_00/starts/          the starts without a DFT result yet (+ Unperturbed, the energy reference)
    round_00/ml_tree/         their ML relaxations with this round's model, and the selection
    round_00/dft/             what to run with DFT (plain `snb-run` there); next round harvests it
    round_01/dataset/         every DFT result so far, as `snb-ml dataset` writes it
    round_01/model/           the model fine-tuned from round 0's
    ...

Round k > 0 refuses to start while round k-1's DFT folders lack a finished result, and a failed round
(bad data, a training error) changes nothing in the state: the previous model stays the current one.
Each distortion gets at most one DFT relaxation; a representative whose ML minimum falls in a basin
DFT has already relaxed (defect-site fingerprint within the selection threshold of a DFT minimum) is not
handed over again. A defect is finished when a round hands nothing new over.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.data.filters import FilterSettings
from snb_ml.data.frames import ENERGY_KEY, FORCES_KEY
from snb_ml.data.harvest import HarvestSettings, harvest, write_dataset
from snb_ml.data.minima import energies_yaml, energy_of, read_dft_energies
from snb_ml.errors import InputError, OutputError
from snb_ml.handoff import prepare_dft_tree
from snb_ml.locks import acquire_lock
from snb_ml.loop.standin import relax_folders
from snb_ml.loop.state import DftResult, LoopState, RoundRecord, new_state, read_state, write_state
from snb_ml.loop.trainers import get_trainer
from snb_ml.minima.fingerprints import (
    DefectFingerprinter,
    SoapParameters,
    cosine_distance,
    identify_defect_site,
)
from snb_ml.minima.selection import select_defect
from snb_ml.minima.trust import POLICIES
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.safe_write import write_text
from snb_ml.tree.layout import dft_outputs, is_distortion_dir, locate_defects, read_input_structure
from snb_ml.tree.metadata import METADATA_FILE

REFERENCE = "Unperturbed"
LOCK_FILE = ".snb_ml_loop.lock"
HARVEST_DEFAULTS = {"min_energy_per_atom": -50.0, "max_energy_per_atom": 0.0, "window": 15.0}


def init_loop(
    tree: str | Path,
    loop_dir: str | Path,
    trainer: str = "chgnet",
    base_model: str | None = None,
    defects: list[str] | None = None,
    trainer_options: dict[str, Any] | None = None,
    relax: dict[str, Any] | None = None,
    harvest: dict[str, Any] | None = None,
    policy: str = "protect",
) -> LoopState:
    """Start a loop project on a ShakeNBreak tree (``snb-generate`` output; only read).

    Raises:
        InputError: Not a ShakeNBreak tree, unknown trainer or policy.
        OutputError: ``loop_dir`` already holds a loop, or lies inside the tree.
    """
    get_trainer(trainer)
    if policy not in POLICIES:
        raise InputError(f"Unknown selection policy '{policy}'; choose one of {', '.join(POLICIES)}.")
    top, found = locate_defects(tree, defects)
    top, loop_dir = Path(top).resolve(), Path(loop_dir).resolve()
    if loop_dir == top or top in loop_dir.parents:
        raise OutputError(
            f"The loop folder {loop_dir} lies inside the ShakeNBreak tree {top}; choose one outside."
        )
    if base_model is not None and Path(base_model).is_file():
        base_model = str(Path(base_model).resolve())
    state = new_state(
        loop_dir,
        top,
        [d.directory.name for d in found],
        trainer=trainer,
        base_model=base_model,
        trainer_options=dict(trainer_options or {}),
        relax=dict(relax or {}),
        harvest={**HARVEST_DEFAULTS, **(harvest or {})},
        policy=policy,
    )
    loop_dir.mkdir(parents=True, exist_ok=True)
    write_state(state)
    return state


def _starts(state: LoopState, defect: str) -> list[str]:
    return sorted(p.name for p in (Path(state.tree) / defect).iterdir() if is_distortion_dir(p))


def _finished(folder: Path) -> bool:
    """A DFT result that can be harvested: a CONTCAR with its yaml energy, or a VASP run that ended."""
    outcar = folder / "OUTCAR"
    if outcar.is_file():
        with open(outcar, "rb") as stream:
            stream.seek(max(0, outcar.stat().st_size - 20000))
            return b"General timing and accounting" in stream.read()
    if (folder / "vasprun.xml").is_file():
        return b"</modeling>" in (folder / "vasprun.xml").read_bytes()[-2000:]
    yaml_file = energies_yaml(folder.parent)
    return (
        (folder / "CONTCAR").is_file()
        and yaml_file.is_file()
        and (energy_of(folder, read_dft_energies(folder.parent)) is not None)
    )


def _check_pending(state: LoopState) -> None:
    """Refuse to harvest unfinished or repeated DFT results (nothing written yet)."""
    pending_dir = Path(state.pending_dir or "")
    unfinished = [
        f"{defect}/{name}"
        for defect, names in state.pending.items()
        for name in names
        if not _finished(pending_dir / defect / name)
    ]
    if unfinished:
        raise InputError(
            f"The DFT relaxations of round {state.next_round - 1} in {pending_dir} are not finished "
            f"({len(unfinished)} without a finished result: {', '.join(unfinished)}). Wait for the jobs "
            "(and snb-parse), then run the round again; nothing was changed."
        )
    for defect in state.pending:
        for folder in sorted(p for p in (pending_dir / defect).glob("*") if is_distortion_dir(p)):
            outputs = dft_outputs(folder, include_contcar=True)
            if not outputs:
                continue
            earlier = state.dft.get(defect, {}).get(folder.name)
            if earlier is not None:
                raise InputError(
                    f"{folder} holds DFT output, but {defect}/{folder.name} was already harvested from "
                    f"{earlier.folder} (round {earlier.round}): the same DFT folder appears twice. Move one "
                    "of them away; nothing was changed."
                )
            if folder.name not in state.pending[defect]:
                raise InputError(
                    f"{folder} holds DFT output but was not handed off by the loop ({', '.join(outputs)}). "
                    "Move it away (results of other searches go into another tree); nothing was changed."
                )


def _frame_folder(frame) -> Path:
    return Path(frame.info["source"]).parent


def _errors(trainer, model: str | None, frames: list) -> dict[str, Any] | None:
    """Energy (offset-free, per defect) and force errors of ``model`` on ``frames``."""
    if not frames:
        return None
    energies, forces = trainer.predict(model, frames)
    labels = np.array([float(a.info[ENERGY_KEY]) for a in frames])
    residual = energies - labels
    groups: dict[str, list[int]] = {}
    for i, atoms in enumerate(frames):
        groups.setdefault(f"{atoms.info.get('defect')}_{atoms.info.get('charge_state')}", []).append(i)
    relative = []
    for members in groups.values():
        if len(members) > 1:
            shift = residual[members].mean()
            relative += list(np.abs(residual[members] - shift))
    force_errors = [
        np.abs(f - np.asarray(a.arrays[FORCES_KEY])).ravel() for f, a in zip(forces, frames, strict=True)
    ]
    return {
        "frames": len(frames),
        "energy_mae": float(np.mean(np.abs(residual))),
        "relative_energy_mae": float(np.mean(relative)) if relative else None,
        "force_mae": float(np.mean(np.concatenate(force_errors))),
    }


def _harvest(state: LoopState, round_dir: Path, progress: bool) -> list:
    """Harvest every DFT folder of the loop into ``round_dir/dataset``; return its frames."""
    paths = [r.dft_dir for r in state.rounds if r.dft_dir]
    settings = HarvestSettings(filters=FilterSettings(**state.harvest), fractions=(1.0, 0.0, 0.0))
    report = harvest(paths, settings, progress=progress)
    (round_dir / "dataset").mkdir(parents=True, exist_ok=True)
    write_dataset(report, round_dir / "dataset", paths, settings)
    return [frame for frames in report.splits.values() for frame in frames]


def _record_results(state: LoopState, frames: list, index: int) -> dict[str, list[str]]:
    """Add the pending DFT results to ``state.dft`` (energy of each relaxation's last harvested frame)."""
    pending_dir = Path(state.pending_dir or "")
    last: dict[Path, Any] = {}
    for atoms in frames:
        folder = _frame_folder(atoms)
        if folder not in last or atoms.info.get("frame", 0) >= last[folder].info.get("frame", 0):
            last[folder] = atoms
    harvested: dict[str, list[str]] = {}
    for defect, names in state.pending.items():
        for name in names:
            folder = (pending_dir / defect / name).resolve()
            frame = last.get(folder)
            if frame is None:
                raise InputError(
                    f"{folder} has a finished DFT result, but the harvest kept no frame of it (removed by "
                    "the energy filters of this loop?). Check it with `snb-ml dataset`; nothing was changed."
                )
            state.dft.setdefault(defect, {})[name] = DftResult(
                float(frame.info[ENERGY_KEY]), str(folder), index
            )
            harvested.setdefault(defect, []).append(name)
    return harvested


def _ground_states(state: LoopState) -> dict[str, dict[str, Any]]:
    states = {}
    for defect, results in state.dft.items():
        name = min(results, key=lambda n: results[n].energy)
        states[defect] = {"distortion": name, "energy": results[name].energy}
    return states


def _stage_starts(state: LoopState, defect: str, target: Path, names: list[str]) -> None:
    source = Path(state.tree) / defect
    for name in names:
        write_text(target / defect / name / "POSCAR", (source / name / "POSCAR").read_text())
    for metadata, copy in ((source / METADATA_FILE, target / defect / METADATA_FILE),
                           (source.parent / METADATA_FILE, target / METADATA_FILE)):  # fmt: skip
        if metadata.is_file():
            write_text(copy, metadata.read_text())


def _known_basin(selection, ml_dir: Path, state: LoopState, defect: str) -> dict[str, str]:
    """Representatives whose ML minimum lies in a basin DFT has relaxed: folder -> the DFT folder."""
    from ase.io import read

    results = state.dft.get(defect, {})
    dft_structures = {}
    for name, result in results.items():
        contcar = Path(result.folder) / "CONTCAR"
        if contcar.is_file():
            dft_structures[name] = read(str(contcar), format="vasp")
    if not dft_structures:
        return {}
    unperturbed = read_input_structure(ml_dir / REFERENCE)
    site = identify_defect_site(ml_dir, unperturbed)
    soap = SoapParameters(**{k: selection.parameters[k] for k in ("r_cut", "n_max", "l_max", "sigma")})
    fingerprint = DefectFingerprinter(selection.parameters["species"], site, soap)
    dft_prints = {name: fingerprint(atoms) for name, atoms in dft_structures.items()}
    known = {}
    for folder in selection.representatives:
        contcar = ml_dir / folder / "CONTCAR"
        if not contcar.is_file():
            continue
        ml_print = fingerprint(read(str(contcar), format="vasp"))
        distance, nearest = min((cosine_distance(ml_print, p), n) for n, p in dft_prints.items())
        if distance < selection.threshold:
            known[folder] = nearest
    return known


def run_round(
    loop_dir: str | Path,
    dft: str | None = None,
    dft_options: dict[str, Any] | None = None,
    echo: Callable[[str], None] = print,
    progress: bool = False,
    learn: bool = True,
) -> RoundRecord:
    """Run the next round of a loop project.

    Args:
        loop_dir: The loop folder (``snb-ml loop init``).
        dft: ``module:Class`` of an ASE calculator that stands in for DFT: it first relaxes the previous
            round's hand-off (writing CONTCAR + yaml), for a fully local loop. ``None``: the user ran DFT.
        dft_options: Keyword arguments of that calculator.
        echo: Where messages go.
        progress: Progress bars of the harvest.
        learn: Fine-tune on the DFT data (``False`` keeps the previous model: a control experiment).

    Returns:
        The round's record (also in the state file).

    Raises:
        InputError: Unfinished or repeated DFT results, data the model kind cannot learn, a state of
            another tree. The state is unchanged then.
        OutputError: Another round of the same loop is running.
    """
    read_state(loop_dir)  # a folder without a loop gets its own error before any lock file is made
    with round_lock(loop_dir):
        return _run_round(loop_dir, dft, dft_options, echo, progress, learn)


@contextmanager
def round_lock(loop_dir: str | Path) -> Iterator[Any]:
    """Hold the loop's lock for a whole round: two rounds at once would hand the same starts to DFT.

    A round that was killed leaves no stale lock behind (:func:`snb_ml.locks.acquire_lock`).

    Raises:
        OutputError: Another process holds it.
    """
    path = Path(loop_dir) / LOCK_FILE
    lock = acquire_lock(
        path,
        f"Another `snb-ml loop round` is running in {loop_dir} (it holds {path}); wait for it to finish. "
        "Nothing was changed.",
    )
    try:
        yield lock
    finally:
        lock.release()


def _run_round(loop_dir, dft, dft_options, echo, progress, learn) -> RoundRecord:
    started = time.perf_counter()
    state = read_state(loop_dir)
    index = state.next_round
    todo = [d for d in state.defects if d not in state.finished]
    if not todo:
        raise InputError(
            f"The loop in {state.loop_dir} is finished: every defect's last round handed nothing new to DFT "
            "(see `snb-ml loop status`)."
        )
    trainer = get_trainer(state.trainer)
    round_dir = Path(state.loop_dir) / f"round_{index:02d}"
    record = RoundRecord(index=index)
    seconds: dict[str, float] = {}
    if state.pending_dir and dft:
        pending_dir = Path(state.pending_dir)
        missing = {
            d: [n for n in names if not _finished(pending_dir / d / n)] for d, names in state.pending.items()
        }
        clock = time.perf_counter()
        relax_folders(
            pending_dir, {d: n for d, n in missing.items() if n}, dft, dft_options, **_standin(state)
        )
        seconds["dft_standin"] = time.perf_counter() - clock
    if state.pending_dir:
        _check_pending(state)
    if round_dir.exists():  # a failed attempt of this round: only the loop's own files are in it
        shutil.rmtree(round_dir)
    model = state.model or state.base_model
    new_model = model
    if state.pending_dir:
        clock = time.perf_counter()
        frames = _harvest(state, round_dir, progress)
        new_frames = [a for a in frames if Path(state.pending_dir).resolve() in _frame_folder(a).parents]
        record.harvested = _record_results(state, frames, index)
        seconds["harvest"] = time.perf_counter() - clock
        if learn:
            if len(frames) < 2:
                raise InputError(
                    f"The DFT data so far hold {len(frames)} frame: fine-tuning needs at least two. Run more "
                    "DFT (the round's hand-off) and start the round again; the previous model is kept."
                )
            trainer.check_frames(frames, state.base_model)
        clock = time.perf_counter()
        record.error_before = _errors(trainer, model, new_frames)
        seconds["score"] = time.perf_counter() - clock
        if learn:
            clock = time.perf_counter()
            new_model = trainer.fit(
                round_dir / "dataset", model, round_dir / "model", state.trainer_options, echo
            )
            seconds["train"] = time.perf_counter() - clock
            record.error_after = _errors(trainer, new_model, new_frames)
    record.model = new_model
    record.dft_total = state.dft_count()
    record.ground_state = _ground_states(state)
    previous = state.rounds[-1].ground_state if state.rounds else {}
    record.ground_state_changed = sorted(
        d
        for d, g in record.ground_state.items()
        if d not in previous or g["energy"] < previous[d]["energy"] - 1e-6
    )
    handed, finished = _screen(state, trainer, new_model, todo, round_dir, record, seconds, echo)
    record.handed_off = handed
    record.dft_dir = str(round_dir / "dft") if handed else None
    record.seconds = {
        **{k: round(v, 2) for k, v in seconds.items()},
        "total": round(time.perf_counter() - started, 2),
    }
    state.model = new_model
    state.pending = handed
    state.pending_dir = record.dft_dir
    state.finished = sorted(set(state.finished) | set(finished))
    state.rounds.append(record)
    write_state(state)
    return record


def _standin(state: LoopState) -> dict[str, Any]:
    return {key: state.relax[key] for key in ("fmax", "steps") if key in state.relax}


def _screen(state, trainer, model, todo, round_dir, record, seconds, echo) -> tuple[dict, list]:
    """Re-relax the starts without DFT, select, and hand the new ones to DFT; return (handed, finished)."""
    remaining = {}
    finished = []
    for defect in todo:
        done = state.dft.get(defect, {})
        left = [n for n in _starts(state, defect) if n not in done]
        if not [n for n in left if n != REFERENCE]:
            finished.append(defect)
            record.notes.append(f"{defect}: every start has a DFT result")
            continue
        remaining[defect] = left
        _stage_starts(state, defect, round_dir / "starts", sorted(set(left) | {REFERENCE}))
    if not remaining:
        return {}, finished
    import dataclasses

    settings = dataclasses.replace(
        trainer.run_settings(model, state.trainer_options), relax=RelaxSettings(**state.relax)
    )
    clock = time.perf_counter()
    report = run_tree(round_dir / "starts", settings, sorted(remaining), output=round_dir / "ml_tree")
    seconds["relax"] = time.perf_counter() - clock
    clock = time.perf_counter()
    failed = {d.name: d.error for d in report.defects if d.error}
    handed: dict[str, list[str]] = {}
    plans: dict[str, tuple[list[str], list[str], dict[str, str]]] = {}
    for defect in remaining:
        if defect in failed:
            record.notes.append(f"{defect}: ML relaxation failed ({failed[defect]}); retried next round")
            continue
        ml_dir = round_dir / "ml_tree" / defect
        selection = select_defect(ml_dir, policy=state.policy, allow_incomplete=True)
        done = state.dft.get(defect, {})
        known = _known_basin(selection, ml_dir, state, defect)
        for folder, dft_folder in known.items():
            record.notes.append(
                f"{defect}: {folder} not handed over: its ML minimum is in the basin DFT relaxed from "
                f"{dft_folder}"
            )
        representatives = [f for f in selection.representatives if f not in done and f not in known]
        original = [f for f in selection.original_starts if f not in done and f not in representatives]
        if not representatives and not original:
            finished.append(defect)
            record.notes.append(f"{defect}: nothing new for DFT: every ML basin has been relaxed with DFT")
            continue
        plans[defect] = (representatives, original, selection.reasons)
    seconds["select"] = time.perf_counter() - clock
    if not plans:
        return {}, finished
    dft_dir = round_dir / "dft"
    for defect, (representatives, original, _) in plans.items():
        # The DFT folder holds only the starts to relax now; Unperturbed goes along when it still needs DFT.
        names = representatives + original
        if REFERENCE not in state.dft.get(defect, {}) and REFERENCE not in names:
            names.append(REFERENCE)
        _stage_starts(state, defect, dft_dir, names)
        handed[defect] = sorted(names)
    with_representatives = {d: p for d, p in plans.items() if p[0]}
    if with_representatives:
        prepared = prepare_dft_tree(
            dft_dir,
            round_dir / "ml_tree",
            {d: p[0] for d, p in with_representatives.items()},
            original={d: p[1] for d, p in with_representatives.items()},
            reasons={d: p[2] for d, p in with_representatives.items()},
        )
        echo("DFT hand-off:\n" + prepared.summary())
    return handed, finished


def format_status(state: LoopState) -> str:
    """Per round: DFT spent, model errors before/after, ground-state changes, what to run next."""
    from tabulate import tabulate

    def fmt(errors: dict[str, Any] | None, key: str) -> str:
        value = (errors or {}).get(key)
        return "-" if value is None else f"{value:.3f}"

    rows = []
    for r in state.rounds:
        gs = ", ".join(f"{d}: {g['distortion']} {g['energy']:.3f}" for d, g in r.ground_state.items()) or "-"
        rows.append([
            r.index,
            sum(len(v) for v in r.harvested.values()),
            r.dft_total,
            " / ".join(fmt(r.error_before, k) for k in ("energy_mae", "relative_energy_mae", "force_mae")),
            " / ".join(fmt(r.error_after, k) for k in ("energy_mae", "relative_energy_mae", "force_mae")),
            ("new: " + ", ".join(r.ground_state_changed) + "; " if r.ground_state_changed else "") + gs,
            sum(len(v) for v in r.handed_off.values()),
            f"{r.seconds.get('total', 0):.0f}",
        ])  # fmt: skip
    headers = ["round", "DFT new", "DFT total", "before: E / rel. E / F MAE", "after", "ground state (eV)",
               "to DFT", "s"]  # fmt: skip
    lines = [
        f"Loop {state.loop_dir} on {state.tree} ({state.trainer}, policy {state.policy})",
        tabulate(rows, headers=headers) if rows else "(no round yet)",
        "Errors on the DFT data new in that round, before (previous model: unseen data) and after "
        "fine-tuning on it: energy MAE (eV/cell), the same with one offset per defect removed, force "
        "MAE (eV/Å).",
    ]
    if state.pending_dir:
        listed = "; ".join(f"{d}: {', '.join(n)}" for d, n in state.pending.items())
        lines.append(
            f"Next: run DFT in {state.pending_dir} (snb-run, then snb-parse) for {listed}; then "
            "`snb-ml loop round`."
        )
    elif len(state.finished) == len(state.defects):
        lines.append("Finished: the last round handed nothing new to DFT.")
    else:
        lines.append("Next: `snb-ml loop round`.")
    for note in state.rounds[-1].notes if state.rounds else []:
        lines.append(f"  note: {note}")
    return "\n".join(lines)
