"""Whole-tree runs through the plugin system (EMT via the `ase` backend), read back by ShakeNBreak."""

import json
import warnings

import pytest
from filelock import FileLock

from snb_ml.api import relax_tree
from snb_ml.errors import InputError, OutputError, UnknownRelaxerError
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings

EMT_SETTINGS = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False)


def emt(**relax):
    return RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings(**relax)
    )


def test_run_writes_tree_shakenbreak_reads(cu_tree):
    from shakenbreak.analysis import compare_structures, get_energies, get_structures
    from shakenbreak.io import parse_energies

    report = run_tree(cu_tree, EMT_SETTINGS)
    assert not report.failed
    ml = cu_tree / "ml_tree"
    assert report.ml_tree == ml.resolve()
    defect = ml / "v_Cu_0"
    assert (defect / "v_Cu_0.yaml").is_file() and (defect / "distortion_metadata.json").is_file()
    assert (ml / "distortion_metadata.json").is_file()
    for folder in ("Unperturbed", "Bond_Distortion_-40.0%", "Bond_Distortion_40.0%"):
        assert (defect / folder / "CONTCAR").is_file() and (defect / folder / "POSCAR").is_file()
        assert (defect / folder / "snb_ml_trajectory.extxyz").is_file()
    provenance = json.loads((defect / "snb_ml_provenance.json").read_text())
    assert provenance["charge"] == 0 and provenance["model"]["name"] == "ase.calculators.emt:EMT"
    assert all(d["status"] == "converged" for d in provenance["distortions"].values())
    # the DFT tree itself is untouched
    assert sorted(p.name for p in (cu_tree / "v_Cu_0" / "Unperturbed").iterdir()) == ["POSCAR"]

    # ShakeNBreak's own parse/analysis on the ML tree, unchanged
    parse_energies("v_Cu_0", str(ml))
    energies = get_energies("v_Cu_0", output_path=str(ml), verbose=False)
    assert set(energies["distortions"]) == {-0.4, -0.2, 0.0, 0.2, 0.4}
    structures = get_structures("v_Cu_0", output_path=str(ml))
    frame = compare_structures(structures, get_energies("v_Cu_0", output_path=str(ml), verbose=False))
    assert len(frame) == 6


def test_trajectory_frames_have_labels(cu_tree):
    from ase.io import read

    run_tree(cu_tree / "v_Cu_0", EMT_SETTINGS)
    frames = read(cu_tree / "ml_tree" / "v_Cu_0" / "Bond_Distortion_-40.0%" / "snb_ml_trajectory.extxyz", ":")
    assert 2 <= len(frames) <= 10
    assert frames[-1].info["charge"] == 0 and frames[-1].info["distortion"] == "Bond_Distortion_-40.0%"
    assert frames[-1].get_forces().shape == (31, 3)


def test_rerun_does_no_work(cu_tree):
    first = run_tree(cu_tree, EMT_SETTINGS)
    contcar = cu_tree / "ml_tree" / "v_Cu_0" / "Unperturbed" / "CONTCAR"
    stamp = contcar.stat().st_mtime_ns
    second = run_tree(cu_tree, EMT_SETTINGS)
    records = [r for d in second.defects for r in d.records.values()]
    assert records and all(r.skipped for r in records)
    assert contcar.stat().st_mtime_ns == stamp
    assert [r.energy for d in first.defects for r in d.records.values()] == [r.energy for r in records]


def test_unconverged_runs_continue_from_contcar(cu_tree):
    first = run_tree(cu_tree / "v_Cu_0", emt(fmax=0.001, steps=2))
    assert all(r.status == "unconverged" for r in first.defects[0].records.values())
    second = run_tree(cu_tree / "v_Cu_0", emt(fmax=0.001, steps=400))
    assert all(r.status == "converged" and not r.skipped for r in second.defects[0].records.values())


def test_garbage_poscar_fails_alone(cu_tree):
    (cu_tree / "v_Cu_0" / "Bond_Distortion_20.0%" / "POSCAR").write_text("garbage\n")
    report = run_tree(cu_tree, EMT_SETTINGS)
    assert report.failed
    records = report.defects[1].records
    assert records["Bond_Distortion_20.0%"].status == "error"
    assert "Bond_Distortion_20.0%/POSCAR" in records["Bond_Distortion_20.0%"].message
    assert sum(r.status == "converged" for r in records.values()) == 5
    assert all(r.status == "converged" for r in report.defects[0].records.values())


def test_high_energy_and_exploded_are_marked_like_shakenbreak(cu_tree):
    from shakenbreak.analysis import get_energies

    # Threshold below zero: every distortion ending above Unperturbed - 1 eV counts as high energy.
    report = run_tree(cu_tree / "v_Cu_0", emt(high_energy_threshold=-1.0))
    records = report.defects[0].records
    marked = [f for f, r in records.items() if r.status == "high_energy"]
    assert marked and "Unperturbed" not in marked
    defect = cu_tree / "ml_tree" / "v_Cu_0"
    for folder in marked:
        assert (defect / f"{folder}_High_Energy" / "CONTCAR").is_file()
        assert not (defect / folder).exists()
    assert set(get_energies("v_Cu_0", output_path=str(defect.parent), verbose=False)["distortions"]) == set()

    morse = RunSettings(
        relaxer="ase",
        model="ase.calculators.morse:MorsePotential",
        progress=False,
        force=True,
        calculator_options={"epsilon": 5.0, "r0": 1.0, "rho0": 2.0, "rcut1": 3.0, "rcut2": 4.0},
    )
    report = run_tree(cu_tree / "v_Cu_0", morse, output=cu_tree / "ml_morse")
    statuses = {r.status for r in report.defects[0].records.values()}
    assert statuses == {"exploded"}
    assert (cu_tree / "ml_morse" / "v_Cu_0" / "Bond_Distortion_20.0%_High_Energy").is_dir()


def test_element_outside_model_is_reported(cdte_tree):
    report = run_tree(cdte_tree, EMT_SETTINGS)
    assert report.failed
    messages = {r.message for r in report.defects[0].records.values()}
    assert any("not trained on Cd, Te" in m for m in messages)


def test_unknown_relaxer_lists_installed(cu_tree):
    with pytest.raises(UnknownRelaxerError, match="Installed relaxers: .*ase.*chgnet.*mace"):
        run_tree(cu_tree, RunSettings(relaxer="nonesuch"))


def test_lock_blocks_second_run_on_same_defect(cu_tree):
    lock_dir = cu_tree / "ml_tree" / "v_Cu_0"
    lock_dir.mkdir(parents=True)
    with FileLock(str(lock_dir / ".snb_ml.lock")):
        report = run_tree(cu_tree, EMT_SETTINGS)
    by_name = {d.name: d for d in report.defects}
    assert "Another snb_ml run" in by_name["v_Cu_0"].error
    assert by_name["v_Cu_-1"].error is None and by_name["v_Cu_-1"].records


def test_other_settings_are_not_mixed(cu_tree):
    run_tree(cu_tree / "v_Cu_-1", EMT_SETTINGS)
    other = RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings(fmax=0.05)
    )
    report = run_tree(cu_tree / "v_Cu_-1", other)
    assert "other settings" in report.defects[0].error
    forced = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False, force=True)
    assert not run_tree(cu_tree / "v_Cu_-1", forced).failed


def test_tree_safety_checks(cu_tree):
    with pytest.raises(OutputError, match="DFT tree itself"):
        run_tree(cu_tree, EMT_SETTINGS, output=cu_tree)
    run_tree(cu_tree / "v_Cu_-1", EMT_SETTINGS)
    with pytest.raises(InputError, match="is an ML tree"):
        run_tree(cu_tree / "ml_tree", EMT_SETTINGS, output=cu_tree / "elsewhere")
    # an existing DFT yaml in the chosen output is never written to
    dft_like = cu_tree / "dft_copy" / "v_Cu_0"
    dft_like.mkdir(parents=True)
    (dft_like / "v_Cu_0.yaml").write_text("distortions: {}\nUnperturbed: -100.0\n")
    report = run_tree(cu_tree, EMT_SETTINGS, defects=["v_Cu_0"], output=cu_tree / "dft_copy")
    assert "DFT energies" in report.defects[0].error
    assert (dft_like / "v_Cu_0.yaml").read_text() == "distortions: {}\nUnperturbed: -100.0\n"


def test_output_in_the_way_is_clear(cu_tree):
    blocker = cu_tree / "blocked"
    blocker.write_text("a file, not a folder")
    report = run_tree(cu_tree, EMT_SETTINGS, output=blocker)
    assert all("Cannot write the ML tree" in d.error for d in report.defects)


def test_charge_override_and_charge_blind_warning(cu_tree):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = run_tree(cu_tree, EMT_SETTINGS)
    ignored = [w for w in caught if "charges" in str(w.message) and "ignored" in str(w.message)]
    assert len(ignored) == 1  # once per run, not per defect
    assert {d.name: d.charge for d in report.defects} == {"v_Cu_-1": -1, "v_Cu_0": 0}
    override = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False, charge=0)
    report = run_tree(cu_tree / "v_Cu_-1", override, output=cu_tree / "ml_override")
    assert report.defects[0].charge == 0


def test_python_api_returns_structures(cu_tree):
    results = relax_tree(cu_tree, relaxer="ase", model="ase.calculators.emt:EMT", progress=False, fmax=0.02)
    result = results.defects["v_Cu_0"]
    assert result.charge == 0 and result.directory == cu_tree.resolve() / "ml_tree" / "v_Cu_0"
    assert set(result.structures) == set(result.statuses) and len(result.structures) == 6
    assert (
        set(result.energies["distortions"]) == {-0.4, -0.2, 0.0, 0.2, 0.4}
        and "Unperturbed" in result.energies
    )
    assert "v_Cu_0" in results.summary()


def test_distortion_dict_and_defect_entries_api(tmp_path):
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor
    from shakenbreak.input import Distortions

    from snb_ml.api import relax_defect_entries, relax_distortions

    host = AseAtomsAdaptor.get_structure(bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2))
    vacancy = host.copy()
    vacancy.remove_sites([0])
    options = {"oxidation_states": {"Cu": 1}, "bond_distortions": [-0.3, 0.3], "padding": 0}
    distortions = Distortions.from_structures([vacancy], bulk=host, **options)
    distortion_dict, _ = distortions.apply_distortions(verbose=False)
    emt = {"relaxer": "ase", "model": "ase.calculators.emt:EMT", "progress": False}
    results = relax_distortions(distortion_dict, output=tmp_path / "from_dict", **emt)
    (name,) = results.defects
    assert name.endswith("_0") and results.defects[name].statuses == {
        "Unperturbed": "converged",
        "Bond_Distortion_-30.0%": "converged",
        "Bond_Distortion_30.0%": "converged",
    }
    # doped DefectEntry objects (as made by DefectsGenerator) go through ShakeNBreak's Distortions
    entries = list(distortions.defects_dict.values())[0]
    again = relax_defect_entries(
        entries,
        output=tmp_path / "from_entries",
        distortion_options={"bond_distortions": [-0.3], "oxidation_states": {"Cu": 1}},
        **emt,
    )
    assert set(again.defects[name].statuses) == {"Unperturbed", "Bond_Distortion_-30.0%"}


def test_earlier_attempt_is_kept_when_a_run_is_marked_high_energy(cu_tree):
    run_tree(cu_tree / "v_Cu_0", emt(steps=2, high_energy_threshold=-1.0))
    defect = cu_tree / "ml_tree" / "v_Cu_0"
    assert (defect / "Bond_Distortion_40.0%" / "CONTCAR").is_file()  # unconverged: not judged yet
    report = run_tree(cu_tree / "v_Cu_0", emt(high_energy_threshold=-1.0))
    marked = [f for f, r in report.defects[0].records.items() if r.status == "high_energy"]
    assert marked
    for folder in marked:
        assert not (defect / folder).exists()
        assert (defect / f"{folder}_High_Energy" / "previous_attempt_1" / "CONTCAR").is_file()
