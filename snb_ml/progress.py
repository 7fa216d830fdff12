"""Progress bars: the one place that decides which tqdm to use.

An enabled bar comes from ``tqdm.auto`` (a widget in Jupyter, text in a terminal); a disabled one from
``tqdm.std``, because ``tqdm.auto`` warns in notebooks without ipywidgets even for a bar that is never
shown. tqdm is imported on the first bar, so importing this module costs nothing at CLI start-up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """Return a tqdm bar over ``iterable`` (or a manual bar with ``total=``), shown only when ``enabled``.

    Args:
        iterable: What to iterate over; ``None`` for a bar advanced with ``update``.
        enabled: Show the bar (``--progress``/``--quiet`` of the commands); a disabled bar still
            counts and can be used as a context manager.
        **kwargs: Passed to ``tqdm`` (``total``, ``desc``, ``unit``, ``initial``, ``mininterval``, ...).

    Returns:
        The ``tqdm`` object.
    """
    if enabled:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(iterable, disable=not enabled, **kwargs)
