"""`--executor dask --cluster KIND`: snb_ml starts the Dask cluster (dask-jobqueue for SLURM/PBS/...).

CI runs the same path with `--cluster local` (a distributed.LocalCluster); dask-jobqueue's SLURMCluster is
only checked where the `hpc` extra is installed (it is not in the default test environment).
"""

import importlib.util
import json

import pytest
from click.testing import CliRunner
from conftest import EMT

from snb_ml.cli import main
from snb_ml.clusters import cluster_class, parse_cluster_kwargs, started_cluster
from snb_ml.errors import InputError

HAS_JOBQUEUE = importlib.util.find_spec("dask_jobqueue") is not None


def test_local_cluster_started_by_snb_ml_relaxes_every_defect(cu_tree, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = ["run", "-p", str(cu_tree), *EMT, "--no-progress", "--fmax", "0.05", "--executor", "dask"]
    result = CliRunner().invoke(
        main, [*args, "--cluster", "local", "--jobs", "2", "--cluster-kwargs", '{"memory_limit": "2GB"}']
    )
    assert result.exit_code == 0, result.output
    for defect, count in (("v_Cu_0", 6), ("v_Cu_-1", 2)):
        provenance = json.loads((cu_tree / "ml_tree" / defect / "snb_ml_provenance.json").read_text())
        assert len(provenance["distortions"]) == count
        assert {r["status"] for r in provenance["distortions"].values()} == {"converged"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--cluster", "local"], "use it with --executor dask"),
        (["--executor", "dask", "--cluster", "local", "--scheduler", "tcp://x:1"], "without --scheduler"),
        (["--executor", "dask", "--cluster", "local", "--cluster-kwargs", "[1]"], "must be a JSON object"),
        (
            ["--executor", "dask", "--cluster", "local", "--cluster-kwargs", '{"no_such": 1}'],
            "could not start",
        ),
    ],
)
def test_cluster_option_errors(cu_tree, extra, expected):
    result = CliRunner().invoke(main, ["run", "-p", str(cu_tree), *EMT, "--no-progress", *extra])
    assert result.exit_code == 1 and expected in result.output, result.output
    assert not (cu_tree / "ml_tree").exists()


@pytest.mark.skipif(HAS_JOBQUEUE, reason="checks the message shown without the hpc extra")
def test_slurm_without_dask_jobqueue_says_how_to_install():
    with pytest.raises(InputError, match=r"pip install 'snb_ml\[hpc\]'"):
        cluster_class("slurm")


@pytest.mark.skipif(not HAS_JOBQUEUE, reason="needs the hpc extra (dask-jobqueue)")
def test_slurm_cluster_job_script():
    options = parse_cluster_kwargs('{"cores": 4, "memory": "16GB", "job_extra_directives": ["--gres=gpu:1"]}')
    cluster = cluster_class("slurm")(**options)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH --mem=" in script


def test_unknown_kind_and_bad_jobs():
    with pytest.raises(InputError, match="Unknown --cluster"):
        cluster_class("kubernetes")
    with pytest.raises(InputError, match="--jobs must be at least 1"), started_cluster("local", {}, 0):
        pass
