"""snb-ml dataset / pick-hybrid on trimmed real OUTCARs of doped's MgO example (tests/data/vasp)."""

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.io import read
from click.testing import CliRunner

from snb_ml.cli.dataset import dataset as dataset_command
from snb_ml.cli.dataset import pick_hybrid
from snb_ml.data import FilterSettings, HarvestSettings, harvest
from snb_ml.data.picker import pick_frames, write_inputs
from snb_ml.errors import InputError, OutputError

TREE = Path(__file__).parent / "data" / "vasp" / "MgO_tree"
ALL = FilterSettings(frames_per_relaxation=None, window=None)


@pytest.fixture
def tree(tmp_path) -> Path:
    """Copy of the fixture: Mg_O_0/vasp_std (doped layout), Mg_O_+2/Unperturbed (ShakeNBreak), MgO_bulk."""
    return Path(shutil.copytree(TREE, tmp_path / "MgO_tree"))


def _read_gz(path: Path) -> str:
    with gzip.open(path, "rt") as stream:
        return stream.read()


def _frames(report) -> list:
    return [frame for frames in report.splits.values() for frame in frames]


def _by_relaxation(report) -> dict:
    result = {}
    for frame in _frames(report):
        result.setdefault(frame.info["relaxation"], []).append(frame)
    return {key: sorted(value, key=lambda f: f.info["frame"]) for key, value in result.items()}


def test_frames_charges_heads_and_units(tree):
    report = harvest([tree], HarvestSettings(filters=ALL), progress=False)
    groups = _by_relaxation(report)
    assert {key: len(value) for key, value in groups.items()} == {
        "MgO_tree/MgO_bulk": 1,
        "MgO_tree/Mg_O_+2/Unperturbed": 3,
        "MgO_tree/Mg_O_0/vasp_std": 3,
    }
    charges = {key: {f.info["total_charge"] for f in value} for key, value in groups.items()}
    assert charges == {
        "MgO_tree/MgO_bulk": {0},
        "MgO_tree/Mg_O_+2/Unperturbed": {2},
        "MgO_tree/Mg_O_0/vasp_std": {0},
    }
    frames = _frames(report)
    assert {f.info["head"] for f in frames} == {"pbesol"}  # INCAR: GGA = Ps
    assert {f.info["config_type"] for f in frames} == {"bulk", "defect"}
    assert {f.info["defect"] for f in frames} == {"Mg_O", "MgO_bulk"}
    first = groups["MgO_tree/Mg_O_0/vasp_std"][0]
    # Numbers grepped from the OUTCAR: energy(sigma->0), TOTEN, first force row, first "in kB" line.
    assert first.info["REF_energy"] == pytest.approx(-1331.57216249, abs=1e-7)
    assert first.info["REF_free_energy"] == pytest.approx(-1331.57807388, abs=1e-7)
    assert first.arrays["REF_forces"][0] == pytest.approx([-0.004073, 0.004045, 0.001028])
    stress = first.info["REF_stress"].reshape(3, 3)
    assert stress[0, 0] == pytest.approx(-24.66782 * 0.1 * units.GPa)
    assert stress[0, 1] == pytest.approx(-2.92345 * 0.1 * units.GPa)
    assert np.allclose(stress, stress.T)
    assert len(first) == 216


def test_written_extxyz_keys(tree, tmp_path):
    out = tmp_path / "ds"
    result = CliRunner().invoke(dataset_command, [str(tree), "-o", str(out), "-q", "--fractions", "1,0,0"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "train.xyz",
        "valid.xyz",
        "test.xyz",
        "dataset.json",
        "summary.csv",
    }
    frames = read(out / "train.xyz", index=":")
    assert len(frames) == 7
    frame = next(f for f in frames if f.info["relaxation"].endswith("Mg_O_+2/Unperturbed"))
    for key in ("REF_energy", "REF_stress", "total_charge", "head", "config_type", "defect", "charge_state"):
        assert key in frame.info
    assert frame.info["total_charge"] == 2 and frame.arrays["REF_forces"].shape == (216, 3)
    assert frame.calc is None  # labels only under REF_*, never as ASE's own energy/forces
    document = json.loads((out / "dataset.json").read_text())
    assert document["counts"] == {"train": 7, "valid": 0, "test": 0}
    assert "energy(sigma->0)" in document["energy_convention"]
    assert "Mg_O,2,pbesol,train,3,1" in (out / "summary.csv").read_text()
    # An existing non-empty output is refused unless --force.
    again = CliRunner().invoke(dataset_command, [str(tree), "-o", str(out), "-q"])
    assert again.exit_code == 1 and "--force" in again.output
    forced = CliRunner().invoke(dataset_command, [str(tree), "-o", str(out), "-q", "--force"])
    assert forced.exit_code == 0, forced.output


def _nearest(atoms, point) -> int:
    from ase.geometry import get_distances

    _, distances = get_distances([point], atoms.positions, cell=atoms.cell, pbc=True)
    return int(np.argmin(distances[0]))


def test_defect_site_from_bulk_and_metadata(tree):
    report = harvest([tree], HarvestSettings(filters=ALL), progress=False)
    bulk = read(TREE / "MgO_bulk" / "OUTCAR.gz", format="vasp-out")
    for frame in _frames(report):
        if frame.info["config_type"] != "defect":
            assert "defect_site" not in frame.info
            continue
        assert frame.info["defect_site_method"] == "bulk"
        site = frame.info["defect_site"]
        # The antisite: the bulk's O site 153, now held by an (off-centred) Mg.
        assert np.allclose(site, bulk.positions[153])
        assert bulk[_nearest(bulk, site)].symbol == "O"
        assert frame[_nearest(frame, site)].symbol == "Mg"
    (tree / "Mg_O_+2" / "distortion_metadata.json").write_text(
        json.dumps({"defects": {"Mg_O": {"unique_site": [0.5, 0.5, 0.5], "charges": {"2": {}}}}})
    )
    report = harvest([tree], HarvestSettings(filters=ALL), progress=False)
    frame = _by_relaxation(report)["MgO_tree/Mg_O_+2/Unperturbed"][0]
    assert frame.info["defect_site_method"] == "metadata"
    assert frame.info["defect_site"] == pytest.approx(0.5 * np.diag(frame.cell))
    # Without a bulk in the tree the site is unknown, counted, never guessed.
    alone = harvest([tree / "Mg_O_0"], HarvestSettings(filters=ALL), progress=False)
    assert alone.unknown_sites == 3
    assert all("defect_site" not in f.info for f in _frames(alone))


def test_name_disagreeing_with_nelect_is_an_error(tree):
    shutil.move(tree / "Mg_O_+2", tree / "Mg_O_+1")
    with pytest.raises(InputError, match=r"Mg_O_\+1.*says \+1 but NELECT gives \+2"):
        harvest([tree], HarvestSettings(filters=ALL), progress=False)


def test_truncated_files_are_skipped_and_restarts_joined(tree, capsys):
    text = _read_gz(TREE / "Mg_O_+2" / "Unperturbed" / "OUTCAR.gz").splitlines(keepends=True)
    header_only = tree / "Mg_O_+2" / "Bond_Distortion_-30.0%"
    header_only.mkdir()
    (header_only / "OUTCAR").write_text("".join(text[:500]))
    broken_gzip = tree / "Mg_O_+2" / "Bond_Distortion_30.0%"
    broken_gzip.mkdir()
    data = (TREE / "Mg_O_+2" / "Unperturbed" / "OUTCAR.gz").read_bytes()
    (broken_gzip / "OUTCAR.gz").write_bytes(data[: len(data) // 3])
    killed = tree / "Mg_O_+2" / "Rattled"
    killed.mkdir()
    (killed / "OUTCAR").write_text("".join(text[:5000]))  # two complete ionic steps, no timing block
    for folder in (header_only, broken_gzip, killed):
        shutil.copy(TREE / "Mg_O_+2" / "Unperturbed" / "INCAR", folder)
    restart = tree / "Mg_O_0" / "vasp_std"
    shutil.copy(restart / "OUTCAR.gz", restart / "OUTCAR_1.gz")
    report = harvest([tree], HarvestSettings(filters=ALL), progress=True)
    assert sorted(Path(p).parent.name for p in report.skipped_files) == [
        "Bond_Distortion_-30.0%",
        "Bond_Distortion_30.0%",
    ]
    err = capsys.readouterr().err
    assert "skipped unreadable file" in err and "Bond_Distortion_-30.0%/OUTCAR" in err
    groups = _by_relaxation(report)
    assert len(groups["MgO_tree/Mg_O_+2/Rattled"]) == 2
    assert any("incomplete run" in m and "Rattled" in m for m in report.messages)
    joined = groups["MgO_tree/Mg_O_0/vasp_std"]
    assert [f.info["frame"] for f in joined] == list(range(6))
    assert joined[0].info["source"].endswith("OUTCAR_1.gz") and joined[-1].info["source"].endswith(
        "OUTCAR.gz"
    )


def test_filters_report_counts(tree):
    settings = HarvestSettings(filters=FilterSettings(window=0.001, frames_per_relaxation=2))
    report = harvest([tree], settings, progress=False)
    removed = report.removed
    assert (
        removed["more than 0.001 eV above the defect's lowest frame"] == 2
    )  # the first frame of each defect
    assert removed["sampling (2 evenly spaced per relaxation)"] == 0
    assert sum(len(v) for v in report.splits.values()) == 5
    sampled = harvest(
        [tree], HarvestSettings(filters=FilterSettings(frames_per_relaxation=2)), progress=False
    )
    assert [f.info["frame"] for f in _by_relaxation(sampled)["MgO_tree/Mg_O_0/vasp_std"]] == [0, 2]
    # Unconverged electronic steps: NELM lowered and VASP's "EDIFF is reached" lines removed.
    outcar = tree / "Mg_O_0" / "vasp_std" / "OUTCAR.gz"
    text = _read_gz(outcar).replace("NELM   =     60;", "NELM   =      2;")
    text = "".join(line for line in text.splitlines(keepends=True) if "EDIFF is reached" not in line)
    with gzip.open(outcar, "wt") as stream:
        stream.write(text)
    report = harvest([tree], HarvestSettings(filters=ALL), progress=False)
    assert report.removed["electronically unconverged (NELM reached)"] == 3
    assert "MgO_tree/Mg_O_0/vasp_std" not in _by_relaxation(report)


def test_empty_after_filters_names_the_filter(tree):
    settings = HarvestSettings(filters=FilterSettings(max_energy_per_atom=-7.0))
    with pytest.raises(InputError, match=r"No frame left.*energy per atom outside \[-50.0, -7.0\] eV: 7"):
        harvest([tree], settings, progress=False)
    result = CliRunner().invoke(
        dataset_command, [str(tree), "-o", str(tree.parent / "o"), "-q", "--max-energy-per-atom", "-7"]
    )
    assert result.exit_code == 1 and "No frame left" in result.output
    missing = CliRunner().invoke(dataset_command, [str(tree / "nothing"), "-o", str(tree.parent / "o2")])
    assert missing.exit_code == 2


def _more_relaxations(tree: Path) -> None:
    for name in ("Bond_Distortion_-30.0%", "Bond_Distortion_30.0%", "Rattled"):
        shutil.copytree(tree / "Mg_O_+2" / "Unperturbed", tree / "Mg_O_+2" / name)
    for name in ("vasp_gam", "vasp_ncl"):
        shutil.copytree(tree / "Mg_O_0" / "vasp_std", tree / "Mg_O_0" / name)


@pytest.mark.parametrize("mode", ["relaxation", "defect", "composition"])
def test_split_keeps_relaxations_together(tree, mode):
    _more_relaxations(tree)
    report = harvest([tree], HarvestSettings(filters=ALL, split=mode, seed=3), progress=False)
    sides: dict[str, set] = {}
    for split, frames in report.splits.items():
        for frame in frames:
            assert frame.info["split"] == split
            sides.setdefault(frame.info["relaxation"], set()).add(split)
    assert all(len(split) == 1 for split in sides.values())
    assert sides["MgO_tree/MgO_bulk"] == {"train"}
    if mode == "relaxation":
        assert all(report.splits[name] for name in ("train", "valid", "test"))


def test_frames_split_cuts_each_relaxation_in_blocks(tree):
    settings = HarvestSettings(filters=ALL, split="frames", fractions=(0.4, 0.3, 0.3))
    report = harvest([tree], settings, progress=False)
    for frames in _by_relaxation(report).values():
        if len(frames) == 3:
            assert [f.info["split"] for f in frames] == ["train", "valid", "test"]
        else:
            assert [f.info["split"] for f in frames] == ["train"]


def test_ml_trees_only_when_asked(tree, tmp_path):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = read(TREE / "Mg_O_0" / "vasp_std" / "OUTCAR.gz", format="vasp-out")
    ml = tmp_path / "ml_tree" / "Mg_O_0" / "Unperturbed"
    ml.mkdir(parents=True)
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=-1300.0, forces=np.zeros((len(frame), 3)))
    frame.info.update({"defect": "Mg_O_0", "distortion": "Unperturbed", "charge": 0, "model": "chgnet"})
    from ase.io import write

    write(ml / "snb_ml_trajectory.extxyz", [frame, frame], format="extxyz")
    plain = harvest([tree, tmp_path / "ml_tree"], HarvestSettings(filters=ALL), progress=False)
    assert {f.info["config_type"] for f in _frames(plain)} == {"bulk", "defect"}
    both = harvest(
        [tree, tmp_path / "ml_tree"], HarvestSettings(filters=ALL, include_ml_trees=True), progress=False
    )
    ml_frames = [f for f in _frames(both) if f.info["config_type"] == "ml"]
    assert len(ml_frames) == 2 and {f.info["head"] for f in ml_frames} == {"ml:chgnet"}
    assert {f.info["defect"] for f in ml_frames} == {"Mg_O"} and ml_frames[0].info["REF_energy"] == -1300.0


def test_pick_hybrid_writes_inputs_without_potcar(tree, tmp_path):
    _more_relaxations(tree)
    before = sorted(str(p) for p in tree.rglob("*"))
    dataset = tmp_path / "ds"
    assert (
        CliRunner()
        .invoke(dataset_command, [str(tree), "-o", str(dataset), "-q", "--frames-per-relaxation", "0"])
        .exit_code
        == 0
    )
    out = tmp_path / "hse"
    result = CliRunner().invoke(pick_hybrid, [str(dataset), "-o", str(out), "--fraction", "0.2"])
    assert result.exit_code == 0, result.output
    picked = json.loads((out / "picked.json").read_text())["frames"]
    # 1 bulk frame, 9 frames of Mg_O 0 and 12 of Mg_O +2: round(0.2 n) each, at least one.
    assert len(picked) == 1 + 2 + 2
    assert {(p["defect"], p["charge_state"]) for p in picked} == {("MgO_bulk", 0), ("Mg_O", 0), ("Mg_O", 2)}
    for record in picked:
        folder = out / record["folder"]
        assert sorted(p.name for p in folder.iterdir()) == ["INCAR", "KPOINTS", "POSCAR"]
        incar = (folder / "INCAR").read_text()
        assert "LHFCALC = .TRUE." in incar and "NSW = 0" in incar and "HFSCREEN = 0.2" in incar
        # The electron count of each cell and charge: 108 Mg (2 e) + 108 O (6 e) in bulk; Mg on an O site
        # gives 109 Mg + 107 O = 860 electrons when neutral, two fewer at +2.
        nelect = {("MgO_bulk", 0): 864.0, ("Mg_O", 0): 860.0, ("Mg_O", 2): 858.0}
        expected = nelect[(record["defect"], record["charge_state"])]
        assert [line for line in incar.splitlines() if "NELECT" in line] == [f"NELECT = {expected}"]
        assert "IBRION = 2" not in incar and "ISPIN = 2" in incar
        assert len(read(folder / "POSCAR")) == 216
    assert "POTCAR" in (out / "README.md").read_text()
    assert sorted(str(p) for p in tree.rglob("*")) == before  # nothing written into the DFT tree
    frames = read(dataset / "train.xyz", index=":") + read(dataset / "valid.xyz", index=":")
    with pytest.raises(InputError, match="fraction"):
        pick_frames(frames, 0.0)
    # Writing the inputs into a source DFT folder is refused before anything is written.
    source = Path(str(frames[0].info["source"])).parent
    listing = sorted(p.name for p in source.iterdir())
    with pytest.raises(OutputError, match="inside the source DFT folder"):
        write_inputs(frames[:1], source, dataset)
    assert sorted(p.name for p in source.iterdir()) == listing


def test_hybrid_incar_overrides_tags_set_on_one_line(tmp_path):
    from snb_ml.data.picker import hybrid_incar

    (tmp_path / "INCAR").write_text("ISPIN = 2; LHFCALC = .FALSE.\nNELECT = 1294 ! charged\nNSW = 100\n")
    text = hybrid_incar(tmp_path / "INCAR")
    lines = [line for line in text.splitlines() if "=" in line and not line.startswith("#")]
    settings = [line.split("=")[0].strip() for line in lines]
    assert settings.count("LHFCALC") == 1 and settings.count("NSW") == 1
    assert "LHFCALC = .TRUE." in text and "NELECT = 1294" in text and "ISPIN = 2" in text
