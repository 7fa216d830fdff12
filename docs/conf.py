"""Sphinx configuration for the snb_ml documentation."""

from __future__ import annotations

import importlib.metadata
import inspect

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
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: ``:::`` fences, definition lists (option descriptions) and heading anchors.
myst_enable_extensions = ["colon_fence", "deflist"]
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


def setup(app):
    app.connect("autodoc-skip-member", _skip_class_data_members)
