"""The offline default: CHGNet (weights from its wheel) on a real ShakeNBreak V_Cd0 cell in CdTe."""

import json

import pytest
from conftest import run_cli

from snb_ml.plugins import get_relaxer
from snb_ml.relaxers.base import CalculatorRequest


def test_chgnet_loads_offline():
    loaded = get_relaxer("chgnet").load(CalculatorRequest(device="cpu"))
    assert loaded.name == "CHGNet 0.3.0" and not loaded.charge_aware
    assert 48 in loaded.supported_numbers and 52 in loaded.supported_numbers


@pytest.mark.slow
def test_snb_run_relaxer_chgnet_on_cdte_vacancy(cdte_tree):
    defect = cdte_tree / "v_Cd_0"
    result = run_cli(["snb-run", "--relaxer", "chgnet", "--fmax", "0.05", "--no-progress"], defect)
    assert result.returncode == 0, result.stderr
    ml = cdte_tree / "ml_tree"
    provenance = json.loads((ml / "v_Cd_0" / "snb_ml_provenance.json").read_text())
    assert provenance["model"]["name"] == "CHGNet 0.3.0"
    assert {k: v["status"] for k, v in provenance["distortions"].items()} == {
        "Unperturbed": "converged",
        "Bond_Distortion_-30.0%": "converged",
        "Dimer": "converged",
    }
    energies = [v["energy"] for v in provenance["distortions"].values()]
    assert all(-200 < e < -150 for e in energies)  # ~-2.7 eV/atom for 63-atom CdTe
    for command in (["snb-analyse", "-p", "ml_tree"], ["snb-plot", "-p", "ml_tree", "-d", "v_Cd_0"]):
        done = run_cli(command, cdte_tree)
        assert done.returncode == 0, (command, done.stderr)
    assert (ml / "v_Cd_0" / "v_Cd_0.csv").is_file() and (ml / "v_Cd_0" / "v_Cd_0.png").is_file()
    # The DFT tree stays as snb-generate wrote it.
    assert sorted(p.name for p in (defect / "Dimer").iterdir()) == ["POSCAR"]
    rerun = run_cli(["snb-run", "--relaxer", "chgnet", "--fmax", "0.05", "--no-progress"], defect)
    assert rerun.returncode == 0 and rerun.stdout.count("(cached)") == 3
