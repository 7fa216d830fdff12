"""The local and Dask executors: same ML tree, recovery from a killed worker, clear connection errors."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import DATA, EMT, run_cli

from snb_ml.api import relax_tree
from snb_ml.cli.options import settings_from_options
from snb_ml.errors import InputError, ModelError
from snb_ml.executors import _ProvenanceProgress, run_with_executor
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import locate_defects

distributed = pytest.importorskip("distributed")

TESTS = str(Path(__file__).parent)
EMT_SETTINGS = RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False)
FOLDERS = {
    "v_Cu_0": {
        "Unperturbed",
        "Bond_Distortion_-40.0%",
        "Bond_Distortion_-20.0%",
        "Bond_Distortion_0.0%",
        "Bond_Distortion_20.0%",
        "Bond_Distortion_40.0%",
    },
    "v_Cu_-1": {"Unperturbed", "Rattled"},
}


@pytest.fixture(scope="module")
def cluster():
    # Workers import tests/killer_calc.py; spawned worker processes get PYTHONPATH, not our sys.path.
    pythonpath = os.pathsep.join([TESTS, *filter(None, [os.environ.get("PYTHONPATH")])])
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        env={"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"},
    ) as local_cluster:
        yield local_cluster


@pytest.fixture(scope="module")
def local_energies(tmp_path_factory):
    tree = shutil.copytree(DATA / "Cu_tree", tmp_path_factory.mktemp("local") / "Cu_tree")
    report = run_tree(tree, EMT_SETTINGS)
    assert not report.failed
    return energies(tree / "ml_tree")


def energies(ml_tree: Path) -> dict:
    found = {}
    for provenance in ml_tree.glob("*/snb_ml_provenance.json"):
        for folder, record in json.loads(provenance.read_text())["distortions"].items():
            found[(provenance.parent.name, folder)] = record["energy"]
    return found


def assert_complete_tree(ml_tree: Path) -> None:
    assert not list(ml_tree.rglob(".snb_ml_tmp_*"))
    assert {p.name for p in ml_tree.iterdir() if p.is_dir()} == set(FOLDERS)
    for defect, folders in FOLDERS.items():
        provenance = json.loads((ml_tree / defect / "snb_ml_provenance.json").read_text())
        assert set(provenance["distortions"]) == folders
        assert {r["status"] for r in provenance["distortions"].values()} == {"converged"}
        assert {p.name for p in (ml_tree / defect).iterdir() if p.is_dir()} == folders
        assert all((ml_tree / defect / folder / "CONTCAR").is_file() for folder in folders)


def test_dask_matches_local_run(cu_tree, cluster, local_energies):
    report = run_with_executor(cu_tree, EMT_SETTINGS, executor="dask", scheduler=cluster)
    assert not report.failed
    assert report.ml_tree == (cu_tree / "ml_tree").resolve()
    assert [d.name for d in report.defects] == ["v_Cu_-1", "v_Cu_0"]
    assert report.model["name"] == "ase.calculators.emt:EMT"
    assert_complete_tree(cu_tree / "ml_tree")
    found = energies(cu_tree / "ml_tree")
    assert found.keys() == local_energies.keys()
    assert found == pytest.approx(local_energies, abs=1e-8)
    assert report.defects[1].records["Unperturbed"].energy == pytest.approx(
        local_energies[("v_Cu_0", "Unperturbed")], abs=1e-8
    )

    # The client-side progress counter: finished results count at once, unless --force redoes them.
    _, selected = locate_defects(cu_tree)
    assert _ProvenanceProgress(selected, report.ml_tree, force=False).count() == 8
    assert _ProvenanceProgress(selected, report.ml_tree, force=True).count() == 0

    # A rerun through an existing Client reuses everything (resume works across executors).
    with distributed.Client(cluster, set_as_default=False) as client:
        again = relax_tree(
            cu_tree, relaxer="ase", model="ase.calculators.emt:EMT", progress=False, executor="dask",
            scheduler=client,
        )  # fmt: skip
        assert client.status == "running"  # a client passed in is not closed
        # Each worker loaded the model once and kept it for its next tasks.
        cached = client.run(lambda: len(getattr(sys.modules.get("snb_ml.executors"), "_MODELS", {})))
        assert 1 in cached.values() and set(cached.values()) <= {0, 1}
    assert all(record.skipped for d in again.report.defects for record in d.records.values())


def test_killed_worker_task_is_retried_without_duplicates(cu_tree, cluster, tmp_path, local_energies):
    marker = tmp_path / "killed"
    settings = RunSettings(
        relaxer="ase",
        model="killer_calc:KillerEMT",
        calculator_options={"marker": str(marker), "kill_after": 25},
        progress=False,
    )
    report = run_with_executor(cu_tree, settings, executor="dask", scheduler=cluster.scheduler_address)
    assert marker.exists(), "no worker was killed"
    assert not report.failed, [d.error for d in report.defects]
    assert_complete_tree(cu_tree / "ml_tree")
    # The retried task resumed: what finished before the kill was reused, not relaxed again.
    assert any(record.skipped for defect in report.defects for record in defect.records.values())
    assert energies(cu_tree / "ml_tree") == pytest.approx(local_energies, abs=1e-8)
    for defect in report.defects:
        yaml_text = (cu_tree / "ml_tree" / defect.name / f"{defect.name}.yaml").read_text()
        assert yaml_text.count("Unperturbed") == 1


def test_dask_errors_per_defect_and_fatal(cu_tree, cluster):
    (cu_tree / "v_Cu_0" / "Bond_Distortion_-20.0%" / "POSCAR").write_bytes(b"\x00garbage")
    report = run_with_executor(cu_tree, EMT_SETTINGS, executor="dask", scheduler=cluster)
    assert report.failed
    by_name = {d.name: d for d in report.defects}
    assert by_name["v_Cu_0"].records["Bond_Distortion_-20.0%"].status == "error"
    assert not by_name["v_Cu_-1"].failed  # the other defect finished

    bad_model = RunSettings(relaxer="ase", model="ase.calculators.nope:X", progress=False)
    with pytest.raises(ModelError, match="Cannot import module"):
        run_with_executor(cu_tree, bad_model, executor="dask", scheduler=cluster, output=cu_tree / "other")
    assert not (cu_tree / "other").exists()


def test_unreachable_scheduler_cli_writes_nothing(cu_tree):
    result = run_cli(
        ["snb-ml", "run", "-p", str(cu_tree), *EMT, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1"],
        cu_tree,
        env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"},
    )
    assert result.returncode == 1
    assert "Cannot connect to the Dask scheduler at tcp://127.0.0.1:1" in result.stderr
    assert "dask scheduler" in result.stderr and "Traceback" not in result.stderr
    assert not (cu_tree / "ml_tree").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--scheduler", "tcp://127.0.0.1:8786"], "only used with the dask executor"),
        (["--executor", "dask"], "needs the address of a running Dask scheduler"),
    ],
)
def test_scheduler_and_executor_must_go_together(cu_tree, args, expected):
    # Both commands share the options; snb-run (slow to import) is checked once.
    command = ["snb-run"] if "--scheduler" in args else ["snb-ml", "run", "-p", "."]
    result = run_cli([*command, *EMT, "--no-progress", *args], cu_tree / "v_Cu_0")
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (cu_tree / "ml_tree").exists()


def test_options_map_to_settings():
    options = {"relaxer": "ase", "fmax": 0.05, "steps": 10, "optimizer": "fire"}
    settings = settings_from_options({**options, "engine": "sequential", "batch_size": 4})
    assert (settings.engine, settings.batch_size) == ("sequential", 4)
    assert settings_from_options(options).engine == "auto"


def test_missing_distributed_is_a_clear_error(cu_tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match=r"pip install 'snb_ml\[dask\]'"):
        run_with_executor(cu_tree, EMT_SETTINGS, executor="dask", scheduler="tcp://127.0.0.1:1")
    with pytest.raises(InputError, match="Unknown executor"):
        run_with_executor(cu_tree, EMT_SETTINGS, executor="slurm")
    assert not (cu_tree / "ml_tree").exists()
