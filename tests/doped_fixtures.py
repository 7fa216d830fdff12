"""A small real doped object shared by the thermodynamics tests."""

import warnings

import numpy as np
from doped.core import DefectEntry, Vacancy
from doped.thermodynamics import DefectThermodynamics
from pymatgen.core import Lattice, Structure
from pymatgen.electronic_structure.core import Spin
from pymatgen.electronic_structure.dos import Dos, FermiDos
from pymatgen.entries.computed_entries import ComputedStructureEntry

VBM, GAP, MU_CL, E_BULK = 1.0, 1.0, -2.0, -12.0
MU_CU = -3.5


def build_nacl_thermo() -> DefectThermodynamics:
    """A real, tiny doped DefectThermodynamics: v_Cl (0, +1) in rock-salt NaCl, with a model bulk DOS."""
    bulk = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5] * 3])
    entries = []
    for q, ef0, spin in [(0, 4.0, 2), (1, 3.5, 1)]:
        dsc = bulk.copy()
        dsc.remove_sites([4])
        entries.append(
            DefectEntry(
                defect=Vacancy(bulk, bulk[4]),
                charge_state=q,
                sc_entry=ComputedStructureEntry(dsc, E_BULK - MU_CL + ef0 - q * VBM),
                bulk_entry=ComputedStructureEntry(bulk, E_BULK),
                sc_defect_frac_coords=tuple(bulk[4].frac_coords),
                degeneracy_factors={"spin degeneracy": spin, "orientational degeneracy": 1},
                calculation_metadata={"vbm": VBM, "relaxed point symmetry": "Oh", "bulk site symmetry": "Oh"},
                name=f"v_Cl_{'+' if q else ''}{q}",
            )
        )
    e = np.linspace(-4, 6, 4001)
    d = np.zeros_like(e)
    d[e < VBM] = 2 * np.sqrt(VBM - e[e < VBM])
    d[e > VBM + GAP] = 2 * np.sqrt(e[e > VBM + GAP] - VBM - GAP)
    fermi_dos = FermiDos(Dos(VBM + GAP / 2, e, {Spin.up: d}), structure=bulk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DefectThermodynamics(
            entries,
            chempots={"Na": 0.0, "Cl": 0.0},
            el_refs={"Na": -1.0, "Cl": MU_CL},
            vbm=VBM,
            band_gap=GAP,
            bulk_dos=fermi_dos,
        )


def build_cu_thermo(repeat: int = 2) -> DefectThermodynamics:
    """A real doped DefectThermodynamics of v_Cu (0, -1) in fcc Cu, for phonons with ASE's EMT.

    The energies and the model DOS are made up (only the structures matter to the phonon step); the
    object is built, saved and loaded by doped itself.
    """
    unit = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]])
    bulk = unit * repeat
    e_bulk = MU_CU * len(bulk)
    entries = []
    for q, ef0 in [(0, 1.2), (-1, 1.6)]:
        dsc = bulk.copy()
        dsc.remove_sites([0])
        entries.append(
            DefectEntry(
                defect=Vacancy(bulk, bulk[0]),
                charge_state=q,
                sc_entry=ComputedStructureEntry(dsc, e_bulk + ef0 - q * VBM - MU_CU),
                bulk_entry=ComputedStructureEntry(bulk, e_bulk),
                sc_defect_frac_coords=tuple(bulk[0].frac_coords),
                degeneracy_factors={"spin degeneracy": 1, "orientational degeneracy": 1},
                calculation_metadata={"vbm": VBM, "relaxed point symmetry": "Oh", "bulk site symmetry": "Oh"},
                name=f"v_Cu_{q}",
            )
        )
    e = np.linspace(-4, 6, 4001)
    d = np.zeros_like(e)
    d[e < VBM] = 2 * np.sqrt(VBM - e[e < VBM])
    d[e > VBM + GAP] = 2 * np.sqrt(e[e > VBM + GAP] - VBM - GAP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DefectThermodynamics(
            entries,
            chempots={"Cu": 0.0},
            el_refs={"Cu": MU_CU},
            vbm=VBM,
            band_gap=GAP,
            bulk_dos=FermiDos(Dos(VBM + GAP / 2, e, {Spin.up: d}), structure=bulk),
        )
