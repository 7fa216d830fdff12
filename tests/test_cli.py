"""The installed console scripts: snb-ml, and ShakeNBreak's own snb-run / snb run with --relaxer."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, EMT, run_cli


def test_snb_run_help_lists_relaxer_and_hook_can_be_disabled(tmp_path):
    assert "--relaxer" in run_cli(["snb-run", "--help"], tmp_path).stdout
    assert "--relaxer" in run_cli(["snb", "run", "--help"], tmp_path).stdout
    plain = run_cli(["snb-run", "--help"], tmp_path, env={"SNB_ML_DISABLE_SNB_HOOK": "1"})
    assert plain.returncode == 0 and "--relaxer" not in plain.stdout


def test_snb_run_without_relaxer_still_submits(cu_tree):
    # ShakeNBreak's HPC path: `echo` stands in for the scheduler, a job script sits at top level.
    (cu_tree / "job").write_text("#!/bin/bash\n")
    result = run_cli(["snb-run", "-s", "echo", "-j", "../job"], cu_tree / "v_Cu_0")
    assert result.returncode == 0, result.stderr
    assert "Running job for Unperturbed" in result.stdout
    assert "-N v_Cu_0_Unperturbed job" in result.stdout
    assert not (cu_tree / "ml_tree").exists()


def test_snb_run_relaxer_in_defect_folder_then_shakenbreak_tools(cu_tree):
    result = run_cli(["snb-run", *EMT, "--no-progress"], cu_tree / "v_Cu_0")
    assert result.returncode == 0, result.stderr
    assert "E - E_Unperturbed (eV)" in result.stdout and "6/6 converged" in result.stdout
    ml = cu_tree / "ml_tree"
    assert (ml / "v_Cu_0" / "v_Cu_0.yaml").is_file() and not (ml / "v_Cu_-1").exists()
    for command in (
        ["snb-parse", "-p", str(ml), "-d", "v_Cu_0"],
        ["snb-analyse", "-p", str(ml)],
        ["snb-plot", "-p", str(ml), "-d", "v_Cu_0"],
        ["snb-groundstate", "-p", str(ml)],
    ):
        done = run_cli(command, cu_tree)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
    assert (ml / "v_Cu_0" / "v_Cu_0.csv").is_file()
    assert list(ml.rglob("*.png")) or list(ml.rglob("*.svg"))
    assert (ml / "v_Cu_0" / "Groundstate" / "POSCAR").is_file()


def test_snb_group_run_at_top_level(cu_tree):
    result = run_cli(["snb", "run", *EMT, "--no-progress", "-o", "ML"], cu_tree)
    assert result.returncode == 0, result.stderr
    assert (cu_tree / "ML" / "v_Cu_0" / "v_Cu_0.yaml").is_file()
    assert (cu_tree / "ML" / "v_Cu_-1" / "v_Cu_-1.yaml").is_file()


def test_snb_ml_run_selected_defect(cu_tree):
    result = run_cli(["snb-ml", "run", "-p", str(cu_tree), "-d", "v_Cu_-1", *EMT, "--no-progress"], cu_tree)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in (cu_tree / "ml_tree").iterdir())
    assert written == ["distortion_metadata.json", "snb_ml_tree.json", "v_Cu_-1"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--relaxer", "nonesuch"], "Unknown relaxer 'nonesuch'. Installed relaxers: ase, chgnet, mace"),
        (["--relaxer", "mace", "--model", "medium-mpa-9"], "nor a MACE-MP foundation-model name"),
        (["--relaxer", "mace", "--model", "/no/such.model"], "does not exist"),
        (["--relaxer", "ase", "--model", "ase.calculators.nope:X"], "Cannot import module"),
        ([*EMT, "--calc-kwargs", "{bad json"], "--calc-kwargs must be a JSON object"),
    ],
)
def test_bad_options_give_one_clear_error(cu_tree, args, expected):
    result = run_cli(["snb-ml", "run", "-p", str(cu_tree), "--no-progress", *args], cu_tree)
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (cu_tree / "ml_tree").exists()


def test_not_a_shakenbreak_tree(tmp_path):
    result = run_cli(["snb-ml", "run", "-p", str(tmp_path), *EMT], tmp_path)
    assert result.returncode == 1 and "not a ShakeNBreak tree" in result.stderr


def test_garbage_poscar_others_complete(cu_tree):
    (cu_tree / "v_Cu_0" / "Bond_Distortion_-20.0%" / "POSCAR").write_bytes(b"\x00\x01garbage")
    result = run_cli(["snb-ml", "run", "-p", str(cu_tree), *EMT, "--no-progress"], cu_tree)
    assert result.returncode == 1
    assert "Bond_Distortion_-20.0%/POSCAR" in result.stdout + result.stderr
    provenance = json.loads((cu_tree / "ml_tree" / "v_Cu_0" / "snb_ml_provenance.json").read_text())
    statuses = {k: v["status"] for k, v in provenance["distortions"].items()}
    assert statuses.pop("Bond_Distortion_-20.0%") == "error"
    assert set(statuses.values()) == {"converged"} and len(statuses) == 5
    assert (cu_tree / "ml_tree" / "v_Cu_-1" / "v_Cu_-1.yaml").is_file()


def test_unparseable_charge(cu_tree):
    os.rename(cu_tree / "v_Cu_-1", cu_tree / "vacancy")
    (cu_tree / "vacancy" / "distortion_metadata.json").unlink()
    result = run_cli(["snb-ml", "run", "-p", str(cu_tree), *EMT, "--no-progress"], cu_tree)
    assert result.returncode == 1
    assert "Cannot tell the charge" in result.stdout + result.stderr
    assert (cu_tree / "ml_tree" / "v_Cu_0" / "v_Cu_0.yaml").is_file()
    fixed = run_cli(["snb-ml", "run", "-p", str(cu_tree), "-d", "vacancy", "--charge", "-1", *EMT], cu_tree)
    assert fixed.returncode == 0, fixed.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop privileges")
def test_read_only_output_directory(tmp_path):
    # Root ignores file permissions, so the run is made as `nobody`.
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"snb_ml_ro_{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(Path(__file__).parent / "data" / "Cu_tree", work / "tree")
    (work / "readonly").mkdir()
    os.chmod(work, 0o755)
    for path in [work, *work.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    try:
        command = [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            str(BIN / "snb-ml"),
            "run",
            "-p",
            str(work / "tree"),
            *EMT,
            "-o",
            str(work / "readonly" / "ml"),
        ]
        os.chmod(work / "readonly", 0o555)
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=600, env={**os.environ, "HOME": str(work)}
        )
        assert result.returncode == 1
        assert "Cannot write the ML tree" in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    finally:
        os.chmod(work / "readonly", 0o755)
        shutil.rmtree(work, ignore_errors=True)


def test_kill_minus_9_then_rerun_completes(cu_tree):
    # Tight fmax makes each EMT relaxation take long enough to be killed mid-way.
    args = ["snb-ml", "run", "-p", str(cu_tree), *EMT, "--fmax", "1e-5", "--steps", "3000", "--no-progress"]
    process = subprocess.Popen(
        [str(BIN / args[0]), *args[1:]], cwd=cu_tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    provenance = cu_tree / "ml_tree" / "v_Cu_-1" / "snb_ml_provenance.json"
    deadline = time.time() + 300

    def finished_one() -> bool:  # the provenance is written at the start, results as they finish
        try:
            return bool(json.loads(provenance.read_text())["distortions"])
        except (OSError, ValueError, KeyError):
            return False

    while not finished_one() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert provenance.exists(), "the run did not get far enough to be interrupted"
    done_before = json.loads(provenance.read_text())["distortions"]

    for path in (cu_tree / "ml_tree").rglob("*"):
        if path.is_file() and path.name in ("CONTCAR", "snb_ml_provenance.json"):
            assert path.stat().st_size > 0
    rerun = run_cli(args, cu_tree)
    assert rerun.returncode == 0, rerun.stderr
    assert not list((cu_tree / "ml_tree").rglob(".snb_ml_tmp_*"))
    final = json.loads(provenance.read_text())["distortions"]
    assert set(final) == {"Unperturbed", "Rattled"}
    for folder, record in done_before.items():
        assert final[folder] == record  # finished work was kept, not redone
    assert "(cached)" in rerun.stdout
    from ase.io import read

    for contcar in (cu_tree / "ml_tree").rglob("CONTCAR"):
        assert len(read(contcar, format="vasp")) == 31
