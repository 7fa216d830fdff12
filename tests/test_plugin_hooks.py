"""Fingerprints, selection policies and free-energy terms arrive through entry points, built-in or not."""

import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from doped_fixtures import build_nacl_thermo

from snb_ml import plugins
from snb_ml.errors import InputError
from snb_ml.minima import select_defect
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings
from snb_ml.thermo.doped_thermo import FiniteTemperatureThermodynamics

EXTRAS = Path(__file__).parents[1] / "examples" / "plugin_extras"


@pytest.fixture(scope="module")
def extras_site(tmp_path_factory) -> Path:
    """pip-install examples/plugin_extras into a fresh target folder (offline, no dependencies)."""
    root = tmp_path_factory.mktemp("extras")
    source = Path(shutil.copytree(EXTRAS, root / "src"))
    site = root / "site"
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*command, "--no-index", "--target", str(site), str(source)], check=True, capture_output=True
    )
    assert list(site.glob("snb_ml_extras-0.1.0.dist-info/entry_points.txt"))
    return site


@pytest.fixture
def with_extras(extras_site, monkeypatch):
    """The plugin manager as it is in an environment where snb-ml-extras is installed."""
    monkeypatch.syspath_prepend(str(extras_site))
    importlib.invalidate_caches()
    plugins._load.cache_clear()
    yield
    monkeypatch.undo()
    plugins._load.cache_clear()


@pytest.fixture(scope="module")
def cu_relaxed(tmp_path_factory):
    """V_Cu in 32-atom Cu relaxed with EMT (a real ML tree, in seconds)."""
    from conftest import DATA

    top = shutil.copytree(DATA / "Cu_tree", tmp_path_factory.mktemp("cu") / "Cu_tree")
    settings = RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EMT has no charge embedding (v_Cu_-1)
        assert not run_tree(top, settings, ["v_Cu_0"]).failed
    return top / "ml_tree" / "v_Cu_0"


def test_builtins_are_registered_through_the_entry_point_group():
    infos = {info.name: info for info in plugins.get_plugin_infos()}
    assert infos["builtins"].distribution == "snb_ml"
    assert infos["builtins"].registers == [
        "fingerprint:soap",
        "policy:protect",
        "policy:lean",
        "term:structural",
        "term:electronic",
        "term:vibrational",
    ]
    assert plugins.get_fingerprint("soap").plugin == "builtins"
    with pytest.raises(
        InputError, match=r"Unknown selection policy 'nope' \(--policy\); choose one of lean, protect"
    ):
        plugins.get_selection_policy("nope")


def test_example_plugins_are_listed(with_extras):
    infos = {info.name: info for info in plugins.get_plugin_infos()}
    assert infos["rdf"].registers == ["fingerprint:rdf"] and infos["rdf"].distribution == "snb-ml-extras"
    assert infos["everything"].registers == ["policy:everything"]
    assert infos["linear"].registers == ["term:linear"]


def test_example_fingerprint_and_policy_drive_the_selection(with_extras, cu_relaxed):
    soap = select_defect(cu_relaxed, policy="lean", write=False)
    rdf = select_defect(cu_relaxed, policy="everything", fingerprint="rdf", write=False)
    # The fingerprint plugin computed the distances (a different descriptor, same minima) ...
    assert rdf.labels == soap.labels and rdf.distances.shape == soap.distances.shape == (6, 6)
    assert not np.allclose(rdf.distances, soap.distances)
    # ... and the policy plugin sent every other start to DFT, as generated.
    others = [f for f in rdf.labels if f not in rdf.representatives]
    assert [e.folder for e in rdf.extras] == others and {e.kind for e in rdf.extras} == {"exploration"}
    assert rdf.selected == [*rdf.representatives, *others]
    with pytest.raises(
        InputError, match=r"Unknown fingerprint 'soapy' \(--fingerprint\); choose one of rdf, soap"
    ):
        select_defect(cu_relaxed, fingerprint="soapy", write=False)


def test_example_term_reaches_doped(with_extras):
    term = plugins.get_free_energy_term("linear").provider(0.1, -2e-4)
    assert term(500.0) == pytest.approx(0.0)
    dt = build_nacl_thermo()
    ft = FiniteTemperatureThermodynamics.from_thermodynamics(dt, terms={"v_Cl": {"linear": term}})
    assert ft.term_values("v_Cl_+1", 300.0) == {"linear": pytest.approx(0.1 - 2e-4 * 300)}
    without = dt.get_formation_energy("v_Cl_+1", fermi_level=0.4)
    with ft.terms_applied(300.0):  # doped's own formation energy, with the plugin's term added
        assert ft.get_formation_energy("v_Cl_+1", fermi_level=0.4) == pytest.approx(without + 0.04)


def test_example_term_from_the_command_line(with_extras, tmp_path):
    """`--term` builds the plugin's term by name and attaches it (and only it) next to ΔF_vib."""
    import json

    from click.testing import CliRunner
    from doped.thermodynamics import DefectThermodynamics

    from snb_ml.cli import main

    root = Path(__file__).parents[1]
    thermo = root / "tests" / "data" / "doped" / "CdTe_vCd_CdTe_thermo.json.gz"
    fvib = root / "examples" / "doped_thermo" / "data" / "CdTe_v_Cd_fvib_tree.json"
    output = tmp_path / "ft.json.gz"
    base_args = ["attach-terms", "--thermo", str(thermo), "--free-energies", str(fvib), "-o", str(output)]
    result = CliRunner().invoke(main, [*base_args, "--term", 'v_Cd:linear={"a": 0.1, "b": -2e-4}'])
    assert result.exit_code == 0, result.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = DefectThermodynamics.from_json(str(output))
        base = DefectThermodynamics.from_json(str(thermo))
    assert written.term_names == ["linear", "vib"]
    data = json.loads(fvib.read_text())
    for entry in written.defect_entries:
        values = written.term_values(entry, 873.0)
        if not entry.startswith("v_Cd"):
            assert values == {}, entry  # DEFECT v_Cd: the Cd_Te entries get no term
            continue
        vib = np.interp(873.0, data["temperatures"], data["defects"][entry]["delta_free_energy"])
        assert values == {"vib": pytest.approx(vib), "linear": pytest.approx(0.1 - 2e-4 * 873.0)}
        without = base.get_formation_energy(entry, fermi_level=0.8, limit="Te-rich")
        with written.terms_applied(873.0):
            on = written.get_formation_energy(entry, fermi_level=0.8, limit="Te-rich")
        assert on == pytest.approx(without + vib + 0.1 - 2e-4 * 873.0)

    # Without DEFECT the term goes to every entry.
    everywhere = CliRunner().invoke(main, [*base_args, "--term", "linear=[0.05, 0]"])
    assert everywhere.exit_code == 0, everywhere.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        written = DefectThermodynamics.from_json(str(output))
    for entry in written.defect_entries:
        assert written.term_values(entry, 500.0)["linear"] == pytest.approx(0.05), entry

    # An unknown name: one error listing the installed terms, nothing written.
    output.unlink()
    unknown = CliRunner().invoke(main, [*base_args, "--term", "linaer"])
    assert unknown.exit_code == 1
    listed = "choose one of electronic, linear, structural, vibrational"
    assert f"Unknown free-energy term 'linaer' (--term); {listed}" in unknown.output
    assert not output.exists()
    # free-energy checks --term before any model or phonon work.
    for args, expected in [
        (["--term", "linear=[0.1, 0]"], "--term needs --doped-output"),
        (["--doped-output", str(output), "--term", "linaer"], "Unknown free-energy term 'linaer' (--term)"),
    ]:
        refused = CliRunner().invoke(
            main,
            [
                "free-energy",
                "--relaxer",
                "ase",
                "--thermo",
                str(thermo),
                "-o",
                str(tmp_path / "fe.json"),
                *args,
            ],
        )
        assert refused.exit_code == 1 and expected in refused.output, (args, refused.output)
    assert not (tmp_path / "fe.json").exists() and not output.exists()
