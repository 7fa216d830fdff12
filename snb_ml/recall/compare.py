"""Compare the ML minima and the selection of one defect with what its DFT search found.

Basins are compared with the selection's own defect-site fingerprint and threshold. Measured on the
published V_Cd0 search in CdTe (CHGNet 0.3.0 minima vs PBE results, 26 starts): an ML minimum and
the DFT result of the same basin are 3.5e-4 to 1.1e-3 apart, the open and the Te-Te dimer basins
0.09-0.10, so the threshold of 1.5e-2 separates them with a wide margin on both sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from snb_ml.minima.clustering import cluster_minima
from snb_ml.minima.fingerprints import (
    DefectFingerprinter,
    SoapParameters,
    cosine_distance,
    identify_defect_site,
)
from snb_ml.minima.selection import select_defect
from snb_ml.recall.dft_search import DftDefect
from snb_ml.recall.results import DefectRecall, StartResult
from snb_ml.tree.provenance import DistortionRecord, read_provenance
from snb_ml.tree.status import ENERGY_STATUSES, Status


def _ml_structures(ml_dir, records: dict[str, DistortionRecord], count: int) -> dict[str, Any]:
    from ase.io import read

    structures = {}
    for folder, record in records.items():
        contcar = ml_dir / record.result_folder / "CONTCAR"
        if record.status in ENERGY_STATUSES and contcar.is_file():
            atoms = read(contcar, format="vasp")
            if len(atoms) == count:
                structures[folder] = atoms
    return structures


def _spearman(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    ml, dft = zip(*pairs, strict=True)
    if len(set(ml)) < 2 or len(set(dft)) < 2:
        return None
    value = float(spearmanr(ml, dft).statistic)
    return None if np.isnan(value) else value


def compare_defect(
    defect: DftDefect,
    ml_dir,
    policy: str,
    tolerance: float,
    threshold: float,
    noise: float,
    run: Any = None,
) -> DefectRecall:
    """Select the ML minima of one defect and score the selection against its DFT search.

    Args:
        defect: The defect of the DFT search.
        ml_dir: Its folder in the benchmark's ML tree.
        policy: Selection policy.
        tolerance: Energy above the DFT minimum that counts as the ground state (eV).
        threshold: Fingerprint distance of one basin.
        noise: ML energy noise for the ``protect`` policy's checks (eV).
        run: The defect's :class:`~snb_ml.runner.DefectReport` of this call (for timings).

    Returns:
        The defect's benchmark.
    """
    selection = select_defect(
        ml_dir, threshold, policy=policy, noise=noise, allow_incomplete=True, write=False
    )
    provenance = read_provenance(ml_dir, "rerun the benchmark.")
    records = provenance.distortions if provenance is not None else {}
    unperturbed = defect.starts["Unperturbed"].read_start()
    site = identify_defect_site(ml_dir, unperturbed)
    soap = SoapParameters(**{key: selection.parameters[key] for key in ("r_cut", "n_max", "l_max", "sigma")})
    fingerprint = DefectFingerprinter(selection.parameters["species"], site, soap)
    ml_prints = {f: fingerprint(a) for f, a in _ml_structures(ml_dir, records, len(unperturbed)).items()}
    dft_prints = {
        f: fingerprint(final) for f, s in defect.starts.items() if (final := s.read_final()) is not None
    }
    gs = defect.ground_state_energy
    dft = {f: e - gs for f, e in defect.energies.items()}
    ground = [f for f in defect.starts if f in dft and dft[f] <= tolerance + 1e-9]
    gs_prints = [dft_prints[f] for f in ground if f in dft_prints]
    # DFT basins: clusters of the DFT results with energies, numbered from the lowest (0 = ground state).
    with_energy = [f for f in defect.starts if f in dft_prints and f in dft]
    basin: dict[str, int] = {}
    if with_energy:
        matrix = np.array(
            [[cosine_distance(dft_prints[a], dft_prints[b]) for b in with_energy] for a in with_energy]
        )
        for cluster in cluster_minima(with_energy, [dft[f] for f in with_energy], matrix, threshold):
            basin.update({member: cluster.id for member in cluster.members})
    assumed = not dft_prints

    def reached(folder: str, start_from: str) -> float | None:
        """DFT energy (relative) reached by the plan's run of ``folder``."""
        if start_from == "original" or assumed:
            return dft.get(folder)
        if folder not in ml_prints:
            return None
        own = dft_prints.get(folder)
        if own is not None and cosine_distance(ml_prints[folder], own) < threshold:
            return dft.get(folder)
        nearest = min(
            ((cosine_distance(ml_prints[folder], p), f) for f, p in dft_prints.items() if f in dft),
            default=None,
        )
        return dft[nearest[1]] if nearest is not None and nearest[0] < threshold else None

    start_from = {f: "ml_minimum" for f in selection.representatives}
    start_from.update({f: "original" for f in selection.original_starts})
    start_from.setdefault("Unperturbed", "original")  # kept by the hand-off, relaxed by snb-run
    reasons = selection.reasons
    reasons.setdefault("Unperturbed", "kept by the hand-off as ShakeNBreak's energy reference")
    energies = {f: float(r.energy) for f, r in records.items() if r.status == Status.CONVERGED}
    ml_low = min(energies.values()) if energies else 0.0
    starts = []
    for folder in defect.starts:
        record = records.get(folder)
        result = StartResult(folder=folder, ml_status=str(record.status) if record is not None else "missing")
        result.dft_energy = dft.get(folder)
        result.dft_ground_state = None if folder not in dft else folder in ground
        result.dft_basin = basin.get(folder)
        if folder in energies:
            result.ml_energy = energies[folder] - ml_low
        if folder in ml_prints:
            if folder in dft_prints:
                result.ml_to_dft = cosine_distance(ml_prints[folder], dft_prints[folder])
                result.ml_in_dft_basin = result.ml_to_dft < threshold
            if gs_prints:
                result.ml_to_gs = min(cosine_distance(ml_prints[folder], p) for p in gs_prints)
                result.ml_in_gs_basin = result.ml_to_gs < threshold
        if folder in start_from:
            result.selected, result.start_from = True, start_from[folder]
            result.expected_energy = reached(folder, start_from[folder])
            result.reason = reasons.get(folder, "")
        starts.append(result)
    runs = [s for s in starts if s.selected]
    found_by = [
        s.folder for s in runs if s.expected_energy is not None and s.expected_energy <= tolerance + 1e-9
    ]
    ml_lowest = min(energies, key=energies.get) if energies else None
    lowest_reach = reached(ml_lowest, "ml_minimum") if ml_lowest else None
    notes = list(defect.notes) + list(selection.warnings) + list(selection.notes)
    if assumed:
        notes.append(
            "no DFT structures: the DFT outcome of a representative (handed over as its ML minimum) is "
            "assumed to be that of its start"
        )
    unknown = [s for s in runs if s.start_from == "ml_minimum" and s.expected_energy is None]
    if unknown:
        near = [f"{s.folder} {s.ml_to_gs:.3f}" for s in unknown if s.ml_to_gs is not None]
        notes.append(
            f"the ML minimum of {', '.join(s.folder for s in unknown)} lies in no basin DFT found: its DFT "
            "outcome is unknown (counted as not reaching the ground state)"
            + (
                f"; distance to the DFT ground state: {', '.join(near)} (basin threshold {threshold:g})"
                if near
                else ""
            )
        )
    seconds = 0.0
    if run is not None:
        seconds = sum(r.seconds for r in run.records.values() if not r.skipped)
    return DefectRecall(
        name=defect.name,
        charge=defect.charge,
        policy=policy,
        n=len(defect.starts),
        dft_runs=[s.folder for s in runs],
        ground_state_starts=ground,
        found_by=found_by,
        found_from_starts=any(s.dft_ground_state for s in runs),
        ml_lowest=ml_lowest,
        ml_lowest_is_gs=None
        if ml_lowest is None
        else (lowest_reach is not None and lowest_reach <= tolerance + 1e-9),
        spearman=_spearman([(energies[f], dft[f]) for f in defect.starts if f in energies and f in dft]),
        trust_flags=selection.trust.codes,
        starts=starts,
        assumed=assumed,
        notes=notes,
        ml_seconds=seconds,
    )
