"""DFT hand-off on a real ShakeNBreak tree relaxed with EMT: snb-run submits only the kept folders."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import DATA, run_cli

from snb_ml.errors import InputError, OutputError
from snb_ml.handoff import HOLDING_FOLDER, RECORD_FILE, prepare_dft_tree, undo_handoff
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings

SELECTION = {"v_Cu_0": ["Bond_Distortion_-40.0%", "Bond_Distortion_20.0%"]}
NOT_SELECTED = {"Bond_Distortion_-20.0%", "Bond_Distortion_0.0%", "Bond_Distortion_40.0%"}


@pytest.fixture(scope="module")
def ml_tree(tmp_path_factory) -> Path:
    """The Cu tree relaxed once with EMT into a separate ML tree (shared by every test here)."""
    base = tmp_path_factory.mktemp("handoff")
    source = shutil.copytree(DATA / "Cu_tree", base / "Cu_tree")
    settings = RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings(fmax=0.05)
    )
    with pytest.warns(UserWarning, match="no charge embedding"):
        report = run_tree(source, settings, output=base / "ml_tree")
    assert not report.failed
    return base / "ml_tree"


@pytest.fixture
def dft_tree(tmp_path) -> Path:
    return Path(shutil.copytree(DATA / "Cu_tree", tmp_path / "Cu_tree"))


def snapshot(tree: Path) -> dict:
    """Every file's sha256 and every folder, relative to ``tree``."""
    return {
        str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(tree.rglob("*"))
    }


def structures_equal(first: Path, second: Path, tolerance: float = 1e-8) -> bool:
    import numpy as np
    from pymatgen.core import Structure

    a, b = Structure.from_file(first), Structure.from_file(second)
    delta = a.frac_coords - b.frac_coords
    return (
        np.allclose(a.lattice.matrix, b.lattice.matrix, atol=tolerance)
        and [s.species_string for s in a] == [s.species_string for s in b]
        and abs(delta - np.round(delta)).max() < tolerance
    )


def test_handoff_replaces_moves_and_snb_run_submits_only_kept(dft_tree, ml_tree):
    from shakenbreak.analysis import get_structures
    from shakenbreak.cli import _parse_defect_dirs
    from shakenbreak.io import parse_energies

    record = prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    [entry] = record.defects
    assert entry.status == "prepared" and entry.kept == ["Unperturbed"]
    assert set(entry.moved) == NOT_SELECTED and "2 replaced" in record.summary()
    defect = dft_tree / "v_Cu_0"
    for folder in SELECTION["v_Cu_0"]:
        assert structures_equal(defect / folder / "POSCAR", ml_tree / "v_Cu_0" / folder / "CONTCAR")
        original = (DATA / "Cu_tree" / "v_Cu_0" / folder / "POSCAR").read_bytes()
        assert (defect / folder / "POSCAR.snb_ml_original").read_bytes() == original
    for folder in NOT_SELECTED:
        assert not (defect / folder).exists() and (defect / HOLDING_FOLDER / folder / "POSCAR").is_file()
    unperturbed = (DATA / "Cu_tree" / "v_Cu_0" / "Unperturbed" / "POSCAR").read_bytes()
    assert (defect / "Unperturbed" / "POSCAR").read_bytes() == unperturbed
    saved = json.loads((defect / RECORD_FILE).read_text())
    assert saved["complete"] and {m["folder"] for m in saved["moved"]} == NOT_SELECTED
    assert all(len(r["original_sha256"]) == 64 for r in saved["replaced"])

    # ShakeNBreak's own readers ignore the holding folder (no outputs yet: that is fine)
    assert sorted(_parse_defect_dirs(str(dft_tree))) == ["v_Cu_-1", "v_Cu_0"]
    kept = {"Bond_Distortion_-40.0%", "Bond_Distortion_20.0%", "Unperturbed"}
    with pytest.warns(UserWarning) as caught:
        parse_energies("v_Cu_0", str(dft_tree))
    looked_at = {
        str(w.message).split("No output file in ")[1].split(" directory")[0]
        for w in caught
        if "No output file in" in str(w.message)
    }
    assert looked_at == kept
    with pytest.warns(UserWarning, match="CONTCAR file doesn't exist"):
        structures = get_structures("v_Cu_0", output_path=str(dft_tree))
    assert set(structures) == {-0.4, 0.2, "Unperturbed"}

    # ShakeNBreak's real job loop submits only the kept folders
    (dft_tree / "job").write_text("#!/bin/bash\n")
    result = run_cli(["snb-run", "-s", "echo", "-j", "../job"], cwd=defect)
    assert result.returncode == 0, result.stderr
    submitted = {
        line.split("Running job for ")[1] for line in result.stdout.splitlines() if "Running job" in line
    }
    assert submitted == kept


def test_undo_round_trips_byte_identically(dft_tree, ml_tree):
    before = snapshot(dft_tree)
    selection = {"v_Cu_0": ["Unperturbed", "Bond_Distortion_0.0%"], "v_Cu_-1": ["Rattled"]}
    record = prepare_dft_tree(dft_tree, ml_tree, selection)
    assert [d.kept for d in record.defects] == [[], ["Unperturbed"]]
    assert structures_equal(
        dft_tree / "v_Cu_0" / "Unperturbed" / "POSCAR", ml_tree / "v_Cu_0" / "Unperturbed" / "CONTCAR"
    )
    assert snapshot(dft_tree) != before
    assert sorted(undo_handoff(dft_tree)) == ["v_Cu_-1", "v_Cu_0"]
    assert snapshot(dft_tree) == before


def test_rerun_is_idempotent_and_reselection_undoes_first(dft_tree, ml_tree):
    before = snapshot(dft_tree)
    prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    prepared = snapshot(dft_tree)
    again = prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    assert again.defects[0].status == "already prepared" and "already prepared" in again.summary()
    assert snapshot(dft_tree) == prepared

    other = prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_0": ["Bond_Distortion_40.0%"]})
    assert other.defects[0].status == "re-prepared"
    defect = dft_tree / "v_Cu_0"
    assert sorted(p.name for p in (defect / HOLDING_FOLDER).iterdir()) == sorted(
        NOT_SELECTED - {"Bond_Distortion_40.0%"} | set(SELECTION["v_Cu_0"])
    )
    assert structures_equal(
        defect / "Bond_Distortion_40.0%" / "POSCAR", ml_tree / "v_Cu_0" / "Bond_Distortion_40.0%" / "CONTCAR"
    )
    undo_handoff(dft_tree, ["v_Cu_0"])
    assert snapshot(dft_tree) == before


def test_interrupted_handoff_is_undone(dft_tree, ml_tree):
    before = snapshot(dft_tree)
    prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    # as if killed after replacing the POSCARs, before moving any folder
    defect = dft_tree / "v_Cu_0"
    for folder in NOT_SELECTED:
        (defect / HOLDING_FOLDER / folder).rename(defect / folder)
    record = json.loads((defect / RECORD_FILE).read_text())
    (defect / RECORD_FILE).write_text(json.dumps({**record, "complete": False}))
    assert prepare_dft_tree(dft_tree, ml_tree, SELECTION).defects[0].status == "re-prepared"
    assert not any((defect / folder).exists() for folder in NOT_SELECTED)
    undo_handoff(dft_tree)
    assert snapshot(dft_tree) == before


def test_refuses_folders_with_dft_output_and_changes_nothing(dft_tree, ml_tree):
    (dft_tree / "v_Cu_0" / "Bond_Distortion_40.0%" / "OUTCAR").write_text("vasp output\n")
    (dft_tree / "v_Cu_0" / "Unperturbed" / "OUTCAR").write_text("vasp output\n")
    before = snapshot(dft_tree)
    # v_Cu_-1 is fine, but the refusal for v_Cu_0 comes before anything changes anywhere
    with pytest.raises(OutputError, match=r"Bond_Distortion_40\.0%.*OUTCAR"):
        prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_-1": ["Rattled"], **SELECTION})
    assert snapshot(dft_tree) == before
    with pytest.raises(OutputError, match=r"Unperturbed.*OUTCAR"):
        prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_0": ["Unperturbed"]})
    assert snapshot(dft_tree) == before
    stale = dft_tree / "v_Cu_0" / "Bond_Distortion_20.0%" / "POSCAR.snb_ml_original"
    stale.write_text("someone's file\n")
    with pytest.raises(OutputError, match="no snb_ml_handoff.json lists it"):
        prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    stale.unlink()
    # a kept, untouched Unperturbed with DFT output is fine
    (dft_tree / "v_Cu_0" / "Bond_Distortion_40.0%" / "OUTCAR").unlink()
    prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    assert (dft_tree / "v_Cu_0" / "Unperturbed" / "OUTCAR").is_file()


def test_undo_refuses_once_dft_has_run(dft_tree, ml_tree):
    prepare_dft_tree(dft_tree, ml_tree, SELECTION)
    (dft_tree / "v_Cu_0" / "Bond_Distortion_20.0%" / "vasprun.xml").write_text("<modeling/>\n")
    before = snapshot(dft_tree)
    with pytest.raises(OutputError, match=r"Bond_Distortion_20\.0%.*vasprun\.xml"):
        undo_handoff(dft_tree)
    assert snapshot(dft_tree) == before


def test_nothing_to_undo_and_bad_selections(dft_tree, ml_tree, tmp_path):
    with pytest.raises(InputError, match="Nothing to undo"):
        undo_handoff(dft_tree)
    with pytest.raises(InputError, match="Nothing to undo"):
        undo_handoff(dft_tree, ["v_Cu_0"])
    before = snapshot(dft_tree)
    with pytest.raises(InputError, match="v_Cu_9.*not found.*Available: v_Cu_-1, v_Cu_0"):
        prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_9": ["Rattled"]})
    with pytest.raises(InputError, match="Bond_Distortion_99.0%.*not found"):
        prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_0": ["Bond_Distortion_99.0%"]})
    with pytest.raises(InputError, match="No distortion selected"):
        prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_0": []})
    with pytest.raises(InputError, match="not an snb_ml ML tree"):
        prepare_dft_tree(dft_tree, tmp_path, SELECTION)
    with pytest.raises(InputError, match="DFT tree itself"):
        prepare_dft_tree(dft_tree, dft_tree, SELECTION)
    assert snapshot(dft_tree) == before


@pytest.mark.filterwarnings("ignore:FHI-aims IO is moving:FutureWarning")
def test_other_codes(dft_tree, ml_tree):
    from ase.io import read, write

    # FHI-aims for v_Cu_0 and CP2K for v_Cu_-1, written as ShakeNBreak's writers do
    for folder in (dft_tree / "v_Cu_0").iterdir():
        if folder.is_dir():
            atoms = read(folder / "POSCAR")
            (folder / "POSCAR").unlink()
            write(folder / "geometry.in", atoms, format="aims", info_str=folder.name)
    from pymatgen.core import Structure

    for folder in (dft_tree / "v_Cu_-1").iterdir():
        if folder.is_dir():
            Structure.from_file(folder / "POSCAR").to(filename=str(folder / "structure.cif"), fmt="cif")
            (folder / "POSCAR").unlink()
    before = snapshot(dft_tree)
    prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_0": ["Bond_Distortion_-40.0%"], "v_Cu_-1": ["Rattled"]})
    relaxed = read(ml_tree / "v_Cu_0" / "Bond_Distortion_-40.0%" / "CONTCAR")
    handed = read(dft_tree / "v_Cu_0" / "Bond_Distortion_-40.0%" / "geometry.in")
    assert abs(handed.positions - relaxed.positions).max() < 1e-6
    assert (dft_tree / "v_Cu_0" / "Bond_Distortion_-40.0%" / "geometry.in.snb_ml_original").is_file()
    cif = dft_tree / "v_Cu_-1" / "Rattled" / "structure.cif"
    assert structures_equal(cif, ml_tree / "v_Cu_-1" / "Rattled" / "CONTCAR", tolerance=1e-6)
    undo_handoff(dft_tree)
    assert snapshot(dft_tree) == before

    # Quantum ESPRESSO input mixes settings and structure: refused with a clear message
    rattled = dft_tree / "v_Cu_-1" / "Rattled"
    atoms = read(rattled / "structure.cif")
    write(rattled / "espresso.pwi", atoms, format="espresso-in", pseudopotentials={"Cu": "Cu.upf"})
    (rattled / "structure.cif").unlink()
    with pytest.raises(InputError, match=r"espresso\.pwi.*not rewritten"):
        prepare_dft_tree(dft_tree, ml_tree, {"v_Cu_-1": ["Rattled"]})
