"""The ``snb-ml`` command line and ``snb-run --relaxer`` (ShakeNBreak's command, extended).

``snb_ml.cli:main`` is the console script. It is resolved lazily (PEP 562), so importing a submodule,
e.g. :mod:`snb_ml.cli.options` from the ``snb-run`` start-up hook, does not load every ``snb-ml``
subcommand.

Modules: :mod:`~snb_ml.cli.app` (the ``snb-ml`` group), one module per command family
(:mod:`~snb_ml.cli.select`, :mod:`~snb_ml.cli.thermo`, :mod:`~snb_ml.cli.train`, ...),
:mod:`~snb_ml.cli.options` (the run options shared with ``snb-run``), :mod:`~snb_ml.cli.errors`
(one error path for every command) and :mod:`~snb_ml.cli.shakenbreak` (``snb-run --relaxer``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from snb_ml.cli.app import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
