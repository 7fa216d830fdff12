"""FiniteTemperatureThermodynamics against a real, tiny doped DefectThermodynamics (v_Cl in NaCl)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from doped_fixtures import build_nacl_thermo

from snb_ml.errors import InputError
from snb_ml.thermo.doped_thermo import CORRECTION_KEY, FiniteTemperatureThermodynamics
from snb_ml.thermo.entropy import K_B

TA, TQ = 1000.0, 300.0


@pytest.fixture(scope="module")
def dt():
    return build_nacl_thermo()


def _concs(thermo, t=TA):
    return thermo.get_equilibrium_concentrations(temperature=t, fermi_level=0.4, skip_formatting=True)


def _fermi(thermo):
    return thermo.get_fermi_level_and_concentrations(
        annealing_temperature=TA, quenched_temperature=TQ, skip_formatting=True, return_annealing_values=True
    )


def test_all_terms_off_reproduces_doped(dt):
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(
        dt, terms={"v_Cl": {"vib": -0.1}}, disabled_terms=["vib"]
    )
    pd.testing.assert_frame_equal(_concs(ft), _concs(dt))
    ref, out = _fermi(dt), _fermi(ft)
    for a, b in zip(ref, out, strict=True):
        if isinstance(a, pd.DataFrame):
            pd.testing.assert_frame_equal(a, b)
        else:
            assert a == b


def test_constant_term_shifts_concentrations(dt):
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(dt, terms={"v_Cl_+1": {"vib": -0.1}})
    ratio = (_concs(ft)["Concentration (cm^-3)"] / _concs(dt, TA)["Concentration (cm^-3)"]).to_dict()
    assert ratio[("v_Cl", 1)] == pytest.approx(np.exp(0.1 / (K_B * TA)), rel=1e-9)
    assert ratio[("v_Cl", 0)] == pytest.approx(1.0, rel=1e-9)
    # annealing (totals) and quenching (charge-state redistribution) each use the term at their own T:
    ref, out = _fermi(dt), _fermi(ft)
    assert out[0] == pytest.approx(ref[0], abs=1e-6)  # dilute defects: E_F set by intrinsic carriers
    totals = {
        k: df.groupby("Defect")["Concentration (cm^-3)"].sum()["v_Cl"]
        for k, df in (("r", ref[7]), ("o", out[7]))
    }
    c_ref, c_out = (x["Concentration (cm^-3)"] for x in (ref[7], out[7]))
    expected_total = c_ref[("v_Cl", 1)] * np.exp(0.1 / (K_B * TA)) + c_ref[("v_Cl", 0)]
    assert totals["o"] == pytest.approx(expected_total, rel=1e-5)
    pop = lambda df: df["Concentration (cm^-3)"][("v_Cl", 1)] / df["Concentration (cm^-3)"][("v_Cl", 0)]  # noqa: E731
    ef_q = out[0]  # populations at the quenched T, at the returned Fermi level: g_q exp(-(E_q + ΔF)/kTq)
    expected_pop = 0.5 * np.exp(-((3.5 + ef_q - 0.1) - 4.0) / (K_B * TQ))
    assert pop(out[3]) == pytest.approx(expected_pop, rel=1e-9)
    assert pop(ref[3]) == pytest.approx(0.5 * np.exp(-((3.5 + ref[0]) - 4.0) / (K_B * TQ)), rel=1e-9)
    assert out[3]["Concentration (cm^-3)"].sum() == pytest.approx(totals["o"], rel=1e-9)


def test_original_not_mutated_and_term_switching(dt):
    before = _concs(dt)
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(dt, terms={"v_Cl": {"vib": -0.1, "struc": 0.05}})
    _fermi(ft)
    assert all(CORRECTION_KEY not in e.corrections for e in dt.defect_entries.values())
    assert all(CORRECTION_KEY not in e.corrections for e in ft.defect_entries.values())
    pd.testing.assert_frame_equal(_concs(dt), before)
    assert ft.free_energy_correction("v_Cl_0", 500) == pytest.approx(-0.05)
    ft.disable_term("struc")
    assert ft.free_energy_correction("v_Cl_0", 500) == pytest.approx(-0.1)
    with pytest.raises(InputError, match="v_O"):
        FiniteTemperatureThermodynamics.from_thermodynamics(dt, terms={"v_O": {"vib": 0.1}})
    with pytest.raises(InputError, match="> 0 K"):
        ft.free_energy_correction("v_Cl_0", 0)


def test_json_round_trip_and_breakdown(dt, tmp_path):
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(
        dt,
        terms={
            "v_Cl_+1": {"vib": lambda t: -1e-4 * t},
            "v_Cl": {"struc": ([300.0, 1000.0], [-0.01, -0.05])},
            "v_Cl_0": {"elec": -0.02},
        },
    )
    path = tmp_path / "ft.json"
    ft.to_json(path)
    back = FiniteTemperatureThermodynamics.from_json(path)
    assert isinstance(back, FiniteTemperatureThermodynamics)
    pd.testing.assert_frame_equal(_concs(back), _concs(ft))
    table = ft.entropy_breakdown(600.0)
    assert table.loc["v_Cl_+1", "vib"] == pytest.approx(1e-4 / K_B, rel=1e-6)
    assert table.loc["v_Cl_0", "spin"] == pytest.approx(np.log(2))
    assert table.loc["v_Cl_0", "struc"] == pytest.approx(0.04 / 700 / K_B, rel=1e-6)
    entry = ft.defect_entries["v_Cl_0"]
    del entry.degeneracy_factors["spin degeneracy"]
    with pytest.raises(InputError, match="spin degeneracy"):
        ft.entropy_breakdown(600.0)


def test_transition_levels_with_terms(dt):
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(dt, terms={"v_Cl_+1": {"vib": -0.1}})
    level = lambda df: float(df["eV from VBM"].iloc[0])  # noqa: E731
    assert level(dt.get_transition_levels()) == pytest.approx(0.5)
    assert level(ft.get_transition_levels()) == pytest.approx(0.5)  # no temperature: doped's 0 K levels
    assert level(ft.get_transition_levels(temperature=TA)) == pytest.approx(0.6)
    assert ft.transition_level_map == dt.transition_level_map  # restored after the call
    ft.disable_term("vib")
    pd.testing.assert_frame_equal(ft.get_transition_levels(temperature=TA), dt.get_transition_levels())


def test_demo_exact_reproduction_check(dt):
    """The exact-reproduction check of examples/doped_thermo/demo_finite_temperature.py, on the fixture."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "doped_thermo" / "demo_finite_temperature.py"
    spec = importlib.util.spec_from_file_location("ft_demo", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(
        dt, terms={"v_Cl": {"vib": -0.1}}, disabled_terms=["vib"]
    )
    reference = demo.doped_outputs(dt, TA, TQ, None)
    ours = demo.doped_outputs(ft, TA, TQ, None)
    assert len(reference) == 7
    for what, value in reference.items():
        demo.assert_same(ours[what], value, what)
    ft.enable_term("vib")
    changed = demo.doped_outputs(ft, TA, TQ, None)
    with pytest.raises(AssertionError):
        demo.assert_same(changed["get_fermi_level_and_concentrations"], reference[what], what)


def test_published_cdte_example_reproduces_doped_and_applies_terms(tmp_path):
    """doped's published CdTe DefectThermodynamics: exact with terms off, finite-T terms on (the demo)."""
    import subprocess
    import sys

    demo = Path(__file__).parents[1] / "examples" / "doped_thermo" / "demo_finite_temperature.py"
    out = subprocess.run(
        [sys.executable, str(demo), "--outdir", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Annealed at 873 K" in out.stdout and "Quenched to 300 K" in out.stdout
    assert any(path.suffix == ".png" for path in tmp_path.iterdir())
