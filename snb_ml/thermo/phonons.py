"""Harmonic and quasi-harmonic vibrational free energies from any snb_ml relaxer backend (via phonopy).

Unit conventions (checked against phonopy 4.10):

* phonopy normalises thermal properties to its *primitive* cell and reports the free energy in kJ/mol and
  the entropy in J/K/mol (per mole of primitive cells). Phonopy's default ``primitive_matrix="auto"`` would
  reduce e.g. a 4-atom conventional fcc cell to its 1-atom primitive cell (in 4.10 ``None`` does so too), so
  this module always passes ``primitive_matrix="P"`` (identity) and checks the atom count: every per-cell
  quantity here refers to the structure you pass in (``atoms``, ``n_atoms`` atoms), never to the phonopy
  supercell built from it.
* Energies are converted with phonopy's own ``EvTokJmol`` (eV per cell), entropies and heat capacities to
  units of k_B per cell.
* The three acoustic (translational) modes at Gamma are excluded from the sums (``exclude_gamma_acoustic``),
  so a Gamma-only calculation of an N-atom cell sums 3N - 3 modes; defect and bulk supercells then both lack
  the same three modes and the difference is consistent.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from snb_ml.errors import InputError
from snb_ml.relax import RelaxSettings, relax
from snb_ml.safe_write import write_text

#: Relaxation before the phonon step: tight forces, BFGS converges a near-harmonic minimum fastest.
PHONON_RELAX = RelaxSettings(fmax=1e-3, steps=3000, optimizer="BFGS", max_energy_rise=1.0)
#: Modes below ``-IMAGINARY_TOLERANCE`` THz count as imaginary (0.1 THz = 0.41 meV, above the noise of
#: 0.01 Å finite displacements on a 1e-3 eV/Å minimum, below any physical soft mode).
IMAGINARY_TOLERANCE = 0.1
#: Default mesh length (phonopy ``run_mesh(float)``) when a supercell matrix other than identity is given.
DEFAULT_MESH_LENGTH = 30.0


def _units() -> tuple[float, float]:
    from phonopy.physical_units import get_physical_units

    units = get_physical_units()
    return float(units.EvTokJmol), float(units.KB)


@dataclass
class VibrationalFreeEnergy:
    """Harmonic vibrational thermodynamics of one structure (all per cell = the ``n_atoms`` input atoms).

    Attributes:
        temperatures: Temperatures in K.
        free_energy: Vibrational Helmholtz free energy F_vib(T) in eV per cell (zero-point energy included).
        entropy: Vibrational entropy in k_B per cell.
        heat_capacity: Heat capacity at constant volume in k_B per cell.
        zero_point_energy: Sum of h nu / 2 over the sampled modes, eV per cell.
        frequencies: Mode frequencies in THz, shape (q-points, 3 n_atoms), on the irreducible mesh.
        qpoints: Irreducible q-points (reduced coordinates of the cell's reciprocal lattice).
        weights: Weights of ``qpoints``.
        mesh: Mesh numbers used.
        imaginary_modes: Modes below ``-imaginary_tolerance`` THz (Gamma translations excluded), each
            ``{"qpoint": [...], "band": i, "frequency": THz}``.
        imaginary_tolerance: Tolerance in THz used to flag imaginary modes.
        n_atoms: Number of atoms of the cell.
        formula: Chemical formula of the cell.
        symbols: Chemical symbols in order.
        cell: Lattice vectors in Å (rows).
        energy: Static potential energy of the (relaxed) cell in eV.
        n_displacements: Number of displaced supercells evaluated.
        displacement: Displacement amplitude in Å.
        supercell_matrix: Supercell matrix used for the force constants.
        relax_status: Status of the relaxation before the phonon step (``skipped``: ``relax_first=False``).
        seconds: Wall time of relaxation + phonon step.
        model: Name of the model that gave the forces, if known.
        extra: Further records (``relax_seconds``, ``phonon_seconds``: wall time of the force calls and force
            constants).
    """

    temperatures: np.ndarray
    free_energy: np.ndarray
    entropy: np.ndarray
    heat_capacity: np.ndarray
    zero_point_energy: float
    frequencies: np.ndarray
    qpoints: np.ndarray
    weights: np.ndarray
    mesh: list[int]
    imaginary_modes: list[dict[str, Any]]
    imaginary_tolerance: float
    n_atoms: int
    formula: str
    symbols: list[str]
    cell: np.ndarray
    energy: float
    n_displacements: int
    displacement: float
    supercell_matrix: list[list[int]]
    relax_status: str = "skipped"
    seconds: float = 0.0
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_imaginary_modes(self) -> bool:
        """True when any mode lies below ``-imaginary_tolerance`` THz."""
        return bool(self.imaginary_modes)

    @property
    def free_energy_per_atom(self) -> np.ndarray:
        """F_vib(T) in eV per atom (the vibrational chemical potential of an elemental reference)."""
        return self.free_energy / self.n_atoms

    def counts(self) -> dict[str, int]:
        """Number of atoms of each element."""
        return {s: self.symbols.count(s) for s in sorted(set(self.symbols))}

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON representation (arrays as lists)."""
        data = asdict(self)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VibrationalFreeEnergy:
        """Rebuild from :meth:`to_dict` output."""
        arrays = {f.name for f in fields(cls) if f.type == "np.ndarray"}
        return cls(**{k: np.asarray(v, dtype=float) if k in arrays else v for k, v in data.items()})

    def write_json(self, path: str | Path) -> None:
        """Write atomically to ``path`` as JSON."""
        write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read_json(cls, path: str | Path) -> VibrationalFreeEnergy:
        """Load a file written by :meth:`write_json`."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise InputError(
                f"Cannot read a vibrational free energy from {path} ({exc}). "
                "Pass a JSON written by snb_ml (VibrationalFreeEnergy.write_json) or a structure file."
            ) from exc


def to_phonopy_atoms(atoms: Atoms):
    """Convert ASE ``Atoms`` to ``PhonopyAtoms``."""
    from phonopy.structure.atoms import PhonopyAtoms

    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=np.array(atoms.cell),
        scaled_positions=atoms.get_scaled_positions(wrap=False),
        masses=atoms.get_masses(),
    )


def _to_ase(cell, info: dict[str, Any]) -> Atoms:
    atoms = Atoms(cell.symbols, cell=cell.cell, scaled_positions=cell.scaled_positions, masses=cell.masses)
    atoms.pbc = True
    atoms.info.update(info)
    return atoms


def _forces(atoms: Atoms, calculator: Any) -> np.ndarray:
    atoms.calc = calculator
    forces = np.array(atoms.get_forces(), dtype=float)
    atoms.calc = None
    if not np.isfinite(forces).all():
        raise InputError(
            f"The model returned non-finite forces for a displaced {atoms.get_chemical_formula()} supercell. "
            "Check the structure (atoms too close?) or use a different model."
        )
    return forces


#: Atoms per batched model call for the displaced supercells (CHGNet: ~0.6 GB per 1000 atoms on CPU).
PHONON_BATCH_ATOMS = 2048


def _displaced_forces(
    cells: list[Atoms], calculator: Any, evaluator: Any, batch_atoms: int
) -> list[np.ndarray]:
    """Forces of every displaced supercell: batched through ``evaluator`` when given, else one at a time."""
    if evaluator is None:
        return [_forces(atoms, calculator) for atoms in cells]
    per_call = max(1, batch_atoms // max(1, len(cells[0])))
    forces: list[np.ndarray] = []
    for start in range(0, len(cells), per_call):
        _, batch = evaluator.evaluate(cells[start : start + per_call])
        forces.extend(np.asarray(f, dtype=float) for f in batch)
    for atoms, f in zip(cells, forces, strict=True):
        if not np.isfinite(f).all():
            raise InputError(
                f"The model returned non-finite forces for a displaced {atoms.get_chemical_formula()} "
                "supercell. Check the structure (atoms too close?) or use a different model."
            )
    return forces


def auto_supercell_matrix(atoms: Atoms, min_length: float = 10.0) -> list[list[int]]:
    """Diagonal supercell matrix whose lattice vectors are all at least ``min_length`` Å long."""
    lengths = np.linalg.norm(np.array(atoms.cell), axis=1)
    return np.diag([max(1, int(np.ceil(min_length / length - 1e-6))) for length in lengths]).tolist()


def build_phonopy(
    atoms: Atoms,
    calculator: Any,
    supercell_matrix: Sequence[Sequence[int]] | None = None,
    displacement: float = 0.01,
    symprec: float = 1e-3,
    subtract_residual_forces: bool = True,
    evaluator: Any = None,
    batch_atoms: int = PHONON_BATCH_ATOMS,
):
    """Phonopy object with force constants from ``calculator`` (no relaxation here).

    The displaced supercells are independent: with ``evaluator`` (a
    :class:`~snb_ml.batch.BatchEvaluator`, e.g. ``batch_evaluator_for(loaded_model)``) they are
    evaluated many per model call (``batch_atoms`` atoms per call), otherwise one after another
    through the calculator.

    Args:
        atoms: The cell (the phonopy unit *and* primitive cell).
        calculator: ASE calculator.
        supercell_matrix: Supercell matrix; identity (``None``) for defect supercells.
        displacement: Finite displacement in Å.
        symprec: Symmetry tolerance of phonopy in Å.
        subtract_residual_forces: Subtract the forces of the undisplaced supercell (removes the residual of an
            imperfect relaxation to first order; one extra force call).
        evaluator: Batched evaluator of the same model as ``calculator`` (``None``: one at a time).
        batch_atoms: Most atoms per batched call.

    Returns:
        ``(phonopy, number_of_displacements)``.
    """
    from phonopy import Phonopy

    matrix = np.eye(3, dtype=int) if supercell_matrix is None else np.asarray(supercell_matrix, dtype=int)
    if matrix.shape != (3, 3) or round(abs(np.linalg.det(matrix))) < 1:
        raise InputError(
            f"supercell_matrix must be a non-singular 3x3 integer matrix, got {matrix.tolist()}. "
            "Use the identity for defect supercells."
        )
    phonon = Phonopy(to_phonopy_atoms(atoms), supercell_matrix=matrix, primitive_matrix="P", symprec=symprec)
    if len(phonon.primitive) != len(atoms):  # per-cell normalisation below relies on this
        raise InputError(f"phonopy reduced the {len(atoms)}-atom cell to {len(phonon.primitive)} atoms.")
    phonon.generate_displacements(distance=displacement)
    info = dict(atoms.info)
    cells = [_to_ase(cell, info) for cell in phonon.supercells_with_displacements]
    if subtract_residual_forces:
        cells.insert(0, _to_ase(phonon.supercell, info))
    forces = _displaced_forces(cells, calculator, evaluator, batch_atoms)
    residual = forces.pop(0) if subtract_residual_forces else 0.0
    forces = [f - residual for f in forces]
    phonon.forces = np.array(forces)
    phonon.produce_force_constants()
    phonon.symmetrize_force_constants()
    return phonon, len(forces)


def _imaginary_modes(qpoints: np.ndarray, frequencies: np.ndarray, tolerance: float) -> list[dict[str, Any]]:
    modes = []
    for q, freqs in zip(qpoints, frequencies, strict=True):
        skip: set[int] = set()
        if np.allclose(q, 0.0):  # the three translations at Gamma are ~0 by construction
            skip = set(np.argsort(np.abs(freqs))[:3].tolist())
        for band, frequency in enumerate(freqs):
            if band not in skip and frequency < -tolerance:
                modes.append({"qpoint": np.asarray(q).tolist(), "band": band, "frequency": float(frequency)})
    return modes


def thermal_properties(phonon: Any, mesh: Any, temperatures: np.ndarray) -> dict[str, Any]:
    """Thermal properties of a phonopy object with forces, per cell of its unit cell (see the module notes).

    Args:
        phonon: ``phonopy.Phonopy`` with its force constants produced.
        mesh: q-point mesh (three integers, or a length in Å), sampled Gamma-centred.
        temperatures: Temperatures in K (from :func:`temperature_grid`).

    Returns:
        ``free_energy`` (eV), ``entropy`` and ``heat_capacity`` (k_B), ``zero_point_energy`` (eV), and the
        mesh's ``frequencies`` (THz), ``qpoints``, ``weights`` and ``mesh`` numbers.
    """
    ev_to_kjmol, kb = _units()
    phonon.run_mesh(mesh, is_gamma_center=True)
    mesh_dict = phonon.get_mesh_dict()
    phonon.run_thermal_properties(temperatures=temperatures, exclude_gamma_acoustic=True)
    props = phonon.get_thermal_properties_dict()
    return {
        "free_energy": np.asarray(props["free_energy"]) / ev_to_kjmol,
        "entropy": np.asarray(props["entropy"]) / (1000 * ev_to_kjmol * kb),
        "heat_capacity": np.asarray(props["heat_capacity"]) / (1000 * ev_to_kjmol * kb),
        "zero_point_energy": float(phonon.thermal_properties.zero_point_energy) / ev_to_kjmol,
        "frequencies": np.asarray(mesh_dict["frequencies"]),
        "qpoints": np.asarray(mesh_dict["qpoints"]),
        "weights": np.asarray(mesh_dict["weights"], dtype=float),
        "mesh": [int(n) for n in phonon.mesh.mesh_numbers],
    }


def temperature_grid(temperatures: Sequence[float] | np.ndarray) -> np.ndarray:
    """The temperatures as a float array, checked.

    Raises:
        InputError: If the grid is empty, negative or not strictly increasing.
    """
    values = np.asarray(temperatures, dtype=float).ravel()
    if values.size == 0 or (values < 0).any() or (np.diff(values) <= 0).any():
        raise InputError(
            f"Temperatures must be non-negative and strictly increasing, got {values.tolist()[:6]}... "
            "(e.g. numpy.arange(0, 1001, 50))."
        )
    return values


def _relaxed(atoms: Atoms, calculator: Any, relax_first: bool, settings: RelaxSettings | None):
    if not relax_first:
        return atoms.copy(), "skipped"
    result = relax(atoms, calculator, settings or PHONON_RELAX)
    if not result.converged:
        warnings.warn(
            f"Relaxation of {atoms.get_chemical_formula()} before the phonon step did not converge "
            f"({result.message}); expect spurious imaginary modes. Raise the step limit or check the model.",
            stacklevel=3,
        )
    return result.atoms, result.status


def harmonic_free_energy(
    atoms: Atoms,
    calculator: Any,
    temperatures: Sequence[float] | np.ndarray = tuple(range(0, 1001, 50)),
    supercell_matrix: Sequence[Sequence[int]] | None = None,
    displacement: float = 0.01,
    relax_first: bool = True,
    relax_settings: RelaxSettings | None = None,
    mesh: float | Sequence[int] | None = None,
    imaginary_tolerance: float = IMAGINARY_TOLERANCE,
    strict: bool = False,
    symprec: float = 1e-3,
    model: str = "",
    evaluator: Any = None,
) -> VibrationalFreeEnergy:
    """Harmonic vibrational free energy F_vib(T) of ``atoms`` with forces from an ML (or any ASE) calculator.

    Imaginary modes make F_vib ill-defined: they are dropped from the thermodynamic sums (phonopy's cutoff),
    listed in ``imaginary_modes`` and announced with a warning; ``strict=True`` raises instead.

    Args:
        atoms: Structure; a defect supercell is already a supercell, so keep ``supercell_matrix`` ``None``.
        calculator: ASE calculator, e.g. ``load_model(settings).calculator``.
        temperatures: Temperatures in K (ascending).
        supercell_matrix: Supercell of ``atoms`` for the force constants (identity if ``None``).
        displacement: Finite displacement in Å.
        relax_first: Relax the positions at fixed cell with the same model before the phonon step.
        relax_settings: Settings of that relaxation (default :data:`PHONON_RELAX`, fmax 1e-3 eV/Å).
        mesh: q-mesh (numbers or phonopy length). Default: Gamma only (``[1, 1, 1]``) for an identity
            supercell matrix (a defect supercell: its own 3N - 3 modes), else length
            :data:`DEFAULT_MESH_LENGTH`.
        imaginary_tolerance: Modes below ``-imaginary_tolerance`` THz are imaginary (Gamma translations are
            never counted).
        strict: Raise :class:`InputError` on imaginary modes instead of warning.
        symprec: Phonopy symmetry tolerance in Å.
        model: Model name recorded in the result.
        evaluator: Batched evaluator of the same model for the displaced supercells (``None``: one
            calculator call each); see :func:`build_phonopy`.

    Returns:
        The vibrational free energy per cell of ``atoms`` (see the module docstring for units).
    """
    start = time.perf_counter()
    temps = temperature_grid(temperatures)
    work, status = _relaxed(atoms, calculator, relax_first, relax_settings)
    work.calc = calculator
    energy = float(work.get_potential_energy())
    work.calc = None
    relaxed_at = time.perf_counter()
    phonon, n_displacements = build_phonopy(
        work, calculator, supercell_matrix, displacement, symprec, evaluator=evaluator
    )
    phonon_seconds = time.perf_counter() - relaxed_at
    identity = supercell_matrix is None or np.array_equal(np.asarray(supercell_matrix), np.eye(3))
    if mesh is None:
        mesh = [1, 1, 1] if identity else DEFAULT_MESH_LENGTH
    thermal = thermal_properties(phonon, mesh, temps)
    imaginary = _imaginary_modes(thermal["qpoints"], thermal["frequencies"], imaginary_tolerance)
    formula = work.get_chemical_formula()
    if imaginary:
        lowest = min(m["frequency"] for m in imaginary)
        message = (
            f"{len(imaginary)} imaginary mode(s) in {formula} (lowest {lowest:.3f} THz, tolerance "
            f"-{imaginary_tolerance} THz); they are left out of F_vib. The structure is not a minimum of the "
            "model: relax it (relax_first=True, tighter fmax) or follow the soft mode to a lower structure."
        )
        if strict:
            raise InputError(message)
        warnings.warn(message, stacklevel=2)
    return VibrationalFreeEnergy(
        temperatures=temps,
        **thermal,
        imaginary_modes=imaginary,
        imaginary_tolerance=imaginary_tolerance,
        n_atoms=len(work),
        formula=formula,
        symbols=work.get_chemical_symbols(),
        cell=np.array(work.cell),
        energy=energy,
        n_displacements=n_displacements,
        displacement=displacement,
        supercell_matrix=np.asarray(phonon.supercell_matrix).astype(int).tolist(),
        relax_status=status,
        seconds=time.perf_counter() - start,
        model=model,
        extra={"relax_seconds": relaxed_at - start, "phonon_seconds": phonon_seconds},
    )


def check_defect_bulk(
    defect: VibrationalFreeEnergy,
    bulk: VibrationalFreeEnergy,
    composition_change: dict[str, int],
    lattice_tolerance: float = 0.01,
) -> None:
    """Raise :class:`InputError` unless ``defect`` is ``bulk`` plus ``composition_change`` in the same cell.

    Args:
        defect: Defect supercell result.
        bulk: Pristine supercell result.
        composition_change: Atoms added (+) or removed (-) per element to make the defect.
        lattice_tolerance: Largest allowed difference of any lattice-vector component in Å.
    """
    difference = np.abs(np.asarray(defect.cell) - np.asarray(bulk.cell)).max()
    if difference > lattice_tolerance:
        raise InputError(
            f"Defect ({defect.formula}) and bulk ({bulk.formula}) supercells differ: lattice vectors "
            f"differ by up to {difference:.3f} Å (tolerance {lattice_tolerance} Å). Compute both in the same "
            "supercell (the defect supercell is relaxed at the bulk's fixed cell)."
        )
    if not np.array_equal(defect.temperatures, bulk.temperatures):
        raise InputError("Defect and bulk free energies use different temperatures; recompute on one grid.")
    expected = dict(bulk.counts())
    for element, change in composition_change.items():
        expected[element] = expected.get(element, 0) + int(change)
    expected = {e: n for e, n in expected.items() if n}
    if expected != defect.counts():
        raise InputError(
            f"Composition mismatch: bulk {bulk.counts()} plus change {composition_change} gives {expected}, "
            f"but the defect cell holds {defect.counts()}. Give --add/--remove (composition_change) matching "
            "the defect, e.g. {'Cd': -1} for V_Cd."
        )


def reference_chemical_potentials(
    references: dict[str, VibrationalFreeEnergy], temperatures: np.ndarray
) -> dict[str, np.ndarray]:
    """Vibrational chemical potentials mu_vib,i(T) in eV per atom of elemental reference phases."""
    potentials = {}
    for element, reference in references.items():
        if set(reference.symbols) != {element}:
            raise InputError(
                f"Reference for {element} is {reference.formula}, not the elemental phase. Pass the pure "
                f"{element} solid (e.g. --reference {element}=POSCAR_{element})."
            )
        if not np.array_equal(reference.temperatures, temperatures):
            raise InputError(
                f"Reference {element} was computed at other temperatures "
                f"({len(reference.temperatures)} points, up to {reference.temperatures[-1]:g} K) than the "
                f"defect ({len(temperatures)} points, up to {temperatures[-1]:g} K); recompute it (or rerun "
                "with the same --tmin/--tmax/--tstep)."
            )
        potentials[element] = reference.free_energy_per_atom
    return potentials


def formation_vibrational_free_energy(
    defect: VibrationalFreeEnergy,
    bulk: VibrationalFreeEnergy,
    references: dict[str, VibrationalFreeEnergy],
    composition_change: dict[str, int],
    lattice_tolerance: float = 0.01,
) -> np.ndarray:
    """Vibrational contribution to the defect formation free energy.

    ΔF_vib(T) = F_defect(T) - F_bulk(T) - Σ_i n_i μ_vib,i(T), with n_i > 0 for atoms added, n_i < 0 for
    atoms removed and μ_vib,i the per-atom F_vib of the elemental reference phase.

    Args:
        defect: Defect supercell result.
        bulk: Pristine supercell result (same lattice).
        references: Elemental reference phases by element (per cell; divided by their atom counts here).
        composition_change: ``{element: n}`` added (+) / removed (-), e.g. ``{"Cd": -1}`` for V_Cd.
        lattice_tolerance: Largest allowed lattice difference in Å between defect and bulk.

    Returns:
        ΔF_vib in eV at ``defect.temperatures``.
    """
    check_defect_bulk(defect, bulk, composition_change, lattice_tolerance)
    missing = sorted(e for e, n in composition_change.items() if n and e not in references)
    if missing:
        raise InputError(
            f"No reference phase for {', '.join(missing)}; pass one per exchanged element "
            f"(e.g. --reference {missing[0]}=POSCAR)."
        )
    used = {e: references[e] for e, n in composition_change.items() if n}
    potentials = reference_chemical_potentials(used, defect.temperatures)
    delta = defect.free_energy - bulk.free_energy
    for element, change in composition_change.items():
        if change:
            delta = delta - change * potentials[element]
    return np.asarray(delta, dtype=float)
