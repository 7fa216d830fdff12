"""Pick one ML minimum per structural basin of each defect for DFT, by structure and never by energy.

Foundation force fields are qualitative for defects: they relax real reconstructions back to the
undistorted basin, or find them but rank them above it. So minima are grouped by their defect-site
SOAP fingerprint (:mod:`snb_ml.minima.fingerprints`), one representative (the lowest ML energy
member) is kept per group, and a group is never dropped for its ML energy unless an energy window
is asked for; what a window leaves out is reported, never silently lost.

Threshold calibration (``bench/calibrate_threshold.py --refine``; default SOAP r_cut 5 Å,
n_max 10, l_max 10, sigma 0.3 Å; complete linkage). The basin of each relaxed minimum is decided
independently of SOAP, by an order parameter (H_i: number of Cu within 2.6 Å; V_Cd: shortest Te-Te
distance < 3 Å; Cd_i: species of the 4 nearest atoms). Cosine distances, largest between minima of
one basin and smallest between minima of different basins:

=============================================  ======  =============  ==============
minima (relaxer)                               fmax    within-basin   between-basin
=============================================  ======  =============  ==============
V_Cu, 32-atom Cu, 8 SnB distortions (EMT)      0.01    1.8e-06        (one basin)
H_i octahedral x5 / tetrahedral x3 (EMT)       0.01    1.2e-06        1.0e-01
V_Cd, 64-atom CdTe, 8 SnB distortions          0.05    2.1e-02        (one basin)
  (CHGNet; all relax back, no Te-Te dimer)
same V_Cd minima re-relaxed (CHGNet)           0.01    1.1e-03        (one basin)
V_Cd open vs Te-Te dimer held at 2.85 Å        0.01    1.1e-03        7.8e-02
Cd_i Td(Te) x2 / hexagonal-like x2 (CHGNet)    0.01    5.6e-03        2.1e-01
=============================================  ======  =============  ==============

Over minima relaxed to 0.01 eV/Å (snb_ml's default fmax) the gap is 5.6e-3 to 7.8e-2, and
``DEFAULT_THRESHOLD = 1.5e-2`` sits in it, nearer the within-basin side (2.7x above it, 5x below
the closest distinct pair), because merging two basins loses one while splitting one only costs a
DFT relaxation. Looser relaxations leave more noise (V_Cd at fmax 0.05: 2.1e-2), so one basin can
then show as several clusters: more DFT relaxations, never a lost basin; the selection notes this.
The SOAP width decides the gap (ratio of smallest between- to largest within-basin distance at
fmax 0.01): sigma 1.0 Å gives 0.3 (H_i oct/tet only 1.6e-4 apart, inside the noise), 0.5 Å 4.3,
0.3 Å 14, 0.25 Å 25, 0.2 Å 23 (no better: n_max 10 limits the resolution); hence sigma 0.3 Å.
The threshold is calibrated for the site fingerprint, not for ``include_neighbours=True``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError, SnbMlError
from snb_ml.minima.clustering import Cluster, cluster_minima
from snb_ml.minima.fingerprints import (
    SoapParameters,
    cosine_distance,
    distance_matrix,
    identify_defect_site,
    read_unperturbed,
)
from snb_ml.minima.plot import plot_selection
from snb_ml.minima.results import (
    DefectSelection,
    ExtraStart,
    SelectedCluster,
    TreeSelection,
)
from snb_ml.minima.trust import ENERGY_NOISE, assess_minima, bond_distortion, exploration_starts
from snb_ml.plugins import get_fingerprint, get_selection_policy
from snb_ml.safe_write import remove_stale_temporaries, write_text
from snb_ml.tree.layout import DefectInput
from snb_ml.tree.provenance import PROVENANCE_FILE, DistortionRecord, Provenance, read_provenance
from snb_ml.tree.status import ENERGY_STATUSES, Status

DEFAULT_THRESHOLD = 1.5e-2
CALIBRATION_FMAX = 0.01
SELECTION_FILE = "snb_ml_selection.json"
SELECTION_PLOT = "snb_ml_selection.png"


def _order_key(folder: str) -> tuple:
    if folder == "Unperturbed":
        return (0, 0.0, folder)
    key = bond_distortion(folder)
    return (1, key, folder) if key is not None else (2, 0.0, folder)


def _read_results(directory: Path) -> Provenance:
    if not directory.is_dir():
        raise InputError(
            f"ML tree folder {directory} does not exist. Run `snb-ml run` on the ShakeNBreak tree first "
            "(it writes <tree>/ml_tree/<defect>), or pass the ML tree with -p."
        )
    path = directory / PROVENANCE_FILE
    if not path.is_file():
        raise InputError(
            f"{directory} has no {PROVENANCE_FILE}, so it is not a defect folder of an ML tree written by "
            "snb-ml run. Pass the ML tree (e.g. ml_tree or ml_tree/v_Cd_0), after running `snb-ml run`."
        )
    provenance = read_provenance(directory, "rerun snb-ml run for this defect.", error=InputError)
    if provenance is None or not provenance.distortions:
        raise InputError(f"{path} records no relaxations. Run `snb-ml run` for this defect first.")
    return provenance


def _missing_results(directory: Path, provenance: Provenance) -> list[str]:
    records = provenance.distortions
    expected: list[str] = []
    source = Path(str(provenance.input_directory or ""))
    if source.is_absolute() and source.is_dir():
        expected = DefectInput(directory.name, source).distortion_folders()
    missing = [folder for folder in expected if folder not in records]
    for folder, record in records.items():
        output = directory / record.result_folder / "CONTCAR"
        if record.status != Status.ERROR and not output.is_file():
            missing.append(folder)
    return sorted(set(missing), key=_order_key)


def _exclusion_reason(record: DistortionRecord) -> str:
    status = str(record.status)
    return f"{status}: {record.message}" if record.message else status


def _read_contcar(path: Path, count: int):
    from ase.io import read

    try:
        atoms = read(path, format="vasp")
    except Exception as exc:
        raise InputError(
            f"Cannot read {path} ({type(exc).__name__}: {exc}); rerun snb-ml run --force."
        ) from exc
    if len(atoms) != count:
        raise InputError(
            f"{path} has {len(atoms)} atoms but the Unperturbed structure has {count}; the ML tree mixes "
            "structures of different defects. Rerun snb-ml run with --force for this defect."
        )
    return atoms


def select_defect(
    ml_defect_dir: str | Path,
    threshold: float = DEFAULT_THRESHOLD,
    window: float | None = None,
    include_neighbours: bool = False,
    *,
    soap: SoapParameters | None = None,
    linkage: str = "complete",
    allow_incomplete: bool = False,
    write: bool = True,
    policy: str = "protect",
    noise: float = ENERGY_NOISE,
    fingerprint: str = "soap",
) -> DefectSelection:
    """Group the ML minima of one defect into structural basins and pick one per basin for DFT.

    Args:
        ml_defect_dir: The defect's folder in the ML tree (``ml_tree/{defect}``).
        threshold: Cosine-distance threshold between fingerprints of one basin.
        window: Energy window in eV above the lowest ML minimum; basins above it are reported in
            ``excluded`` and ``window_excluded`` but not selected. ``None`` (default): no window.
        include_neighbours: Also fingerprint the distorted neighbour shell.
        soap: SOAP parameters (calibrated defaults if ``None``).
        linkage: Clustering linkage: ``complete`` (default), ``average`` or ``single``.
        allow_incomplete: Select among finished runs when some distortions have no result yet,
            reporting those as excluded, instead of raising.
        write: Write ``snb_ml_selection.json`` and ``snb_ml_selection.png`` into the folder.
        policy: ``protect`` (default): the distinct basins, plus, when the minima are not trusted
            (:func:`~snb_ml.minima.trust.assess_minima`), the exploration set of original starts
            (:func:`~snb_ml.minima.trust.exploration_starts`), plus Unperturbed (the energy
            reference the hand-off keeps anyway). ``lean``: the distinct basins only. A plugin may
            register others (:func:`~snb_ml.hookspecs.register_selection_policies`).
        noise: ML energy spread (eV) below which the model cannot rank its minima.
        fingerprint: The defect-site fingerprint: ``soap`` (default, the calibrated one) or one a
            plugin registers (:func:`~snb_ml.hookspecs.register_fingerprints`); the threshold is in
            cosine distance of its vectors.

    Returns:
        The selection.

    Raises:
        InputError: If the folder is not an ML-tree defect folder, distortions lack results, the
            defect site cannot be identified, or no relaxation converged.
    """
    directory = Path(ml_defect_dir).resolve()
    if threshold < 0 or (window is not None and window < 0) or noise < 0:
        raise InputError(f"threshold, window and noise must be >= 0 (got {threshold}, {window}, {noise}).")
    choose_extras = get_selection_policy(policy).provider
    make_fingerprinter = get_fingerprint(fingerprint).provider
    soap = soap or SoapParameters()
    provenance = _read_results(directory)
    records = provenance.distortions
    missing = _missing_results(directory, provenance)
    if missing and not allow_incomplete:
        raise InputError(
            f"{directory.name}: no ML result for {', '.join(missing)} in {directory}. Finish the run first "
            "(rerun snb-ml run with the same settings; finished relaxations are reused), or select among "
            "the finished ones with allow_incomplete=True."
        )
    excluded = {folder: "no ML result (run not finished)" for folder in missing}
    candidates = sorted(
        (f for f, r in records.items() if r.status == Status.CONVERGED and f not in excluded), key=_order_key
    )
    excluded.update({f: _exclusion_reason(r) for f, r in records.items() if r.status != Status.CONVERGED})
    if not candidates:
        statuses = ", ".join(f"{f}: {r.status}" for f, r in sorted(records.items()))
        raise InputError(
            f"No relaxation of {directory.name} converged ({statuses}), so there are no minima to select. "
            "Rerun snb-ml run with more --steps (unconverged runs continue from their CONTCAR)."
        )
    unperturbed = read_unperturbed(directory)
    site = identify_defect_site(directory, unperturbed)
    structures = {
        f: _read_contcar(directory / records[f].result_folder / "CONTCAR", len(unperturbed))
        for f in candidates
    }
    reference_file = directory / "Unperturbed" / "CONTCAR"
    reference = structures.get("Unperturbed")
    if reference is None:
        reference = (
            _read_contcar(reference_file, len(unperturbed)) if reference_file.is_file() else unperturbed
        )
    species = sorted(
        {s for atoms in [unperturbed, *structures.values()] for s in atoms.get_chemical_symbols()}
    )
    fingerprinter = make_fingerprinter(species, site, soap, include_neighbours=include_neighbours)
    fingerprints = {f: np.asarray(fingerprinter(atoms), dtype=float) for f, atoms in structures.items()}
    reference_fingerprint = np.asarray(fingerprinter(reference), dtype=float)
    matrix = distance_matrix([fingerprints[f] for f in candidates])
    energies = {f: float(records[f].energy) for f in candidates}
    raw_clusters = cluster_minima(candidates, [energies[f] for f in candidates], matrix, threshold, linkage)
    unperturbed_record = records.get("Unperturbed")
    e_unperturbed = (
        float(unperturbed_record.energy)
        if unperturbed_record is not None
        and unperturbed_record.status in ENERGY_STATUSES
        and unperturbed_record.energy is not None
        else None
    )
    lowest = min(energies.values())
    clusters = [_summarise(c, e_unperturbed, fingerprints, reference_fingerprint) for c in raw_clusters]
    notes = _fmax_note(provenance)
    for cluster in clusters:
        if window is not None and cluster.energy - lowest > window + 1e-9:
            cluster.in_window = False
            excluded[cluster.representative] = (
                f"outside the {window:g} eV energy window: representative of cluster {cluster.id} "
                f"({len(cluster.members)} minima), {cluster.energy - lowest:.3f} eV above the lowest ML "
                "minimum; a structurally distinct basin that is not selected"
            )
    if getattr(choose_extras, "unperturbed_represents_its_basin", False):
        clusters = [
            _represented_by_unperturbed(c, energies, fingerprints, reference_fingerprint) for c in clusters
        ]
    if any(not c.in_window for c in clusters):
        notes.append(
            f"the {window:g} eV energy window left out {sum(not c.in_window for c in clusters)} structurally "
            "distinct basin(s); ML energies of defects are qualitative, so widen the window (or drop it) "
            "to relax them with DFT too."
        )
    to_reference = {f: cosine_distance(fingerprints[f], reference_fingerprint) for f in candidates}
    trust = assess_minima(
        [c.members for c in clusters],
        energies,
        to_reference,
        threshold,
        noise,
        defect=directory.name,
        fine_tuned_on=provenance.fine_tuned_on,
    )
    selection = DefectSelection(
        defect=directory.name,
        directory=directory,
        threshold=threshold,
        window=window,
        parameters={
            **soap.as_dict(),
            "species": species,
            "include_neighbours": include_neighbours,
            "linkage": linkage,
            "defect_atom_index": site.atom_index,
        },
        clusters=clusters,
        excluded=excluded,
        labels=candidates,
        distances=matrix,
        n_distortions=len(set(records) | set(missing)),
        energies=energies,
        unperturbed_energy=e_unperturbed,
        notes=notes,
        policy=policy,
        trust=trust,
    )
    usable = [f for f, r in records.items() if r.status != Status.ERROR] + missing
    selection.extras = list(choose_extras(selection, sorted(set(usable), key=_order_key)))
    if write:
        write_selection(selection)
    return selection


def _summarise(
    cluster: Cluster,
    e_unperturbed: float | None,
    fingerprints: dict[str, np.ndarray],
    reference: np.ndarray,
) -> SelectedCluster:
    return SelectedCluster(
        id=cluster.id,
        members=list(cluster.members),
        representative=cluster.representative,
        energy=cluster.energy,
        energy_vs_unperturbed=None if e_unperturbed is None else cluster.energy - e_unperturbed,
        distance_to_unperturbed=cosine_distance(fingerprints[cluster.representative], reference),
    )


def _represented_by_unperturbed(
    cluster: SelectedCluster,
    energies: dict[str, float],
    fingerprints: dict[str, np.ndarray],
    reference: np.ndarray,
) -> SelectedCluster:
    """The basin holding a converged Unperturbed, represented by Unperturbed; other basins unchanged.

    The hand-off always relaxes Unperturbed with DFT (ShakeNBreak's energy reference), so a second
    DFT start from a member of the same basin repeats that run. When a foundation model relaxes
    every start back to Unperturbed, that duplicate is exactly the lowest-energy member of the one
    basin (MgO Mg_O_+4: Rattled, whose DFT run from its ML minimum is Unperturbed's again, while
    DFT from Rattled as generated reaches the ground state). Freed, the member may enter the
    exploration set as generated.
    """
    if "Unperturbed" not in cluster.members or cluster.representative == "Unperturbed":
        return cluster
    energy = energies["Unperturbed"]
    return replace(
        cluster,
        representative="Unperturbed",
        energy=energy,
        energy_vs_unperturbed=0.0,
        distance_to_unperturbed=cosine_distance(fingerprints["Unperturbed"], reference),
        by_reference=True,
    )


def protect_extras(selection: DefectSelection, usable: list[str]) -> list[ExtraStart]:
    """The ``protect`` policy: exploration starts when the minima are not trusted, then Unperturbed.

    Unperturbed also represents its own basin under this policy (the registered ``protect`` function
    sets ``unperturbed_represents_its_basin``; see :func:`_represented_by_unperturbed`).
    """
    extras: list[ExtraStart] = []
    if not selection.trust.trusted:
        why = ", ".join(selection.trust.codes)
        extras += [
            ExtraStart(
                folder,
                "exploration",
                f"untrusted ML minima ({why}); {detail}; DFT starts from it as generated",
            )
            for folder, detail in exploration_starts(usable, selection.representatives)
        ]
    chosen = selection.representatives + [extra.folder for extra in extras]
    if "Unperturbed" in usable and "Unperturbed" not in chosen:
        extras.append(
            ExtraStart(
                "Unperturbed",
                "reference",
                "ShakeNBreak's energy reference; the hand-off keeps it and snb-run relaxes it as generated",
            )
        )
    return extras


def _fmax_note(provenance: Provenance) -> list[str]:
    fmax = provenance.fmax
    if isinstance(fmax, int | float) and fmax > 2 * CALIBRATION_FMAX:
        return [
            f"relaxed to fmax {fmax:g} eV/Å; the threshold was calibrated at {CALIBRATION_FMAX:g} eV/Å. "
            "Looser relaxations leave more noise, so one basin may show as several clusters (more DFT "
            "relaxations, never a lost basin)."
        ]
    return []


def write_selection(selection: DefectSelection) -> tuple[Path, Path]:
    """Atomically write ``snb_ml_selection.json`` and ``snb_ml_selection.png`` into the defect folder."""
    # A killed select leaves its temporary files behind (only its own: a run may be writing here).
    remove_stale_temporaries(selection.directory, names=(SELECTION_FILE, SELECTION_PLOT))
    json_path = selection.directory / SELECTION_FILE
    write_text(json_path, json.dumps(selection.to_json(), indent=2) + "\n")
    plot_path = selection.directory / SELECTION_PLOT

    plot_selection(selection, plot_path)
    return json_path, plot_path


def _defect_dirs(ml_tree: Path, defects: list[str] | None) -> list[Path]:
    if not ml_tree.is_dir():
        raise InputError(
            f"ML tree {ml_tree} does not exist. Run `snb-ml run` first (it writes <tree>/ml_tree), or "
            "pass the folder given to its --output."
        )
    if (ml_tree / PROVENANCE_FILE).is_file():
        found = {ml_tree.name: ml_tree}
    else:
        found = {p.name: p for p in sorted(ml_tree.iterdir()) if (p / PROVENANCE_FILE).is_file()}
    if not found:
        raise InputError(
            f"{ml_tree} holds no defect folders written by snb-ml run (none has {PROVENANCE_FILE}). "
            "Pass the ML tree written by `snb-ml run`, not the ShakeNBreak input tree."
        )
    if defects:
        absent = [name for name in defects if name not in found]
        if absent:
            raise InputError(
                f"Defect folder(s) {', '.join(absent)} not found in the ML tree {ml_tree}. "
                f"Available: {', '.join(found)}."
            )
        return [found[name] for name in defects]
    return list(found.values())


def select_tree(ml_tree: str | Path, defects: list[str] | None = None, **options: Any) -> TreeSelection:
    """Run :func:`select_defect` on every defect of an ML tree.

    Args:
        ml_tree: The ML tree (or one defect folder of it).
        defects: Defect folder names (all if ``None``).
        **options: Passed to :func:`select_defect` (``threshold``, ``window``, ...).

    Returns:
        Selections by defect, with per-defect errors recorded instead of raised.

    Raises:
        InputError: If the ML tree is missing or holds none of the requested defects.
    """
    root = Path(ml_tree).resolve()
    selections: dict[str, DefectSelection] = {}
    errors: dict[str, str] = {}
    for directory in _defect_dirs(root, defects):
        try:
            selections[directory.name] = select_defect(directory, **options)
        except SnbMlError as exc:
            errors[directory.name] = str(exc)
    return TreeSelection(ml_tree=root, defects=selections, errors=errors)
