"""The ``mace`` relaxer with tiny, randomly initialised MACE models built on the fly (no downloads)."""

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.geometry import find_mic
from ase.io import write

from snb_ml.api import relax_tree
from snb_ml.errors import ModelError
from snb_ml.plugins import get_relaxer
from snb_ml.relaxers.base import CalculatorRequest, LoadedModel

try:
    from mace_models import build_tiny_mace
except ImportError:  # tests/ imported as a package
    from tests.mace_models import build_tiny_mace

CDTE = frozenset({48, 52})

# Noise from building e3nn/MACE modules (TorchScript) and from importing e3nn under mace's torch.load setting.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning"),
    pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny graphs run fastest on one thread; several threads on a busy machine make each step ~30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mace_models")


@pytest.fixture(scope="module")
def charge_model(model_dir) -> Path:
    return build_tiny_mace(model_dir / "charge.model", charge_embedding=True)


@pytest.fixture(scope="module")
def blind_model(model_dir) -> Path:
    return build_tiny_mace(model_dir / "blind.model")


@pytest.fixture(scope="module")
def multihead_model(model_dir) -> Path:
    return build_tiny_mace(model_dir / "multihead.model", heads=["pbe", "hse"])


def load(model, **request) -> LoadedModel:
    return get_relaxer("mace").load(CalculatorRequest(model=str(model), device="cpu", **request))


def cdte_vacancy():
    """8-atom zinc-blende CdTe (a = 6.54 Å) without the Cd at the origin; returns (atoms, vacancy site)."""
    atoms = bulk("CdTe", "zincblende", a=6.54, cubic=True)
    assert atoms[0].symbol == "Cd"
    site = atoms.positions[0].copy()
    del atoms[0]
    return atoms, site


def bond_distorted(atoms, site, shift=0.3):
    """Move the Te neighbour closest to the vacancy ``shift`` Å towards it."""
    vectors, distances = find_mic(site - atoms.positions, atoms.cell, pbc=True)
    te = [i for i, symbol in enumerate(atoms.get_chemical_symbols()) if symbol == "Te"]
    nearest = min(te, key=lambda i: distances[i])
    distorted = atoms.copy()
    distorted.positions[nearest] += shift * vectors[nearest] / distances[nearest]
    return distorted


def write_snb_tree(top: Path, defects=("v_Cd_-1",)) -> Path:
    """Minimal ShakeNBreak tree: ``{defect}/Unperturbed/POSCAR`` and ``{defect}/Bond_Distortion_-30.0%/``."""
    atoms, site = cdte_vacancy()
    for defect in defects:
        for folder, structure in (
            ("Unperturbed", atoms),
            ("Bond_Distortion_-30.0%", bond_distorted(atoms, site)),
        ):
            target = top / defect / folder
            target.mkdir(parents=True, exist_ok=True)
            write(target / "POSCAR", structure, format="vasp", sort=True)
    return top


def energy(loaded: LoadedModel, atoms, charge=None) -> float:
    work = atoms.copy()
    if charge is not None:
        work.info["charge"] = charge
    work.calc = loaded.calculator
    return float(work.get_potential_energy())


def charge_warnings(records) -> list[str]:
    return [
        str(w.message)
        for w in records
        if issubclass(w.category, UserWarning) and "charge" in str(w.message) and "ignored" in str(w.message)
    ]


# --- a. loading through the plugin system -----------------------------------------------------------------


def test_loads_through_plugin_and_computes(blind_model):
    import torch

    loaded = load(blind_model)
    assert isinstance(loaded, LoadedModel)
    assert loaded.supported_numbers == CDTE
    assert loaded.charge_aware is False
    assert loaded.head is None
    assert loaded.name == "MACE blind.model"
    assert loaded.version.startswith("mace-torch ")
    # float64 unless --dtype float32 is asked for.
    assert next(loaded.calculator.models[0].parameters()).dtype == torch.float64

    atoms, _ = cdte_vacancy()
    atoms.calc = loaded.calculator
    assert np.isfinite(atoms.get_potential_energy())
    forces = atoms.get_forces()
    assert forces.shape == (7, 3)
    assert np.isfinite(forces).all()


def test_float32_on_request(blind_model):
    import torch

    loaded = load(blind_model, dtype="float32")
    assert next(loaded.calculator.models[0].parameters()).dtype == torch.float32
    atoms, _ = cdte_vacancy()
    assert np.isfinite(energy(loaded, atoms))


def test_elements_outside_the_model_are_rejected(blind_model):
    loaded = load(blind_model)
    loaded.check_elements(["Cd", "Te", "Te"], "v_Cd_-1/Unperturbed")
    with pytest.raises(ModelError, match="Zn") as error:
        loaded.check_elements(["Cd", "Te", "Zn"], "Zn_Cd_0/Unperturbed")
    assert "not trained on Zn (needed by Zn_Cd_0/Unperturbed)" in str(error.value)


# --- b. the defect charge reaches a charge-aware model ----------------------------------------------------


def test_charge_reaches_charge_aware_model(charge_model):
    loaded = load(charge_model)
    assert loaded.charge_aware is True
    atoms, _ = cdte_vacancy()
    # One calculator for both charges, as in a run: a changed charge alone must not reuse cached results.
    neutral, charged, neutral_again = (energy(loaded, atoms, q) for q in (0, -2, 0))
    assert np.isfinite([neutral, charged]).all()
    assert abs(charged - neutral) > 1e-4
    assert neutral_again == pytest.approx(neutral, abs=1e-10)


def test_charge_blind_model_ignores_charge(blind_model):
    loaded = load(blind_model)
    assert loaded.charge_aware is False
    atoms, _ = cdte_vacancy()
    assert energy(loaded, atoms, 0) == pytest.approx(energy(loaded, atoms, -2), abs=1e-10)


# --- c. whole ShakeNBreak trees -----------------------------------------------------------------------------


def test_relax_tree_with_charge_aware_model(charge_model, tmp_path):
    write_snb_tree(tmp_path)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        results = relax_tree(
            tmp_path,
            relaxer="mace",
            model=str(charge_model),
            output=tmp_path / "ml",
            steps=30,
            fmax=0.05,
            progress=False,
        )
    assert charge_warnings(records) == []
    assert not results.report.failed
    defect = tmp_path / "ml" / "v_Cd_-1"
    assert (defect / "v_Cd_-1.yaml").is_file()
    for folder in ("Unperturbed", "Bond_Distortion_-30.0%"):
        assert (defect / folder / "CONTCAR").is_file(), folder
    provenance = json.loads((defect / "snb_ml_provenance.json").read_text())
    assert provenance["charge"] == -1
    assert provenance["model"]["charge_aware"] is True
    assert provenance["model"]["name"] == "MACE charge.model"
    assert provenance["model"]["version"].startswith("mace-torch")
    assert set(provenance["distortions"]) == {"Unperturbed", "Bond_Distortion_-30.0%"}
    for record in provenance["distortions"].values():
        assert record["status"] in ("converged", "unconverged")
        assert np.isfinite(record["energy"])
    result = results.defects["v_Cd_-1"]
    assert result.charge == -1
    assert set(result.structures) == {"Unperturbed", "Bond_Distortion_-30.0%"}


def test_charge_blind_model_warns_once_per_run(blind_model, tmp_path):
    tree = write_snb_tree(tmp_path / "snb", defects=("v_Cd_-1", "v_Cd_-2"))
    for run in ("ml_a", "ml_b"):  # once per run, not once per process
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            results = relax_tree(
                tree, relaxer="mace", model=str(blind_model), output=tmp_path / run, steps=5, progress=False
            )
        messages = charge_warnings(records)
        assert len(messages) == 1, messages
        assert "MACE blind.model" in messages[0]
        assert not results.report.failed
    provenance = json.loads((tmp_path / "ml_a" / "v_Cd_-2" / "snb_ml_provenance.json").read_text())
    assert provenance["charge"] == -2
    assert provenance["model"]["charge_aware"] is False


# --- d. multi-head models ---------------------------------------------------------------------------------


def test_multihead_default_and_chosen_head(multihead_model):
    default = load(multihead_model)
    assert default.head == "hse"
    assert default.calculator.head == "hse"
    pbe = load(multihead_model, head="pbe")
    assert pbe.head == "pbe"
    assert pbe.calculator.head == "pbe"
    atoms, _ = cdte_vacancy()
    e_hse, e_pbe = energy(default, atoms), energy(pbe, atoms)
    assert np.isfinite([e_hse, e_pbe]).all()
    assert e_hse != pytest.approx(e_pbe, abs=1e-6)


def test_unknown_head_names_available_heads(multihead_model, blind_model):
    with pytest.raises(ModelError) as error:
        load(multihead_model, head="nope")
    message = str(error.value)
    assert "nope" in message and "pbe" in message and "hse" in message
    with pytest.raises(ModelError, match="Default"):
        load(blind_model, head="pbe")


# --- e. bad input -----------------------------------------------------------------------------------------


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="missing.model"):
        load(tmp_path / "missing.model")


def test_directory_as_model(tmp_path):
    with pytest.raises(ModelError, match="not a readable file"):
        load(tmp_path)


def test_corrupt_model_file(tmp_path):
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="corrupt.model"):
        load(corrupt)


def test_foundation_model_offline_fails_fast(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SNB_ML_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(tmp_path)  # no file called "small" here
    outcome: list[BaseException] = []

    def attempt():
        try:
            load("small")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "loading a foundation model with SNB_ML_OFFLINE=1 hung (network attempt?)"
    assert len(outcome) == 1 and isinstance(outcome[0], ModelError), outcome
    message = str(outcome[0])
    assert "--model PATH" in message
    assert "--relaxer chgnet" in message
    assert "small" in message
    assert not (cache / "mace").exists()  # no download was started


# --- f. command line --------------------------------------------------------------------------------------


def _snb_ml() -> list[str]:
    script = Path(sys.executable).parent / "snb-ml"
    if script.is_file():
        return [str(script)]
    found = shutil.which("snb-ml")
    if found:
        return [found]
    return [sys.executable, "-c", "from snb_ml.cli import main; main()"]


def test_cli_run_and_missing_model(blind_model, tmp_path):
    tree = write_snb_tree(tmp_path / "snb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SNB_ML_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    common = ["run", "-p", str(tree), "--relaxer", "mace", "--steps", "5", "--no-progress"]
    good = [*common, "--model", str(blind_model), "-o", str(tmp_path / "ml2")]
    bad = [*common, "--model", str(tmp_path / "nonexistent.model"), "-o", str(tmp_path / "ml3")]
    # Both at once: each pays the seconds-long torch/mace import.
    processes = [
        subprocess.Popen(
            _snb_ml() + args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in (good, bad)
    ]
    (good_out, good_err), (bad_out, bad_err) = (process.communicate(timeout=300) for process in processes)

    assert processes[0].returncode == 0, good_out + good_err
    assert "Traceback" not in good_err
    assert "v_Cd_-1" in good_out
    assert (tmp_path / "ml2" / "v_Cd_-1" / "Unperturbed" / "CONTCAR").is_file()
    assert (tmp_path / "ml2" / "v_Cd_-1" / "v_Cd_-1.yaml").is_file()

    assert processes[1].returncode != 0
    assert "Traceback" not in bad_err
    errors = [line for line in bad_err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, bad_err
    assert "nonexistent.model" in errors[0]
    assert not (tmp_path / "ml3").exists()
