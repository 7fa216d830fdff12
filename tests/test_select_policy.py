"""The protect/lean selection policies: untrusted minima, the exploration set, reasons, hand-off (EMT)."""

import hashlib
import json
import shutil
import warnings

import pytest

from snb_ml.handoff import RECORD_FILE, prepare_dft_tree, undo_handoff
from snb_ml.minima import SELECTION_FILE, assess_minima, exploration_starts, select_defect
from snb_ml.relax import RelaxSettings
from snb_ml.runner import run_tree
from snb_ml.settings import RunSettings

GRID = [f"Bond_Distortion_{v:.1f}%" for v in range(-60, 61, 10)] + ["Unperturbed"]


@pytest.fixture(scope="module")
def cu_relaxed(tmp_path_factory):
    """V_Cu in 32-atom Cu relaxed with EMT: every distortion relaxes back into one basin."""
    from conftest import DATA

    top = shutil.copytree(DATA / "Cu_tree", tmp_path_factory.mktemp("cu") / "Cu_tree")
    settings = RunSettings(
        relaxer="ase", model="ase.calculators.emt:EMT", progress=False, relax=RelaxSettings()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EMT has no charge embedding (v_Cu_-1)
        assert not run_tree(top, settings).failed
    return top


@pytest.fixture
def cu(cu_relaxed, tmp_path):
    top = shutil.copytree(cu_relaxed, tmp_path / "Cu_tree")
    path = top / "ml_tree" / "v_Cu_0" / "snb_ml_provenance.json"
    document = json.loads(path.read_text())
    document["input_directory"] = str(top / "v_Cu_0")
    path.write_text(json.dumps(document))
    return top


def test_one_basin_gets_exploration_starts_with_reasons(cu):
    ml = cu / "ml_tree" / "v_Cu_0"
    lean = select_defect(ml, policy="lean")
    assert lean.selected == lean.representatives == [lean.clusters[0].representative]  # today's behaviour
    assert lean.representatives == ["Bond_Distortion_-20.0%"]  # the lowest EMT energy of the one basin
    protect = select_defect(ml)
    assert set(protect.trust.codes) == {"one_basin", "no_reconstruction", "motifs_collapsed", "flat_energies"}
    # Unperturbed, relaxed with DFT anyway, represents its own basin: -20 % would only repeat its run.
    assert protect.policy == "protect" and protect.representatives == ["Unperturbed"]
    representative = "Unperturbed"
    explored = [e.folder for e in protect.extras if e.kind == "exploration"]
    # Grid -40..+40: per side the start nearest the middle of its magnitudes (30 %: a tie, to the
    # smaller one, 20 %). -20 % is free again, so DFT relaxes it as generated.
    assert explored == ["Bond_Distortion_-20.0%", "Bond_Distortion_20.0%"]
    assert [e.kind for e in protect.extras] == ["exploration", "exploration"]  # no separate reference
    assert protect.selected == [representative, *protect.original_starts]
    reasons = protect.reasons
    assert set(reasons) == set(protect.selected)
    assert reasons[representative].startswith(
        "represents basin 0 (6 ML minima): ShakeNBreak's energy reference, relaxed with DFT anyway"
    )
    assert all("exploration: untrusted ML minima (one_basin" in reasons[f] for f in explored)
    assert "saw no reconstruction" in protect.warnings[0] and "2 original start(s)" in protect.warnings[0]
    assert "lean only its basin is selected" in lean.warnings[0]
    table = protect.table()
    assert "Warning: v_Cu_0: the model saw no reconstruction" in table
    assert all(f"{f}: exploration" in table for f in explored)
    document = json.loads((ml / SELECTION_FILE).read_text())
    assert document["policy"] == "protect" and document["reasons"] == reasons
    assert document["start_from"] == {
        representative: "ml_minimum",
        **dict.fromkeys(protect.original_starts, "original"),
    }
    assert document["trust"]["trusted"] is False
    assert document["trust"]["collapsed"] == ["Bond_Distortion_-40.0%", "Bond_Distortion_40.0%"]


def test_handoff_keeps_exploration_starts_as_generated_and_undo_restores(cu):
    ml = cu / "ml_tree" / "v_Cu_0"
    selection = select_defect(ml)
    before = {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((cu / "v_Cu_0").rglob("*"))
        if p.is_file()
    }
    record = prepare_dft_tree(
        cu,
        cu / "ml_tree",
        {"v_Cu_0": selection.representatives},
        original={"v_Cu_0": selection.original_starts},
        reasons={"v_Cu_0": selection.reasons},
    )
    entry = record.defects[0]
    assert entry.replaced == selection.representatives == ["Unperturbed"]
    assert set(entry.kept) == set(selection.original_starts)
    for folder in selection.original_starts:  # DFT starts from the generated structure, untouched
        poscar = cu / "v_Cu_0" / folder / "POSCAR"
        assert hashlib.sha256(poscar.read_bytes()).hexdigest() == before[poscar]
        assert not (poscar.parent / "POSCAR.snb_ml_original").exists()
    document = json.loads((cu / "v_Cu_0" / RECORD_FILE).read_text())
    assert document["reasons"] == selection.reasons
    assert document["fingerprint"]["kept_as_generated"] == sorted(selection.original_starts)
    assert "kept as generated" in record.summary()
    again = prepare_dft_tree(cu, cu / "ml_tree", {"v_Cu_0": selection.representatives},
                             original={"v_Cu_0": selection.original_starts})  # fmt: skip
    assert again.defects[0].status == "already prepared"
    undo_handoff(cu, ["v_Cu_0"])
    after = {
        p: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((cu / "v_Cu_0").rglob("*"))
        if p.is_file()
    }
    assert after == before


def test_trusted_minima_get_no_exploration():
    members = [["Unperturbed", "Bond_Distortion_10.0%"], ["Bond_Distortion_-40.0%", "Dimer"]]
    energies = {
        "Unperturbed": 0.0,
        "Bond_Distortion_10.0%": 0.01,
        "Bond_Distortion_-40.0%": -0.6,
        "Dimer": -0.55,
    }
    distances = {
        "Unperturbed": 0.0,
        "Bond_Distortion_10.0%": 1e-3,
        "Bond_Distortion_-40.0%": 0.1,
        "Dimer": 0.1,
    }
    assert assess_minima(members, energies, distances, threshold=0.015).trusted
    flat = {key: value / 100 for key, value in energies.items()}  # same basins, 6 meV apart
    assert assess_minima(members, flat, distances, 0.015).codes == ["flat_energies"]
    collapsed = {**distances, "Dimer": 1e-3}  # 1 of 2 motif starts back in Unperturbed's basin
    report = assess_minima(members, energies, collapsed, 0.015)
    assert report.codes == ["motifs_collapsed"] and report.collapsed == ["Dimer"]


def test_a_model_fine_tuned_on_other_defects_is_not_trusted_there():
    # Two distinct basins, spread in energy, no motif collapsed: trusted on their own.
    members = [["Unperturbed", "Bond_Distortion_10.0%"], ["Bond_Distortion_-40.0%"]]
    energies = {"Unperturbed": 0.0, "Bond_Distortion_10.0%": 0.01, "Bond_Distortion_-40.0%": -0.6}
    distances = {"Unperturbed": 0.0, "Bond_Distortion_10.0%": 1e-3, "Bond_Distortion_-40.0%": 0.1}
    assert assess_minima(members, energies, distances, 0.015, defect="Mg_O_+2").trusted  # not fine-tuned
    other = assess_minima(
        members, energies, distances, 0.015, defect="Mg_O_+2", fine_tuned_on=["Mg_O_0", "Mg_O_+1"]
    )
    assert other.codes == ["unconfirmed_fine_tune"]
    assert "Mg_O_0, Mg_O_+1" in other.flags[0].message and "never on Mg_O_+2" in other.flags[0].message
    own = assess_minima(members, energies, distances, 0.015, defect="Mg_O_+2", fine_tuned_on=["Mg_O_+2"])
    assert own.trusted  # its own DFT is in the training data (the loop's next round)
    unnamed = assess_minima(members, energies, distances, 0.015, defect="Mg_O_+2", fine_tuned_on=[])
    assert unnamed.codes == ["unconfirmed_fine_tune"]


def test_selection_reads_what_the_model_was_fine_tuned_on(cu):
    ml = cu / "ml_tree" / "v_Cu_0"
    path = ml / "snb_ml_provenance.json"
    document = json.loads(path.read_text())
    document["model"]["fine_tuned_on"] = ["v_Cu_-1"]
    path.write_text(json.dumps(document))
    flags = {flag.code: flag.message for flag in select_defect(ml, write=False).trust.flags}
    assert "never on v_Cu_0" in flags["unconfirmed_fine_tune"]
    document["model"]["fine_tuned_on"] = ["v_Cu_0"]
    path.write_text(json.dumps(document))
    assert "unconfirmed_fine_tune" not in select_defect(ml, write=False).trust.codes


def test_exploration_rule_on_published_grids():
    # ShakeNBreak's default grid: the middle of each side (35 %), ties to the smaller magnitude.
    assert [f for f, _ in exploration_starts(GRID, [])] == ["Bond_Distortion_-30.0%", "Bond_Distortion_30.0%"]
    # An already selected start is skipped for the next nearest.
    picks = exploration_starts(GRID, ["Bond_Distortion_-30.0%"])
    assert [f for f, _ in picks] == ["Bond_Distortion_-40.0%", "Bond_Distortion_30.0%"]
    # A compressive-only grid (the published V_Cd0 search, 0 to -60 % in 2.5 % steps): 1/3 and 2/3.
    vcd = [f"Bond_Distortion_{-v / 10:.1f}%" for v in range(0, 601, 25)]
    assert [f for f, _ in exploration_starts(vcd, [])] == ["Bond_Distortion_-22.5%", "Bond_Distortion_-40.0%"]
    # Motif starts (Dimer, Rattled) always, once each.
    motifs = exploration_starts(["Unperturbed", "Rattled", "Dimer", "Dimer_from_pair0-1"], ["Unperturbed"])
    assert [f for f, _ in motifs] == ["Dimer", "Rattled"]


def test_select_cli_prints_reasons_and_warns(cu):
    from conftest import run_cli

    result = run_cli(["snb-ml", "select", "-p", "ml_tree", "-d", "v_Cu_0"], cu)
    assert result.returncode == 0, result.stderr
    assert "v_Cu_0 (policy protect):" in result.stdout
    assert "Unperturbed: represents basin 0 (6 ML minima)" in result.stdout
    assert "Bond_Distortion_-20.0%: exploration: untrusted ML minima" in result.stdout
    assert "Warning: v_Cu_0: the model saw no reconstruction" in result.stdout
    assert result.stdout.rstrip().endswith("Whole tree: DFT relaxations needed: 3 of 6 (50% saved)")
    lean = run_cli(["snb-ml", "select", "-p", "ml_tree", "-d", "v_Cu_0", "--policy", "lean"], cu)
    assert lean.stdout.rstrip().endswith("Whole tree: DFT relaxations needed: 1 of 6 (83% saved)")
    assert "use --policy protect" in lean.stdout
