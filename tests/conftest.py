"""Shared fixtures: copies of ShakeNBreak-generated trees (tests/data) and helpers."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# pytest -n 2 on 2 cores: one torch/OpenMP thread per worker (and per CLI subprocess) avoids
# oversubscription, which slows CHGNet/MACE calls by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"
EMT = ["--relaxer", "ase", "--model", "ase.calculators.emt:EMT"]
BIN = Path(sys.executable).parent


@pytest.fixture
def cu_tree(tmp_path) -> Path:
    """ShakeNBreak tree (Distortions.write_vasp_files) for V_Cu in 32-atom Cu, charges 0 and -1."""
    return Path(shutil.copytree(DATA / "Cu_tree", tmp_path / "Cu_tree"))


@pytest.fixture
def cdte_tree(tmp_path) -> Path:
    """Part of snb-generate's output for V_Cd0 in 64-atom CdTe (Unperturbed, -30%, Dimer)."""
    return Path(shutil.copytree(DATA / "CdTe_tree", tmp_path / "CdTe_tree"))


def run_cli(args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run an installed console script (snb-ml, snb-run, ...) from this venv."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [str(BIN / args[0]), *args[1:]]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
