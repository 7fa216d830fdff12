"""The single-step predictor: defect markers, symmetry, training, the `predict` relaxer, files, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from conftest import DATA, run_cli

from snb_ml.errors import InputError, ModelError
from snb_ml.predictor.markers import GHOST, mark_defect
from snb_ml.predictor.model import Hyperparameters, SingleStepPredictor, load_predictor

CDTE = DATA / "CdTe_tree"
TINY = Hyperparameters(features=8, layers=2, radial=8, cutoff=5.0)
EMT_POLISH = json.dumps({"polish": "ase", "polish_model": "ase.calculators.emt:EMT"})


def _cdte(folder: str = "Bond_Distortion_-30.0%"):
    from snb_ml.tree.metadata import defect_site_fractional

    atoms = read(CDTE / "v_Cd_0" / folder / "POSCAR")
    site = np.asarray(defect_site_fractional(CDTE / "v_Cd_0")) @ atoms.cell.array
    return atoms, site


def _minimum_image(delta, cell):
    fractional = np.linalg.solve(cell.T, np.atleast_2d(delta).T).T
    return (fractional - np.round(fractional)) @ cell


def test_vacancy_ghost_node_from_metadata_and_from_bulk():
    atoms, site = _cdte()
    from_metadata = mark_defect(atoms, 0, site=site)
    from_bulk = mark_defect(atoms, 0, bulk=read(CDTE / "CdTe_bulk_POSCAR"))
    assert (from_metadata.kind, from_metadata.method) == ("vacancy", "site")
    assert (from_bulk.kind, from_bulk.method) == ("vacancy", "bulk")
    assert not from_metadata.markers.any() and not from_bulk.markers.any()  # no defect atom
    assert np.allclose(_minimum_image(from_bulk.ghost - from_metadata.ghost, atoms.cell.array), 0, atol=1e-6)
    # The strongest ShakeNBreak distortion (-60 %) pulls a neighbour to 0.4 bond lengths: still a vacancy.
    squeezed = atoms.copy()
    nearest = int(np.argmin(np.linalg.norm(_minimum_image(atoms.positions - site, atoms.cell.array), axis=1)))
    bond = _minimum_image(atoms.positions[nearest] - site, atoms.cell.array)[0]
    squeezed.positions[nearest] = site + bond * 0.4 * 2.83 / np.linalg.norm(bond)
    assert mark_defect(squeezed, 0, site=site).kind == "vacancy"
    graph = SingleStepPredictor(["Cd", "Te"], TINY).graph(from_metadata)
    ghost = len(atoms)
    assert len(graph.species) == ghost + 1
    assert (graph.species[ghost], graph.marker[ghost], graph.real[ghost]) == (2, GHOST, False)
    # The ghost is wired to the atoms around the empty Cd site: the first Te shell is within 5 Å.
    neighbours = graph.source[graph.target == ghost]
    assert len(neighbours) >= 4 and set(np.array(atoms.get_chemical_symbols())[neighbours]) >= {"Te"}


def test_substitution_interstitial_and_unlocatable_defects():
    bulk = read(CDTE / "CdTe_bulk_POSCAR")
    substituted = bulk.copy()
    substituted.symbols[5] = "Zn"
    marked = mark_defect(substituted, 1, bulk=bulk)
    assert marked.kind == "substitution" and np.flatnonzero(marked.markers).tolist() == [5]
    assert mark_defect(substituted, 1, site=bulk.positions[5]).defect_index == 5
    # ShakeNBreak (with doped entries) rattles the substituent too: still found 0.6 Å off its site.
    rattled = substituted.copy()
    rattled.positions[5] += [0.4, -0.3, 0.33]
    assert mark_defect(rattled, 1, site=bulk.positions[5]).defect_index == 5
    interstitial = bulk.copy()
    interstitial.append("Te")
    interstitial.positions[-1] = bulk.positions[0] + 0.75 * 6.48  # an empty tetrahedral site
    marked = mark_defect(interstitial, 0, bulk=bulk)
    assert marked.kind == "interstitial" and marked.defect_index == len(bulk)
    with pytest.raises(InputError, match="cannot be located"):
        mark_defect(substituted, 0)
    complex_ = substituted.copy()
    complex_.symbols[9] = "Zn"
    with pytest.raises(InputError, match="Complexes are not supported"):
        mark_defect(complex_, 0, bulk=bulk)


def test_charge_is_a_site_feature_of_the_first_shell_and_the_ghost():
    from snb_ml.models.charge import defect_markers

    atoms, site = _cdte("Unperturbed")
    predictor = SingleStepPredictor(["Cd", "Te"], TINY)
    graph = predictor.graph(mark_defect(atoms, -2, site=site))
    shell = defect_markers(atoms, site)  # the site-charge MACE models' shell
    assert shell.sum() == 4 and set(np.array(atoms.get_chemical_symbols())[shell > 0]) == {"Te"}
    assert np.allclose(graph.charge[:-1], -2 * shell) and graph.charge[-1] == -2
    assert not predictor.graph(mark_defect(atoms, 0, site=site)).charge.any()


def test_displacements_are_rotation_equivariant_and_translation_permutation_invariant():
    from scipy.spatial.transform import Rotation

    atoms, site = _cdte()
    torch.manual_seed(0)
    predictor = SingleStepPredictor(["Cd", "Te"], Hyperparameters(features=16, layers=2, radial=8))
    base = predictor.displacements([mark_defect(atoms, -2, site=site)])[0]
    assert np.abs(base).max() > 1e-3  # a non-trivial field, so the checks below can fail
    assert np.allclose(base.sum(axis=0), 0, atol=1e-5)  # centroid kept

    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T)
    rotated.positions = atoms.positions @ rotation.T
    turned = predictor.displacements([mark_defect(rotated, -2, site=site @ rotation.T)])[0]
    assert np.allclose(turned, base @ rotation.T, atol=1e-4)

    shift = np.array([0.7, -1.3, 2.1])
    shifted = atoms.copy()
    shifted.positions += shift
    moved = predictor.displacements([mark_defect(shifted, -2, site=site + shift)])[0]
    assert np.allclose(moved, base, atol=1e-4)

    order = np.random.default_rng(1).permutation(len(atoms))
    permuted = predictor.displacements([mark_defect(atoms[order], -2, site=site)])[0]
    assert np.allclose(permuted, base[order], atol=1e-4)

    # One batched forward pass gives each structure's own answer; the charge changes the answer.
    together = predictor.displacements(
        [mark_defect(atoms, -2, site=site), mark_defect(rotated, 0, site=site @ rotation.T)]
    )
    assert np.allclose(together[0], base, atol=1e-5)
    neutral = predictor.displacements([mark_defect(atoms, 0, site=site)])[0]
    assert np.allclose(together[1], neutral @ rotation.T, atol=1e-4)
    assert not np.allclose(neutral, base, atol=1e-4)


def test_save_load_round_trip_and_files_of_another_kind(tmp_path):
    atoms, site = _cdte()
    marked = mark_defect(atoms, 1, site=site)
    predictor = SingleStepPredictor(["Cd", "Te"], TINY, marker_radius=3.5)
    loaded = load_predictor(predictor.save(tmp_path / "model.pt"))
    assert (loaded.elements, loaded.hyperparameters, loaded.marker_radius) == (["Cd", "Te"], TINY, 3.5)
    assert np.array_equal(loaded.displacements([marked])[0], predictor.displacements([marked])[0])
    torch.save({"kind": "snb_ml.single_step.checkpoint", "epoch": 3}, tmp_path / "run.ckpt")
    with pytest.raises(ModelError, match="training checkpoint"):
        load_predictor(tmp_path / "run.ckpt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled model, as MACE files are
    with pytest.raises(ModelError, match="not a single-step predictor"):
        load_predictor(tmp_path / "module.pt")
    with pytest.raises(ModelError, match="not found"):
        load_predictor(tmp_path / "missing.pt")


def test_unseen_element_is_refused():
    atoms, site = _cdte()
    with pytest.raises(ModelError, match="trained on Cd only; this structure has Te"):
        SingleStepPredictor(["Cd"], TINY).predict([mark_defect(atoms, 0, site=site)])


def test_dft_tree_pairs_with_outcar_frames(tmp_path):
    from ase.io import write

    from snb_ml.data.vasp import read_outcar_frames
    from snb_ml.predictor.dataset import PairSettings, harvest_pairs

    source = DATA / "vasp" / "MgO_tree"
    frames = read_outcar_frames(source / "Mg_O_+2" / "Unperturbed" / "OUTCAR.gz")  # 3 real DFT steps
    folder = tmp_path / "MgO_dft" / "Mg_O_+2" / "Unperturbed"
    folder.mkdir(parents=True)
    shutil.copy(source / "Mg_O_+2" / "Unperturbed" / "OUTCAR.gz", folder)
    write(folder / "POSCAR", frames[0], format="vasp", direct=True)
    write(folder / "CONTCAR", frames[-1], format="vasp", direct=True)
    write(tmp_path / "bulk_POSCAR", read_outcar_frames(source / "MgO_bulk" / "OUTCAR.gz")[0], format="vasp")
    report = harvest_pairs(
        [tmp_path / "MgO_dft"], [tmp_path / "bulk_POSCAR"], PairSettings(frames=3, fractions=(1, 0, 0)), False
    )
    pairs = report.splits["train"]
    assert [p.info["frame"] for p in pairs] == [0, 1]  # POSCAR -> CONTCAR, and the middle ionic step
    assert {(p.info["level"], p.info["charge"], p.info["site_method"], p.info["defect"]) for p in pairs} == {
        ("dft", 2, "bulk", "MgO_dft/Mg_O")
    }
    for pair, frame in zip(pairs, frames[:2], strict=True):
        assert np.allclose(pair.positions, frame.positions, atol=1e-5)
        assert np.allclose(
            _minimum_image(pair.arrays["relaxed_positions"] - frames[-1].positions, frame.cell.array),
            0,
            atol=1e-5,
        )
        [defect] = np.flatnonzero(pair.arrays["defect_marker"])
        assert pair[defect].symbol == "Mg" and not pair.info["vacancy"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """V_Cu0 distortions relaxed with EMT (an ML tree), harvested to pairs, a tiny model trained on them."""
    from snb_ml.relax import RelaxSettings
    from snb_ml.runner import run_tree
    from snb_ml.settings import RunSettings

    root = tmp_path_factory.mktemp("single_step")
    tree = Path(shutil.copytree(DATA / "Cu_tree" / "v_Cu_0", root / "Cu_tree" / "v_Cu_0"))
    settings = RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", relax=RelaxSettings(fmax=0.03), progress=False
    )
    run_tree(tree, settings, output=root / "ml_tree")
    dataset = run_cli(
        ["snb-ml", "single-step", "dataset", "ml_tree", "-o", "pairs", "--fractions", "1,0,0",
         "--frames", "1", "-q"],
        root,
    )  # fmt: skip
    assert dataset.returncode == 0, dataset.stderr
    result = run_cli(
        ["snb-ml", "train", "--kind", "single-step", "pairs", "-o", "model", "--epochs", "20",
         "--channels", "8", "--lr", "0.01", "--batch-size", "4", "--quiet"],
        root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def test_tiny_model_learns_the_relaxation_of_its_training_pairs(trained):
    from snb_ml.predictor.dataset import read_pairs
    from snb_ml.predictor.metrics import CoordinateErrors

    pairs = read_pairs(trained / "pairs" / "train.xyz")
    assert len(pairs) == 12 and {info["level"] for _, _, info in pairs} == {"ml:ase.calculators.emt:EMT"}
    predictor = load_predictor(trained / "model" / "single_step.pt")
    model, dummy = CoordinateErrors(), CoordinateErrors()
    predicted = predictor.predict([marked for marked, _, _ in pairs])
    for (marked, target, _), positions in zip(pairs, predicted, strict=True):
        model.add(marked, positions, target)
        dummy.add(marked, marked.atoms.positions, target)
    assert model.as_dict()["all"] < 0.7 * dummy.as_dict()["all"]
    log = json.loads((trained / "model" / "single_step_log.json").read_text())
    assert len(log) == 20 and log[-1]["loss"] < log[0]["loss"]


def test_training_refuses_mace_options_and_other_datasets(trained, tmp_path):
    mace_only = run_cli(
        ["snb-ml", "train", "--kind", "single-step", str(trained / "pairs"), "-o", "m", "--foundation",
         str(trained / "model" / "single_step.pt")],
        tmp_path,
    )  # fmt: skip
    assert mace_only.returncode == 1 and "--foundation apply to force-field training only" in mace_only.stderr
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "dataset.json").write_text(json.dumps({"inputs": []}))
    from snb_ml.predictor.training import SingleStepTrainSettings, train_single_step

    with pytest.raises(InputError, match="dataset of another kind"):
        train_single_step(tmp_path / "frames", tmp_path / "out", SingleStepTrainSettings(epochs=1))


def test_predict_relaxer_writes_an_ml_tree_through_snb_ml_run(trained, cu_tree):
    from snb_ml.predictor.markers import mark_defect as mark
    from snb_ml.tree.metadata import defect_site_fractional

    model = str(trained / "model" / "single_step.pt")
    defect = cu_tree / "v_Cu_0"
    result = run_cli(
        ["snb-ml", "run", "-p", ".", "--relaxer", "predict", "--model", model, "--calc-kwargs", EMT_POLISH,
         "--steps", "0", "--no-progress"],
        defect,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    ml = cu_tree / "ml_tree" / "v_Cu_0"
    provenance = json.loads((ml / "snb_ml_provenance.json").read_text())
    assert provenance["model"]["name"].startswith("single-step single_step.pt + ase.calculators.emt:EMT")
    predictor = load_predictor(model)
    folder = "Bond_Distortion_-40.0%"
    start = read(defect / folder / "POSCAR")
    assert (ml / folder / "POSCAR").read_text() == (defect / folder / "POSCAR").read_text()
    site = np.asarray(defect_site_fractional(defect)) @ start.cell.array
    expected = predictor.predict([mark(start, 0, site=site)])[0]
    written = read(ml / folder / "CONTCAR")
    assert np.allclose(_minimum_image(written.positions - expected, start.cell.array), 0, atol=1e-4)
    assert not np.allclose(written.positions, start.positions, atol=1e-3)  # it did move the atoms
    record = provenance["distortions"][folder]
    assert record["steps"] == 0 and record["energy"] is not None  # EMT energy at the prediction


def test_unseen_elements_and_unlocatable_defects_fail_in_the_runner(trained, cdte_tree, tmp_path):
    from snb_ml.runner import run_tree
    from snb_ml.settings import RunSettings

    model = str(trained / "model" / "single_step.pt")
    settings = RunSettings(
        relaxer="predict", model=model, calculator_options=json.loads(EMT_POLISH), progress=False
    )
    report = run_tree(cdte_tree, settings, output=tmp_path / "ml_cdte")
    messages = [r.message for d in report.defects for r in d.records.values()]
    assert report.failed and messages and all("not trained on Cd, Te" in m for m in messages)

    cu = Path(shutil.copytree(DATA / "Cu_tree" / "v_Cu_0", tmp_path / "v_Cu_0"))
    (cu / "distortion_metadata.json").unlink()  # no metadata, no bulk: the defect cannot be located
    report = run_tree(cu, settings, output=tmp_path / "ml_cu")
    messages = [r.message for d in report.defects for r in d.records.values()]
    assert report.failed and messages and all("defect cannot be located" in m for m in messages)
    assert not list((tmp_path / "ml_cu").rglob("CONTCAR"))  # nothing predicted for it


def test_prerelax_hands_predictions_to_dft_and_undoes(trained, cu_tree):
    from snb_ml.handoff import undo_handoff
    from snb_ml.predictor.prerelax import prerelax_tree

    before = {p: p.read_bytes() for p in cu_tree.rglob("POSCAR")}
    report, record = prerelax_tree(
        cu_tree, trained / "model" / "single_step.pt", polish="ase", polish_model="ase.calculators.emt:EMT",
        progress=False,
    )  # fmt: skip
    assert not report.failed and {d.defect for d in record.defects} == {"v_Cu_0", "v_Cu_-1"}
    poscar = cu_tree / "v_Cu_0" / "Bond_Distortion_20.0%" / "POSCAR"
    predicted = read(cu_tree / "ml_tree_single_step" / "v_Cu_0" / "Bond_Distortion_20.0%" / "CONTCAR")
    assert np.allclose(read(poscar).positions, predicted.positions, atol=1e-5)
    assert poscar.with_name("POSCAR.snb_ml_original").read_bytes() == before[poscar]
    with pytest.raises(InputError, match="already hold a DFT hand-off"):
        prerelax_tree(cu_tree, trained / "model" / "single_step.pt", progress=False)
    undo_handoff(cu_tree)
    assert {p: p.read_bytes() for p in cu_tree.rglob("POSCAR") if "ml_tree" not in str(p)} == before
