"""snb-ml dataset on trees that keep only CONTCAR + {defect}.yaml (real V_Cd0 DFT minima, MIT)."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from click.testing import CliRunner

from snb_ml.cli.dataset import dataset as dataset_command
from snb_ml.data import FilterSettings, HarvestSettings, harvest
from snb_ml.errors import InputError

SEARCH = Path(__file__).parents[1] / "examples" / "snb_dft" / "CdTe_v_Cd" / "earlier_search" / "v_Cd_0"
KEPT = ("Bond_Distortion_-30.0%", "Bond_Distortion_-20.0%", "Unperturbed")
ALL_IN_TRAIN = HarvestSettings(filters=FilterSettings(), fractions=(1.0, 0.0, 0.0))


@pytest.fixture
def tree(tmp_path) -> Path:
    """A ShakeNBreak tree whose OUTCARs were deleted: three distortion folders with CONTCAR, and the yaml."""
    defect = tmp_path / "tree" / "v_Cd_0"
    for name in KEPT:
        shutil.copytree(SEARCH / name, defect / name)
    shutil.copy(SEARCH / "v_Cd_0.yaml", defect / "v_Cd_0.yaml")
    return tmp_path / "tree"


def _frames(report):
    return [frame for frames in report.splits.values() for frame in frames]


def test_minima_carry_the_yaml_energies_zero_forces_and_their_kind(tree):
    report = harvest([tree], ALL_IN_TRAIN, progress=False)
    frames = {Path(f.info["relaxation"]).name: f for f in _frames(report)}
    assert sorted(frames) == sorted(KEPT)
    # ShakeNBreak's own energies (snb-parse wrote them): -30% is the Te-Te dimer, 0.75 eV lower.
    assert frames["Bond_Distortion_-30.0%"].info["REF_energy"] == -206.47774362
    assert frames["Bond_Distortion_-20.0%"].info["REF_energy"] == -205.72671967
    assert frames["Unperturbed"].info["REF_energy"] == -205.72311458
    for name, frame in frames.items():
        assert frame.info["label_kind"] == "minimum"
        assert frame.info["total_charge"] == 0 and frame.info["defect"] == "v_Cd"
        assert np.array_equal(frame.arrays["REF_forces"], np.zeros((63, 3)))
        assert "REF_stress" not in frame.info
        assert np.allclose(frame.positions, read(tree / "v_Cd_0" / name / "CONTCAR").positions)
    assert any("head is taken to be 'pbe'" in message for message in report.messages)


def test_written_dataset_marks_minima_in_frames_and_summary(tree, tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(dataset_command, [str(tree), "-o", str(out), "-q", "--fractions", "1,0,0"])
    assert result.exit_code == 0, result.output
    frames = read(out / "train.xyz", index=":")
    assert len(frames) == 3 and {f.info["label_kind"] for f in frames} == {"minimum"}
    rows = list(csv.DictReader((out / "summary.csv").open()))
    train = [row for row in rows if row["split"] == "train"]
    assert [(row["frames"], row["minima"]) for row in train] == [("3", "3")]


def test_folders_without_energy_repeats_and_ml_trees_are_not_harvested(tree):
    defect = tree / "v_Cd_0"
    # ShakeNBreak's High_Energy folders have no yaml entry; a repeated structure adds nothing.
    shutil.copytree(defect / "Unperturbed", defect / "Bond_Distortion_-50.0%_High_Energy")
    shutil.copytree(defect / "Bond_Distortion_-30.0%", defect / "Bond_Distortion_-10.0%")  # yaml: -0.1
    report = harvest([tree], ALL_IN_TRAIN, progress=False)
    names = sorted(Path(f.info["relaxation"]).name for f in _frames(report))
    assert names == ["Bond_Distortion_-10.0%", "Bond_Distortion_-20.0%", "Unperturbed"]  # one twin kept
    assert report.removed["repeated yaml minimum (same structure)"] == 1
    assert any("High_Energy" in m and "no energy" in m for m in report.messages)
    assert any("Bond_Distortion_-30.0%" in m and "same structure" in m for m in report.messages)
    # An snb_ml ML tree holds CONTCARs and a yaml of ML energies: never DFT minima.
    (defect / "snb_ml_provenance.json").write_text("{}")
    with pytest.raises(InputError, match="No VASP outputs"):
        harvest([tree], ALL_IN_TRAIN, progress=False)


def test_minima_need_a_charge_in_the_folder_name(tree):
    renamed = tree / "v_Cd"
    (tree / "v_Cd_0").rename(renamed)
    (renamed / "v_Cd_0.yaml").rename(renamed / "v_Cd.yaml")
    with pytest.raises(InputError, match="must end in the charge"):
        harvest([tree], ALL_IN_TRAIN, progress=False)


def test_head_comes_from_an_incar_next_to_the_minima(tree):
    (tree / "v_Cd_0" / "INCAR").write_text("GGA = PS\nISPIN = 2\n")
    report = harvest([tree], ALL_IN_TRAIN, progress=False)
    assert {f.info["head"] for f in _frames(report)} == {"pbesol"}


def test_minima_take_the_functional_of_the_outcars_harvested_with_them(tree, tmp_path):
    outcars = shutil.copytree(Path(__file__).parent / "data" / "vasp" / "MgO_tree", tmp_path / "MgO_tree")
    report = harvest([tree, outcars], ALL_IN_TRAIN, progress=False)
    heads = {(f.info["label_kind"], f.info["head"]) for f in _frames(report)}
    assert heads == {("minimum", "pbesol"), ("trajectory", "pbesol")}  # MgO INCARs: GGA = PS
