"""Hand ML-selected distortions over to DFT: prepare the snb-generate tree so ``snb-run`` submits only them.

For each defect, the distortion folders chosen for DFT get the ML-relaxed structure as their input
(the original kept beside it as ``POSCAR.snb_ml_original``), and every other distortion folder is
moved (renamed, never copied) into ``{defect}/snb_ml_not_selected/``, a name that ShakeNBreak's
``snb-run`` loop (``?(*Distortion*|*Unperturbed*|*attled*|*imer*)/``), ``snb-parse`` and
``snb-analyse`` never match. ``{defect}/snb_ml_handoff.json`` records every change with the sha256 of
the original files, so :func:`undo_handoff` restores the tree byte-identically. Nothing is deleted.

Policies:

- ``Unperturbed`` is ShakeNBreak's energy reference, so it is always kept in place: replaced by its
  ML-relaxed structure when selected, left untouched otherwise.
- Folders passed as ``original`` (the exploration starts of the ``protect`` selection policy, whose
  ML minima are exactly what is not trusted) are kept in place untouched, so DFT starts from the
  structure ShakeNBreak generated. ``reasons`` (why each folder is relaxed) are stored in the record.
- A folder that holds DFT output (``OUTCAR``, ``vasprun.xml``, ``CONTCAR``, ``espresso.out``,
  ``aims.out``, ``*.castep``, ``relax.out``, ...) is never moved or modified: every folder of every
  requested defect is checked first, and a refusal leaves the whole tree untouched.
- Running again with the same selection (and the same ML structures) changes nothing and reports
  ``already prepared``. A different selection on a prepared defect is applied by undoing the previous
  hand-off first (after all checks of the new one passed), reported as ``re-prepared``.
- Supported codes: VASP (``POSCAR``), FHI-aims (``geometry.in``) and CP2K (``structure.cif``), whose
  structure files hold only the structure and are rewritten with the writers ShakeNBreak uses. Quantum
  ESPRESSO (``espresso.pwi``) and CASTEP (``castep.cell``) files mix the structure with calculation
  settings, so they are refused with an :class:`~snb_ml.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snb_ml import __version__
from snb_ml.errors import InputError, OutputError
from snb_ml.safe_write import atomic_path, write_text
from snb_ml.tree.layout import HIGH_ENERGY_SUFFIX, STRUCTURE_INPUTS, dft_outputs, is_distortion_dir, load_json
from snb_ml.tree.provenance import PROVENANCE_FILE, DistortionRecord, Provenance, read_provenance
from snb_ml.tree.status import UNUSABLE_STATUSES

HOLDING_FOLDER = "snb_ml_not_selected"  # matches no ShakeNBreak pattern and does not end in a digit
RECORD_FILE = "snb_ml_handoff.json"
ORIGINAL_SUFFIX = ".snb_ml_original"
REFERENCE_FOLDER = "Unperturbed"
SUPPORTED_FILES = ("POSCAR", "geometry.in", "structure.cif")


@dataclass
class DefectHandoff:
    """What the hand-off did to one defect folder.

    Attributes:
        defect: Defect folder name.
        directory: The defect folder in the DFT tree.
        status: ``prepared``, ``re-prepared`` or ``already prepared``.
        replaced: Distortion folders whose structure file now holds the ML-relaxed structure.
        moved: Distortion folders moved into ``snb_ml_not_selected/``.
        kept: Folders kept in place with their generated structure: ``Unperturbed`` (the energy
            reference) when not selected, and the ``original`` starts.
        reasons: Why each folder is relaxed with DFT, where the caller gave reasons.
    """

    defect: str
    directory: Path
    status: str
    replaced: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class HandoffRecord:
    """Result of :func:`prepare_dft_tree` for all requested defects."""

    dft_tree: Path
    ml_tree: Path
    defects: list[DefectHandoff]

    def summary(self) -> str:
        """One line per defect, e.g. ``v_Cu_0: prepared: 2 replaced, 3 moved to snb_ml_not_selected/``."""
        lines = []
        for entry in self.defects:
            line = f"{entry.defect}: {entry.status}: {len(entry.replaced)} replaced by ML structures"
            line += f" ({', '.join(entry.replaced)}), {len(entry.moved)} moved to {HOLDING_FOLDER}/"
            if entry.kept:
                line += f", kept as generated: {', '.join(entry.kept)}"
            lines.append(line)
        return "\n".join(lines)


@dataclass
class _Plan:
    """Checked actions for one defect, computed before anything is changed."""

    defect: str
    directory: Path
    selected: list[str]
    moved: list[str]
    kept: list[str]
    files: dict[str, str]  # selected folder -> structure file name
    sources: dict[str, Path]  # selected folder -> ML CONTCAR
    fingerprint: dict[str, Any]
    previous: dict[str, Any] | None
    reasons: dict[str, str] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_if_dft_output(folder: Path, action: str) -> None:
    found = dft_outputs(folder, include_contcar=True)
    if found:
        raise OutputError(
            f"{folder} holds DFT output ({', '.join(found)}), so snb_ml will not {action} it; nothing was "
            "changed. Leave this defect out of the hand-off, or move the DFT output away first."
        )


def _read_record(defect_dir: Path) -> dict[str, Any] | None:
    return load_json(defect_dir / RECORD_FILE, "restore it from a backup or undo the hand-off by hand.")


def _defect_dir(tree: Path, defect: str) -> Path:
    if (tree / defect).is_dir():
        return tree / defect
    if tree.name == defect and tree.is_dir():
        return tree
    available = sorted(p.name for p in tree.iterdir() if p.is_dir()) if tree.is_dir() else []
    raise InputError(
        f"Defect folder '{defect}' not found in '{tree}'. Available: {', '.join(available) or 'none'}."
    )


def _folder_locations(defect_dir: Path, record: dict[str, Any] | None) -> dict[str, Path]:
    """Every distortion folder of the defect as it was before any hand-off, with its current path."""
    folders = {p.name: p for p in defect_dir.iterdir() if is_distortion_dir(p)}
    for entry in (record or {}).get("moved", []):
        held = defect_dir / HOLDING_FOLDER / entry["folder"]
        if held.is_dir():
            folders.setdefault(entry["folder"], held)
    return folders


def _structure_file(folder: Path) -> str:
    for name, _ in STRUCTURE_INPUTS:
        if (folder / name).is_file():
            if name not in SUPPORTED_FILES:
                raise InputError(
                    f"{folder / name}: hand-off supports VASP (POSCAR), FHI-aims (geometry.in) and CP2K "
                    f"(structure.cif) trees; {name} mixes the structure with calculation settings and is "
                    "not rewritten. Copy the ML-relaxed CONTCAR from the ML tree into it by hand."
                )
            return name
    raise InputError(
        f"No structure file in {folder} (looked for {', '.join(n for n, _ in STRUCTURE_INPUTS)}). "
        "Pass the tree written by snb-generate."
    )


def _read_atoms(path: Path, fmt: str | None = None):
    from ase.io import read

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="FHI-aims IO is moving")
            return read(str(path), format=fmt)
    except Exception as exc:
        raise InputError(f"Cannot read {path} ({type(exc).__name__}: {exc}).") from exc


def _same_structure(first, second, tolerance: float = 1e-4) -> bool:
    import numpy as np

    if first.get_chemical_symbols() != second.get_chemical_symbols():
        return False
    if not np.allclose(first.cell.array, second.cell.array, atol=tolerance):
        return False
    delta = first.get_scaled_positions(wrap=True) - second.get_scaled_positions(wrap=True)
    delta -= np.round(delta)
    return bool(np.all(np.linalg.norm(delta @ first.cell.array, axis=1) < tolerance))


def _ml_source(ml_dir: Path, provenance: Provenance, folder: str, original) -> Path:
    """The ML-relaxed CONTCAR for ``folder``, checked against the DFT tree's starting structure."""
    entry = provenance.distortions.get(folder) or DistortionRecord(folder=folder, status="missing")
    if entry.status in UNUSABLE_STATUSES:
        raise InputError(
            f"The ML relaxation of {ml_dir.name}/{folder} ended as '{entry.status}' "
            f"({entry.message}); it cannot be handed to DFT. Select another distortion."
        )
    output = ml_dir / entry.result_folder
    contcar = output / "CONTCAR"
    if not contcar.is_file():
        raise InputError(
            f"No ML-relaxed structure for {ml_dir.name}/{folder} (expected {contcar}). Relax the tree "
            "first with `snb-ml run` (or `snb-run --relaxer`), writing to this ML tree."
        )
    relaxed = _read_atoms(contcar, "vasp")
    start = output / "POSCAR"
    if (start.is_file() and not _same_structure(_read_atoms(start, "vasp"), original)) or (
        relaxed.get_chemical_symbols() != original.get_chemical_symbols()
    ):
        raise InputError(
            f"The ML tree's {ml_dir.name}/{folder} was not relaxed from this DFT tree's structure (the "
            f"atoms differ from {start}). Relax this DFT tree into a fresh ML tree and hand off from it."
        )
    return contcar


def _resolve(names: list[str], folders: dict[str, Path], defect: str, directory: Path) -> list[str]:
    resolved: list[str] = []
    for name in names:
        if name not in folders and name.endswith(HIGH_ENERGY_SUFFIX):
            name = name[: -len(HIGH_ENERGY_SUFFIX)]
        if name not in folders:
            raise InputError(
                f"Distortion folder '{name}' of {defect} not found in {directory}. "
                f"Available: {', '.join(sorted(folders))}."
            )
        if name not in resolved:
            resolved.append(name)
    return resolved


def _plan_defect(
    dft_tree: Path,
    ml_tree: Path,
    defect: str,
    chosen: list[str],
    original: list[str] | None = None,
    reasons: dict[str, str] | None = None,
) -> _Plan:
    directory = _defect_dir(dft_tree, defect)
    previous = _read_record(directory)
    folders = _folder_locations(directory, previous)
    if not chosen:
        raise InputError(f"No distortion selected for {defect}; select at least one or leave it out.")
    selected = _resolve(chosen, folders, defect, directory)
    as_generated = [n for n in _resolve(original or [], folders, defect, directory) if n not in selected]
    ml_dir = ml_tree / defect
    provenance = read_provenance(ml_dir, "rerun snb-ml run for this defect.", error=InputError)
    if provenance is None:
        raise InputError(
            f"{ml_dir} is not an snb_ml ML tree folder (no {PROVENANCE_FILE}). Pass the ML tree that "
            "`snb-ml run` wrote for this DFT tree."
        )
    files, sources = {}, {}
    recorded = {entry["folder"] for entry in (previous or {}).get("replaced", [])}
    for name in selected:
        location = folders[name]
        files[name] = _structure_file(location)
        original_file = location / (files[name] + ORIGINAL_SUFFIX)
        if original_file.exists() and name not in recorded:
            raise OutputError(
                f"{original_file} exists but no {RECORD_FILE} lists it; snb_ml will not overwrite it. "
                "Move it away (or restore it as the structure file) and run the hand-off again."
            )
        if not original_file.is_file():
            original_file = location / files[name]
        original = _read_atoms(original_file, dict(STRUCTURE_INPUTS)[files[name]])
        sources[name] = _ml_source(ml_dir, provenance, name, original)
    kept = [REFERENCE_FOLDER] if REFERENCE_FOLDER in folders and REFERENCE_FOLDER not in selected else []
    kept += [name for name in as_generated if name not in kept]
    moved = sorted(name for name in folders if name not in selected and name not in kept)
    fingerprint = {"selected": sorted(selected), "sources": {n: sha256_file(p) for n, p in sources.items()}}
    if as_generated:  # only then, so records written before this option still match
        fingerprint["kept_as_generated"] = sorted(as_generated)
    already = previous is not None and previous.get("complete") and previous.get("fingerprint") == fingerprint
    if already:
        _check_state(directory, previous)
    else:
        if previous is not None:
            _check_undo(directory, previous)
        for name in [*selected, *moved]:
            _refuse_if_dft_output(folders[name], "move or modify")
        held = {entry["folder"] for entry in (previous or {}).get("moved", [])}
        for name in moved:
            if (directory / HOLDING_FOLDER / name).exists() and name not in held:
                raise OutputError(
                    f"{directory / HOLDING_FOLDER / name} already exists, so {name} cannot be moved there. "
                    "Move it away and run the hand-off again."
                )
    plan = _Plan(defect, directory, selected, moved, kept, files, sources, fingerprint, previous)
    plan.reasons = {name: str(reason) for name, reason in (reasons or {}).items()}
    return plan


def _structure_text(folder: str, file_name: str, contcar: Path, original: Path) -> bytes:
    """The ML-relaxed structure in the format of ``file_name``, written like ShakeNBreak writes it."""
    import tempfile

    from pymatgen.core import Structure

    structure = Structure.from_file(str(contcar))
    if file_name == "POSCAR":
        from pymatgen.io.vasp import Poscar

        comment = original.read_text().splitlines()[0].strip() if original.is_file() else folder
        return Poscar(structure, comment=f"{comment} (snb_ml relaxed)").get_str().encode()
    with tempfile.TemporaryDirectory(prefix="snb_ml_handoff_") as scratch:
        path = Path(scratch) / file_name
        if file_name == "geometry.in":
            from ase.io import write

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="FHI-aims IO is moving")
                write(str(path), structure.to_ase_atoms(), format="aims", info_str=folder)
        else:  # structure.cif, as ShakeNBreak's write_cp2k_files
            structure.to(filename=str(path), fmt="cif")
        return path.read_bytes()


def _keep_original(original: Path, backup: Path) -> None:
    """Keep ``original`` as ``backup`` (a hard link; a byte copy where links are not supported)."""
    try:
        os.link(original, backup)
    except FileExistsError:
        raise
    except OSError:
        with atomic_path(backup) as temporary:
            shutil.copyfile(original, temporary)
        shutil.copystat(original, backup)


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_record(directory: Path, record: dict[str, Any]) -> None:
    write_text(directory / RECORD_FILE, json.dumps(record, indent=2))


def _apply(plan: _Plan, ml_tree: Path) -> None:
    directory = plan.directory
    rendered = {
        name: _structure_text(name, plan.files[name], plan.sources[name], directory / name / plan.files[name])
        for name in plan.selected
    }
    replaced = []
    for name in plan.selected:
        target = directory / name / plan.files[name]
        replaced.append(
            {
                "folder": name,
                "file": plan.files[name],
                "original_copy": plan.files[name] + ORIGINAL_SUFFIX,
                "original_sha256": sha256_file(target),
                "new_sha256": hashlib.sha256(rendered[name]).hexdigest(),
                "source": str(plan.sources[name]),
                "source_sha256": plan.fingerprint["sources"][name],
            }
        )
    record = {
        "snb_ml_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "defect": plan.defect,
        "ml_tree": str(ml_tree),
        "holding_folder": HOLDING_FOLDER,
        "fingerprint": plan.fingerprint,
        "kept_unselected": plan.kept,
        "reasons": plan.reasons,
        "replaced": replaced,
        "moved": [
            {"folder": n, "to": f"{HOLDING_FOLDER}/{n}", "files": _folder_hashes(directory / n)}
            for n in plan.moved
        ],
    }
    _write_record(directory, record)  # written first, so an interrupted hand-off can still be undone
    for entry in replaced:
        folder = directory / entry["folder"]
        _keep_original(folder / entry["file"], folder / entry["original_copy"])
        with atomic_path(folder / entry["file"]) as temporary:
            temporary.write_bytes(rendered[entry["folder"]])
    if plan.moved:
        (directory / HOLDING_FOLDER).mkdir(exist_ok=True)
    for name in plan.moved:
        os.rename(directory / name, directory / HOLDING_FOLDER / name)
    record["complete"] = True
    _write_record(directory, record)


def _check_state(directory: Path, record: dict[str, Any]) -> None:
    """Refuse when a prepared defect was changed by hand since its hand-off."""
    problems = []
    for entry in record["replaced"]:
        path = directory / entry["folder"] / entry["file"]
        if not path.is_file() or sha256_file(path) != entry["new_sha256"]:
            problems.append(f"{path} is not the handed-off ML structure")
        if not (directory / entry["folder"] / entry["original_copy"]).is_file():
            problems.append(f"{directory / entry['folder'] / entry['original_copy']} is missing")
    for entry in record["moved"]:
        if not (directory / entry["to"]).is_dir():
            problems.append(f"{directory / entry['to']} is missing")
    if problems:
        raise OutputError(
            f"{directory} was changed by hand since its hand-off: {'; '.join(problems)}. Put it back as "
            f"{RECORD_FILE} lists, or restore the files by hand and remove {RECORD_FILE}."
        )


def _check_undo(directory: Path, record: dict[str, Any]) -> None:
    """Raise unless :func:`_undo` can restore ``directory`` exactly; changes nothing."""
    for entry in record.get("replaced", []):
        folder = directory / entry["folder"]
        current, backup = folder / entry["file"], folder / entry["original_copy"]
        found = dft_outputs(folder, include_contcar=True)
        if found:
            raise OutputError(
                f"{folder} holds DFT output ({', '.join(found)}) computed from the handed-off structure; "
                f"restoring the original {entry['file']} would mismatch it. Move the output away first."
            )
        if backup.is_file():
            if sha256_file(backup) != entry["original_sha256"]:
                raise OutputError(f"{backup} was changed since the hand-off; restore {current} by hand.")
            if current.is_file() and sha256_file(current) != entry["new_sha256"]:
                raise OutputError(
                    f"{current} was changed since the hand-off; undoing would overwrite it with "
                    f"{backup}. Save your version elsewhere, then undo."
                )
        elif not (current.is_file() and sha256_file(current) == entry["original_sha256"]):
            raise OutputError(f"Cannot restore {current}: {backup} is missing. Restore it by hand.")
    for entry in record.get("moved", []):
        held, home = directory / entry["to"], directory / entry["folder"]
        if held.exists() and home.exists():
            raise OutputError(f"Both {held} and {home} exist; move one away, then undo.")
        if not held.exists() and not home.is_dir():
            raise OutputError(f"{held} is missing, so {entry['folder']} cannot be moved back.")


def _undo(directory: Path, record: dict[str, Any]) -> None:
    for entry in record.get("replaced", []):
        folder = directory / entry["folder"]
        backup = folder / entry["original_copy"]
        if backup.is_file():
            os.replace(backup, folder / entry["file"])
    for entry in record.get("moved", []):
        held = directory / entry["to"]
        if held.exists():
            os.rename(held, directory / entry["folder"])
    holding = directory / HOLDING_FOLDER
    if holding.is_dir() and not any(holding.iterdir()):
        holding.rmdir()
    (directory / RECORD_FILE).unlink()


def _result(plan: _Plan, status: str) -> DefectHandoff:
    return DefectHandoff(
        plan.defect, plan.directory, status, plan.selected, plan.moved, plan.kept, dict(plan.reasons)
    )


def prepare_dft_tree(
    dft_tree: Path,
    ml_tree: Path,
    selected: dict[str, list[str]],
    original: dict[str, list[str]] | None = None,
    reasons: dict[str, dict[str, str]] | None = None,
) -> HandoffRecord:
    """Prepare the DFT tree so that ShakeNBreak's ``snb-run`` submits only the selected distortions.

    Every requested defect is checked before anything is changed; a refusal leaves the tree untouched.

    Args:
        dft_tree: Top-level folder written by ``snb-generate`` (or one defect folder of it).
        ml_tree: The ML tree ``snb-ml run`` wrote for this DFT tree.
        selected: Defect folder name -> distortion folder names to run with DFT from their ML
            minimum (the ML representatives). ``Unperturbed`` is always kept, selected or not.
        original: Defect folder name -> distortion folders to run with DFT from the structure
            ShakeNBreak generated (kept in place untouched), e.g. the exploration starts of
            :attr:`~snb_ml.minima.DefectSelection.original_starts`.
        reasons: Defect folder name -> {folder: why it is relaxed with DFT}, stored in
            ``snb_ml_handoff.json``.

    Returns:
        What was done per defect (``prepared``, ``re-prepared`` or ``already prepared``).

    Raises:
        InputError: Unknown defect or distortion, missing or unusable ML structure, unsupported code.
        OutputError: A folder to move or modify holds DFT output, or the tree was changed by hand.
    """
    dft_tree, ml_tree = Path(dft_tree).resolve(), Path(ml_tree).resolve()
    if dft_tree == ml_tree:
        raise InputError(
            f"The ML tree {ml_tree} is the DFT tree itself; pass the ML tree `snb-ml run` wrote."
        )
    if not selected:
        raise InputError("No defects selected for the DFT hand-off.")
    original, reasons = original or {}, reasons or {}
    plans = [
        _plan_defect(dft_tree, ml_tree, defect, list(chosen), original.get(defect), reasons.get(defect))
        for defect, chosen in selected.items()
    ]
    results = []
    for plan in plans:
        status = "prepared"
        if plan.previous is not None:
            if plan.previous.get("complete") and plan.previous.get("fingerprint") == plan.fingerprint:
                results.append(_result(plan, "already prepared"))
                continue
            _undo(plan.directory, plan.previous)
            status = "re-prepared"
        _apply(plan, ml_tree)
        results.append(_result(plan, status))
    return HandoffRecord(dft_tree=dft_tree, ml_tree=ml_tree, defects=results)


def undo_handoff(dft_tree: Path, defects: list[str] | None = None) -> list[str]:
    """Restore the DFT tree byte-identically: original structure files back, folders moved back.

    Args:
        dft_tree: Top-level DFT tree (or one defect folder of it).
        defects: Defect folder names to restore (default: every defect with a hand-off record).

    Returns:
        The defect folders restored.

    Raises:
        InputError: Nothing to undo (no ``snb_ml_handoff.json`` for the requested defects).
        OutputError: A handed-off folder now holds DFT output or was changed by hand.
    """
    tree = Path(dft_tree).resolve()
    if defects:
        directories = [_defect_dir(tree, name) for name in defects]
    elif (tree / RECORD_FILE).is_file():
        directories = [tree]
    else:
        directories = sorted(p for p in tree.iterdir() if p.is_dir()) if tree.is_dir() else []
    todo = [(d, record) for d in directories if (record := _read_record(d)) is not None]
    if not todo:
        which = ", ".join(defects) if defects else f"any defect folder of {tree}"
        raise InputError(f"Nothing to undo: no {RECORD_FILE} in {which}; no hand-off was prepared there.")
    missing = sorted(set(defects or []) - {d.name for d, _ in todo})
    if missing:
        raise InputError(f"Nothing to undo for {', '.join(missing)}: no {RECORD_FILE} there.")
    for directory, record in todo:
        _check_undo(directory, record)
    for directory, record in todo:
        _undo(directory, record)
    return [directory.name for directory, _ in todo]
