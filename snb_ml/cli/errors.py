"""One error path for every command: an :class:`~snb_ml.errors.SnbMlError` becomes ``Error: ...``, exit 1.

Commands raise :class:`~snb_ml.errors.SnbMlError` (or a subclass such as
:class:`~snb_ml.errors.InputError`) for bad input and for runs where some defects failed; the
decorator prints the message once on stderr and exits with status 1. Click's own usage errors (exit 2)
and anything unexpected pass through unchanged.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from snb_ml.errors import SnbMlError

F = TypeVar("F", bound=Callable[..., Any])


def fail(error: Exception | str) -> NoReturn:
    """Print ``Error: <error>`` on stderr and exit with status 1."""
    click.echo(f"Error: {error}", err=True)
    sys.exit(1)


def cli_errors(function: F) -> F:
    """Decorate a command callback so that an ``SnbMlError`` ends it with one message and exit 1.

    Put it directly above the ``def`` (below ``@click.command`` and the options)::

        @click.command("select")
        @click.option(...)
        @cli_errors
        def select(...): ...
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SnbMlError as exc:
            fail(exc)

    return wrapper  # type: ignore[return-value]
