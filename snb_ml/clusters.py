"""Dask clusters started by snb_ml itself: ``--executor dask --cluster slurm`` (dask-jobqueue) or ``local``.

``--cluster slurm|pbs|sge|lsf|htcondor`` makes the matching dask-jobqueue cluster (``pip install
'snb_ml[hpc]'``): each scheduler job it submits runs Dask workers, and the Dask executor sends one task
per defect to them; ``--cluster local`` makes a ``distributed.LocalCluster`` on this machine, through
the same path (how the tests exercise it). ``--cluster-kwargs`` is a JSON object passed to the cluster
class (for SLURM e.g. ``{"cores": 8, "memory": "32GB", "walltime": "02:00:00", "queue": "gpu",
"job_extra_directives": ["--gres=gpu:1"]}``) and ``--jobs N`` scales it to N scheduler jobs (N workers
for ``local``). The cluster is closed, and its jobs cancelled, when the run ends.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Iterator
from typing import Any

from snb_ml.errors import InputError

HPC_INSTALL_HINT = "pip install 'snb_ml[hpc]'"
CLUSTERS = {
    "local": ("distributed", "LocalCluster"),
    "slurm": ("dask_jobqueue", "SLURMCluster"),
    "pbs": ("dask_jobqueue", "PBSCluster"),
    "sge": ("dask_jobqueue", "SGECluster"),
    "lsf": ("dask_jobqueue", "LSFCluster"),
    "htcondor": ("dask_jobqueue", "HTCondorCluster"),
}


def parse_cluster_kwargs(text: str | None) -> dict[str, Any]:
    """The ``--cluster-kwargs`` JSON object (``{}`` when not given)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f'--cluster-kwargs must be a JSON object, e.g. \'{{"cores": 8, "memory": "32GB"}}\' ({exc}).'
        ) from exc
    if not isinstance(value, dict):
        raise InputError('--cluster-kwargs must be a JSON object, e.g. \'{"cores": 8, "memory": "32GB"}\'.')
    return value


def cluster_class(kind: str) -> Any:
    """The cluster class of ``kind`` (``slurm``: ``dask_jobqueue.SLURMCluster``, ...)."""
    if kind not in CLUSTERS:
        raise InputError(f"Unknown --cluster '{kind}'. Choose one of {', '.join(CLUSTERS)}.")
    module, name = CLUSTERS[kind]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        hint = HPC_INSTALL_HINT if module == "dask_jobqueue" else "pip install 'snb_ml[dask]'"
        raise InputError(
            f"--cluster {kind} needs the '{module}' package, which is not installed ({exc}). Install it "
            f"with: {hint}"
        ) from exc


@contextlib.contextmanager
def started_cluster(kind: str, options: dict[str, Any], jobs: int) -> Iterator[Any]:
    """Start a cluster, scale it to ``jobs`` scheduler jobs (workers for ``local``), close it afterwards.

    Args:
        kind: A key of :data:`CLUSTERS`.
        options: Keyword arguments of the cluster class.
        jobs: Scheduler jobs to request (``local``: worker processes, one thread each).

    Raises:
        InputError: For an unknown kind, a missing package or arguments the cluster class refuses.
    """
    cls = cluster_class(kind)
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}.")
    if kind == "local":
        options = {"threads_per_worker": 1, "processes": True, "dashboard_address": None, **options}
        options.setdefault("n_workers", jobs)
    try:
        cluster = cls(**options)
    except Exception as exc:  # cluster classes fail in many ways (TypeError, worker start-up errors)
        raise InputError(
            f"--cluster {kind}: {cls.__name__} could not start with --cluster-kwargs {options} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}). See "
            "its documentation for the accepted arguments."
        ) from exc
    try:
        if kind != "local":
            cluster.scale(jobs=jobs)
        yield cluster
    finally:
        cluster.close()
