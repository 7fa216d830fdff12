"""`-v/--verbose` with standard logging, quiet third-party imports, and `--device cuda:N`."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from snb_ml.cli import main
from snb_ml.errors import ModelError
from snb_ml.relaxers.base import check_device_name, cuda_index

IMPORT_MACE = (
    "import sys; from snb_ml.logs import setup_logging; setup_logging(int(sys.argv[1])); "
    "from snb_ml.relaxers.mace_loading import import_mace; import_mace(); print('imported')"
)


@pytest.mark.parametrize("verbose", [0, 1])
def test_mace_import_note_hidden_by_default_shown_with_verbose(verbose):
    # mace prints "cuequivariance ... not available" to stdout on import: not in normal output.
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_MACE, str(verbose)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in result.stderr
    assert ("cuequivariance" in result.stderr) is bool(verbose)


def test_verbose_flag_sets_logging_levels(tmp_path):
    import logging

    runner = CliRunner()
    # The group callback runs before the subcommand; a bad --device stops it at parsing.
    runner.invoke(main, ["-vv", "run", "-p", str(tmp_path), "--device", "cpu", "--relaxer", "nonexistent"])
    assert logging.getLogger("snb_ml").level == logging.DEBUG
    runner.invoke(main, ["run", "-p", str(tmp_path), "--relaxer", "nonexistent"])
    assert logging.getLogger("snb_ml").level == logging.WARNING


@pytest.mark.parametrize("name", ["cpu", "cuda", "auto", "cuda:0", "cuda:12"])
def test_device_names_accepted(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:-1", "cuda1", "cuda:a", "CUDA:1", "cpu:0"])
def test_device_names_refused(name):
    with pytest.raises(ModelError, match="cuda:N"):
        check_device_name(name)


def test_cuda_index():
    assert [cuda_index(d) for d in ("cuda:3", "cuda", "cpu")] == [3, None, None]


def test_cli_accepts_cuda_n_and_refuses_garbage(cu_tree):
    runner = CliRunner()
    bad = runner.invoke(main, ["run", "-p", str(cu_tree), "--relaxer", "chgnet", "--device", "cuda:x"])
    assert bad.exit_code == 2 and "Unknown device 'cuda:x'" in bad.output
    assert not (cu_tree / "ml_tree").exists()
    # cuda:7 passes the option parser; then the model loader says what it sees (no GPU here, or
    # fewer than 8 GPUs on a GPU machine) and stops before anything is written.
    good = runner.invoke(main, ["run", "-p", str(cu_tree), "--relaxer", "chgnet", "--device", "cuda:7"])
    assert good.exit_code == 1 and "Invalid value" not in good.output
    assert "no CUDA GPU" in good.output or "GPU(s)" in good.output
    train = runner.invoke(main, ["train", "--help"])
    assert "cuda:N" in train.output
