"""Explicit charge terms (q·E_ref, point-charge image energy) and transition levels computed by doped."""

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from snb_ml.errors import InputError, ModelError
from snb_ml.models.charge_reference import (
    ChargeReference,
    attach_reference,
    dielectric_tensor,
    fit_charge_reference,
    mace_calculator_class,
    point_charge_correction,
    reference_of,
)
from snb_ml.training.levels import HEAD_KEY, LevelSettings, compare_levels, doped_levels, with_energies

try:
    from mace_models import build_tiny_mace
except ImportError:  # tests/ imported as a package
    from tests.mace_models import build_tiny_mace

DATA = Path(__file__).parent / "data"
CDTE_ENTRIES = DATA / "doped" / "CdTe_levels_entries.json.gz"
MGO_TREE = DATA / "vasp" / "MgO_tree"
CDTE_VBM, CDTE_GAP = 1.6465, 1.4986  # the DefectThermodynamics the entries come from

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cdte_entries():
    """Real doped DefectEntry objects (HSE+SOC CdTe: v_Cd 0/-1/-2, Cd_Te +2..-2), trimmed."""
    from monty.serialization import loadfn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loadfn(CDTE_ENTRIES)


@pytest.fixture(scope="module")
def mgo_frames(tmp_path_factory):
    """Real VASP frames (trimmed doped MgO example) harvested by `snb-ml dataset`: Mg_O 0 and +2, bulk."""
    from snb_ml.cli import main

    out = tmp_path_factory.mktemp("mgo") / "dataset"
    args = ["dataset", str(MGO_TREE), "-o", str(out), "--split", "frames", "--fractions", "1,0,0", "-q"]
    main([*args, "--frames-per-relaxation", "0"], standalone_mode=False)
    return read(out / "train.xyz", index=":")


def _doped_table(entries):
    """doped's own levels, read straight from its DataFrame (the reference for the plumbing)."""
    from doped.thermodynamics import DefectThermodynamics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = DefectThermodynamics(list(entries.values())).get_transition_levels(all=True)
    return {(d, c.replace("*", "")): float(v) for (d, c), v in table["eV from VBM"].items()}


# --- transition levels through doped ---------------------------------------------------------------


def test_levels_from_dft_energies_are_dopeds_own_and_errors_follow_energy_errors(cdte_entries):
    same = {name: entry.sc_entry.energy for name, entry in cdte_entries.items()}
    result = compare_levels(cdte_entries, with_energies(cdte_entries, same), CDTE_VBM, CDTE_GAP)
    doped_own = _doped_table(cdte_entries)
    assert len(result["levels"]) == len(doped_own) == 6
    for label, row in result["levels"].items():
        defect, charges = label.split(" ")
        assert row["dft"] == doped_own[(defect, charges)]
        assert row["model"] == row["dft"] and row["error"] == 0.0
    assert result["ground_state_levels"]["same"] and "v_Cd ε(0/-2)" in result["ground_state_levels"]["dft"]
    # Corrections and band edges are carried over unchanged; only the supercell energy differs.
    model = with_energies(cdte_entries, {**same, "v_Cd_-1": same["v_Cd_-1"] + 0.1})
    assert model["v_Cd_-1"].corrections == cdte_entries["v_Cd_-1"].corrections
    assert model["v_Cd_-1"].calculation_metadata["vbm"] == CDTE_VBM
    shifted = compare_levels(cdte_entries, model, CDTE_VBM, CDTE_GAP)["levels"]
    # e(0/-1) = E(-1) - E(0) - VBM rises by 0.1 eV, e(-1/-2) falls by 0.1 eV (doped rounds to 1 meV).
    assert shifted["v_Cd ε(0/-1)"]["error"] == pytest.approx(0.1, abs=1.5e-3)
    assert shifted["v_Cd ε(-1/-2)"]["error"] == pytest.approx(-0.1, abs=1.5e-3)
    assert all(row["error"] == 0.0 for label, row in shifted.items() if label.startswith("Cd_Te"))


def test_mixed_levels_of_theory_in_one_defect_are_refused(cdte_entries):
    entries = {name: copy.deepcopy(entry) for name, entry in cdte_entries.items() if name.startswith("v_Cd")}
    for name, entry in entries.items():
        entry.calculation_metadata[HEAD_KEY] = "hse" if name == "v_Cd_-1" else "pbe"
    with pytest.raises(InputError, match="different levels of theory.*hse: v_Cd_-1"):
        doped_levels(entries, CDTE_VBM, CDTE_GAP)


def test_level_settings_reject_bad_input():
    with pytest.raises(InputError, match="--correction"):
        LevelSettings(correction="lany").check()
    with pytest.raises(InputError, match="--vbm and --band-gap"):
        LevelSettings(vbm=1.0).check()


# --- explicit terms: physics, fit, model file, both engines ----------------------------------------


def test_point_charge_term_is_makov_payne_for_a_cubic_cell_and_halves_on_doubling():
    # Simple-cubic Madelung constant 2.837297: E_pc = q² α e²/(4πε0) / (2 ε L), e²/(4πε0) = 14.399645 eV Å.
    cell, eps = np.eye(3) * 12.6, 8.8963
    expected = 2.837297 * 14.399645 / (2 * eps * 12.6)
    assert point_charge_correction(cell, eps, 1) == pytest.approx(expected, rel=1e-4)
    assert point_charge_correction(cell, eps, -2) == pytest.approx(4 * expected, rel=1e-4)
    assert point_charge_correction(2 * cell, eps, 1) == pytest.approx(expected / 2, rel=1e-4)
    assert point_charge_correction(cell, [eps, eps, 2 * eps], 1) < expected  # more screening along z
    assert point_charge_correction(cell, eps, 0) == 0.0


def test_bad_dielectric_constants_are_refused():
    bad_inputs = (
        ([-1.0], "positive definite"),
        ([1.0, 2.0], "1, 3"),
        ([[1, 2, 0], [0, 1, 0], [0, 0, 1]], "symmetric"),
    )
    for bad, message in bad_inputs:
        with pytest.raises(InputError, match=message):
            dielectric_tensor(bad)
    assert dielectric_tensor([3.0, 4.0, 5.0]).tolist() == [[3, 0, 0], [0, 4, 0], [0, 0, 5]]


def test_reservoir_energy_fitted_on_real_mgo_frames(mgo_frames):
    def lowest(q):
        return min(
            float(a.info["REF_energy"])
            for a in mgo_frames
            if a.info["config_type"] == "defect" and a.info["total_charge"] == q
        )

    cell = next(a.cell for a in mgo_frames if a.info["total_charge"] == 2)
    plain = fit_charge_reference(mgo_frames)
    assert plain.e_ref == {"pbesol": pytest.approx((lowest(2) - lowest(0)) / 2, abs=1e-9)}
    assert plain.e_ref["pbesol"] == pytest.approx(-8.1, abs=0.1)  # two electrons out of Mg_O: ~8 eV each
    assert plain.u == {"pbesol": 0.0} and "three charge states" in plain.fit["pbesol"]["note"]
    with_image = fit_charge_reference(mgo_frames, dielectric=8.8963)
    expected = (lowest(2) + point_charge_correction(cell, 8.8963, 2) - lowest(0)) / 2
    assert with_image.e_ref["pbesol"] == pytest.approx(expected, abs=1e-9)
    assert with_image.dielectric == dielectric_tensor(8.8963).tolist()
    neutral = [a for a in mgo_frames if a.info["total_charge"] == 0]
    with pytest.raises(InputError, match="two charge states"):
        fit_charge_reference(neutral)


def test_reservoir_and_curvature_fitted_on_real_cdte_charge_states(cdte_entries):
    """Cd_Te +2 ... -2 (doped's HSE+SOC energies): slope and curvature of the lowest energies in q."""
    from pymatgen.io.ase import AseAtomsAdaptor

    frames, energies = [], {}
    for name, entry in cdte_entries.items():
        if not name.startswith("Cd_Te"):
            continue
        atoms = AseAtomsAdaptor.get_atoms(entry.sc_entry.structure)
        q = entry.charge_state
        atoms.info.update(REF_energy=entry.sc_entry.energy, total_charge=q, head="hse", defect="Cd_Te")
        frames.append(atoms)
        energies[q] = entry.sc_entry.energy + point_charge_correction(atoms.cell, 10.4, q)
    charges = sorted(energies)
    c2, c1, _ = np.polyfit(charges, [energies[q] for q in charges], 2)
    fitted = fit_charge_reference(frames, dielectric=10.4)
    assert fitted.e_ref["hse"] == pytest.approx(c1, abs=1e-6)
    assert fitted.u["hse"] == pytest.approx(2 * c2, abs=1e-6)
    linear = fit_charge_reference(frames, dielectric=10.4, order="linear")
    assert linear.u == {} and linear.e_ref["hse"] == pytest.approx(
        np.polyfit(charges, [energies[q] for q in charges], 1)[0]
    )
    assert fitted.fit["hse"]["rms_eV"] < linear.fit["hse"]["rms_eV"]
    with pytest.raises(InputError, match="order"):
        fit_charge_reference(frames, order="cubic")


def test_explicit_terms_round_trip_through_model_file_backend_and_batched_engine(mgo_frames, tmp_path):
    import torch
    from mace.calculators import MACECalculator

    from snb_ml.relaxers.base import CalculatorRequest
    from snb_ml.relaxers.mace_backend import load_mace
    from snb_ml.relaxers.mace_batch import MaceBatchEvaluator

    path = build_tiny_mace(tmp_path / "site.model", z_list=(8, 12), charge_mode="site")
    model = torch.load(path, weights_only=False)
    reference = ChargeReference({"Default": -5.5}, dielectric_tensor(8.8963).tolist(), {}, {"Default": 0.8})
    torch.save(attach_reference(model, reference), path)
    assert reference_of(torch.load(path, weights_only=False)) == reference

    loaded = load_mace(CalculatorRequest(model=str(path)))
    plain = MACECalculator(models=torch.load(path, weights_only=False), device="cpu", default_dtype="float64",
                           arrays_keys={"defect_charge": "defect_charge"})  # fmt: skip
    structures = []
    for q in (0, 2):
        atoms = next(a for a in mgo_frames if a.info["total_charge"] == q).copy()
        atoms.calc = None
        atoms.info["charge"] = q
        loaded.prepare_atoms(atoms)
        structures.append(atoms)
        energies, forces = [], []
        for calc in (loaded.calculator, plain):
            work = atoms.copy()
            work.calc = calc
            energies.append(work.get_potential_energy())
            forces.append(work.get_forces())
        shift = q * -5.5 + 0.4 * q**2 - point_charge_correction(atoms.cell, 8.8963, q)
        assert energies[0] - energies[1] == pytest.approx(shift, abs=1e-9)
        assert np.array_equal(forces[0], forces[1])  # a constant at fixed cell: forces untouched
    batched, batched_forces = MaceBatchEvaluator(loaded.calculator).evaluate(structures)
    for atoms, energy, force in zip(structures, batched, batched_forces, strict=True):
        work = atoms.copy()
        work.calc = loaded.calculator
        assert energy == pytest.approx(work.get_potential_energy(), abs=1e-6)
        assert np.allclose(force, work.get_forces(), atol=1e-6)

    # A charge-blind network with explicit terms is charge-aware, and insists on the charge.
    blind = torch.load(build_tiny_mace(tmp_path / "blind.model", z_list=(8, 12)), weights_only=False)
    torch.save(attach_reference(blind, reference), tmp_path / "blind_ref.model")
    loaded = load_mace(CalculatorRequest(model=str(tmp_path / "blind_ref.model")))
    assert loaded.charge_aware and loaded.charge_mode is None
    work = structures[0].copy()
    del work.info["charge"]
    work.calc = loaded.calculator
    with pytest.raises(ModelError, match="atoms.info\\['charge'\\]"):
        work.get_potential_energy()


def test_learned_part_stays_size_consistent_and_the_image_term_scales_as_one_over_l():
    """E(+1) - E(0) of one vacancy in 63- and 511-atom cells: explicit terms removed, it is constant."""
    from snb_ml.models import build_charge_aware_mace
    from snb_ml.models.diagnostics import charge_energy_differences, vacancy_supercell

    bulk = read(DATA / "CdTe_tree" / "CdTe_bulk_POSCAR")
    site = np.array([0.0, 0.25, 0.25]) @ bulk.cell.array
    cells = [vacancy_supercell(bulk, site, repeat) for repeat in ((1, 1, 1), (2, 2, 2))]
    model = build_charge_aware_mace([48, 52], "site", r_max=4.5, num_interactions=2, channels=8, seed=3)
    reference = ChargeReference({"Default": -3.0}, dielectric_tensor(10.4).tolist(), {})
    calculator = mace_calculator_class(attach_reference(model, reference))(
        models=model, device="cpu", default_dtype="float64", arrays_keys={"defect_charge": "defect_charge"}
    )
    totals = charge_energy_differences(calculator, cells, site, "site")
    images = [point_charge_correction(cell.cell, 10.4, 1) for cell in cells]
    assert images[1] == pytest.approx(images[0] / 2, rel=1e-4)  # cubic cell doubled: 1/L
    learned = [total - (-3.0 - image) for total, image in zip(totals, images, strict=True)]
    assert abs(learned[0]) > 0.01  # the random embedding does act...
    assert abs(learned[1] - learned[0]) < 0.010  # ...and the learned part keeps the site-mode guarantee
