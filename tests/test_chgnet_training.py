"""snb-ml train --base chgnet: CHGNet fine-tuned for 2 epochs on three real V_Cd0 DFT minima (CdTe)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from click.testing import CliRunner

from snb_ml.cli.train import train as train_command
from snb_ml.data import FilterSettings, HarvestSettings, harvest, write_dataset
from snb_ml.errors import InputError, OutputError
from snb_ml.runner import run_identity
from snb_ml.settings import RunSettings
from snb_ml.training.chgnet_config import ChgnetSettings
from snb_ml.training.chgnet_trainer import train_chgnet

SEARCH = Path(__file__).parents[1] / "examples" / "snb_dft" / "CdTe_v_Cd" / "earlier_search" / "v_Cd_0"
KEPT = ("Bond_Distortion_-30.0%", "Bond_Distortion_-20.0%", "Unperturbed")
QUIET = {"echo": lambda _: None, "progress": False}


class Interrupted(Exception):
    """Stands in for a run killed after its first epoch."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """`snb-ml dataset` of three CONTCAR + yaml minima (one Te-Te dimer, two open), all in training."""
    root = tmp_path_factory.mktemp("chgnet")
    for name in KEPT:
        shutil.copytree(SEARCH / name, root / "tree" / "v_Cd_0" / name)
    shutil.copy(SEARCH / "v_Cd_0.yaml", root / "tree" / "v_Cd_0" / "v_Cd_0.yaml")
    settings = HarvestSettings(filters=FilterSettings(), fractions=(1.0, 0.0, 0.0))
    report = harvest([root / "tree"], settings, progress=False)
    write_dataset(report, root / "dataset", [root / "tree"], settings)
    return root / "dataset"


@pytest.fixture(scope="module")
def resumed(dataset, tmp_path_factory):
    """A 2-epoch fine-tune interrupted after epoch 0 and resumed with restart=True."""
    out = tmp_path_factory.mktemp("run") / "model"
    # No energy reference: the model itself must learn the ~37 eV/cell offset of these DFT energies.
    settings = dict(epochs=2, batch_size=3, lr=1e-3, energy_reference="none", threads=1)
    first = []

    def stop(entry):
        first.append(entry)
        raise Interrupted

    with pytest.raises(Interrupted):
        train_chgnet(dataset, out, ChgnetSettings(**settings), on_epoch=stop, **QUIET)
    assert not (out / "chgnet_model.pth.tar").exists()  # no model until the run finishes
    with pytest.raises(OutputError, match="--restart"):
        train_chgnet(dataset, out, ChgnetSettings(**settings), **QUIET)
    with pytest.raises(InputError, match="lr"):
        train_chgnet(dataset, out, ChgnetSettings(**{**settings, "lr": 1e-2}, restart=True), **QUIET)
    second = []
    result = train_chgnet(
        dataset, out, ChgnetSettings(**settings, restart=True), on_epoch=second.append, **QUIET
    )
    assert [entry["epoch"] for entry in second] == [1]  # only the missing epoch ran
    return first[0], result


def test_resumed_run_continues_from_its_checkpoint(resumed):
    first, result = resumed
    assert [entry["epoch"] for entry in result.history] == [0, 1]
    # Epoch 0 was not trained again: its errors are the ones recorded before the interruption.
    assert result.history[0]["train"] == pytest.approx(first["train"])
    record = json.loads((result.model_dir / "training.json").read_text())
    assert record["base"] == "chgnet" and record["frames"]["train"] == 3 and record["frames"]["minima"] == 3
    # Computed again from the prepared frames on resume, so the resumed model still says what it saw.
    assert record["fine_tuned_on"] == ["v_Cd_0"]


def test_fine_tuned_file_loads_as_relaxer_and_moved_towards_the_labels(resumed, dataset):
    from snb_ml.plugins import get_relaxer
    from snb_ml.relaxers.base import CalculatorRequest

    _, result = resumed
    chgnet = get_relaxer("chgnet")
    tuned = chgnet.load(CalculatorRequest(model=str(result.model_path), device="cpu"))
    stock = chgnet.load(CalculatorRequest(device="cpu"))
    assert tuned.name == f"CHGNet {result.model_path}"
    # The file says which defect's DFT it learned (the selection explores every other defect), and the
    # provenance pins the exact weights; the bundled model is neither a file nor fine-tuned.
    assert tuned.fine_tuned_on == ("v_Cd_0",) and stock.fine_tuned_on is None
    assert tuned.file_record() == {
        "path": str(result.model_path.resolve()),
        "sha256": hashlib.sha256(result.model_path.read_bytes()).hexdigest(),
    }
    assert stock.file_record() is None
    identity = run_identity(RunSettings(relaxer="chgnet", model=str(result.model_path)), tuned)
    assert identity.model["fine_tuned_on"] == ["v_Cd_0"]
    frames = read(dataset / "train.xyz", index=":")
    for atoms in frames:
        label = atoms.info["REF_energy"]
        errors = []
        for loaded in (stock, tuned):
            work = atoms.copy()
            work.calc = loaded.calculator
            errors.append(abs(work.get_potential_energy() - label))
        # Stock CHGNet is ~37 eV per cell above these DFT energies; two Adam steps move ~5 eV of that.
        assert errors[0] > 30 and errors[1] < errors[0] - 2, errors
    assert result.after["train"]["energy_mae"] < result.before["train"]["energy_mae"] - 2


def test_atomref_reference_removes_the_offset_before_training(dataset, tmp_path):
    import torch

    from snb_ml.training.chgnet_trainer import load_base

    settings = ChgnetSettings(epochs=1, batch_size=3, lr=1e-6, threads=1)  # lr ~0: the refit alone
    result = train_chgnet(dataset, tmp_path / "m", settings, **QUIET)
    shifts = result.reference["element_shifts"]
    assert set(shifts) == {"Cd", "Te"} and all(-0.7 < value < -0.5 for value in shifts.values())
    tuned = torch.load(result.model_path, weights_only=False)["model"]["state_dict"]
    stock = load_base("0.3.0").state_dict()
    key = "composition_model.fc.weight"
    assert tuned[key][0, 47] - stock[key][0, 47] == pytest.approx(shifts["Cd"], abs=1e-5)  # Z = 48
    # The offset is gone; what is left is the relative error (dimer vs open), < 2 eV per cell.
    assert result.before["train"]["energy_mae"] > 30 and result.after["train"]["energy_mae"] < 2


def test_stress_targets_are_chgnet_gpa_with_ase_sign(dataset):
    """REF_stress (eV/Å³, ASE sign) must become exactly what CHGNet predicts (GPa) for the same cell."""
    from ase import units

    from snb_ml.training.chgnet_data import FrameDataset, to_structure
    from snb_ml.training.chgnet_trainer import load_base

    model = load_base("0.3.0")
    atoms = read(dataset / "train.xyz", index="0")
    atoms.set_cell(atoms.cell * 1.02, scale_atoms=True)  # stretched: a clearly non-zero stress
    prediction = model.predict_structure(to_structure(atoms), task="efs")
    atoms.info["REF_stress"] = (np.asarray(prediction["s"]) * units.GPa).reshape(9)  # as the calculator
    targets = FrameDataset([atoms], model.graph_converter, "zero", with_stress=True)[0][1]
    assert np.allclose(targets["s"].numpy(), prediction["s"], rtol=1e-4, atol=1e-4)
    assert np.trace(prediction["s"]) > 0.1  # stretched cell: tensile, positive in ASE's convention


def test_bad_training_inputs_give_one_clear_error(dataset, tmp_path):
    from ase.io import write

    one = tmp_path / "one"
    one.mkdir()
    frames = read(dataset / "train.xyz", index=":")
    write(one / "train.xyz", frames[:1], format="extxyz")
    result = CliRunner().invoke(train_command, [str(one), "-o", str(tmp_path / "m1"), "--base", "chgnet"])
    assert result.exit_code == 1 and "at least two DFT frames" in result.output
    assert not (tmp_path / "m1").exists()
    heavy = tmp_path / "heavy"
    heavy.mkdir()
    numbers = frames[0].numbers.copy()
    numbers[0] = 99  # Es: beyond CHGNet's 94 elements
    frames[0].numbers = numbers
    write(heavy / "train.xyz", frames, format="extxyz")
    result = CliRunner().invoke(train_command, [str(heavy), "-o", str(tmp_path / "m2"), "--base", "chgnet"])
    assert result.exit_code == 1 and "Es" in result.output and "Z = 94" in result.output
    result = CliRunner().invoke(
        train_command, [str(dataset), "-o", str(tmp_path / "m3"), "--base", "chgnet", "--charge-mode", "site"]
    )
    assert result.exit_code == 1 and "--charge-mode only apply to --base mace" in result.output


def test_evaluate_scores_chgnet_models_per_cell(resumed, dataset, tmp_path):
    from snb_ml.training.evaluate import evaluate_model

    _, result = resumed
    tuned = evaluate_model(
        result.model_path, dataset, tmp_path / "a", "train", plots=False, echo=lambda _: None
    )
    stock = evaluate_model("chgnet:0.3.0", dataset, tmp_path / "b", "train", plots=False, echo=lambda _: None)
    assert tuned["overall"]["n_frames"] == 3 and tuned["charge_mode"] == "none"
    assert tuned["overall"]["energy_mae"] == pytest.approx(result.after["train"]["energy_mae"], abs=1e-3)
    assert stock["overall"]["energy_mae"] == pytest.approx(result.before["train"]["energy_mae"], abs=1e-3)


def test_energy_only_datasets_train_without_forces(resumed, dataset, tmp_path):
    """Minima without force labels (--minima-forces none) train on energies alone: no force term at all."""
    with_forces = json.loads((resumed[1].model_dir / "training.json").read_text())
    assert set(with_forces["history"][0]["train"]) == {"e", "f"}  # zero-force minima: forces trained
    settings = ChgnetSettings(epochs=1, batch_size=3, lr=1e-3, minima_forces="none", threads=1)
    result = train_chgnet(dataset, tmp_path / "model", settings, **QUIET)
    record = json.loads((result.model_dir / "training.json").read_text())
    assert set(record["history"][0]["train"]) == {"e"}
    assert result.after["train"]["n_frames"] == 3


def test_predictions_hold_a_bounded_number_of_atoms_per_call(dataset, monkeypatch):
    """CHGNet keeps every structure's force graph in a call: big cells are predicted a few at a time."""
    from snb_ml.training import chgnet_data
    from snb_ml.training.chgnet_trainer import load_base
    from snb_ml.training.frames import read_split

    frames = read_split(dataset, "train")  # three 63-atom cells
    model = load_base("0.3.0")
    calls = []
    predict = model.predict_structure

    def observed(structures, **kwargs):
        calls.append(kwargs["batch_size"])
        return predict(structures, **kwargs)

    monkeypatch.setattr(model, "predict_structure", observed)
    together, _ = chgnet_data.predict_frames(model, frames)
    monkeypatch.setattr(chgnet_data, "PREDICT_ATOMS", 100)  # room for one 63-atom cell per call
    apart, forces = chgnet_data.predict_frames(model, frames)
    assert calls == [4, 1]  # 4 x 63 atoms fit in the default 256; then one at a time
    np.testing.assert_allclose(apart, together, atol=1e-3)
    assert [f.shape for f in forces] == [(63, 3)] * 3


def test_training_record_has_one_owner_with_clear_errors(tmp_path):
    from snb_ml.errors import ModelError
    from snb_ml.training.record import read_record, recorded_setting, write_record

    with pytest.raises(ModelError, match="snb-ml train"):
        read_record(tmp_path)
    assert recorded_setting(tmp_path / "m.model", "marker_radius") is None
    with pytest.raises(ValueError, match="model"):
        write_record(tmp_path, {"settings": {}})
    path = write_record(tmp_path, {"model": "m.model", "settings": {"marker_radius": 2.5}})
    assert read_record(tmp_path)["model"] == "m.model"
    assert recorded_setting(tmp_path / "m.model", "marker_radius") == 2.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training.json"]  # no temporary left
    path.write_text('{"model": ')  # a record cut short
    with pytest.raises(ModelError, match="not valid JSON"):
        read_record(tmp_path)
