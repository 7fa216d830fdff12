"""``snb-run --relaxer NAME -s sbatch -j job``: one ML job per defect on the user's HPC scheduler.

ShakeNBreak's ``snb-run -s SUBMIT -j JOB`` copies the job script into every distortion folder and runs
``SUBMIT -N|-J {defect}_{distortion} JOB`` there (``-J`` for sbatch, ``-N`` otherwise, or
``-n OPTION``). With ``--relaxer`` the unit of work is a defect (its distortions are relaxed together,
batched), so this submits one job per defect the same way: the user's job script (its scheduler
header, modules, environment) is copied into the defect's ML-tree folder with the ML command
(``snb-ml run -p TOP -d DEFECT -o ML_TREE ...``) put where the line ``{snb_ml_command}`` stands, or
appended at the end, and ``SUBMIT JOB_NAME_OPTION {defect}_ml JOB`` is run in that folder. Each job
resumes what an earlier job finished (``snb-ml run`` skips finished distortions); a defect whose
distortions are all finished is not submitted again (unless ``--force``).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

from snb_ml.errors import InputError
from snb_ml.records import FINAL_STATUSES
from snb_ml.runner import default_ml_tree
from snb_ml.safe_write import write_text
from snb_ml.tree.layout import (
    check_ml_defect_dir,
    check_output_location,
    input_tree_identity,
    load_json,
    locate_defects,
)
from snb_ml.tree.provenance import PROVENANCE_FILE

PLACEHOLDER = "{snb_ml_command}"
#: Options of the ML run passed on to the job, in order, with their flags.
_FLAGS = {
    "relaxer": "--relaxer",
    "model": "--model",
    "head": "--head",
    "device": "--device",
    "dtype": "--dtype",
    "calc_kwargs": "--calc-kwargs",
    "fmax": "--fmax",
    "steps": "--steps",
    "optimizer": "--optimizer",
    "charge": "--charge",
    "threads": "--threads",
    "engine": "--engine",
    "batch_size": "--batch-size",
}


def job_command(top: Path, defect: str, ml_tree: Path, options: dict[str, Any]) -> list[str]:
    """The ``snb-ml run`` command line of one defect's job (absolute paths: jobs start elsewhere)."""
    command = ["snb-ml", "run", "-p", str(top), "-d", defect, "-o", str(ml_tree), "--no-progress"]
    for name, flag in _FLAGS.items():
        value = options.get(name)
        if value is not None:
            command += [flag, str(value)]
    if options.get("force"):
        command.append("--force")
    return command


def _finished(ml_defect_dir: Path, distortions: list[str]) -> bool:
    provenance = load_json(ml_defect_dir / PROVENANCE_FILE, "move it away to redo this defect.") or {}
    records = provenance.get("distortions", {})
    return bool(distortions) and all(records.get(d, {}).get("status") in FINAL_STATUSES for d in distortions)


def _job_script(path: str, cwd: Path, top: Path) -> Path:
    """The job script, looked for as given (from the current folder) and then in the top-level folder."""
    for candidate in (cwd / path, top / path, top / Path(path).name):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(
        f"Job script '{path}' not found (looked in {cwd} and {top}). Pass -j the job script of your "
        f"scheduler; the ML command goes where it has a line {PLACEHOLDER}, or at its end."
    )


def submit_defects(
    path: str | Path,
    options: dict[str, Any],
    submit_command: str,
    job_script: str,
    job_name_option: str | None,
    output: str | Path | None = None,
    echo: Any = print,
) -> list[str]:
    """Write one job script per defect into the ML tree and submit it; return the defects submitted.

    Args:
        path: The top-level ShakeNBreak folder or one defect folder (as for ``snb-run``).
        options: The ML options of the run (``--relaxer``, ``--model``, ...), passed on to each job.
        submit_command: The scheduler's submit command, e.g. ``sbatch`` (may include options).
        job_script: The user's job script (path from the current folder or the top-level folder).
        job_name_option: Job-name flag; default ``-J`` for sbatch, ``-N`` otherwise (as ShakeNBreak).
        output: ML tree folder (default ``<top-level>/ml_tree``).
        echo: Printer of one line per defect.

    Raises:
        InputError: For a missing job script, a Dask executor with a scheduler submission, or a submit
            command that cannot be run; defects submitted before a failure stay submitted.
    """
    if (options.get("executor") or "local") != "local":
        raise InputError(
            "-s/--submit-command submits one job per defect to your scheduler; --executor dask runs on a "
            "Dask cluster instead. Choose one."
        )
    top, defects = locate_defects(path)
    ml_tree = Path(output).resolve() if output else default_ml_tree(top)
    check_output_location(ml_tree, top, defects, input_tree_identity(top, None), bool(options.get("force")))
    script = _job_script(job_script, Path.cwd(), top)
    template = script.read_text()
    name_option = job_name_option or ("-J" if Path(shlex.split(submit_command)[0]).name == "sbatch" else "-N")
    submitted = []
    for defect in defects:
        ml_dir = ml_tree / defect.name
        if not options.get("force") and _finished(ml_dir, defect.distortion_folders()):
            echo(
                f"{defect.name}: all distortions already relaxed in {ml_dir}; not submitted "
                "(--force redoes it)"
            )
            continue
        check_ml_defect_dir(ml_dir, defect.name)
        command = shlex.join(job_command(top, defect.name, ml_tree, options))
        if PLACEHOLDER in template:
            text = template.replace(PLACEHOLDER, command)
        else:
            text = (
                template.rstrip("\n") + f"\n\n# snb_ml: relax every distortion of {defect.name}\n{command}\n"
            )
        ml_dir.mkdir(parents=True, exist_ok=True)
        write_text(ml_dir / script.name, text)
        (ml_dir / script.name).chmod(0o755)
        job_name = f"{defect.name}_ml"
        argv = [*shlex.split(submit_command), name_option, job_name, script.name]
        try:
            result = subprocess.run(argv, cwd=ml_dir, capture_output=True, text=True)
        except OSError as exc:
            raise InputError(
                f"Cannot run the submit command {argv[0]!r} ({exc}); check -s/--submit-command "
                f"(e.g. sbatch or qsub). Submitted so far: {', '.join(submitted) or 'none'}."
            ) from exc
        if result.returncode != 0:
            raise InputError(
                f"{' '.join(argv)} (in {ml_dir}) failed with exit code {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[:500]}. Submitted so far: "
                f"{', '.join(submitted) or 'none'}."
            )
        echo(f"Running job for {defect.name} ({job_name}): {result.stdout.strip()}")
        submitted.append(defect.name)
    return submitted
