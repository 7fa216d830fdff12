"""Exhaustive pair distortions: distort every symmetry-unique pair of defect neighbours.

ShakeNBreak distorts the ``N`` nearest neighbours of a defect together and makes one dimer from the two
closest neighbours. This module enumerates every pair of the defect's nearest neighbours, keeps one pair
per class of pairs equivalent under the operations that fix the defect site (its site symmetry in the
unperturbed supercell), and for each unique pair writes:

- ``Bond_Distortion_{x}%_from_pair{i}-{j}``: both neighbours moved along their bond to the defect by
  the fraction ``x`` (ShakeNBreak's ``distort`` applied to the pair only);
- ``Dimer_from_pair{i}-{j}``: the two neighbours moved symmetrically to ``dimer_distance`` apart
  (as ShakeNBreak's ``apply_dimer_distortion``, for a chosen pair);

each then rattled like ShakeNBreak does (``shakenbreak.distortions.rattle`` on every other atom, seed
``int(100 * (1 + x))`` and ``0`` for dimers). ``i`` and ``j`` are the 0-based site indices of the pair
in the Unperturbed structure. These names are read by ShakeNBreak as distortions "from" another
origin (the ``_from_`` labels it uses for other charge states), so ``snb-parse``/``snb-analyse``/
``snb-plot`` and ``snb_ml``'s relaxer accept the tree unchanged; plots show them as imported points
labelled ``From pair{i}-{j}``. One caveat: when ``get_energy_lowering_distortions`` compares several
charge states of a defect and a pair distortion is a ground state not found in another charge state,
ShakeNBreak parses the text after ``_from_`` as a charge (``int``), which fails; compare charge states
of pair trees one at a time.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snb_ml.errors import InputError, OutputError
from snb_ml.safe_write import write_text
from snb_ml.tree.layout import dft_outputs, is_distortion_dir, read_input_structure
from snb_ml.tree.metadata import METADATA_FILE, find_defect_metadata, split_charge

DEFAULT_PAIR_DISTORTIONS = (-0.6, -0.5, -0.4, -0.3, -0.2)
DEFAULT_DIMER_DISTANCE = 2.0
PAIRS_KEY = "snb_ml_pairs"


@dataclass(frozen=True)
class NeighbourPair:
    """One class of symmetry-equivalent pairs of defect neighbours.

    Attributes:
        label: ``pair{i}-{j}`` from the representative's 0-based site indices.
        indices: Site indices of the representative pair.
        elements: Their elements.
        distance: Distance between the two neighbours (Å, minimum image).
        defect_distances: Their distances to the defect site (Å).
        multiplicity: Number of neighbour pairs in the class.
        members: All pairs of the class, as site-index tuples.
    """

    label: str
    indices: tuple[int, int]
    elements: tuple[str, str]
    distance: float
    defect_distances: tuple[float, float]
    multiplicity: int
    members: tuple[tuple[int, int], ...]

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``distortion_metadata.json``."""
        data = asdict(self)
        data["members"] = [list(member) for member in self.members]
        return data


def pair_folder_name(label: str, distortion: float | str) -> str:
    """ShakeNBreak-readable folder name: ``Bond_Distortion_-40.0%_from_pair3-7`` or ``Dimer_from_pair3-7``."""
    if isinstance(distortion, str):
        return f"Dimer_from_{label}"
    return f"Bond_Distortion_{round(distortion * 100, 1) + 0}%_from_{label}"


def _plain(structure):
    plain = structure.copy()
    plain.remove_oxidation_states()
    return plain


def _defect_centre(structure, site_index: int | None, frac_coords) -> np.ndarray:
    if site_index is not None:
        if not 0 <= site_index < len(structure):
            raise InputError(
                f"Defect site index {site_index} is outside the {len(structure)}-atom structure."
            )
        return np.array(structure[site_index].frac_coords)
    if frac_coords is None:
        raise InputError(
            "Give the defect site: site_index (substitutions, interstitials; 0-based) or frac_coords "
            "(vacancies), as in ShakeNBreak's distortion_metadata.json."
        )
    return np.asarray(frac_coords, dtype=float)


def defect_neighbours(
    structure,
    site_index: int | None = None,
    frac_coords=None,
    num_neighbours: int | None = None,
    shell_tolerance: float = 0.1,
) -> list[tuple[float, int, str]]:
    """The defect's nearest neighbours, ordered like ShakeNBreak orders them.

    Args:
        structure: Unperturbed defect supercell (pymatgen ``Structure``).
        site_index: Defect site index (substitutions, interstitials; 0-based).
        frac_coords: Defect fractional coordinates (vacancies).
        num_neighbours: Take this many (ShakeNBreak's own choice among equidistant ones); default:
            the first shell, every atom within ``(1 + shell_tolerance)`` × the nearest distance.
        shell_tolerance: Relative width of the first shell.

    Returns:
        ``(distance, site index, element)`` per neighbour.
    """
    from shakenbreak.distortions import _get_nns_to_distort

    _defect_centre(structure, site_index, frac_coords)
    candidates = len(structure) - (1 if site_index is not None else 0)
    count = num_neighbours or candidates
    if not 2 <= count <= candidates:
        raise InputError(f"num_neighbours must be between 2 and {candidates} (got {num_neighbours}).")
    frac = None if frac_coords is None else np.asarray(frac_coords, dtype=float)
    ordered, _, _ = _get_nns_to_distort(structure, count, site_index=site_index, frac_coords=frac)
    if num_neighbours is None:
        ordered = [nn for nn in ordered if nn[0] <= ordered[0][0] * (1 + shell_tolerance)]
    if len(ordered) < 2:
        raise InputError(
            f"The defect has a single nearest neighbour within {shell_tolerance:.0%} of the closest "
            "distance; pass num_neighbours (>= 2) to take more."
        )
    return [(float(distance), int(index), str(element)) for distance, index, element in ordered]


def _site_permutations(structure, centre: np.ndarray, indices: list[int], symprec: float) -> list[tuple]:
    """Permutations of ``indices`` induced by the symmetry operations that fix the defect site."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    identity = [tuple(range(len(indices)))]
    try:
        operations = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False)
    except Exception as exc:  # spglib failures: fall back to treating every pair as unique
        warnings.warn(
            f"Symmetry analysis failed ({exc}); every neighbour pair is treated as unique.", stacklevel=3
        )
        return identity
    matrix = structure.lattice.matrix
    tolerance = max(10 * symprec, 0.05)
    frac = structure.frac_coords[indices]
    species = [structure[i].species_string for i in indices]

    def distances(delta: np.ndarray) -> np.ndarray:
        delta = delta - np.round(delta)
        return np.linalg.norm(np.atleast_2d(delta) @ matrix, axis=1)

    permutations = set(identity)
    for operation in operations:
        if distances(operation.operate(centre) - centre)[0] > tolerance:
            continue
        permutation = []
        for k, image in enumerate(operation.operate_multi(frac)):
            gaps = distances(frac - image)
            match = int(np.argmin(gaps))
            if gaps[match] > tolerance or species[match] != species[k]:
                break
            permutation.append(match)
        if len(permutation) == len(indices) and len(set(permutation)) == len(indices):
            permutations.add(tuple(permutation))
    return sorted(permutations)


def unique_pairs(
    structure,
    site_index: int | None = None,
    frac_coords=None,
    num_neighbours: int | None = None,
    symprec: float = 0.01,
) -> list[NeighbourPair]:
    """Symmetry-unique pairs of the defect's nearest neighbours.

    Two pairs are equivalent when an operation of the defect supercell that fixes the defect site
    (and maps the chosen neighbours onto themselves) maps one onto the other; elements must match,
    so in a mixed shell Te-Te and Te-Se pairs are different classes.

    Args:
        structure: Unperturbed defect supercell (pymatgen ``Structure``).
        site_index: Defect site index (substitutions, interstitials; 0-based).
        frac_coords: Defect fractional coordinates (vacancies).
        num_neighbours: Number of neighbours (default: the first shell, see :func:`defect_neighbours`).
        symprec: spglib tolerance (Å) for the site symmetry.

    Returns:
        One :class:`NeighbourPair` per class, shortest pair distance first.
    """
    structure = _plain(structure)
    neighbours = defect_neighbours(structure, site_index, frac_coords, num_neighbours)
    indices = [index for _, index, _ in neighbours]
    to_defect = {index: distance for distance, index, _ in neighbours}
    permutations = _site_permutations(
        structure, _defect_centre(structure, site_index, frac_coords), indices, symprec
    )
    seen: set[tuple[int, int]] = set()
    classes = []
    for a in range(len(indices)):
        for b in range(a + 1, len(indices)):
            if (a, b) in seen:
                continue
            orbit = {tuple(sorted((p[a], p[b]))) for p in permutations}
            seen |= orbit
            members = sorted(tuple(sorted((indices[x], indices[y]))) for x, y in orbit)
            i, j = members[0]
            classes.append(
                NeighbourPair(
                    label=f"pair{i}-{j}",
                    indices=(i, j),
                    elements=(structure[i].species_string, structure[j].species_string),
                    distance=round(float(structure.get_distance(i, j)), 4),
                    defect_distances=(round(to_defect[i], 4), round(to_defect[j], 4)),
                    multiplicity=len(members),
                    members=tuple(members),
                )
            )
    return sorted(classes, key=lambda c: (round(c.distance, 2), c.elements, c.indices))


def _default_stdev(structure) -> float:
    from shakenbreak.distortions import _get_stdev_and_d_min

    distances = structure.distance_matrix
    return float(_get_stdev_and_d_min([float(np.min(distances[distances > 0.5]))], None, np.inf)[0])


def _shortest_distance(structure) -> float:
    distances = structure.distance_matrix
    return float(np.min(distances[distances > 0]))


def _distorted(structure, pair: NeighbourPair, distortion, site_index, frac_coords, dimer_distance):
    """The pair-distorted (not yet rattled) structure."""
    from pymatgen.core import Structure
    from shakenbreak.distortions import _get_ase_defect_structure, distort

    frac = None if frac_coords is None else np.asarray(frac_coords, dtype=float)
    if not isinstance(distortion, str):
        result = distort(
            structure, 2, 1 + distortion, site_index, frac, distorted_atoms=list(pair.indices), verbose=False
        )
        return result["distorted_structure"]
    atoms, _ = _get_ase_defect_structure(structure, site_index, frac)
    atoms.set_distance(pair.indices[0], pair.indices[1], dimer_distance, fix=0.5, mic=True)
    if site_index is None:
        atoms.pop(-1)  # the fake atom ShakeNBreak puts on a vacancy
    return Structure.from_ase_atoms(atoms)


def pair_distortions(
    structure,
    site_index: int | None = None,
    frac_coords=None,
    bond_distortions: tuple[float, ...] = DEFAULT_PAIR_DISTORTIONS,
    dimer_distance: float | None = DEFAULT_DIMER_DISTANCE,
    num_neighbours: int | None = None,
    stdev: float | None = None,
    symprec: float = 0.01,
) -> dict[str, Any]:
    """Bond-distortion and dimer structures for every symmetry-unique pair of defect neighbours.

    Args:
        structure: Unperturbed defect supercell (pymatgen ``Structure``).
        site_index: Defect site index (substitutions, interstitials; 0-based).
        frac_coords: Defect fractional coordinates (vacancies).
        bond_distortions: Fractions by which both neighbours' bonds to the defect change.
        dimer_distance: Pair distance (Å) of the dimer structures; ``None`` for no dimers.
        num_neighbours: Number of neighbours (default: the first shell).
        stdev: Rattle standard deviation (Å); default 10% of the shortest interatomic distance, as
            ShakeNBreak's default from the bulk bond length.
        symprec: spglib tolerance (Å) for the site symmetry.

    Returns:
        ``{"Unperturbed": Structure, "distortions": {folder: Structure}, "pairs": [...], "folders":
        {folder: {"pair", "distortion", "seed"}}, "omitted": {folder: reason}, "defect_site": {...},
        "neighbours": [...], "distortion_parameters": {...}}``. Structures with atoms closer than
        1 Å (hydrogen-free systems) are omitted, as ShakeNBreak does.
    """
    from shakenbreak.distortions import rattle

    bad = [d for d in bond_distortions if d <= -1]
    if bad:
        raise InputError(f"Bond distortions {bad} would put atoms on the defect site; use values > -1.")
    structure = _plain(structure)
    pairs = unique_pairs(structure, site_index, frac_coords, num_neighbours, symprec)
    stdev = _default_stdev(structure) if stdev is None else float(stdev)
    plans: list[float | str] = [float(d) for d in bond_distortions]
    if dimer_distance is not None:
        plans.append("Dimer")
    has_hydrogen = any(element.symbol == "H" for element in structure.composition.elements)
    distortions, folders, omitted = {}, {}, {}
    for pair in pairs:
        for distortion in plans:
            name = pair_folder_name(pair.label, distortion)
            seed = 0 if isinstance(distortion, str) else int((1 + distortion) * 100)
            distorted = _distorted(structure, pair, distortion, site_index, frac_coords, dimer_distance)
            fixed = {*pair.indices, *([site_index] if site_index is not None else [])}
            active = [i for i in range(len(structure)) if i not in fixed]
            rattled = rattle(distorted, stdev=stdev, active_atoms=active, seed=seed)
            shortest = _shortest_distance(rattled)
            if shortest < 1.0 and not has_hydrogen:
                omitted[name] = f"interatomic distance {shortest:.2f} Å < 1 Å"
                continue
            distortions[name] = rattled
            folders[name] = {"pair": pair.label, "distortion": distortion, "seed": seed}
    if omitted:
        warnings.warn(f"Omitted (atoms closer than 1 Å): {', '.join(omitted)}", stacklevel=2)
    centre = _defect_centre(structure, site_index, frac_coords)
    neighbours = defect_neighbours(structure, site_index, frac_coords, num_neighbours)
    return {
        "Unperturbed": structure,
        "distortions": distortions,
        "pairs": [pair.to_json() for pair in pairs],
        "folders": folders,
        "omitted": omitted,
        "defect_site": {"site_index": site_index, "frac_coords": [float(x) for x in centre]},
        "neighbours": [list(nn) for nn in neighbours],
        "distortion_parameters": {
            "bond_distortions": [float(d) for d in bond_distortions],
            "dimer_distance": dimer_distance,
            "stdev": stdev,
            "symprec": symprec,
            "num_neighbours": len(neighbours),
        },
    }


def _locate_site(structure, unique_site, defect_dir: Path) -> tuple[str, Any]:
    """``("site_index", i)`` for the atom at ShakeNBreak's ``unique_site``, else ``("frac_coords", site)``.

    The metadata's ``defect_site_index`` refers to doped's structure, not to the written POSCAR (which
    may be sorted by element), so the defect atom is found by its coordinates.
    """
    site = np.asarray(unique_site, dtype=float)
    delta = structure.frac_coords - site
    delta -= np.round(delta)
    distances = np.linalg.norm(delta @ structure.lattice.matrix, axis=1)
    close = np.flatnonzero(distances < 0.2)
    if len(close) > 1:
        raise InputError(
            f"Several atoms of {defect_dir}/Unperturbed sit at the defect site {list(site)}; call "
            "pair_distortions with site_index instead."
        )
    return ("site_index", int(close[0])) if len(close) else ("frac_coords", site)


def pair_distortions_from_folder(defect_dir: str | Path, **options: Any) -> dict[str, Any]:
    """:func:`pair_distortions` for a ShakeNBreak defect folder (its Unperturbed structure and metadata).

    Args:
        defect_dir: Defect folder written by ``snb-generate`` (holding ``Unperturbed``).
        **options: Keyword arguments of :func:`pair_distortions` (``stdev`` defaults to the one in
            ``distortion_metadata.json``).

    Returns:
        As :func:`pair_distortions`.
    """
    from pymatgen.core import Structure

    defect_dir = Path(defect_dir)
    structure = Structure.from_ase_atoms(read_input_structure(defect_dir / "Unperturbed"))
    metadata = find_defect_metadata(defect_dir)
    site = _locate_site(structure, metadata.unique_site, defect_dir)
    options.setdefault(*site)
    if metadata.rattle_stdev is not None:
        options.setdefault("stdev", metadata.rattle_stdev)
    return pair_distortions(structure, **options)


def _charge(defect: str, charge: int | None) -> int:
    if charge is not None:
        return int(charge)
    name_charge = split_charge(defect)[1]
    if name_charge is None:
        raise InputError(
            f"Defect folder name '{defect}' does not end in its charge (like v_Cu_0); pass charge."
        )
    return name_charge


def _metadata(distortions: dict[str, Any], defect: str, charge: int) -> dict[str, Any]:
    parameters = distortions["distortion_parameters"]
    snb_parameters = {
        "distortion_increment": None,
        "bond_distortions": [
            *parameters["bond_distortions"],
            *(["Dimer"] if parameters["dimer_distance"] else []),
        ],
        "local_rattle": False,
        "mc_rattle_parameters": {"stdev": parameters["stdev"]},
    }
    atoms = sorted(
        {
            (i, e)
            for pair in distortions["pairs"]
            for i, e in zip(pair["indices"], pair["elements"], strict=True)
        }
    )
    site = distortions["defect_site"]
    entry: dict[str, Any] = {"unique_site": site["frac_coords"]}
    if site["site_index"] is not None:
        entry["defect_site_index"] = site["site_index"]
    entry["charges"] = {
        str(charge): {
            "num_nearest_neighbours": 2,
            "distorted_atoms": [list(a) for a in atoms],
            "distortion_parameters": snb_parameters,
        }
    }
    pairs = {key: distortions[key] for key in ("pairs", "folders", "omitted", "defect_site", "neighbours")}
    return {
        "distortion_parameters": snb_parameters,
        "defects": {split_charge(defect)[0]: entry},
        PAIRS_KEY: {**pairs, "parameters": parameters},
    }


def write_pair_tree(
    distortions: dict[str, Any], output: str | Path, defect: str, charge: int | None = None
) -> Path:
    """Write :func:`pair_distortions` output as a ShakeNBreak tree that ``snb-run --relaxer`` relaxes.

    Writes ``{output}/{defect}/Unperturbed/POSCAR``, one ``POSCAR`` folder per pair distortion and
    ``{output}/{defect}/distortion_metadata.json`` (ShakeNBreak's layout plus the pair definitions under
    ``snb_ml_pairs``). Rewriting the same distortions is allowed; anything else already there is not.

    Args:
        distortions: Output of :func:`pair_distortions`.
        output: Top-level folder of the pair tree (kept apart from the snb-generate tree).
        defect: Defect folder name, ending in the charge (e.g. ``v_Cu_0``) unless ``charge`` is given.
        charge: Defect charge, if the name does not end in it.

    Returns:
        The defect folder.

    Raises:
        OutputError: The defect folder exists and holds something else.
    """
    from pymatgen.io.vasp import Poscar

    charge = _charge(defect, charge)
    directory = Path(output) / defect
    metadata = _metadata(distortions, defect, charge)
    if directory.exists():
        existing = directory / METADATA_FILE
        previous = json.loads(existing.read_text()).get(PAIRS_KEY) if existing.is_file() else None
        if previous != json.loads(json.dumps(metadata[PAIRS_KEY])):
            raise OutputError(
                f"{directory} already exists and does not hold these pair distortions; write the pair "
                "tree to another output folder, or move the old one away."
            )
        if any(is_distortion_dir(p) and dft_outputs(p) for p in directory.iterdir()):
            raise OutputError(f"{directory} holds DFT output; write the pair tree to another output folder.")
    site = distortions["defect_site"]["frac_coords"]
    where = f"~[{site[0]:.1f},{site[1]:.1f},{site[2]:.1f}]"
    named = {"Unperturbed": distortions["Unperturbed"], **distortions["distortions"]}
    for name, structure in named.items():
        comment = f"{name.replace('Bond_Distortion_', '')} N(Distort)=2 {where}"
        write_text(directory / name / "POSCAR", Poscar(structure, comment=comment).get_str())
    write_text(directory / METADATA_FILE, json.dumps(metadata, indent=4))
    return directory
