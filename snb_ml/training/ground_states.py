"""Compare model-relaxed defect ground states and charge transition levels with DFT.

Input (``--ground-states``): a JSON file, or a folder holding ``ground_states.json`` and/or one
sub-folder per defect charge state (``v_Cd_-1/``, ``Mg_O_+2/``) with a VASP ``OUTCAR``/``vasprun.xml``
whose last ionic step is the DFT ground state. The JSON maps names to entries::

    {"vbm": 2.1,                      # optional: E_VBM (eV); levels are then above the VBM
     "v_Cd_-1": {"structure": "v_Cd_-1/CONTCAR", "energy": -211.3,
                 "defect_site": [x, y, z],   # Cartesian Å, needed by 'site' models for q != 0
                 "correction": 0.12,         # optional finite-size correction (eV), both sides
                 "head": "pbe"}}             # optional level of theory of a multi-head model

Transition levels use the formation-energy difference of neighbouring charge states of one defect:
``E_f(q; E_F) = E(q) - E_bulk - sum_i n_i mu_i + q (E_VBM + E_F) + E_corr(q)``; ``E_bulk`` and the
chemical potentials cancel between charge states of the same defect, so the level of ``(q/q')`` is
``e(q/q') = [E(q) + E_corr(q) - E(q') - E_corr(q')] / (q' - q) - E_VBM``. The same formula, the same
corrections and the same ``E_VBM`` are applied to model and DFT energies, so their difference is the
model's error (a small explicit function rather than doped's full ``DefectThermodynamics``, which also
needs the bulk, chemical potentials and band edges that a model test does not change).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError
from snb_ml.models import annotate_atoms
from snb_ml.relax import RelaxSettings, relax
from snb_ml.training.predict import ModelHandle
from snb_ml.tree.metadata import split_charge

#: A model ground state counts as reproducing DFT below this RMSD (Å).
RMSD_THRESHOLD = 0.1
_DFT_FILES = ("vasprun.xml", "OUTCAR", "OUTCAR.gz", "vasprun.xml.gz")


def parse_name(name: str) -> tuple[str, int]:
    """Split ``v_Cd_-1`` into ``("v_Cd", -1)``.

    Raises:
        InputError: If the name does not end in an integer charge.
    """
    defect, charge = split_charge(name)
    if charge is None:
        raise InputError(f"Ground state '{name}' must be named <defect>_<charge>, like v_Cd_-1 or Mg_O_+2.")
    return defect, charge


def _read_dft_folder(folder: Path) -> tuple[Atoms, float]:
    from ase.io import read

    for name in _DFT_FILES:
        path = folder / name
        if path.is_file():
            atoms = read(path, index=-1)
            return atoms, float(atoms.get_potential_energy())
    raise InputError(f"'{folder}' holds no {', '.join(_DFT_FILES)} to read the DFT ground state from.")


def load_ground_states(source: str | Path) -> tuple[dict[str, dict[str, Any]], float]:
    """Return ``({name: {"atoms", "energy", "defect", "charge", ...}}, vbm)`` from a JSON file or folder.

    Raises:
        InputError: For a missing path, entry without structure/energy, or a bad name.
    """
    from ase.io import read

    source = Path(source)
    if not source.exists():
        raise InputError(f"Ground states '{source}' do not exist.")
    spec: dict[str, Any] = {}
    base = source.parent if source.is_file() else source
    json_path = source if source.is_file() else source / "ground_states.json"
    if json_path.is_file():
        spec = json.loads(json_path.read_text())
    vbm = float(spec.pop("vbm", 0.0) or 0.0)
    entries: dict[str, dict[str, Any]] = {}
    if source.is_dir():
        for folder in sorted(
            p for p in source.iterdir() if p.is_dir() and split_charge(p.name)[1] is not None
        ):
            atoms, energy = _read_dft_folder(folder)
            entries[folder.name] = {"atoms": atoms, "energy": energy}
    for name, entry in spec.items():
        item = entries.setdefault(name, {})
        if "structure" in entry:
            item["atoms"] = read(base / entry["structure"])
        if "energy" in entry:
            item["energy"] = float(entry["energy"])
        for key in ("defect_site", "correction", "head"):
            if key in entry:
                item[key] = entry[key]
    for name, item in entries.items():
        item["defect"], item["charge"] = parse_name(name)
        if "atoms" not in item or "energy" not in item:
            raise InputError(f"Ground state '{name}' needs both a structure and a DFT energy.")
    if not entries:
        raise InputError(f"No ground states found in '{source}'.")
    return entries, vbm


def rmsd(a: Atoms, b: Atoms) -> float:
    """Return the root-mean-square displacement (Å) between two orderings-identical structures (PBC)."""
    from ase.geometry import find_mic

    if len(a) != len(b) or list(a.numbers) != list(b.numbers):
        raise InputError("RMSD needs two structures with the same atoms in the same order.")
    displacement, _ = find_mic(a.positions - b.positions, a.cell, a.pbc)
    return float(np.sqrt(np.mean(np.sum(displacement**2, axis=1))))


def transition_levels(energies: dict[str, dict[str, Any]], vbm: float = 0.0) -> dict[str, dict[str, float]]:
    """Return ``{defect: {"q/q'": level}}`` for neighbouring charge states (see the module docstring).

    Args:
        energies: ``{name: {"defect", "charge", "energy", "correction"?}}``.
        vbm: E_VBM (eV); levels are reported relative to it.
    """
    by_defect: dict[str, dict[int, float]] = {}
    for item in energies.values():
        total = float(item["energy"]) + float(item.get("correction", 0.0) or 0.0)
        by_defect.setdefault(item["defect"], {})[int(item["charge"])] = total
    levels: dict[str, dict[str, float]] = {}
    for defect, charges in sorted(by_defect.items()):
        ordered = sorted(charges)
        for q, q_next in zip(ordered[:-1], ordered[1:], strict=True):
            level = (charges[q] - charges[q_next]) / (q_next - q) - vbm
            levels.setdefault(defect, {})[f"{q:+d}/{q_next:+d}"] = float(level)
    return levels


def compare_ground_states(
    handle: ModelHandle,
    source: str | Path,
    fmax: float = 0.02,
    steps: int = 500,
    threshold: float = RMSD_THRESHOLD,
    radius: float | None = None,
) -> dict[str, Any]:
    """Relax each DFT ground state with the model; report RMSDs and transition levels vs DFT.

    Args:
        handle: The model.
        source: JSON file or folder (see the module docstring).
        fmax: Force threshold of the model relaxation (eV/Å).
        steps: Maximum optimizer steps.
        threshold: RMSD (Å) below which a ground state passes.
        radius: Defect marker radius (Å) for ``site`` models.

    Returns:
        ``{"threshold", "rmsd": {name: {"rmsd", "pass", "model_energy", "dft_energy"}}, "all_pass",
        "vbm", "transition_levels": {defect: {"q/q'": {"model", "dft", "error"}}}, "method"}``.
    """
    entries, vbm = load_ground_states(source)
    rows, model_energies = {}, {}
    for name, item in sorted(entries.items()):
        atoms = item["atoms"].copy()
        atoms.calc = None
        atoms.info["head"] = item.get("head", atoms.info.get("head"))
        site = item.get("defect_site")
        if handle.charge_mode == "site" and site is None:
            if item["charge"] != 0:
                raise InputError(
                    f"Ground state '{name}' needs 'defect_site' (Cartesian Å) for the site-mode model."
                )
            atoms.info["charge"] = 0
            atoms.arrays["defect_charge"] = np.zeros(len(atoms))
        elif handle.charge_mode == "none":
            atoms.info["charge"] = item["charge"]
        else:
            annotate_atoms(atoms, item["charge"], site, mode=handle.charge_mode, radius=radius)
        calculator = handle.calculator(handle.head_for(atoms))
        result = relax(atoms, calculator, RelaxSettings(fmax=fmax, steps=steps, trajectory_frames=2))
        distance = rmsd(result.atoms, item["atoms"])
        rows[name] = {
            "rmsd": distance,
            "pass": bool(distance < threshold),
            "status": result.status,
            "model_energy": float(result.energy),
            "dft_energy": float(item["energy"]),
        }
        model_energies[name] = {**item, "energy": result.energy}
    model_levels = transition_levels(model_energies, vbm)
    dft_levels = transition_levels(entries, vbm)
    levels = {
        defect: {
            label: {
                "model": value,
                "dft": dft_levels[defect][label],
                "error": value - dft_levels[defect][label],
            }
            for label, value in pairs.items()
        }
        for defect, pairs in model_levels.items()
    }
    return {
        "threshold": threshold,
        "rmsd": rows,
        "all_pass": all(row["pass"] for row in rows.values()),
        "vbm": vbm,
        "transition_levels": levels,
        "method": "e(q/q') = [E(q)+corr(q) - E(q')-corr(q')]/(q'-q) - E_VBM, neighbouring charges, "
        "model energies at model-relaxed ground states vs DFT energies",
    }
