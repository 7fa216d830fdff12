"""`snb-run --relaxer ... -s sbatch -j job`: one ML job per defect through the user's scheduler command.

The scheduler here is a stand-in `sbatch` on PATH that records its arguments and working folder and then
runs the job script at once (as a scheduler would, later and elsewhere).
"""

import os
import stat
from types import SimpleNamespace

from click.testing import CliRunner
from conftest import BIN, EMT

FAKE_SBATCH = """#!/bin/bash
echo "$PWD|$*" >> "{log}"
job="${{@: -1}}"
{run}
echo "Submitted batch job $RANDOM"
"""


def _scheduler(tmp_path, monkeypatch, run_jobs=True):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "submissions.log"
    fake = bin_dir / "sbatch"
    # Runs the job of v_Cu_0 only: one real `snb-ml run` job keeps the test short.
    run = 'if [[ "$*" == *v_Cu_0_ml* ]]; then bash "$job" > job.out 2>&1; fi' if run_jobs else ""
    fake.write_text(FAKE_SBATCH.format(log=log, run=run))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}")
    return log


def run_cli(args, cwd, monkeypatch):
    """ShakeNBreak's own snb-run command (with snb_ml's hook), in this process."""
    from shakenbreak.cli import run

    assert args[0] == "snb-run"
    monkeypatch.chdir(cwd)
    result = CliRunner().invoke(run, args[1:])
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def test_one_ml_job_per_defect_like_shakenbreak(cu_tree, tmp_path, monkeypatch):
    log = _scheduler(tmp_path, monkeypatch)
    (cu_tree / "job").write_text(
        "#!/bin/bash\n#SBATCH --time=00:10:00\n#SBATCH --gres=gpu:1\nmodule load x || true\n"
    )
    result = run_cli(["snb-run", *EMT, "--fmax", "0.05", "-s", "sbatch", "-j", "job"], cu_tree, monkeypatch)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 ML job(s) submitted, one per defect." in result.stdout
    calls = sorted(log.read_text().splitlines())
    ml_tree = cu_tree / "ml_tree"
    # sbatch gets -J (ShakeNBreak's default job-name flag for sbatch), the job name and the script name,
    # and runs in the defect's ML-tree folder; nothing is submitted from the DFT tree.
    assert calls == [f"{ml_tree / d}|-J {d}_ml job" for d in ("v_Cu_-1", "v_Cu_0")]
    script = (ml_tree / "v_Cu_0" / "job").read_text()
    assert script.startswith("#!/bin/bash\n#SBATCH --time=00:10:00\n#SBATCH --gres=gpu:1\n")
    assert "snb-ml run -p" in script and "-d v_Cu_0" in script and "--relaxer ase" in script
    # The job that ran relaxed every distortion of its defect into the ML tree; the DFT tree is untouched.
    assert (ml_tree / "v_Cu_0" / "v_Cu_0.yaml").is_file(), (ml_tree / "v_Cu_0" / "job.out").read_text()
    assert (ml_tree / "v_Cu_0" / "Unperturbed" / "CONTCAR").is_file()
    assert not (ml_tree / "v_Cu_-1" / "v_Cu_-1.yaml").exists()
    assert (
        not (cu_tree / "v_Cu_0" / "job").exists()
        and not (cu_tree / "v_Cu_0" / "Unperturbed" / "job").exists()
    )

    # Resubmitting: a finished defect is not submitted again (ShakeNBreak skips converged runs too).
    again = run_cli(["snb-run", *EMT, "--fmax", "0.05", "-s", "sbatch", "-j", "job"], cu_tree, monkeypatch)
    assert again.returncode == 0 and "1 ML job(s) submitted" in again.stdout
    assert "v_Cu_0: all distortions already relaxed" in again.stdout
    assert log.read_text().splitlines()[2:] == [f"{ml_tree / 'v_Cu_-1'}|-J v_Cu_-1_ml job"]


def test_placeholder_name_option_and_errors(cu_tree, tmp_path, monkeypatch):
    log = _scheduler(tmp_path, monkeypatch, run_jobs=False)
    (cu_tree / "job_ml").write_text(
        "#!/bin/bash\n#PBS -l walltime=1:00:00\n{snb_ml_command} --steps 3\necho done\n"
    )
    result = run_cli(
        ["snb-run", *EMT, "-s", "sbatch", "-j", "../job_ml", "-n", "--job-name"],
        cu_tree / "v_Cu_0",
        monkeypatch,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ml_dir = cu_tree / "ml_tree" / "v_Cu_0"
    assert log.read_text().splitlines() == [
        f"{ml_dir}|--job-name v_Cu_0_ml job_ml"
    ]  # one defect: run inside it
    lines = (ml_dir / "job_ml").read_text().splitlines()
    assert lines[1] == "#PBS -l walltime=1:00:00" and lines[2].startswith("snb-ml run -p ")
    assert lines[2].endswith("--steps 3") and lines[3] == "echo done"
    missing = run_cli(["snb-run", *EMT, "-s", "sbatch", "-j", "nojob"], cu_tree, monkeypatch)
    assert missing.returncode == 1 and "Job script 'nojob' not found" in missing.stderr
    broken = run_cli(["snb-run", *EMT, "-s", "no-such-sbatch", "-j", "job_ml"], cu_tree, monkeypatch)
    assert broken.returncode == 1 and "Cannot run the submit command 'no-such-sbatch'" in broken.stderr
