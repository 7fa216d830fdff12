"""`snb-ml select` and `snb-ml pairs` through the installed console script (EMT, ShakeNBreak tree)."""

import hashlib

from conftest import EMT, run_cli


def _snapshot(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if "ml_tree" not in p.parts
    }


def test_run_select_handoff_undo(cu_tree):
    assert run_cli(["snb-ml", "run", "-p", str(cu_tree), *EMT, "--no-progress"], cu_tree).returncode == 0
    before = _snapshot(cu_tree)
    result = run_cli(["snb-ml", "select", "-p", "ml_tree", "--dft-tree", "."], cu_tree)
    assert result.returncode == 0, result.stderr
    assert "DFT relaxations needed:" in result.stdout and "Whole tree:" in result.stdout
    assert (cu_tree / "ml_tree" / "v_Cu_0" / "snb_ml_selection.json").is_file()
    assert (cu_tree / "ml_tree" / "v_Cu_0" / "snb_ml_selection.png").is_file()
    assert (cu_tree / "v_Cu_0" / "snb_ml_handoff.json").is_file()
    again = run_cli(["snb-ml", "select", "-p", "ml_tree", "--dft-tree", "."], cu_tree)
    assert again.returncode == 0 and "already prepared" in again.stdout
    undo = run_cli(["snb-ml", "select", "--undo", "--dft-tree", "."], cu_tree)
    assert undo.returncode == 0, undo.stderr
    assert _snapshot(cu_tree) == before
    nothing = run_cli(["snb-ml", "select", "--undo", "--dft-tree", "."], cu_tree)
    assert nothing.returncode == 1 and "nothing to undo" in nothing.stderr.lower()


def test_select_without_ml_tree_is_a_clear_error(cu_tree):
    result = run_cli(["snb-ml", "select", "-p", "ml_tree"], cu_tree)
    assert result.returncode == 1 and "Error:" in result.stderr and "Traceback" not in result.stderr


def test_pairs_then_relax(cu_tree):
    result = run_cli(
        ["snb-ml", "pairs", "-p", "v_Cu_0", "-o", "pairs", "--bond-distortions", "-0.4"], cu_tree
    )
    assert result.returncode == 0, result.stderr
    assert "4 symmetry-unique pair(s)" in result.stdout
    relaxed = run_cli(["snb-ml", "run", "-p", "pairs", *EMT, "--no-progress", "--fmax", "0.05"], cu_tree)
    assert relaxed.returncode == 0, relaxed.stderr
    assert (cu_tree / "pairs" / "ml_tree" / "v_Cu_0" / "v_Cu_0.yaml").is_file()
