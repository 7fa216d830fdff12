"""The Sphinx documentation builds without a single warning, with the tutorials and the CLI reference."""

import re
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
TUTORIALS = DOCS.parent / "tutorials"


def test_docs_build_without_warnings(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", str(DOCS), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"sphinx-build failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "index.html").is_file()

    # Every tutorial is rendered with its stored plots (images written out of the notebook outputs).
    notebooks = sorted(TUTORIALS.glob("*.ipynb"))
    assert [n.name[:3] for n in notebooks] == ["01_", "02_", "03_", "04_"]
    for notebook in notebooks:
        page = tmp_path / "tutorials" / f"{notebook.stem}.html"
        assert page.is_file(), f"{notebook.name} is not in the documentation"
        images = re.findall(r'<img[^>]+src="([^"]+\.png)"', page.read_text(encoding="utf-8"))
        assert images, f"{page.name} shows no figure"
        for src in images:
            assert (page.parent / src).resolve().is_file(), f"{page.name}: {src} missing"

    # The CLI reference is generated from the click commands: every snb-ml subcommand has its options.
    from snb_ml.cli import main

    cli_page = (tmp_path / "cli.html").read_text(encoding="utf-8")
    for name, command in main.commands.items():
        assert f'id="snb-ml-{name}"' in cli_page, f"snb-ml {name} missing from the CLI reference"
        if command.params:  # (`snb-ml plugins` has none)
            assert f'id="cmdoption-snb-ml-{name}-' in cli_page, f"snb-ml {name}: options missing"
    assert 'id="cmdoption-snb-run-relaxer"' in cli_page  # snb-run with snb_ml's options
