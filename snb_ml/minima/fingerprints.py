"""Defect-site SOAP fingerprints of relaxed ShakeNBreak distortions, and their cosine distances.

Each relaxed structure of one defect is described by the SOAP power spectrum (dscribe) at the
defect centre, computed over the union of the species of that defect's structures with periodic
images. Two minima of the same basin give almost the same vector; a reconstruction (a dimer, a
split vacancy, a displaced interstitial) changes the local density and so the vector.

Where the centre is:

* **Substitutions and interstitials** follow the defect *atom*: its index is ``defect_site_index``
  from ``distortion_metadata.json`` when that index points at an atom close to ``unique_site`` in the
  Unperturbed structure, else the atom nearest ``unique_site`` there. Its position in each relaxed
  ``CONTCAR`` (written unsorted, so indices are kept) is the centre, so an interstitial that moves to
  another site is described where it ends up, not where it started.
* **Vacancies** have no atom to follow. The centre is ``unique_site`` moved by the mean displacement
  (relaxed minus Unperturbed position) of its nearest-neighbour shell, found in the Unperturbed
  structure and followed by index. This recentring is on by default because the fixed site of the
  unrelaxed supercell is not a point of the relaxed one: the whole supercell can drift rigidly
  during a relaxation (ShakeNBreak rattles every atom, with a non-zero mean), and the shell moves
  with it. For a symmetric (breathing) relaxation the mean displacement is zero, so nothing
  changes; for a reconstruction it is only ``1/len(shell)`` of the displacements, so the
  reconstruction itself still shows in the SOAP vector. Pass ``recentre_vacancy=False`` to use
  the fixed site.

  If an atom ends closer to the vacancy site than to its own Unperturbed position, the vacancy
  has *moved*: a strongly compressed neighbour often hops into the empty site (seen for EMT V_Cu
  at -60 %). The vacancy is then taken at that atom's Unperturbed position (recentred on the shell
  of that position), so a hop to an equivalent site gives the same fingerprint as no hop, while a
  hop that makes a different defect (e.g. an antisite-vacancy pair in a compound) does not.

With ``include_neighbours=True`` the fingerprint is the unit-normalised site vector concatenated with
the unit-normalised mean SOAP vector of the distorted neighbours (``distorted_atoms`` of the
metadata's charge entry, else the nearest-neighbour shell), so the cosine distance becomes about the
mean of the site and neighbour-shell distances.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError
from snb_ml.tree.layout import STRUCTURE_INPUTS, read_input_structure
from snb_ml.tree.metadata import METADATA_FILE, find_defect_metadata
from snb_ml.tree.metadata import load_defect_metadata as load_defect_metadata  # its former home
from snb_ml.tree.provenance import read_provenance

SITE_TOLERANCE = 0.5  # Å: an atom this close to unique_site in Unperturbed sits on the defect site
SHELL_TOLERANCE = 1.15  # nearest-neighbour shell: atoms within this factor of the closest distance


@dataclass(frozen=True)
class SoapParameters:
    """SOAP settings (dscribe 2.1 argument names).

    The defaults are those the selection threshold was calibrated with (see
    :mod:`snb_ml.minima.selection`): a 0.3 Å width separates distinct basins 14 times further apart
    than the noise within one, where 1.0 Å cannot tell an octahedral from a tetrahedral interstitial.

    Attributes:
        r_cut: Cutoff radius in Å.
        n_max: Number of radial basis functions.
        l_max: Maximum degree of spherical harmonics.
        sigma: Width in Å of the Gaussians smearing each atom.
    """

    r_cut: float = 5.0
    n_max: int = 10
    l_max: int = 10
    sigma: float = 0.3

    def __post_init__(self) -> None:
        if self.r_cut <= 0 or self.sigma <= 0 or self.n_max < 1 or self.l_max < 0:
            raise InputError(
                f"SOAP parameters must have r_cut > 0, sigma > 0, n_max >= 1, l_max >= 0 (got {self})."
            )

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, as stored in the selection file."""
        return asdict(self)


@dataclass(frozen=True)
class DefectSite:
    """Where the defect is in the structures of one defect folder.

    Attributes:
        name: Defect name in ``distortion_metadata.json`` (folder name without the charge).
        frac_coords: ``unique_site`` from the metadata (fractional coordinates).
        atom_index: Index of the defect atom (substitutions, interstitials); ``None`` for vacancies.
        shell: Indices of the nearest-neighbour shell of the site in the Unperturbed structure.
        neighbours: Indices used by ``include_neighbours`` (``distorted_atoms``, else ``shell``).
        reference: Cartesian positions of the Unperturbed structure (to find a moved vacancy).
    """

    name: str
    frac_coords: tuple[float, float, float]
    atom_index: int | None
    shell: tuple[int, ...]
    neighbours: tuple[int, ...]
    reference: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros((0, 3)))

    @property
    def is_vacancy(self) -> bool:
        """True when there is no defect atom to follow."""
        return self.atom_index is None


def read_unperturbed(ml_defect_dir: str | Path) -> Atoms:
    """The starting Unperturbed structure of a defect: the ML tree's copy, else the input tree's.

    Raises:
        InputError: If neither the ML tree nor the input folder named in the provenance has one.
    """
    directory = Path(ml_defect_dir)
    candidates = [directory / "Unperturbed"]
    provenance = read_provenance(directory, "copy it again from the ShakeNBreak tree.", error=InputError)
    if provenance is not None and provenance.input_directory:
        candidates.append(Path(provenance.input_directory) / "Unperturbed")
    for candidate in candidates:
        if candidate.is_dir() and any((candidate / name).is_file() for name, _ in STRUCTURE_INPUTS):
            return read_input_structure(candidate)
    raise InputError(
        f"Cannot identify the defect site of {directory}: no Unperturbed structure in "
        f"{' or '.join(str(c) for c in candidates)}. The Unperturbed folder defines the defect atom and "
        "its neighbours; regenerate it with snb-generate and rerun snb-ml run."
    )


def _mic_vectors(atoms: Atoms, origin: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """Minimum-image vectors from ``origin`` (one point, or one per atom) to the atoms' positions."""
    from ase.geometry import find_mic

    positions = atoms.positions if indices is None else atoms.positions[indices]
    vectors, _ = find_mic(positions - origin, atoms.cell, pbc=True)
    return vectors


def _valid_neighbours(distorted_atoms: list, atoms: Atoms, exclude: int | None) -> tuple[int, ...]:
    pairs = [p for p in distorted_atoms if isinstance(p, list | tuple) and p]
    symbols = atoms.get_chemical_symbols()
    # ShakeNBreak stores 0-based indices; versions before 3.0 stored 1-based ones.
    for offset in (0, -1):
        indices = [int(p[0]) + offset for p in pairs]
        if indices and all(
            0 <= i < len(atoms) and i != exclude and (len(p) < 2 or symbols[i] == p[1])
            for i, p in zip(indices, pairs, strict=True)
        ):
            return tuple(indices)
    return ()


def identify_defect_site(ml_defect_dir: str | Path, unperturbed: Atoms | None = None) -> DefectSite:
    """Locate the defect of one ML-tree defect folder (see the module docstring for the rules).

    Args:
        ml_defect_dir: The defect's folder in the ML tree.
        unperturbed: Its Unperturbed structure (read with :func:`read_unperturbed` if ``None``).

    Returns:
        The defect site, defect atom (if any), neighbour shell and distorted neighbours.

    Raises:
        InputError: If the metadata or Unperturbed structure is missing, or ``defect_site_index``
            is given but no atom sits near ``unique_site``.
    """
    directory = Path(ml_defect_dir)
    metadata = find_defect_metadata(directory)
    name = metadata.name
    atoms = unperturbed if unperturbed is not None else read_unperturbed(directory)
    frac = np.asarray(metadata.unique_site, dtype=float)
    if frac.shape != (3,):
        raise InputError(f"unique_site of '{name}' in {directory / METADATA_FILE} is not 3 coordinates.")
    origin = atoms.cell.cartesian_positions(frac)
    distances = np.linalg.norm(_mic_vectors(atoms, origin), axis=1)
    index = metadata.entry.get("defect_site_index")
    atom_index: int | None = None
    if isinstance(index, int) and 0 <= index < len(atoms) and distances[index] <= SITE_TOLERANCE:
        atom_index = index
    elif distances.min() <= SITE_TOLERANCE:
        atom_index = int(np.argmin(distances))
    elif index is not None:
        raise InputError(
            f"Cannot identify the defect atom of {directory}: defect_site_index {index} of '{name}' does "
            f"not point at an atom near unique_site {frac.tolist()} in the Unperturbed structure, and no "
            f"atom is within {SITE_TOLERANCE} Å of it. Check that distortion_metadata.json belongs to "
            "this Unperturbed structure (regenerate both with snb-generate)."
        )
    if len(atoms) < 2:
        raise InputError(f"The Unperturbed structure of {directory} has no atoms around the defect site.")
    shell = _shell(atoms, origin, exclude=atom_index)
    neighbours = _valid_neighbours(metadata.distorted_atoms, atoms, atom_index) or shell
    return DefectSite(
        name=name,
        frac_coords=(float(frac[0]), float(frac[1]), float(frac[2])),
        atom_index=atom_index,
        shell=shell,
        neighbours=neighbours,
        reference=atoms.positions.copy(),
    )


def _shell(atoms: Atoms, origin: np.ndarray, exclude: int | None) -> tuple[int, ...]:
    """Indices of the nearest-neighbour shell of ``origin`` (within SHELL_TOLERANCE x closest)."""
    distances = np.linalg.norm(_mic_vectors(atoms, origin), axis=1)
    if exclude is not None:
        distances[exclude] = np.inf
    return tuple(int(i) for i in np.flatnonzero(distances <= SHELL_TOLERANCE * distances.min()))


def defect_centre(atoms: Atoms, site: DefectSite, recentre_vacancy: bool = True) -> np.ndarray:
    """Cartesian position of the defect in a (relaxed) structure with the Unperturbed atom order.

    Args:
        atoms: The structure.
        site: The defect site from :func:`identify_defect_site`.
        recentre_vacancy: Move a vacancy site with the mean displacement of its shell.
    """
    if site.atom_index is not None:
        return atoms.positions[site.atom_index].copy()
    origin = atoms.cell.cartesian_positions(np.asarray(site.frac_coords))
    shell: tuple[int, ...] = site.shell
    if len(site.reference) == len(atoms):
        to_site = np.linalg.norm(_mic_vectors(atoms, origin), axis=1)
        moved = _mic_vectors(atoms, site.reference)
        hopped = int(np.argmin(to_site))
        if to_site[hopped] < np.linalg.norm(moved[hopped]):  # closer to the vacancy than to its own site
            origin = site.reference[hopped].copy()
            shell = _shell(_reference_atoms(atoms, site), origin, exclude=hopped)
    if not recentre_vacancy or not shell or len(site.reference) != len(atoms):
        return origin
    indices = np.asarray(shell)
    displacements = _mic_vectors(atoms, site.reference[indices], indices)
    return origin + displacements.mean(axis=0)


def _reference_atoms(atoms: Atoms, site: DefectSite) -> Atoms:
    reference = atoms.copy()
    reference.positions = site.reference
    return reference


class DefectFingerprinter:
    """Computes defect-site SOAP fingerprints for the structures of one defect."""

    def __init__(
        self,
        species: list[str],
        site: DefectSite,
        parameters: SoapParameters | None = None,
        include_neighbours: bool = False,
        recentre_vacancy: bool = True,
    ):
        """Set up the descriptor.

        Args:
            species: Every chemical symbol of the defect's structures (their union).
            site: The defect site.
            parameters: SOAP settings (defaults if ``None``).
            include_neighbours: Append the mean SOAP vector of the distorted neighbours.
            recentre_vacancy: See :func:`defect_centre`.
        """
        from dscribe.descriptors import SOAP

        self.site = site
        self.parameters = parameters or SoapParameters()
        self.include_neighbours = include_neighbours
        self.recentre_vacancy = recentre_vacancy
        self.species = sorted(set(species))
        self._soap = SOAP(
            species=self.species,
            r_cut=self.parameters.r_cut,
            n_max=self.parameters.n_max,
            l_max=self.parameters.l_max,
            sigma=self.parameters.sigma,
            periodic=True,
            sparse=False,
        )

    def __call__(self, atoms: Atoms) -> np.ndarray:
        """The fingerprint of one structure (same atom order as the Unperturbed structure)."""
        centres = [defect_centre(atoms, self.site, self.recentre_vacancy)]
        if self.include_neighbours:
            centres += [atoms.positions[i] for i in self.site.neighbours]
        work = atoms.copy()
        work.pbc = True
        vectors = np.atleast_2d(self._soap.create(work, centers=centres))
        site_vector = _unit(vectors[0])
        if not self.include_neighbours:
            return site_vector
        return np.concatenate([site_vector, _unit(vectors[1:].mean(axis=0))])


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``1 - cos(angle)`` between two fingerprints, clipped to [0, 2] (0 for identical directions)."""
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0:
        return 0.0 if not (np.any(a) or np.any(b)) else 1.0
    return float(np.clip(1.0 - float(np.dot(a, b)) / norm, 0.0, 2.0))


def distance_matrix(fingerprints: list[np.ndarray]) -> np.ndarray:
    """Symmetric matrix of :func:`cosine_distance` between all pairs (zero diagonal)."""
    count = len(fingerprints)
    matrix = np.zeros((count, count))
    for i in range(count):
        for j in range(i + 1, count):
            matrix[i, j] = matrix[j, i] = cosine_distance(fingerprints[i], fingerprints[j])
    return matrix
