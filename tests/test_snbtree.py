"""Reading ShakeNBreak trees and writing ShakeNBreak's formats."""

import json

import pytest

from snb_ml.errors import InputError, OutputError
from snb_ml.safe_write import atomic_path, remove_stale_temporaries
from snb_ml.snbtree import (
    DefectInput,
    check_ml_defect_dir,
    energies_document,
    locate_defects,
    parse_charge,
    read_input_structure,
    write_energies_yaml,
)


def test_locate_top_level_and_single_defect(cu_tree):
    top, defects = locate_defects(cu_tree)
    assert top == cu_tree.resolve()
    assert [d.name for d in defects] == ["v_Cu_-1", "v_Cu_0"]
    top, defects = locate_defects(cu_tree / "v_Cu_0")
    assert top == cu_tree.resolve() and [d.name for d in defects] == ["v_Cu_0"]
    assert defects[0].distortion_folders()[0] == "Unperturbed"
    assert len(defects[0].distortion_folders()) == 6


def test_locate_errors(tmp_path, cu_tree):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a ShakeNBreak tree"):
        locate_defects(tmp_path / "empty")
    with pytest.raises(InputError, match="not a directory"):
        locate_defects(tmp_path / "missing")
    with pytest.raises(InputError, match="v_Zn_0.*Available: v_Cu_-1, v_Cu_0"):
        locate_defects(cu_tree, ["v_Zn_0"])


def test_high_energy_folders_are_not_inputs(cu_tree):
    (cu_tree / "v_Cu_0" / "Bond_Distortion_40.0%").rename(
        cu_tree / "v_Cu_0" / "Bond_Distortion_40.0%_High_Energy"
    )
    _, (defect,) = locate_defects(cu_tree / "v_Cu_0")
    assert "Bond_Distortion_40.0%_High_Energy" not in defect.distortion_folders()


@pytest.mark.parametrize(
    ("name", "charge"),
    [("v_Cd_-1", -1), ("Te_i_C3v_+2", 2), ("v_Cd_0", 0), ("v_Cd_Td_Te2.83_-2", -2), ("Cd_i_+10", 10)],
)
def test_charge_from_folder_name(tmp_path, name, charge):
    assert parse_charge(DefectInput(name, tmp_path)) == charge


def test_charge_from_metadata_and_error(tmp_path):
    folder = tmp_path / "vacancy"
    folder.mkdir()
    with pytest.raises(InputError, match="Cannot tell the charge.*--charge"):
        parse_charge(DefectInput("vacancy", folder))
    (folder / "distortion_metadata.json").write_text(
        json.dumps({"defects": {"v_Cd": {"charges": {"-1": {}}}}})
    )
    assert parse_charge(DefectInput("vacancy", folder)) == -1


def test_garbage_poscar_names_the_file(cu_tree):
    poscar = cu_tree / "v_Cu_0" / "Bond_Distortion_20.0%" / "POSCAR"
    poscar.write_text("this is not a POSCAR\n1.0\nfoo\n")
    with pytest.raises(InputError, match=r"Bond_Distortion_20.0%/POSCAR"):
        read_input_structure(poscar.parent)
    poscar.unlink()
    with pytest.raises(InputError, match="No structure file"):
        read_input_structure(poscar.parent)


def test_other_codes_inputs_are_read(tmp_path, cu_tree):
    from ase.io import read, write

    atoms = read(cu_tree / "v_Cu_0" / "Unperturbed" / "POSCAR")
    folder = tmp_path / "Unperturbed"
    folder.mkdir()
    write(folder / "geometry.in", atoms, format="aims")
    assert len(read_input_structure(folder)) == len(atoms)


def test_yaml_is_read_by_shakenbreak(tmp_path):
    from shakenbreak.analysis import _sort_data, get_energies

    energies = {
        "Unperturbed": -10.0,
        "Bond_Distortion_-30.0%": -10.5,
        "Bond_Distortion_0.0%": -10.1,
        "Rattled": -9.9,
    }
    defect_dir = tmp_path / "v_X_0"
    write_energies_yaml(defect_dir, "v_X_0", energies)
    document, energy_diff, gs = _sort_data(str(defect_dir / "v_X_0.yaml"), verbose=False)
    assert document == energies_document(energies)
    assert list(document["distortions"]) == [-0.3, 0.0, "Rattled"]
    assert energy_diff == pytest.approx(-0.5) and gs == -0.3
    relative = get_energies("v_X_0", output_path=str(tmp_path), verbose=False)
    assert relative["Unperturbed"] == 0.0 and relative["distortions"][-0.3] == pytest.approx(-0.5)


def test_refuses_dft_yaml_and_outputs(tmp_path):
    defect_dir = tmp_path / "v_X_0"
    defect_dir.mkdir()
    (defect_dir / "v_X_0.yaml").write_text("distortions: {}\n")
    with pytest.raises(OutputError, match="DFT energies"):
        check_ml_defect_dir(defect_dir, "v_X_0")
    (defect_dir / "v_X_0.yaml").unlink()
    (defect_dir / "Unperturbed").mkdir()
    (defect_dir / "Unperturbed" / "OUTCAR").write_text("")
    with pytest.raises(OutputError, match="DFT output"):
        check_ml_defect_dir(defect_dir, "v_X_0")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "CONTCAR"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    (tmp_path / ".snb_ml_tmp_CONTCAR.abc").write_text("stale")
    assert remove_stale_temporaries(tmp_path) == 1
