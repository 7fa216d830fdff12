"""`snb-ml free-energy --thermo/--tree` (every defect in one call) and the doped JSON with terms attached."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from ase.build import bulk as ase_bulk
from click.testing import CliRunner
from doped.thermodynamics import DefectThermodynamics
from doped_fixtures import build_cu_thermo

from snb_ml.cli import main
from snb_ml.thermo.entropy import K_B
from snb_ml.thermo.workflow import compute_free_energies

EMT = ["--relaxer", "ase", "--model", "ase.calculators.emt:EMT"]
GRID = ["--tmax", "1000", "--tstep", "100"]


@pytest.fixture
def cu_inputs(tmp_path):
    """doped's own JSON of a real DefectThermodynamics (v_Cu 0/-1 in 32-atom Cu) and fcc Cu."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_cu_thermo().to_json(str(tmp_path / "cu_thermo.json.gz"))
    ase_bulk("Cu", "fcc", a=3.61).write(tmp_path / "Cu_POSCAR", format="vasp")
    return tmp_path


def _run(args):
    return CliRunner().invoke(main, ["free-energy", *EMT, *GRID, "--no-progress", *args])


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DefectThermodynamics.from_json(str(path))


def test_every_entry_in_one_call_and_doped_json_with_terms(cu_inputs):
    t = cu_inputs
    thermo, reference = str(t / "cu_thermo.json.gz"), f"Cu={t / 'Cu_POSCAR'}"
    result = _run(
        [
            "--thermo",
            thermo,
            "--reference",
            reference,
            "-o",
            str(t / "fe.json"),
            "--doped-output",
            str(t / "ft.json.gz"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert "bulk at -2.1" in result.output  # EMT's pressure on the 3.61 Å cell, reported
    data = json.loads((t / "fe.json").read_text())
    assert sorted(data["defects"]) == ["v_Cu_-1", "v_Cu_0"] and data["failed"] == {}
    delta = np.array(data["defects"]["v_Cu_0"]["delta_free_energy"])
    temps = np.array(data["temperatures"])
    assert data["relax_cells"] is True and data["cell_scale"] == pytest.approx(0.9944, abs=2e-4)
    # A vacancy softens fcc Cu: s_vib > 0, so ΔF_vib falls with T (EMT: about -0.23 eV at 1000 K).
    assert -0.5 < delta[-1] < -0.05 and np.all(np.diff(delta[3:]) < 0)
    # The same defect computed alone (one-structure path) gives the same numbers.
    entry = _load(t / "cu_thermo.json.gz").defect_entries["v_Cu_0"]
    entry.sc_entry.structure.to(filename=str(t / "v_Cu_0_POSCAR"), fmt="poscar")
    entry.bulk_entry.structure.to(filename=str(t / "bulk_POSCAR"), fmt="poscar")
    from ase.calculators.emt import EMT as EMTCalc

    single = compute_free_energies(
        t / "v_Cu_0_POSCAR", t / "bulk_POSCAR", {"Cu": t / "Cu_POSCAR"}, EMTCalc(), temps, log=lambda _: None
    )
    np.testing.assert_allclose(single["delta_free_energy"], delta, atol=1e-6)

    # doped loads the written file with its own one-liner; terms off -> doped's numbers exactly.
    with_terms, base = _load(t / "ft.json.gz"), _load(t / "cu_thermo.json.gz")
    assert type(with_terms).__name__ == "FiniteTemperatureThermodynamics" and with_terms.term_names == ["vib"]
    on = with_terms.get_equilibrium_concentrations(temperature=800, fermi_level=0.5)
    with_terms.disable_term("vib")
    off = with_terms.get_equilibrium_concentrations(temperature=800, fermi_level=0.5)
    doped = base.get_equilibrium_concentrations(temperature=800, fermi_level=0.5)
    pd.testing.assert_frame_equal(off, doped, check_exact=True)
    pd.testing.assert_frame_equal(
        with_terms.get_formation_energies(), base.get_formation_energies(), check_exact=True
    )
    # Terms on: each concentration scales by exp(-ΔF_vib(800 K) / kT).
    column = "Concentration (cm^-3)"
    ratio = on[column].astype(float).to_numpy() / doped[column].astype(float).to_numpy()
    expected = np.exp(-np.interp(800, temps, delta) / (K_B * 800))
    np.testing.assert_allclose(ratio, expected, rtol=1e-3)


def test_resumes_and_refuses_other_settings(cu_inputs):
    t = cu_inputs
    common = [
        "--thermo",
        str(t / "cu_thermo.json.gz"),
        "--reference",
        f"Cu={t / 'Cu_POSCAR'}",
        "-o",
        str(t / "fe.json"),
    ]
    first = _run([*common, "--only", "v_Cu_0"])
    assert first.exit_code == 0, first.output
    before = json.loads((t / "fe.json").read_text())
    assert list(before["defects"]) == ["v_Cu_0"]
    second = _run(common)
    assert second.exit_code == 0, second.output
    assert "resuming" in second.output and "1 of 2 defects already done" in second.output
    after = json.loads((t / "fe.json").read_text())
    assert sorted(after["defects"]) == ["v_Cu_-1", "v_Cu_0"]
    assert after["defects"]["v_Cu_0"] == before["defects"]["v_Cu_0"]  # not recomputed (same wall time)
    assert after["bulk"] == before["bulk"]
    other = CliRunner().invoke(main, ["free-energy", *EMT, "--tmax", "500", "--no-progress", *common])
    assert other.exit_code == 1 and "other settings" in other.output
    assert json.loads((t / "fe.json").read_text()) == after  # untouched


def test_bad_combinations_one_clear_error(cu_inputs):
    t = cu_inputs
    thermo = str(t / "cu_thermo.json.gz")
    for args, expected in [
        ([], "Give exactly one of --defect"),
        (["--thermo", thermo, "--defect", thermo], "Give exactly one of --defect"),
        (["--thermo", thermo, "--only", "v_Zn"], "--only v_Zn: not among the entries"),
        (["--thermo", thermo, "--doped-output", thermo], "never overwritten"),
        (["--thermo", thermo], "give --reference for Cu"),
    ]:
        result = _run([*args, "-o", str(t / "x.json")])
        assert result.exit_code == 1 and expected in result.output, (args, result.output)
    assert not (t / "x.json").exists()


def test_shakenbreak_tree(cu_tree):
    run = CliRunner().invoke(main, ["run", "-p", str(cu_tree), *EMT, "--no-progress", "--fmax", "0.05"])
    assert run.exit_code == 0, run.output
    from ase.io import read

    unperturbed = read(cu_tree / "v_Cu_0" / "Unperturbed" / "POSCAR")
    host = ase_bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    assert np.allclose(host.cell, unperturbed.cell, atol=1e-3), "fixture lattice changed"
    host.write(cu_tree / "bulk_POSCAR", format="vasp")
    ase_bulk("Cu", "fcc", a=3.61).write(cu_tree / "Cu_POSCAR", format="vasp")
    out = cu_tree / "fe_tree.json"
    result = _run(
        ["--tree", str(cu_tree / "ml_tree"), "--bulk", str(cu_tree / "bulk_POSCAR"),
         "--reference", f"Cu={cu_tree / 'Cu_POSCAR'}", "-o", str(out)]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert sorted(data["defects"]) == ["v_Cu_-1", "v_Cu_0"]
    record = data["defects"]["v_Cu_0"]
    assert record["charge"] == 0 and record["composition_change"] == {"Cu": -1}
    energies = {k: v for k, v in json.loads(json.dumps(_yaml(cu_tree / "ml_tree" / "v_Cu_0"))).items()}
    lowest = min(energies, key=energies.get)
    assert record["source"].endswith("CONTCAR") and _folder_key(record["source"]) == lowest


def _yaml(folder):
    from snb_ml.data.minima import read_dft_energies

    return {str(k): v for k, v in read_dft_energies(folder).items()}


def _folder_key(source):
    from pathlib import Path

    from snb_ml.data.minima import yaml_key

    return str(yaml_key(Path(source).parent.name))


def test_real_cdte_doped_object_attach_terms(tmp_path):
    """doped's published CdTe data (v_Cd and Cd_Te, trimmed) + CHGNet ΔF_vib of V_Cd from a tree run."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    thermo = root / "tests" / "data" / "doped" / "CdTe_vCd_CdTe_thermo.json.gz"
    fvib = root / "examples" / "doped_thermo" / "data" / "CdTe_v_Cd_fvib_tree.json"
    output = tmp_path / "CdTe_ft.json.gz"
    result = CliRunner().invoke(
        main, ["attach-terms", "--thermo", str(thermo), "--free-energies", str(fvib), "-o", str(output)]
    )
    assert result.exit_code == 0, result.output
    assert "DefectThermodynamics.from_json" in result.output
    with_terms, base = _load(output), _load(thermo)
    assert sorted(with_terms.terms) == ["v_Cd_-1", "v_Cd_-2", "v_Cd_0"]
    kwargs = {"temperature": 873, "fermi_level": 0.8, "limit": "Te-rich"}
    on = with_terms.get_equilibrium_concentrations(**kwargs)
    with_terms.disable_term("vib")
    doped = base.get_equilibrium_concentrations(**kwargs)
    pd.testing.assert_frame_equal(
        with_terms.get_equilibrium_concentrations(**kwargs), doped, check_exact=True
    )
    pd.testing.assert_frame_equal(
        with_terms.get_formation_energies(limit="Te-rich"), base.get_formation_energies(limit="Te-rich"),
        check_exact=True,
    )  # fmt: skip
    assert with_terms.get_transition_levels().equals(base.get_transition_levels())
    # Terms on: V_Cd concentrations scale by exp(-ΔF_vib(873 K)/kT) (ΔF_vib ≈ +0.10 eV), the rest unchanged.
    fe = json.loads(fvib.read_text())
    temps = np.array(fe["temperatures"])
    column = "Concentration (cm^-3)"
    for (defect, charge), row in doped.iterrows():
        ratio = float(on.loc[(defect, charge), column]) / float(row[column])
        name = f"v_Cd_{charge}" if defect == "v_Cd" else None
        if name is None:
            assert ratio == 1.0, (defect, charge)
            continue
        delta = np.interp(873, temps, fe["defects"][name]["delta_free_energy"])
        assert 0.05 < delta < 0.15
        assert ratio == pytest.approx(np.exp(-delta / (K_B * 873)), rel=1e-3)
    refused = CliRunner().invoke(
        main,
        [
            "attach-terms",
            "--thermo",
            str(thermo),
            "--free-energies",
            str(thermo),
            "-o",
            str(tmp_path / "x.json"),
        ],
    )
    assert (
        refused.exit_code == 1 and "pass the JSON written by `snb-ml free-energy --thermo`" in refused.output
    )
    assert not (tmp_path / "x.json").exists()
