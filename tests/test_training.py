"""snb-ml train / evaluate: tiny MACE models trained for a few epochs on EMT-labelled Cu vacancy frames."""

import json

import numpy as np
import pytest
import yaml
from conftest import run_cli
from training_data import write_fixture_dataset

from snb_ml.errors import InputError
from snb_ml.training.config import TrainSettings, mace_config
from snb_ml.training.frames import annotate_charges, read_dataset
from snb_ml.training.predict import open_model, predict
from snb_ml.training.trainer import train_model

CHARGE_SHIFT = 2.0  # eV between the labels of q = 0 and q = -1 on identical geometries
# 20 epochs at lr 1e-2 learn the 2 eV charge gap to within ~0.4 eV for seeds 1-3 (lr 5e-3: one seed
# of three got the sign wrong), in ~11 s per model.
TINY = {"epochs": 20, "lr": 1e-2, "num_channels": 8, "max_ell": 1, "r_max": 4.0, "start_swa": 0, "threads": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PBE dataset with paired charges; a site-mode and a charge-blind model trained on it."""
    root = tmp_path_factory.mktemp("training")
    dataset = write_fixture_dataset(root / "dataset", charge_shift=CHARGE_SHIFT, paired=True, n_frames=6)
    quiet = {"echo": lambda _: None, "progress": False}
    site = train_model(
        dataset, root / "site", TrainSettings(name="site", charge_mode="site", **TINY), **quiet
    )
    blind = train_model(
        dataset, root / "blind", TrainSettings(name="blind", charge_mode="none", **TINY), **quiet
    )
    return dataset, site, blind


def _test_gaps(model_path, dataset):
    """Model E(q=-1) - E(q=0) on the same geometries, per head and frame."""
    handle = open_model(model_path)
    data = read_dataset(dataset, ("test",))
    annotate_charges(data, handle.charge_mode)
    energies = {}
    for p in predict(handle, data["test"]):
        info = p.atoms.info
        energies[(info["head"], info["frame"], int(info["total_charge"]))] = p.energy
    return [energies[(h, f, -1)] - energies[(h, f, 0)] for (h, f, q) in energies if q == 0]


def test_training_reduces_loss_and_writes_reproducible_files(trained):
    _, site, _ = trained
    assert site.model_path.is_file() and site.model_path.name == "site.model"
    assert site.heads == ["pbe"]
    losses = [h["loss"] for h in site.history]
    assert losses[-1] < losses[0], f"validation loss did not fall: {losses}"
    config = yaml.safe_load((site.model_dir / "mace_config.yaml").read_text())
    assert set(config["heads"]) == {"pbe"}
    assert "defect_charge" in config["embedding_specs"]
    record = json.loads((site.model_dir / "training.json").read_text())
    assert record["charge_mode"] == "site" and record["frames"]["train"]["frames"] > 0
    # The per-atom charge feature really is in the training data MACE read: q * markers.
    from ase.io import read

    frames = read(site.model_dir / "data" / "train_pbe.xyz", index=":")
    charged = [a for a in frames if a.info["total_charge"] == -1]
    assert charged and all(set(np.unique(a.arrays["defect_charge"])) == {-1.0, 0.0} for a in charged)
    assert all(not a.arrays["defect_charge"].any() for a in frames if a.info["total_charge"] == 0)
    # The reservoir term is the slope of the charge states' lowest energies (labels: +2 eV per charge),
    # MACE trains on what is left, and each frame's energy error counts per cell (weight N², balanced).
    assert record["charge_reference"]["e_ref"] == {"pbe": pytest.approx(CHARGE_SHIFT, abs=1e-9)}
    assert record["charge_reference"]["u"] == {"pbe": 0.0}  # two charge states fix no curvature
    for atoms in frames:
        q = atoms.info["total_charge"]
        assert atoms.info["explicit_energy"] == pytest.approx(q * CHARGE_SHIFT, abs=1e-9)
        assert atoms.info["REF_energy"] == pytest.approx(
            atoms.info["DFT_energy"] - q * CHARGE_SHIFT, abs=1e-9
        )
    n_groups = len({(a.info["config_type"], a.info["total_charge"]) for a in frames})
    counts = {
        q: sum(a.info["total_charge"] == q and a.info["config_type"] == "defect" for a in frames)
        for q in (0, -1)
    }
    defect = next(a for a in frames if a.info["config_type"] == "defect" and a.info["total_charge"] == 0)
    expected = len(defect) ** 2 * len(frames) / (n_groups * counts[0])
    assert defect.info["config_energy_weight"] == pytest.approx(expected)
    with open(site.model_dir / "train.log") as log:
        assert "MAE_E" in log.read()  # MACE's TotalMAE table: energy error per cell
    validated = [h for h in site.history if h["epoch"] is not None]
    assert validated
    for h in validated:  # parsed from MACE's log: finite, and per atom smaller than per cell
        assert np.isfinite(h["mae_e"]) and 0 < h["mae_e_per_atom"] < h["mae_e"]


def test_charge_aware_model_separates_charges_the_blind_one_cannot(trained):
    dataset, site, blind = trained
    blind_gaps = _test_gaps(blind.model_path, dataset)
    aware_gaps = _test_gaps(site.model_path, dataset)
    assert blind_gaps and np.allclose(blind_gaps, 0.0, atol=1e-9)
    # The labels differ by -2 eV on identical geometries.
    assert aware_gaps and all(-3.0 < gap < -1.0 for gap in aware_gaps), aware_gaps


def test_trained_model_runs_in_the_mace_relaxer_with_the_charge(trained, cu_tree, tmp_path):
    _, site, _ = trained
    from snb_ml.relaxers.base import CalculatorRequest
    from snb_ml.relaxers.mace_backend import load_mace

    loaded = load_mace(CalculatorRequest(model=str(site.model_path)))
    assert loaded.charge_aware and loaded.charge_mode == "site"
    ml_tree = tmp_path / "ml_tree"
    args = ["snb-ml", "run", "-p", str(cu_tree), "--relaxer", "mace", "--model", str(site.model_path)]
    result = run_cli([*args, "-o", str(ml_tree), "--fmax", "0.2", "--steps", "5", "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    energies = {}
    for defect, charge in (("v_Cu_0", 0), ("v_Cu_-1", -1)):
        provenance = json.loads((ml_tree / defect / "snb_ml_provenance.json").read_text())
        assert provenance["charge"] == charge
        assert provenance["model"]["charge_aware"] is True
        # What the model was trained on reaches the provenance (the selection's unconfirmed_fine_tune).
        assert provenance["model"]["fine_tuned_on"] == ["v_Cu_-1", "v_Cu_0"]
        energies[charge] = yaml.safe_load((ml_tree / defect / f"{defect}.yaml").read_text())["Unperturbed"]
    assert energies[-1] < energies[0] - 0.5  # the charge reached the model (labels: -2 eV)


def test_evaluate_cli_writes_report_and_plots(trained, tmp_path):
    dataset, site, _ = trained
    report_dir = tmp_path / "report"
    args = [
        "snb-ml",
        "evaluate",
        str(site.model_path),
        str(dataset),
        "--split",
        "train",
        "-o",
        str(report_dir),
    ]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Relative energy MAE" in result.stdout
    report = json.loads((report_dir / "report.json").read_text())
    for key in ("overall", "by_charge", "by_head", "relative_energy", "spearman", "plots", "charge_mode"):
        assert key in report
    assert list(report["by_charge"]) == ["-1", "0"] and list(report["by_head"]) == ["pbe"]
    for stats in report["by_charge"].values():
        assert {"energy_mae", "energy_rmse", "force_mae", "force_rmse", "energy_mae_per_atom"} <= set(stats)
    relative = report["relative_energy"]
    assert relative["n_frames"] > 0 and relative["per_group"]
    # A mean of absolute errors: at most their RMS, and between the smallest and largest group mean.
    assert 0 < relative["mae"] <= relative["rmse"]
    assert min(relative["per_group"].values()) <= relative["mae"] <= max(relative["per_group"].values())
    assert f"Relative energy MAE (vs each defect's lowest DFT frame): {1000 * relative['mae']:.1f} meV" in (
        result.stdout
    )
    assert (report_dir / "energy_parity.png").is_file() and (report_dir / "forces_parity.png").is_file()


def test_ground_states_rmsd_and_transition_levels(trained, tmp_path):
    from ase.io import read, write

    from snb_ml.training.evaluate import evaluate_model

    dataset, site, _ = trained
    frames = read(dataset / "test.xyz", index=":")
    spec = {"vbm": 0.5}
    for atoms in frames:
        name = f"v_Cu_{int(atoms.info['total_charge'])}"
        write(tmp_path / f"{name}.vasp", atoms, format="vasp")
        spec[name] = {
            "structure": f"{name}.vasp",
            "energy": atoms.info["REF_energy"],
            "defect_site": list(atoms.info["defect_site"]),
            "head": "pbe",
        }
    (tmp_path / "gs.json").write_text(json.dumps(spec))
    report = evaluate_model(
        site.model_path,
        dataset,
        tmp_path / "rep",
        ground_states=tmp_path / "gs.json",
        plots=False,
        echo=print,
    )
    ground = report["ground_states"]
    assert set(ground["rmsd"]) == {"v_Cu_0", "v_Cu_-1"}
    assert all(row["rmsd"] >= 0 and isinstance(row["pass"], bool) for row in ground["rmsd"].values())
    level = ground["transition_levels"]["v_Cu"]["-1/+0"]
    # DFT level from the labels: E(-1) - E(0) - E_VBM = -2 eV - 0.5 eV on the same geometry.
    assert level["dft"] == pytest.approx(-CHARGE_SHIFT - 0.5, abs=1e-6)
    assert level["error"] == pytest.approx(level["model"] - level["dft"])


def test_evaluate_levels_by_doped_and_their_clear_errors(trained, tmp_path):
    """Transition levels from the model vs DFT, computed by doped, on the EMT fixture (no OUTCARs)."""
    from ase.io import read, write

    from snb_ml.errors import ModelError
    from snb_ml.models.charge_reference import point_charge_correction
    from snb_ml.training.evaluate import evaluate_model
    from snb_ml.training.levels import LevelSettings

    dataset, site, blind = trained
    args = [
        "snb-ml",
        "evaluate",
        str(site.model_path),
        str(dataset),
        "-o",
        str(tmp_path / "rep"),
        "--no-plots",
    ]
    levels = ["--levels", "--dielectric", "5", "--correction", "pc", "--vbm", "0.5", "--band-gap", "1.0"]
    result = run_cli([*args, *levels], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Transition levels by doped" in result.stdout and "E MAE (meV/cell)" in result.stdout
    report = json.loads((tmp_path / "rep" / "report.json").read_text())["levels"]
    assert list(report["levels"]) == ["pbe:v_Cu ε(0/-1)"]
    level = report["levels"]["pbe:v_Cu ε(0/-1)"]
    states = {row["charge"]: row for row in report["states"].values()}
    cell = read(dataset / "test.xyz", index=0).cell
    assert states[-1]["correction"] == pytest.approx(point_charge_correction(cell, 5.0, -1))
    # doped's level e(0/-1) = E(-1) + E_corr(-1) - E(0) - E_VBM (bulk and chemical potentials cancel).
    dft = states[-1]["dft_energy"] + states[-1]["correction"] - states[0]["dft_energy"] - 0.5
    assert level["dft"] == pytest.approx(dft, abs=1e-3)  # doped rounds levels to 1 meV
    model_gap_error = (states[-1]["model_energy"] - states[0]["model_energy"]) - (
        states[-1]["dft_energy"] - states[0]["dft_energy"]
    )
    assert level["error"] == pytest.approx(model_gap_error, abs=2e-3)

    def run(model=site.model_path, data=dataset, **settings):
        options = {"dielectric": 5.0, "correction": "pc", "vbm": 0.5, "band_gap": 1.0, **settings}
        return evaluate_model(model, data, tmp_path / "x", plots=False, echo=lambda _: None,
                              levels=LevelSettings(**options))  # fmt: skip

    with pytest.raises(InputError, match="dielectric constant"):
        run(dielectric=None)
    with pytest.raises(InputError, match="VASP output"):
        run(correction="efnv")  # corrections not computable: no OUTCAR core potentials
    with pytest.raises(InputError, match="--vbm and --band-gap"):
        run(vbm=None, band_gap=None)
    with pytest.raises(ModelError, match="no charge term"):
        run(model=blind.model_path)
    no_bulk = tmp_path / "no_bulk"
    no_bulk.mkdir()
    for split in ("train", "valid", "test"):
        frames = [a for a in read(dataset / f"{split}.xyz", index=":") if a.info["config_type"] != "bulk"]
        write(no_bulk / f"{split}.xyz", frames)
    with pytest.raises(InputError, match="No bulk frame"):
        run(data=no_bulk)
    hse = tmp_path / "hse"
    hse.mkdir()
    for split in ("train", "valid", "test"):
        frames = read(dataset / f"{split}.xyz", index=":")
        for atoms in frames:
            atoms.info["head"] = "hse"
        write(hse / f"{split}.xyz", frames)
    with pytest.raises(InputError, match="would mix functionals"):
        run(data=hse)  # a PBE model's levels against HSE energies


def test_fine_tuning_a_foundation_with_two_heads_keeps_the_charge_embedding(tmp_path):
    from mace_models import build_tiny_mace

    dataset = write_fixture_dataset(tmp_path / "ds", heads=("pbe", "hse"), n_frames=4, bulk_frames=0)
    foundation = build_tiny_mace(tmp_path / "foundation.model", z_list=(29,))
    settings = TrainSettings(name="ft", foundation=str(foundation), epochs=1, start_swa=0, threads=1)
    result = train_model(dataset, tmp_path / "ft", settings, echo=lambda _: None, progress=False)
    handle = open_model(result.model_path)
    assert handle.charge_mode == "site" and sorted(handle.heads) == ["hse", "pbe"]
    config = yaml.safe_load((tmp_path / "ft" / "mace_config.yaml").read_text())
    assert set(config["heads"]) == {"pbe", "hse"}  # one training file per level of theory
    assert config["heads"]["hse"]["train_file"].endswith("train_hse.xyz")
    assert config["foundation_model"].endswith("foundation_grafted.model")
    assert config["multiheads_finetuning"] is False


def test_charges_are_validated_before_training(tmp_path):
    dataset = write_fixture_dataset(tmp_path / "ds", n_frames=3, bulk_frames=0)
    data = read_dataset(dataset)
    data["train"][0].info["total_charge"] = 0.5
    with pytest.raises(InputError, match="not an integer"):
        annotate_charges(data, "site")
    del data["train"][0].info["total_charge"]
    with pytest.raises(InputError, match="silently train it as neutral"):
        annotate_charges(data, "global")
    data = read_dataset(dataset)
    for frames in data.values():
        for atoms in frames:
            atoms.info.pop("defect_site", None)
    with pytest.raises(InputError, match="defect_site"):
        annotate_charges(data, "site")
    annotate_charges(data, "global")  # global mode needs no site
    assert all(a.info["charge"] == a.info["total_charge"] for a in data["train"])


def test_mace_config_for_heads_and_modes(tmp_path):
    heads = {"pbe": {"train_file": "a.xyz", "valid_file": "b.xyz"}, "hse": {"train_file": "c.xyz"}}
    config = mace_config(TrainSettings(charge_mode="global", epochs=8), heads, tmp_path, n_train=2)
    assert config["batch_size"] == 2  # never more than the training frames: MACE drops partial batches
    assert config["heads"]["hse"]["valid_fraction"] == 0.1 and "valid_fraction" not in config["heads"]["pbe"]
    assert "'key': 'charge'" in config["embedding_specs"] and config["start_swa"] == 6
    blind = mace_config(TrainSettings(charge_mode="none", start_swa=0), heads, tmp_path, n_train=9)
    assert "embedding_specs" not in blind and "swa" not in blind
    with pytest.raises(InputError):
        TrainSettings(charge_mode="bogus").check()


def test_train_cli_reports_missing_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(["snb-ml", "train", str(tmp_path / "empty"), "-o", str(tmp_path / "m")], tmp_path)
    assert result.returncode == 1 and "snb-ml dataset" in result.stderr
