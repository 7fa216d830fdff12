"""The plugin manager: relaxers, built-in or third-party, arrive via entry-point group ``snb_ml``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points

import pluggy

from snb_ml import hookspecs
from snb_ml.errors import UnknownRelaxerError
from snb_ml.relaxers.base import CalculatorFactory, RelaxerBackend

ENTRY_POINT_GROUP = "snb_ml"


@dataclass
class PluginInfo:
    """One loaded plugin and what it registered (for ``snb-ml plugins``)."""

    name: str
    module: str
    distribution: str
    version: str
    relaxers: list[str] = field(default_factory=list)
    error: str | None = None


@lru_cache(maxsize=1)
def _load() -> tuple[pluggy.PluginManager, dict[str, RelaxerBackend], tuple[PluginInfo, ...]]:
    manager = pluggy.PluginManager("snb_ml")
    manager.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    # Loaded one by one (not pluggy's load_setuptools_entrypoints) so that one broken third-party
    # plugin is reported instead of disabling every relaxer.
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        info = PluginInfo(
            name=entry_point.name,
            module=entry_point.value,
            distribution=dist.name if dist else "?",
            version=dist.version if dist else "?",
        )
        infos.append(info)
        if manager.has_plugin(entry_point.name):
            continue
        try:
            manager.register(entry_point.load(), name=entry_point.name)
        except Exception as exc:  # a plugin's import error must not break the others
            info.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"snb_ml plugin '{entry_point.name}' failed to load: {info.error}", stacklevel=2)

    relaxers: dict[str, RelaxerBackend] = {}
    info_by_name = {info.name: info for info in infos}
    for hook_impl in manager.hook.register_relaxers.get_hookimpls():
        info = info_by_name.get(hook_impl.plugin_name)

        def register(
            name: str, factory: CalculatorFactory, description: str = "", _info: PluginInfo | None = info
        ) -> None:
            if name in relaxers:
                warnings.warn(
                    f"Relaxer '{name}' registered twice (by '{relaxers[name].plugin}' and "
                    f"'{_info.name if _info else '?'}'); keeping the first.",
                    stacklevel=2,
                )
                return
            relaxers[name] = RelaxerBackend(
                name=name,
                factory=factory,
                description=description,
                plugin=_info.name if _info else "?",
                distribution=f"{_info.distribution} {_info.version}" if _info else "?",
            )
            if _info:
                _info.relaxers.append(name)

        hook_impl.function(register=register)
    return manager, relaxers, tuple(infos)


def get_plugin_manager() -> pluggy.PluginManager:
    """Return the process-wide plugin manager with every installed ``snb_ml`` plugin registered."""
    return _load()[0]


def get_relaxers() -> dict[str, RelaxerBackend]:
    """Return the installed relaxer backends by name."""
    return dict(_load()[1])


def get_plugin_infos() -> list[PluginInfo]:
    """Return one :class:`PluginInfo` per entry point in group ``snb_ml``."""
    return list(_load()[2])


def get_relaxer(name: str) -> RelaxerBackend:
    """Return the relaxer backend called ``name``.

    Args:
        name: The relaxer name, e.g. ``"chgnet"``.

    Raises:
        UnknownRelaxerError: If no installed plugin registers it (the message lists those that do).
    """
    relaxers = get_relaxers()
    if name not in relaxers:
        installed = ", ".join(sorted(relaxers)) or "none"
        raise UnknownRelaxerError(
            f"Unknown relaxer '{name}'. Installed relaxers: {installed}. "
            "Run `snb-ml plugins` to see where each comes from; a third-party relaxer needs its "
            "package installed in this environment."
        )
    return relaxers[name]
