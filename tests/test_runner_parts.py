"""The parts a tree run is made of: the ``_High_Energy`` policy and the sequential engine, each on its own."""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import pytest
from ase.calculators.emt import EMT
from conftest import DATA

from snb_ml.errors import ModelError
from snb_ml.high_energy import judge_records
from snb_ml.jobs import RelaxJob, reference_distance, starting_structure
from snb_ml.relax import RelaxSettings
from snb_ml.runner import load_model
from snb_ml.sequential import relax_sequentially
from snb_ml.settings import RunSettings
from snb_ml.tree.layout import locate_defects
from snb_ml.tree.provenance import DistortionRecord
from snb_ml.tree.status import Status


def test_high_energy_policy_judges_records_without_changing_them():
    records = {
        "Unperturbed": DistortionRecord("Unperturbed", Status.CONVERGED, energy=-10.0),
        "Bond_Distortion_-40.0%": DistortionRecord("Bond_Distortion_-40.0%", Status.CONVERGED, energy=-7.5),
        "Bond_Distortion_-20.0%": DistortionRecord("Bond_Distortion_-20.0%", Status.CONVERGED, energy=-8.5),
        "Bond_Distortion_20.0%": DistortionRecord(
            "Bond_Distortion_20.0%", Status.HIGH_ENERGY, energy=-9.0, message="old judgement"
        ),
        "Bond_Distortion_40.0%": DistortionRecord("Bond_Distortion_40.0%", Status.UNCONVERGED, energy=-1.0),
        "Rattled": DistortionRecord("Rattled", Status.EXPLODED, message="atoms too close"),
        "Dimer": DistortionRecord("Dimer", Status.ERROR, energy=50.0, message="model crashed"),
    }
    before = copy.deepcopy(records)

    judged = judge_records(records, reference=-10.0, threshold=2.0)

    # 2.5 eV above is high energy, 1.0 eV above is no longer; unconverged, exploded and errors are not judged
    assert set(judged) == {"Bond_Distortion_-40.0%", "Bond_Distortion_20.0%"}
    assert judged["Bond_Distortion_-40.0%"].status == Status.HIGH_ENERGY
    assert judged["Bond_Distortion_-40.0%"].message == "2.50 eV above Unperturbed (> 2.0 eV)"
    assert judged["Bond_Distortion_-40.0%"].energy == -7.5
    no_longer = judged["Bond_Distortion_20.0%"]
    assert (no_longer.status, no_longer.message) == (Status.CONVERGED, "")
    assert records == before  # a pure function: the caller decides what to rename and write

    # Without an Unperturbed energy nothing is high energy; a larger threshold keeps -40% converged.
    assert {f: r.status for f, r in judge_records(records, None, 2.0).items()} == {
        "Bond_Distortion_20.0%": Status.CONVERGED
    }
    assert set(judge_records(records, -10.0, 3.0)) == {"Bond_Distortion_20.0%"}


class _CrashesOnMarkedAtoms(EMT):
    """EMT, except on structures marked ``broken``: a model that crashes on one structure."""

    def __init__(self, error: Exception):
        super().__init__()
        self.error = error
        self.calls: list[str] = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        self.calls.append(atoms.info.get("folder", "?"))
        if atoms.info.get("broken"):
            raise self.error
        super().calculate(atoms, properties, system_changes or [])


def _tree_digest(top: Path) -> dict[str, str]:
    files = [p for p in top.rglob("*") if p.is_file()]
    return {str(p.relative_to(top)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _jobs(tree: Path) -> list[RelaxJob]:
    """Jobs made from the ShakeNBreak tree, the way the runner makes them."""
    model = load_model(RunSettings(relaxer="ase", model="ase.calculators.emt:EMT", progress=False))
    _, defects = locate_defects(tree, ["v_Cu_0"])
    defect = defects[0]
    reference = reference_distance(defect.directory)
    jobs = []
    for folder in ("Unperturbed", "Bond_Distortion_-40.0%", "Bond_Distortion_20.0%"):
        atoms = starting_structure(model, defect, folder, charge=0)
        atoms.info["folder"] = folder
        jobs.append(RelaxJob(defect.name, folder, atoms, 0, reference))
    return jobs


def test_sequential_engine_returns_an_outcome_for_a_failing_job_and_writes_nothing(tmp_path, monkeypatch):
    tree = Path(shutil.copytree(DATA / "Cu_tree", tmp_path / "Cu_tree"))
    monkeypatch.chdir(tmp_path)
    before = _tree_digest(tmp_path)
    jobs = _jobs(tree)
    jobs[1].atoms.info["broken"] = True
    calculator = _CrashesOnMarkedAtoms(RuntimeError("graph has no edges"))

    outcomes = relax_sequentially(jobs, calculator, RelaxSettings(fmax=0.05))
    first = next(outcomes)
    # Lazy: the next structure is relaxed only when the caller asks for its outcome.
    assert set(calculator.calls) == {"Unperturbed"}
    outcomes = [first, *outcomes]

    assert [o.job for o in outcomes] == jobs  # one outcome per job, in order, the job itself
    failed = outcomes[1]
    assert failed.result is None and isinstance(failed.error, RuntimeError)
    assert str(failed.error) == "graph has no edges"
    for good in (outcomes[0], outcomes[2]):  # the crash did not stop the others
        assert good.error is None and good.result.status == Status.CONVERGED and good.result.max_force <= 0.05
    assert jobs[0].atoms.info["charge"] == 0 and "calc" not in jobs[0].atoms.info
    assert _tree_digest(tmp_path) == before  # nothing written: the tree writer's job
    assert not (tree / "ml_tree").exists()


def test_sequential_engine_raises_run_errors(tmp_path):
    """A problem of the run (an snb_ml error from the model) stops the engine instead of one outcome."""
    jobs = _jobs(Path(shutil.copytree(DATA / "Cu_tree", tmp_path / "Cu_tree")))
    jobs[0].atoms.info["broken"] = True
    calculator = _CrashesOnMarkedAtoms(ModelError("model file unreadable"))
    with pytest.raises(ModelError, match="model file unreadable"):
        list(relax_sequentially(jobs, calculator, RelaxSettings(fmax=0.05)))
    assert calculator.calls == ["Unperturbed"]
