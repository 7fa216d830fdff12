"""Charge-transition levels of a model, computed by doped exactly as for the DFT energies.

What a doped user wants from a charge-aware model is transition levels, which are differences of whole
cell energies between charge states. Here each defect charge state's DFT ground state (its lowest-energy
frame in the evaluated split) becomes a doped ``DefectEntry`` twice, with the same structure, bulk
reference, finite-size correction and band edges: once with the DFT energy and once with the model's.
doped's ``DefectThermodynamics.get_transition_levels`` then gives both sets of levels; their difference
is the model's error. The bulk energy and chemical potentials cancel in levels, so only the defect
energies differ between the two sets.

- **Corrections** (``LevelSettings.correction``): ``efnv`` (default) is doped's Kumagai (eFNV)
  correction from the OUTCAR core potentials of the DFT ground-state step and of the bulk (VASP writes
  them unless ``ICORELEVEL`` is negative); ``pc`` is the point-charge part alone (needs only the
  dielectric constant and the cell). Both need the total dielectric constant; a charged state without
  one is an error, never an uncorrected level.
- **Band edges**: the VBM and band gap come from the bulk frame's OUTCAR eigenvalues (final step), or
  ``LevelSettings.vbm`` / ``band_gap``; without either, an error.
- **Levels of theory**: each CTL is computed from entries of one head (functional) and a bulk frame of
  the same head; a defect whose entries carry different heads is an error.

Errors are reported for every single-electron level (``get_transition_levels(all=True)``, metastable
marks dropped) and the ground-state levels of both (``all=False``) are listed side by side.
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.data.frames import ENERGY_KEY
from snb_ml.data.vasp import fidelity, read_outcar_frames
from snb_ml.errors import InputError, ModelError
from snb_ml.models.charge_reference import dielectric_tensor, point_charge_correction
from snb_ml.training.frames import NO_CHARGE, defect_name, frame_charge, frame_head
from snb_ml.tree.metadata import charged_name, split_charge

CORRECTIONS = ("efnv", "pc")
#: ``calculation_metadata`` key of the level of theory of an entry built here.
HEAD_KEY = "snb_ml_head"
_LEVEL_LABEL = re.compile(r"ε\(([+-]?\d+)\*?/([+-]?\d+)\*?\)")


@dataclass
class LevelSettings:
    """How transition levels are computed.

    Attributes:
        dielectric: Total dielectric constant (scalar, 3 diagonal values or 3x3); required for charged
            states.
        correction: ``efnv`` (doped's Kumagai correction from OUTCAR core potentials) or ``pc``
            (point-charge term only).
        vbm: VBM eigenvalue (eV); ``None``: from the bulk OUTCAR.
        band_gap: Band gap (eV); ``None``: from the bulk OUTCAR.
        allow_charge_blind: Compute levels of a model without any charge term (benchmarks only:
            such a model predicts the same energy for every charge of a structure).
    """

    dielectric: Any = None
    correction: str = "efnv"
    vbm: float | None = None
    band_gap: float | None = None
    allow_charge_blind: bool = False

    def check(self) -> None:
        """Raise :class:`InputError` for an unknown correction or a half-given pair of band edges."""
        if self.correction not in CORRECTIONS:
            raise InputError(
                f"--correction must be one of {', '.join(CORRECTIONS)}, got {self.correction!r}."
            )
        if (self.vbm is None) != (self.band_gap is None):
            raise InputError(
                "Give both --vbm and --band-gap, or neither (then both come from the bulk OUTCAR)."
            )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # doped and pymatgen warn about things that do not matter here (oxidation states, chempots).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def ground_states(frames: Sequence[Any], key: Any = None) -> dict[tuple[str, str], dict[int, Any]]:
    """Return ``{(head, defect): {charge: item}}``: the lowest-DFT-energy item of each charge state.

    Args:
        frames: Items to choose from (``Atoms``, or objects whose ``key(item)`` is the ``Atoms``).
        key: Maps an item to its ``Atoms`` (``None``: the items are ``Atoms``).
    """
    key = key or (lambda item: item)
    chosen: dict[tuple[str, str], dict[int, Any]] = defaultdict(dict)
    for item in frames:
        atoms = key(item)
        if str(atoms.info.get("config_type", "defect")) != "defect":
            continue
        group = chosen[(frame_head(atoms), defect_name(atoms))]
        q = frame_charge(atoms)
        if q not in group or float(atoms.info[ENERGY_KEY]) < float(key(group[q]).info[ENERGY_KEY]):
            group[q] = item
    return dict(chosen)


def bulk_frame(candidates: Sequence[Atoms], head: str, cell: np.ndarray) -> Atoms:
    """Return the lowest-energy bulk frame of ``head`` whose cell matches ``cell`` (within 0.01 Å).

    Raises:
        InputError: If there is none (a transition level needs the bulk reference of the same level
            of theory and supercell).
    """
    matching = [
        atoms
        for atoms in candidates
        if str(atoms.info.get("config_type")) == "bulk"
        and frame_head(atoms) == head
        and np.allclose(atoms.cell.array, cell, atol=1e-2)
    ]
    if not matching:
        raise InputError(
            f"No bulk frame of level of theory '{head}' with the defect supercell's cell was found in the "
            "dataset, so formation energies and finite-size corrections cannot be computed. Harvest the "
            "bulk supercell calculation with the defects (`snb-ml dataset DEFECTS BULK ...`)."
        )
    return min(matching, key=lambda atoms: float(atoms.info[ENERGY_KEY]))


def _source(atoms: Atoms, what: str, fix: str) -> Path:
    source = atoms.info.get("source")
    if not source or not Path(str(source)).is_file():
        raise InputError(
            f"{what} needs the frame's VASP output, but its 'source' ({source!r}) is not a readable file. "
            f"Evaluate where the dataset was harvested, or {fix}."
        )
    return Path(str(source))


def band_edges(bulk: Atoms) -> tuple[float, float]:
    """Return ``(VBM, band gap)`` (eV) from the eigenvalues of the bulk frame's OUTCAR (final step).

    Raises:
        InputError: If the OUTCAR has no eigenvalues (then pass ``--vbm`` and ``--band-gap``).
    """
    path = _source(bulk, "Reading the VBM and band gap", "pass --vbm and --band-gap")
    kpoints = getattr(read_outcar_frames(path)[-1].calc, "kpts", None) or []
    energies = np.concatenate([np.asarray(k.eps_n, dtype=float) for k in kpoints]) if kpoints else []
    occupations = np.concatenate([np.asarray(k.f_n, dtype=float) for k in kpoints]) if kpoints else []
    if len(energies) == 0 or np.max(occupations) <= 0:
        raise InputError(
            f"'{path}' lists no eigenvalues and occupations, so the VBM and band gap are unknown; pass "
            "--vbm and --band-gap (e.g. from doped's bulk parsing)."
        )
    occupied = occupations > 0.5 * np.max(occupations)
    vbm, cbm = float(energies[occupied].max()), float(energies[~occupied].min())
    return vbm, cbm - vbm


def core_potentials(atoms: Atoms) -> np.ndarray:
    """Return the core (site) potentials of a frame's ionic step, with doped's sign convention.

    The step is found in the frame's OUTCAR by its energy (VASP prints the potentials every step).

    Raises:
        InputError: If the OUTCAR has no core potentials or no step with the frame's energy.
    """
    from pymatgen.io.vasp.outputs import Outcar

    path = _source(atoms, "doped's eFNV correction", "use --correction pc (point-charge term only)")
    outcar = Outcar.__new__(Outcar)  # doped's fast path: only the potentials, not a full parse
    outcar.filename = str(path)
    potentials = outcar.read_avg_core_poten()
    steps = read_outcar_frames(path)
    if not potentials or len(potentials) != len(steps):
        raise InputError(
            f"'{path}' does not list the core potentials of every ionic step ({len(potentials or [])} lists "
            f"for {len(steps)} steps), which doped's eFNV correction needs. Use --correction pc "
            "(point-charge term only) or rerun VASP without ICORELEVEL < 0."
        )
    energy = float(atoms.info[ENERGY_KEY])
    errors = [abs(float(step.get_potential_energy()) - energy) for step in steps]
    index = int(np.argmin(errors))
    if errors[index] > 1e-4:
        raise InputError(f"No ionic step of '{path}' has the frame's energy {energy:.6f} eV.")
    return -1.0 * np.asarray(potentials[index], dtype=float)


def _structure(atoms: Atoms) -> Any:
    from pymatgen.io.ase import AseAtomsAdaptor

    clean = atoms.copy()
    clean.calc = None
    clean.info = {}
    for name in list(clean.arrays):
        if name not in ("numbers", "positions"):
            del clean.arrays[name]
    return AseAtomsAdaptor.get_structure(clean)


def build_dft_entry(
    defect_frame: Atoms,
    bulk: Atoms,
    vbm: float,
    band_gap: float,
    settings: LevelSettings,
    bulk_potentials: np.ndarray | None = None,
) -> Any:
    """Return the doped ``DefectEntry`` of a DFT frame, with its finite-size correction.

    Args:
        defect_frame: The DFT ground-state frame of one defect charge state.
        bulk: The bulk frame of the same head and cell.
        vbm: VBM eigenvalue (eV).
        band_gap: Band gap (eV).
        settings: Correction scheme and dielectric constant.
        bulk_potentials: The bulk core potentials (``efnv``; read once per bulk by the caller).

    Raises:
        InputError: If a charged state has no dielectric constant, or its correction cannot be computed.
    """
    from doped.analysis import defect_from_structures
    from doped.core import DefectEntry
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    q = frame_charge(defect_frame)
    name = charged_name(defect_name(defect_frame), q)  # doped's entry name
    if q != 0 and settings.dielectric is None:
        raise InputError(
            f"{name}: the finite-size correction of a charged state needs the total dielectric constant of "
            "the host (--dielectric EPS, or 3 or 9 numbers for a tensor)."
        )
    tensor = dielectric_tensor(settings.dielectric) if settings.dielectric is not None else None
    structure, bulk_structure = _structure(defect_frame), _structure(bulk)
    with _quiet():
        found = defect_from_structures(bulk_structure, structure, return_all_info=True)
    defect, site, site_in_bulk = found[:3]
    metadata: dict[str, Any] = {
        "vbm": vbm,
        "band_gap": band_gap,
        HEAD_KEY: frame_head(defect_frame),
        # As doped's parser records it: the unrelaxed lattice site. doped groups entries by its
        # equivalents (fast); without it, by the relaxed site's (minutes for a 216-atom cell).
        "bulk_site": site_in_bulk,
        "snb_ml_frame": {k: str(defect_frame.info.get(k)) for k in ("relaxation", "frame", "source")},
    }
    if tensor is not None:
        metadata["dielectric"] = tensor
    entry = DefectEntry(
        defect=defect,
        charge_state=q,
        sc_entry=ComputedStructureEntry(structure, float(defect_frame.info[ENERGY_KEY])),
        bulk_entry=ComputedStructureEntry(bulk_structure, float(bulk.info[ENERGY_KEY])),
        sc_defect_frac_coords=tuple(site.frac_coords),
        defect_supercell=structure,
        defect_supercell_site=site,
        bulk_supercell=bulk_structure,
        calculation_metadata=metadata,
        name=name,
    )
    if q == 0:
        return entry
    if settings.correction == "pc":
        entry.corrections["point_charge_correction"] = point_charge_correction(defect_frame.cell, tensor, q)
        return entry
    entry.calculation_metadata["defect_site_potentials"] = core_potentials(defect_frame)
    entry.calculation_metadata["bulk_site_potentials"] = (
        bulk_potentials if bulk_potentials is not None else core_potentials(bulk)
    )
    with _quiet():
        try:
            entry.get_kumagai_correction(dielectric=tensor, verbose=False)
        except InputError:
            raise
        except Exception as exc:  # doped/pydefect: site mapping, lattices, potentials
            raise InputError(
                f"{name}: doped's eFNV correction failed ({type(exc).__name__}: {exc}). Check that the bulk "
                "and defect supercells match, or use --correction pc."
            ) from exc
    return entry


def with_energies(entries: dict[str, Any], energies: dict[str, float]) -> dict[str, Any]:
    """Return copies of doped entries with new supercell energies: the model's entries.

    Everything else (structures, corrections, band edges, bulk reference) is unchanged.

    Args:
        entries: ``{name: DefectEntry}`` (the DFT entries).
        energies: ``{name: energy}`` (eV) for every entry.
    """
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    copies = {}
    for name, entry in entries.items():
        if name not in energies:
            raise InputError(f"No model energy for '{name}'.")
        clone = copy.deepcopy(entry)
        clone.sc_entry = ComputedStructureEntry(entry.sc_entry.structure, float(energies[name]))
        copies[name] = clone
    return copies


def _level_of_theory(entry: Any) -> str:
    metadata = entry.calculation_metadata or {}
    if metadata.get(HEAD_KEY):
        return str(metadata[HEAD_KEY])
    incar = (metadata.get("run_metadata") or {}).get("defect_incar")
    if incar:
        return fidelity({str(k).upper(): str(v) for k, v in dict(incar).items()})
    return "unknown"


def check_one_level_of_theory(entries: dict[str, Any]) -> None:
    """Raise :class:`InputError` if one defect's entries come from different levels of theory."""
    by_defect: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, entry in entries.items():
        by_defect[split_charge(name)[0]][_level_of_theory(entry)].append(name)
    for defect, levels in by_defect.items():
        if len(levels) > 1:
            detail = "; ".join(
                f"{level}: {', '.join(sorted(names))}" for level, names in sorted(levels.items())
            )
            raise InputError(
                f"The charge states of {defect} come from different levels of theory ({detail}): a "
                "transition level between them would mix functionals. Compare charge states of one level "
                "of theory."
            )


def doped_levels(entries: dict[str, Any], vbm: float, band_gap: float) -> dict[str, dict[str, float]]:
    """Return doped's transition levels of ``entries``: ``{"all": {...}, "ground_state": {...}}``.

    Each maps ``"<defect> ε(q/q')"`` labels (metastable marks dropped) to the level (eV above the VBM)
    from ``DefectThermodynamics.get_transition_levels(all=True)`` and ``(all=False)``.
    """
    from doped.thermodynamics import DefectThermodynamics

    check_one_level_of_theory(entries)
    with _quiet():
        thermo = DefectThermodynamics(list(entries.values()), vbm=vbm, band_gap=band_gap)
        tables = {
            "all": thermo.get_transition_levels(all=True),
            "ground_state": thermo.get_transition_levels(),
        }
    levels: dict[str, dict[str, float]] = {}
    for kind, table in tables.items():
        levels[kind] = {}
        if table is None:
            continue
        for (defect, label), row in table.iterrows():
            match = _LEVEL_LABEL.fullmatch(str(label))
            if match and np.isfinite(row["eV from VBM"]):
                charges = f"ε({int(match[1]):+d}/{int(match[2]):+d})".replace("+0", "0")
                levels[kind][f"{defect} {charges}"] = float(row["eV from VBM"])
    return levels


def compare_levels(
    dft_entries: dict[str, Any],
    model_entries: dict[str, Any],
    vbm: float,
    band_gap: float,
    dft_levels: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Transition levels of DFT and model entries by doped, and the model's errors.

    Args:
        dft_entries: ``{name: DefectEntry}`` with DFT energies.
        model_entries: The same entries with model energies (:func:`with_energies`).
        vbm: VBM eigenvalue (eV).
        band_gap: Band gap (eV).
        dft_levels: :func:`doped_levels` of ``dft_entries`` if already computed.

    Returns:
        ``{"levels": {label: {"dft", "model", "error"}}, "ground_state_levels": {"dft", "model",
        "same": bool}, "mae", "max"}`` (eV); ``levels`` holds every single-electron level.
    """
    dft = dft_levels or doped_levels(dft_entries, vbm, band_gap)
    model = doped_levels(model_entries, vbm, band_gap)
    rows = {}
    for label, value in dft["all"].items():
        if label not in model["all"]:
            raise ModelError(f"doped found the DFT level {label} but no model level with the same charges.")
        rows[label] = {"dft": value, "model": model["all"][label], "error": model["all"][label] - value}
    errors = [abs(row["error"]) for row in rows.values()]
    return {
        "levels": rows,
        "ground_state_levels": {
            "dft": dft["ground_state"],
            "model": model["ground_state"],
            "same": sorted(dft["ground_state"]) == sorted(model["ground_state"]),
        },
        "mae": float(np.mean(errors)) if errors else None,
        "max": float(np.max(errors)) if errors else None,
    }


def level_report(
    handle: Any, predictions: Sequence[Any], all_frames: Sequence[Atoms], settings: LevelSettings
) -> dict[str, Any]:
    """Transition levels from the model's and DFT's energies of each charge state's DFT ground state.

    Args:
        handle: The model (:class:`~snb_ml.training.predict.ModelHandle`).
        predictions: Model predictions of the evaluated frames (their model energies are used).
        all_frames: Every frame of the dataset (the bulk reference is taken from any split).
        settings: Corrections, dielectric constant, band edges.

    Returns:
        ``{"method", "correction", "dielectric", "vbm", "band_gap", "states", "levels",
        "ground_state_levels", "mae", "max"}``.

    Raises:
        ModelError: If the model has no charge term.
        InputError: For missing bulk, dielectric constant, band edges, or fewer than two charge states.
    """
    settings.check()
    if (
        handle.charge_mode == NO_CHARGE
        and not handle.explicit_charge_terms
        and not settings.allow_charge_blind
    ):
        raise ModelError(
            f"Model '{handle.path.name}' has no charge term (charge mode 'none', no explicit charge terms): "
            "it gives every charge state of a structure the same energy, so its transition levels would be "
            "-VBM plus the corrections, not a prediction. Evaluate a charge-aware model."
        )
    groups = ground_states(predictions, key=lambda p: p.atoms)
    if not any(len(states) >= 2 for states in groups.values()):
        raise InputError(
            "Transition levels need at least two charge states of one defect among the evaluated frames; "
            f"found {', '.join(f'{d} ({h}): {sorted(s)}' for (h, d), s in sorted(groups.items())) or 'none'}."
        )
    foreign = sorted({head for head, _ in groups} - set(handle.heads))
    if foreign and handle.heads != ["Default"]:
        raise InputError(
            f"Model '{handle.path.name}' was trained on levels of theory {', '.join(handle.heads)}, but the "
            f"evaluated frames are {', '.join(foreign)}: its levels would mix functionals with the DFT ones. "
            "Evaluate it on frames of its own level of theory (or train a head for theirs)."
        )
    states, report_levels, ground, errors = {}, {}, {}, []
    edges = {}
    for (head, defect), by_charge in sorted(groups.items()):
        if len(by_charge) < 2:
            continue
        first = next(iter(by_charge.values())).atoms
        bulk = bulk_frame(all_frames, head, first.cell.array)
        if settings.vbm is not None:
            vbm, gap, source = float(settings.vbm), float(settings.band_gap), "given"
        else:
            vbm, gap = band_edges(bulk)
            source = f"bulk OUTCAR eigenvalues ({bulk.info.get('source')})"
        edges[head] = {"vbm": vbm, "band_gap": gap, "from": source}
        frames = {q: prediction.atoms for q, prediction in by_charge.items()}
        dft, dft_levels = _dft_side(frames, bulk, vbm, gap, settings)
        energies = {}
        for q, prediction in sorted(by_charge.items()):
            entry = dft[charged_name(defect, q)]
            energies[entry.name] = prediction.energy
            correction = float(sum(entry.corrections.values()))
            states[f"{head}:{entry.name}"] = {
                "defect": defect,
                "charge": q,
                "head": head,
                "relaxation": str(prediction.atoms.info.get("relaxation")),
                "frame": int(prediction.atoms.info.get("frame", -1)),
                "dft_energy": float(prediction.ref_energy),
                "model_energy": float(prediction.energy),
                "correction": correction,
                "dft_corrected_energy": prediction.ref_energy + correction,
            }
        compared = compare_levels(dft, with_energies(dft, energies), vbm, gap, dft_levels)
        for label, row in compared["levels"].items():
            report_levels[f"{head}:{label}"] = {**row, "head": head}
            errors.append(abs(row["error"]))
        ground[head] = compared["ground_state_levels"]
    return {
        "method": "doped DefectThermodynamics.get_transition_levels on DefectEntry pairs (DFT and model "
        "energy of each charge state's lowest DFT frame in the split; same bulk, corrections and VBM)",
        "correction": settings.correction,
        "dielectric": None if settings.dielectric is None else np.asarray(settings.dielectric).tolist(),
        "band_edges": edges,
        "states": states,
        "levels": report_levels,
        "ground_state_levels": ground,
        "mae": float(np.mean(errors)) if errors else None,
        "max": float(np.max(errors)) if errors else None,
    }


#: DFT entries and levels per set of ground-state frames and settings: evaluating several models (an
#: ensemble, a sweep) on one dataset in one process builds and corrects them once.
_DFT_CACHE: dict[tuple, tuple[dict[str, Any], dict[str, dict[str, float]]]] = {}


def _dft_side(
    frames: dict[int, Atoms], bulk: Atoms, vbm: float, band_gap: float, settings: LevelSettings
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The DFT entries of one defect's charge states and their doped levels (cached)."""
    key = (
        tuple(
            (q, frame_head(a), defect_name(a), round(float(a.info[ENERGY_KEY]), 8), str(a.info.get("source")))
            for q, a in sorted(frames.items())
        ),
        round(float(bulk.info[ENERGY_KEY]), 8),
        settings.correction,
        None if settings.dielectric is None else tuple(np.ravel(settings.dielectric).tolist()),
        vbm,
        band_gap,
    )
    if key not in _DFT_CACHE:
        charged = any(q != 0 for q in frames)
        bulk_potentials = core_potentials(bulk) if settings.correction == "efnv" and charged else None
        entries = {}
        for _, atoms in sorted(frames.items()):
            entry = build_dft_entry(atoms, bulk, vbm, band_gap, settings, bulk_potentials)
            entries[entry.name] = entry
        _DFT_CACHE[key] = (entries, doped_levels(entries, vbm, band_gap))
    return _DFT_CACHE[key]


def levels_table(levels: dict[str, Any]) -> str:
    """Return the printed summary of a :func:`level_report`: per-state and per-level errors."""
    from tabulate import tabulate

    states = [
        [
            name,
            f"{row['dft_energy']:.3f}",
            f"{row['model_energy'] - row['dft_energy']:+.3f}",
            f"{row['correction']:.3f}",
        ]
        for name, row in levels["states"].items()
    ]
    lines = [
        "Charge states (DFT ground-state frame; eV per cell):",
        tabulate(states, headers=["state", "E DFT", "E model - DFT", "correction"]),
        f"\nTransition levels by doped ({levels['correction']} corrections; eV above the VBM):",
    ]
    rows = [
        [label, f"{r['dft']:.3f}", f"{r['model']:.3f}", f"{r['error']:+.3f}"]
        for label, r in levels["levels"].items()
    ]
    lines.append(tabulate(rows, headers=["level", "DFT", "model", "error"]))
    if levels.get("mae") is not None:
        lines.append(f"CTL error: mean |error| {levels['mae']:.3f} eV, max {levels['max']:.3f} eV")
    for head, ground in levels["ground_state_levels"].items():
        if not ground["same"]:
            lines.append(
                f"Ground-state levels differ ({head}): DFT {sorted(ground['dft'])}, "
                f"model {sorted(ground['model'])}"
            )
    return "\n".join(lines)
