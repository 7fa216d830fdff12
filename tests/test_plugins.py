"""The entry-point plugin mechanism, with a real distribution installed for the test."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ase.calculators.lj import LennardJones
from conftest import run_cli

from snb_ml.plugins import get_plugin_infos, get_relaxer, get_relaxers
from snb_ml.relaxers.base import CalculatorRequest

EXAMPLE_PLUGIN = Path(__file__).parents[1] / "examples" / "plugin_lj"


def test_builtins_come_through_the_entry_point_group():
    infos = {info.name: info for info in get_plugin_infos()}
    for name in ("chgnet", "mace", "ase"):
        assert infos[name].distribution == "snb_ml" and infos[name].relaxers == [name]
        assert get_relaxers()[name].plugin == name


def test_ase_backend_builds_any_calculator():
    loaded = get_relaxer("ase").load(
        CalculatorRequest(model="ase.calculators.lj:LennardJones", options={"sigma": 2.0})
    )
    assert loaded.calculator.parameters.sigma == 2.0 and loaded.name == "ase.calculators.lj:LennardJones"


def test_example_plugin_registers_lj_and_is_the_one_documented():
    # The module documented in docs/plugins.md is the shipped one, character for character ...
    source = (EXAMPLE_PLUGIN / "snb_ml_lj.py").read_text()
    documented = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    assert f"```python\n{source}```" in documented
    # ... and its hook registers a relaxer "lj" whose factory builds the calculator from the options.
    spec = importlib.util.spec_from_file_location("snb_ml_lj_example", EXAMPLE_PLUGIN / "snb_ml_lj.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    registered = {}

    def register(name, factory, description=""):
        registered[name] = factory

    module.register_relaxers(register=register)
    assert list(registered) == ["lj"]
    calculator = registered["lj"](CalculatorRequest(options={"sigma": 2.3}))
    assert isinstance(calculator, LennardJones) and calculator.parameters.sigma == 2.3


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """pip-install examples/plugin_lj into a fresh target folder (offline, no dependencies)."""
    root = tmp_path_factory.mktemp("plugin")
    source = Path(shutil.copytree(EXAMPLE_PLUGIN, root / "src"))
    site = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert list(site.glob("snb_ml_lj-0.1.0.dist-info/entry_points.txt"))
    return site


def test_installed_plugin_is_listed(installed_plugin, tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(installed_plugin), os.environ.get("PYTHONPATH", "")])}
    result = run_cli(["snb-ml", "plugins"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("lj "))
    assert "snb-ml-lj" in row and "0.1.0" in row and "relaxer:lj" in row
    assert "Lennard-Jones (example plugin)" in result.stdout
    without = run_cli(["snb-ml", "plugins"], tmp_path)
    assert "relaxer:lj" not in without.stdout


def test_installed_plugin_relaxes_through_snb_run(installed_plugin, cu_tree):
    env = {"PYTHONPATH": os.pathsep.join([str(installed_plugin), os.environ.get("PYTHONPATH", "")])}
    args = [
        "snb-run",
        "--relaxer",
        "lj",
        "--calc-kwargs",
        '{"sigma": 2.27, "epsilon": 0.4, "rc": 5.0}',
        "--no-progress",
        "--steps",
        "200",
        "--fmax",
        "0.05",
    ]
    result = run_cli(args, cu_tree / "v_Cu_0", env=env)
    assert result.returncode == 0, result.stderr
    assert "lj:LennardJones" in result.stdout
    assert (cu_tree / "ml_tree" / "v_Cu_0" / "v_Cu_0.yaml").is_file()


def test_broken_plugin_does_not_break_the_others(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[snb_ml]\nbroken = broken_plugin_module\n")
    (site / "broken_plugin_module.py").write_text("raise ImportError('missing dependency foo')\n")
    env = {"PYTHONPATH": str(site)}
    result = run_cli(["snb-ml", "plugins"], tmp_path, env=env)
    assert result.returncode == 0
    assert "ImportError: missing dependency foo" in result.stdout
    assert "relaxer:chgnet" in result.stdout
