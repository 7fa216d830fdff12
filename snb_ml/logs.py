"""Logging for the ``snb-ml`` and ``snb-run --relaxer`` command lines, and quiet third-party imports.

snb_ml modules log through ``logging.getLogger(__name__)`` (standard :mod:`logging`). The command lines
call :func:`setup_logging` once: by default only warnings and errors of snb_ml reach stderr, and the
chatter of third-party packages (MACE's cuequivariance note printed on import, its ``logging.info``
lines, e3nn's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD warning) is hidden; ``-v`` shows snb_ml's INFO
messages and that chatter, ``-vv`` everything down to DEBUG.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator

LOGGER = logging.getLogger("snb_ml")
IMPORT_LOGGER = logging.getLogger("snb_ml.imports")
#: Warnings raised while importing third-party packages that say nothing about the user's job.
IMPORT_WARNINGS = (
    "Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",
    "The TorchScript type system doesn't support instance-level annotations",
)
_HANDLER_NAME = "snb_ml-cli"


class _ThirdPartyFilter(logging.Filter):
    """Drop records of other packages below ``minimum`` (they log on the root logger, e.g. MACE)."""

    def __init__(self, minimum: int):
        super().__init__()
        self.minimum = minimum

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "snb_ml" or record.name.startswith("snb_ml.")
        return ours or record.levelno >= self.minimum


def setup_logging(verbose: int = 0) -> None:
    """Configure logging for a command-line run (idempotent: a second call replaces the first).

    Args:
        verbose: 0 warnings only (third-party records only from ERROR up), 1 INFO (third-party INFO
            too), 2 or more DEBUG.
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s")
    )
    handler.addFilter(_ThirdPartyFilter(logging.ERROR if verbose <= 0 else level))
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(level)
    LOGGER.setLevel(level)


@contextlib.contextmanager
def quiet_import(package: str) -> Iterator[None]:
    """Import-time noise of ``package`` (stdout prints, known warnings) goes to the DEBUG/INFO log.

    What the package prints to stdout while imported inside this context is logged at INFO on
    ``snb_ml.imports`` (so ``-v`` shows it) instead of mixing into the command's output.

    Args:
        package: Name used in the log line.
    """
    captured = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
        for message in IMPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        try:
            yield
        finally:
            text = captured.getvalue().strip()
            if text:
                IMPORT_LOGGER.info("%s (import): %s", package, text)
