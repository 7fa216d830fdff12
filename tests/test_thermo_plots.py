"""Term builders and plots of FiniteTemperatureThermodynamics on a real, tiny doped object (v_Cl in NaCl)."""

import matplotlib
import numpy as np
import pytest
from ase.build import bulk as ase_bulk
from ase.io import write
from doped_fixtures import build_nacl_thermo
from pymatgen.electronic_structure.core import Spin
from pymatgen.electronic_structure.dos import Dos

from snb_ml.errors import InputError
from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics
from snb_ml.thermo.entropy import K_B
from snb_ml.thermo.plots import plot_concentrations_vs_T, plot_formation_free_energy_vs_T
from snb_ml.thermo.terms import electronic_term, structural_term, vibrational_term_from_json

matplotlib.use("Agg")
TEMPS = np.array([300.0, 600.0, 900.0, 1200.0])
VIB = (np.array([100.0, 1500.0]), np.array([-0.01, -0.15]))


@pytest.fixture(scope="module")
def dt():
    return build_nacl_thermo()


@pytest.fixture()
def ft(dt):
    struc = structural_term({"A": 0.0, "B": 0.02})
    return FiniteTemperatureThermodynamics.from_thermodynamics(
        dt, terms={"v_Cl": {"vib": VIB, "struc": struc}}
    )


def test_structural_term_degenerate_minima():
    term = structural_term({"Unperturbed": -10.0, "Bond_Distortion_-30.0%": -10.0})
    for t in (1.0, 300.0, 1234.5):
        assert term(t) == pytest.approx(-K_B * t * np.log(2), abs=1e-12)
    # a single minimum: no correction; weights and S_vib enter as g_i exp(+S_i/k)
    assert structural_term([-3.0])(800.0) == pytest.approx(0.0, abs=1e-15)
    term = structural_term([0.0, 0.0], degeneracies=[1, 3], vibrational_entropies=[0.0, K_B])
    assert term(500.0) == pytest.approx(-K_B * 500 * np.log(1 + 3 * np.e), abs=1e-12)
    with pytest.raises(InputError, match="one per minimum"):
        structural_term([0.0, 0.1], degeneracies=[1.0])
    with pytest.raises(InputError, match="keys"):
        structural_term({"a": 0.0}, vibrational_entropies={"b": 0.0})


def test_electronic_term_is_minus_t_delta_s():
    e = np.linspace(-2, 3, 2001)
    metal = Dos(0.0, e, {Spin.up: np.ones_like(e)})
    term = electronic_term(metal, None, defect_fermi_level=0.0)
    t = 300.0  # constant DOS D: S = (pi^2/3) k^2 T D
    assert term(t) == pytest.approx(-t * np.pi**2 / 3 * K_B**2 * t, rel=1e-3)
    assert electronic_term(metal, metal, 0.0, 0.0)(t) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(InputError, match="not a pymatgen Dos"):
        electronic_term([1, 2])


def test_formation_free_energy_plot(ft, dt):
    fig = plot_formation_free_energy_vs_T(ft, "v_Cl_+1", TEMPS, fermi_level=0.4)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4  # all terms, no terms, vib only, struc only
    by_label = {line.get_label(): np.asarray(line.get_ydata()) for line in lines}
    doped_value = dt.get_formation_energy("v_Cl_+1", fermi_level=0.4)
    np.testing.assert_allclose(by_label["no terms"], doped_value, rtol=0, atol=1e-12)
    vib = np.interp(TEMPS, *VIB)
    struc = np.array([structural_term([0.0, 0.02])(t) for t in TEMPS])
    np.testing.assert_allclose(by_label["vib only"], doped_value + vib, atol=1e-12)
    np.testing.assert_allclose(by_label["struc only"], doped_value + struc, atol=1e-12)
    np.testing.assert_allclose(by_label["all terms"], doped_value + vib + struc, atol=1e-12)
    ft.disable_term("struc")  # disabled terms are not plotted, and the selection is restored afterwards
    assert len(plot_formation_free_energy_vs_T(ft, "v_Cl_0", TEMPS).axes[0].get_lines()) == 3
    assert ft.disabled_terms == {"struc"}
    fig.savefig(__import__("io").BytesIO(), format="png")  # renders with Agg


def test_concentration_plot_fixed_fermi_level(ft, dt):
    fig = plot_concentrations_vs_T(ft, TEMPS, fermi_level=0.4)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    data = fig.snb_ml_data
    ref = [
        dt.get_equilibrium_concentrations(t, fermi_level=0.4, per_charge=False, skip_formatting=True)
        for t in TEMPS
    ]
    ref = np.array([r["Concentration (cm^-3)"]["v_Cl"] for r in ref])
    np.testing.assert_allclose(data["v_Cl (no terms)"], ref, rtol=1e-12)
    assert np.all(data["v_Cl (terms)"] > ref)  # negative free-energy terms raise concentrations
    assert not ft.disabled_terms


def test_concentration_plot_charge_neutrality(ft, dt):
    fig = plot_concentrations_vs_T(ft, TEMPS[2:], quenched_temperature=300.0)
    data = fig.snb_ml_data
    ref = [
        dt.get_fermi_level_and_concentrations(
            annealing_temperature=t, quenched_temperature=300.0, per_charge=False, skip_formatting=True
        )[3]["Concentration (cm^-3)"]["v_Cl"]
        for t in TEMPS[2:]
    ]
    np.testing.assert_allclose(data["v_Cl (no terms)"], ref, rtol=1e-9)
    equilibrium = plot_concentrations_vs_T(ft, TEMPS[2:]).snb_ml_data
    assert np.all(equilibrium["v_Cl (terms)"] > equilibrium["v_Cl (no terms)"])
    ft.bulk_dos = None
    with pytest.raises(InputError, match="bulk_dos"):
        plot_concentrations_vs_T(ft, TEMPS)
    with pytest.raises(InputError, match="v_Cl_7"):
        plot_formation_free_energy_vs_T(ft, "v_Cl_7", TEMPS)


def test_vibrational_term_from_cli_json(tmp_path, dt):
    from click.testing import CliRunner

    from snb_ml.cli.thermo import free_energy
    from snb_ml.thermo.free_energy_json import load_free_energy_json

    cell = ase_bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)
    vacancy = cell.copy()
    del vacancy[5]
    write(tmp_path / "POSCAR_bulk", cell, format="vasp")
    write(tmp_path / "POSCAR_defect", vacancy, format="vasp")
    write(tmp_path / "POSCAR_Cu", ase_bulk("Cu", "fcc", a=3.59), format="vasp")
    output = tmp_path / "fe.json"
    args = [
        "--defect", str(tmp_path / "POSCAR_defect"), "--bulk", str(tmp_path / "POSCAR_bulk"),
        "--reference", f"Cu={tmp_path / 'POSCAR_Cu'}", "--relaxer", "ase",
        "--model", "ase.calculators.emt:EMT", "--device", "cpu",
        "--tmax", "1000", "--tstep", "250", "-o", str(output),
    ]  # fmt: skip
    result = CliRunner().invoke(free_energy, args)
    assert result.exit_code == 0, result.output
    temps, delta = vibrational_term_from_json(output)
    stored = load_free_energy_json(output)
    np.testing.assert_array_equal(temps, [250.0, 500.0, 750.0, 1000.0])  # T = 0 dropped
    np.testing.assert_array_equal(delta, stored["delta_free_energy"][1:])
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(dt, terms={"v_Cl": {"vib": (temps, delta)}})
    assert ft.free_energy_correction("v_Cl_0", 750.0) == pytest.approx(delta[2], abs=1e-15)
    back = FiniteTemperatureThermodynamics.from_dict(ft.as_dict())
    assert back.free_energy_correction("v_Cl_+1", 600.0) == pytest.approx(np.interp(600.0, temps, delta))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match="snb-ml free-energy"):
        vibrational_term_from_json(tmp_path / "bad.json")
