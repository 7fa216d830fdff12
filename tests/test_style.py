"""Project standards that can be checked mechanically: ruff clean, small modules, no stubs."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    paths = [p for p in ("snb_ml", "tests", "examples", "bench", "docs") if (ROOT / p).exists()]
    result = subprocess.run([ruff, "check", *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_modules_are_small_and_finished():
    for module in (ROOT / "snb_ml").rglob("*.py"):
        text = module.read_text()
        assert len(text.splitlines()) <= 600, module
        for marker in ("TODO", "FIXME", "NotImplementedError"):
            assert marker not in text, (module, marker)
