"""Harmonic / quasi-harmonic vibrational free energies with EMT (fast)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from snb_ml.errors import InputError
from snb_ml.thermo.free_energy_json import load_free_energy_json
from snb_ml.thermo.phonons import (
    VibrationalFreeEnergy,
    formation_vibrational_free_energy,
    harmonic_free_energy,
)
from snb_ml.thermo.qha import quasi_harmonic_free_energy

TEMPS = np.array([0.0, 1.0, 100.0, 300.0, 1000.0, 3000.0])
THZ_TO_EV = 4.135667696e-3
KB = 8.617333262e-5


@pytest.fixture(scope="module")
def cu_cell():
    return bulk("Cu", "fcc", a=3.59, cubic=True)


@pytest.fixture(scope="module")
def cu_bulk(cu_cell):
    return harmonic_free_energy(cu_cell, EMT(), TEMPS, supercell_matrix=np.eye(3, dtype=int) * 2)


@pytest.fixture(scope="module")
def supercells(cu_cell):
    cell = cu_cell.repeat(2)
    vacancy = cell.copy()
    del vacancy[0]
    return harmonic_free_energy(cell, EMT(), TEMPS), harmonic_free_energy(vacancy, EMT(), TEMPS)


def _modes(result: VibrationalFreeEnergy):
    """Mode energies (eV) and weights, Gamma translations removed."""
    energies, weights = [], []
    for q, freqs, weight in zip(result.qpoints, result.frequencies, result.weights, strict=True):
        keep = np.ones(len(freqs), bool)
        if np.allclose(q, 0):
            keep[np.argsort(np.abs(freqs))[:3]] = False
        energies.extend(freqs[keep] * THZ_TO_EV)
        weights.extend([weight] * keep.sum())
    return np.array(energies), np.array(weights) / result.weights.sum()


def test_low_temperature_limit_is_zero_point_energy(cu_bulk):
    energies, weights = _modes(cu_bulk)
    zpe = float(np.sum(weights * energies / 2))
    assert cu_bulk.n_atoms == 4 and cu_bulk.formula == "Cu4"  # per input (conventional) cell, not primitive
    assert cu_bulk.zero_point_energy == pytest.approx(zpe, rel=1e-3)
    assert cu_bulk.free_energy[1] == pytest.approx(zpe, rel=1e-3)
    # EMT Cu: Debye-like ZPE ~ 9/8 k Theta_D per atom with Theta_D ~ 300 K
    assert 0.02 < zpe / 4 < 0.05
    assert cu_bulk.entropy[1] < 1e-3 and not cu_bulk.has_imaginary_modes


def test_high_temperature_classical_limit(cu_bulk):
    energies, weights = _modes(cu_bulk)
    for index in (4, 5):  # 1000 K and 3000 K >> Theta_D
        kt = KB * TEMPS[index]
        classical = float(np.sum(weights * kt * np.log(energies / kt)))
        assert cu_bulk.free_energy[index] == pytest.approx(classical, rel=0.03)
        # entropy -> sum (1 - ln(hw/kT)) in k_B
        assert cu_bulk.entropy[index] == pytest.approx(
            np.sum(weights * (1 - np.log(energies / kt))), rel=0.03
        )


def test_vacancy_formation_free_energy(supercells, cu_bulk):
    pristine, vacancy = supercells
    assert vacancy.n_atoms == 31 and vacancy.relax_status == "converged"
    delta = formation_vibrational_free_energy(vacancy, pristine, {"Cu": cu_bulk}, {"Cu": -1})
    assert delta.shape == TEMPS.shape and np.isfinite(delta).all()
    assert abs(delta[TEMPS == 1000.0][0]) < 1.0
    # removing an atom softens the lattice: negative ΔF_vib at high T (positive formation entropy)
    assert delta[TEMPS == 1000.0][0] < 0


def test_mismatched_defect_and_bulk(supercells, cu_bulk, cu_cell):
    pristine, vacancy = supercells
    other = cu_cell.repeat(2)
    other.set_cell(np.array(other.cell) * 1.02, scale_atoms=True)
    del other[0]
    strained = harmonic_free_energy(other, EMT(), TEMPS)
    with pytest.raises(InputError, match="lattice vectors"):
        formation_vibrational_free_energy(strained, pristine, {"Cu": cu_bulk}, {"Cu": -1})
    with pytest.raises(InputError, match="Composition mismatch"):
        formation_vibrational_free_energy(vacancy, pristine, {"Cu": cu_bulk}, {"Cu": -2})
    with pytest.raises(InputError, match="No reference phase"):
        formation_vibrational_free_energy(vacancy, pristine, {}, {"Cu": -1})


def test_imaginary_modes_reported(cu_cell):
    # Cu atoms on a too-small fcc lattice with one atom pushed onto a saddle: unrelaxed, unstable
    atoms = cu_cell.repeat((2, 1, 1))
    atoms.positions[0] += [0.9, 0.9, 0.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = harmonic_free_energy(atoms, EMT(), TEMPS, relax_first=False)
    assert result.has_imaginary_modes and result.relax_status == "skipped"
    assert all(mode["frequency"] < -0.1 for mode in result.imaginary_modes)
    assert any("imaginary mode" in str(w.message) for w in caught)
    with pytest.raises(InputError, match="imaginary"):
        harmonic_free_energy(atoms, EMT(), TEMPS, relax_first=False, strict=True)


def test_json_round_trip(cu_bulk, tmp_path):
    path = tmp_path / "cu.json"
    cu_bulk.write_json(path)
    back = VibrationalFreeEnergy.read_json(path)
    np.testing.assert_allclose(back.free_energy, cu_bulk.free_energy)
    np.testing.assert_allclose(back.frequencies, cu_bulk.frequencies)
    assert back.counts() == {"Cu": 4} and back.mesh == cu_bulk.mesh
    with pytest.raises(InputError, match="Cannot read"):
        VibrationalFreeEnergy.read_json(tmp_path / "missing.json")


def test_quasi_harmonic_expands_and_lowers_free_energy():
    # EMT Al: 1-atom primitive cell, phonons in a 3x3x3 supercell
    temps = np.arange(0, 901, 100.0)
    matrix = np.eye(3, dtype=int) * 3
    # equilibrium volume of EMT Al
    scan = []
    for a in np.linspace(3.95, 4.10, 16):
        trial = bulk("Al", "fcc", a=a)
        trial.calc = EMT()
        scan.append((trial.get_potential_energy(), a))
    a0 = min(scan)[1]
    cell = bulk("Al", "fcc", a=a0)  # the grid V/V0 = 0.90 ... 1.10 brackets the minimum
    qha = quasi_harmonic_free_energy(cell, EMT(), temps, supercell_matrix=matrix, mesh=[9, 9, 9])
    assert (np.diff(qha.equilibrium_volumes) > -1e-6).all()
    assert qha.thermal_expansion[-1] > 0
    harmonic = harmonic_free_energy(cell, EMT(), temps, supercell_matrix=matrix, mesh=[9, 9, 9])
    n = len(qha.temperatures)
    assert (qha.gibbs_free_energy <= harmonic.energy + harmonic.free_energy[:n] + 1e-3).all()


def test_cli_writes_json(tmp_path, cu_cell):
    from click.testing import CliRunner

    from snb_ml.cli.thermo import free_energy

    cell = cu_cell.repeat(2)
    vacancy = cell.copy()
    del vacancy[5]
    write(tmp_path / "POSCAR_bulk", cell, format="vasp")
    (tmp_path / "defect").mkdir()
    write(tmp_path / "defect" / "POSCAR", vacancy, format="vasp")
    write(tmp_path / "POSCAR_Cu", bulk("Cu", "fcc", a=3.59), format="vasp")
    output = tmp_path / "fe.json"
    args = [
        "--defect", str(tmp_path / "defect"), "--bulk", str(tmp_path / "POSCAR_bulk"),
        "--reference", f"Cu={tmp_path / 'POSCAR_Cu'}", "--relaxer", "ase",
        "--model", "ase.calculators.emt:EMT", "--device", "cpu",
        "--tmax", "600", "--tstep", "200", "-o", str(output),
    ]  # fmt: skip
    result = CliRunner().invoke(free_energy, args)
    assert result.exit_code == 0, result.output
    data = load_free_energy_json(output)
    assert data["composition_change"] == {"Cu": -1}
    assert data["delta_free_energy"].shape == (4,) and np.isfinite(data["delta_free_energy"]).all()
    assert data["defect"].n_atoms == 31 and data["references"]["Cu"].n_atoms == 1
    assert json.loads(output.read_text())["settings"]["relaxer"] == "ase"
    assert json.loads(output.read_text())["relax_cells"] is True  # on by default
    assert "bulk pressure" in result.output and "GPa" in result.output
    bad = CliRunner().invoke(
        free_energy, [*args[:4], "--relaxer", "ase", "--model", "ase.calculators.emt:EMT"]
    )
    assert bad.exit_code == 1 and "--reference" in bad.output


def _cu_pair(tmp_path, a=3.59, rattle=0.0):
    cell = bulk("Cu", "fcc", a=a, cubic=True).repeat((2, 1, 1))
    vacancy = cell.copy()
    del vacancy[1]
    vacancy.positions += np.random.default_rng(0).normal(0, rattle, vacancy.positions.shape)
    write(tmp_path / "POSCAR_bulk", cell, format="vasp")
    write(tmp_path / "POSCAR_defect", vacancy, format="vasp")
    write(tmp_path / "POSCAR_Cu", bulk("Cu", "fcc", a=a), format="vasp")
    reference = harmonic_free_energy(bulk("Cu", "fcc", a=a), EMT(), [0.0, 300.0, 600.0], np.eye(3) * 2)
    reference.write_json(tmp_path / "Cu.json")  # small supercell: faster than the CLI's 10 Å default
    return [
        "--defect", str(tmp_path / "POSCAR_defect"), "--bulk", str(tmp_path / "POSCAR_bulk"),
        "--reference", f"Cu={tmp_path / 'Cu.json'}", "--relaxer", "ase",
        "--model", "ase.calculators.emt:EMT", "--device", "cpu", "--tmax", "600", "--tstep", "300",
    ]  # fmt: skip


def test_cli_symprec_changes_displacements(tmp_path):
    from click.testing import CliRunner

    from snb_ml.cli.thermo import free_energy

    args = _cu_pair(tmp_path, rattle=0.02)  # relaxed back to ~1e-4 Å of the symmetric vacancy
    counts = {}
    for symprec in ("1e-6", "0.05"):
        output = tmp_path / f"fe_{symprec}.json"
        result = CliRunner().invoke(free_energy, [*args, "--symprec", symprec, "-o", str(output)])
        assert result.exit_code == 0, result.output
        counts[symprec] = load_free_energy_json(output)["defect"].n_displacements
        assert json.loads(output.read_text())["symprec"] == float(symprec)
    assert counts["1e-6"] == 2 * 3 * 7 and counts["0.05"] < 10  # no symmetry: ± along x, y, z per atom
    bad = CliRunner().invoke(free_energy, [*args, "--symprec", "0"])
    assert bad.exit_code == 2 and "symprec" in bad.output


def test_strained_cells_warn_and_relax_cells_rescales(tmp_path):
    from snb_ml.thermo.cells import bulk_pressure
    from snb_ml.thermo.workflow import compute_free_energies

    _cu_pair(tmp_path, a=3.50)  # EMT Cu: a0 = 3.59 Å, so ~8 % compressed in volume
    pressure = bulk_pressure(bulk("Cu", "fcc", a=3.50, cubic=True), EMT())
    assert pressure > 5.0
    paths = (tmp_path / "POSCAR_defect", tmp_path / "POSCAR_bulk", {"Cu": tmp_path / "POSCAR_Cu"})
    temps = np.array([0.0, 300.0])
    with pytest.warns(UserWarning, match="--no-relax-cells"):
        strained = compute_free_energies(
            *paths, EMT(), temps, reference_min_length=5.0, relax_cells=False, log=lambda *_: None
        )
    relaxed = compute_free_energies(*paths, EMT(), temps, reference_min_length=5.0, log=lambda *_: None)
    assert strained["bulk_pressure_GPa"] == pytest.approx(pressure) and strained["cell_scale"] == 1.0
    assert relaxed["cell_scale"] == pytest.approx(3.59 / 3.50, rel=5e-3)
    assert relaxed["references"]["Cu"]["cell"][0][1] == pytest.approx(3.59 / 2, rel=5e-3)
    assert abs(bulk_pressure(bulk("Cu", "fcc", a=3.50 * relaxed["cell_scale"]), EMT())) < 0.1


def test_batched_displacement_forces_match_one_at_a_time():
    """Phonon forces through the batched CHGNet evaluator: same force constants, many cells per call."""
    from chgnet.model.dynamics import CHGNetCalculator

    from snb_ml.relaxers.chgnet_batch import ChgnetBatchEvaluator
    from snb_ml.thermo.phonons import build_phonopy

    calculator = CHGNetCalculator(use_device="cpu")
    evaluator = ChgnetBatchEvaluator(calculator)
    sizes = []
    evaluate = evaluator.evaluate
    evaluator.evaluate = lambda structures: sizes.append(len(structures)) or evaluate(structures)
    cell = bulk("CdTe", "zincblende", a=6.63, cubic=True)
    del cell[0]  # a vacancy in the 8-atom cell: 3 symmetry-distinct displacements
    sequential, count = build_phonopy(cell, calculator, symprec=1e-3)
    batched, count_batched = build_phonopy(
        cell, calculator, symprec=1e-3, evaluator=evaluator, batch_atoms=14
    )
    assert count == count_batched == 3
    # the residual cell + 3 displaced cells, 2 (= 14 atoms // 7) per model call
    assert sizes == [2, 2]
    np.testing.assert_allclose(batched.force_constants, sequential.force_constants, atol=2e-3)
    assert np.abs(sequential.force_constants).max() > 0.5  # real, non-trivial force constants
