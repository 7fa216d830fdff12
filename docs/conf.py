"""Sphinx configuration for the snb_ml documentation."""

from __future__ import annotations

import filecmp
import importlib.metadata
import inspect
import shutil
from pathlib import Path

import snb_ml  # autodoc documents the installed package

project = "snb_ml"
author = "snb_ml developers"
copyright = "snb_ml developers"
try:
    release = importlib.metadata.version("snb_ml")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    release = snb_ml.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",  # MyST Markdown pages and the tutorial notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_click",  # the CLI reference, generated from the click commands themselves
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]

# Tutorials: the notebooks live in the repository's tutorials/ folder, stored with their outputs
# (tests/test_tutorials.py re-executes them and compares). They are shown as stored, never executed
# by the docs build (CHGNet relaxations and model training take minutes). Sphinx only reads sources
# below docs/, so they are copied to docs/tutorials/ (git-ignored) at every build; unchanged files
# are not rewritten, so incremental builds stay incremental.
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "remove"  # progress bars and library warnings; the stored notebooks keep them
_TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
_TUTORIAL_COPIES = Path(__file__).resolve().parent / "tutorials"
_TUTORIAL_COPIES.mkdir(exist_ok=True)
for _stale in _TUTORIAL_COPIES.glob("*.ipynb"):
    if not (_TUTORIALS / _stale.name).is_file():
        _stale.unlink()
for _notebook in sorted(_TUTORIALS.glob("*.ipynb")):
    _copy = _TUTORIAL_COPIES / _notebook.name
    if not _copy.is_file() or not filecmp.cmp(_notebook, _copy, shallow=False):
        shutil.copyfile(_notebook, _copy)

# MyST: ``:::`` fences, definition lists (option descriptions) and heading anchors.
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# Google-style docstrings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# The heavy dependencies (torch, chgnet, mace) are imported lazily inside functions, so importing the
# documented modules is cheap and needs no model.
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

nitpicky = False
# Nothing needs silencing today; add warning types here only with a reason.
suppress_warnings: list[str] = []

html_theme = "alabaster"
html_title = f"snb_ml {release}"
html_theme_options = {
    "description": "ML force-field relaxers for ShakeNBreak + doped",
    "fixed_sidebar": True,
}


def _skip_class_data_members(app, what, name, obj, skip, options):
    """Leave dataclass fields out of a class's member list.

    Each dataclass documents its fields in its ``Attributes:`` docstring section (rendered by napoleon);
    listing them again as members would describe every field twice.
    """
    if what == "class" and not (
        callable(obj) or isinstance(obj, (property, classmethod, staticmethod)) or inspect.isroutine(obj)
    ):
        return True
    return None


def _extend_snb_run() -> None:
    """Give ShakeNBreak's ``snb-run`` its ``--relaxer`` options for the CLI reference.

    An installed snb_ml does this through its ``.pth`` hook whenever ``shakenbreak.cli`` is imported;
    calling the (idempotent) extension here makes a build from a source tree that is not installed
    document the same command.
    """
    import shakenbreak.cli

    from snb_ml.cli.shakenbreak import extend_run_command

    extend_run_command(shakenbreak.cli)


_extend_snb_run()


def setup(app):
    app.connect("autodoc-skip-member", _skip_class_data_members)
