"""The plugin manager: relaxers, fingerprints, selection policies and free-energy terms.

All of them, built-in or third-party, arrive via the entry-point group ``snb_ml`` and register through
the hooks of :mod:`snb_ml.hookspecs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import pluggy

from snb_ml import hookspecs
from snb_ml.errors import InputError, UnknownRelaxerError
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
    #: Everything it registered, as ``kind:name`` (``relaxer:chgnet``, ``fingerprint:soap``, ...).
    registers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Registered:
    """One fingerprint, selection policy or free-energy term registered by a plugin.

    Attributes:
        name: What users pass (``--fingerprint``, ``--policy``, or the term's name).
        provider: The fingerprint factory, policy function or term builder (see :mod:`snb_ml.hookspecs`).
        description: One line for ``snb-ml plugins``.
        plugin: Name of the entry point that registered it.
    """

    name: str
    provider: Callable[..., Any]
    description: str = ""
    plugin: str = "?"


#: The registries other than relaxers: hook name -> the kind shown by ``snb-ml plugins``.
KINDS = {
    "register_fingerprints": "fingerprint",
    "register_selection_policies": "policy",
    "register_free_energy_terms": "term",
}


@lru_cache(maxsize=1)
def _load() -> tuple[
    pluggy.PluginManager, dict[str, RelaxerBackend], tuple[PluginInfo, ...], dict[str, dict[str, Registered]]
]:
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
                _info.registers.append(f"relaxer:{name}")

        hook_impl.function(register=register)
    registries = {kind: _collect(manager, hook, kind, info_by_name) for hook, kind in KINDS.items()}
    return manager, relaxers, tuple(infos), registries


def _collect(
    manager: pluggy.PluginManager, hook: str, kind: str, info_by_name: dict[str, PluginInfo]
) -> dict[str, Registered]:
    """Call every implementation of ``hook`` with a ``register`` function; first registration wins."""
    found: dict[str, Registered] = {}
    for hook_impl in getattr(manager.hook, hook).get_hookimpls():
        plugin = hook_impl.plugin_name

        def register(name: str, provider: Callable[..., Any], description: str = "", _plugin: str = plugin):
            if name in found:
                warnings.warn(
                    f"{kind.capitalize()} '{name}' registered twice (by '{found[name].plugin}' and "
                    f"'{_plugin}'); keeping the first.",
                    stacklevel=2,
                )
                return
            found[name] = Registered(name, provider, description, _plugin)
            if _plugin in info_by_name:
                info_by_name[_plugin].registers.append(f"{kind}:{name}")

        try:
            hook_impl.function(register=register)
        except Exception as exc:  # one broken plugin must not hide the others' registrations
            warnings.warn(
                f"snb_ml plugin '{plugin}' failed in {hook}: {type(exc).__name__}: {exc}", stacklevel=2
            )
    return found


_NOUNS = {"fingerprint": "fingerprint", "policy": "selection policy", "term": "free-energy term"}


def _lookup(kind: str, option: str, name: str) -> Registered:
    registry = _load()[3][kind]
    if name not in registry:
        noun = _NOUNS[kind]
        installed = ", ".join(sorted(registry)) or "none"
        raise InputError(
            f"Unknown {noun} '{name}' ({option}); choose one of {installed}. Run `snb-ml plugins` to see "
            f"where each comes from; a third-party {noun} needs its package installed in this environment."
        )
    return registry[name]


def get_fingerprints() -> dict[str, Registered]:
    """Return the installed defect-site fingerprints by name (``"soap"`` built in)."""
    return dict(_load()[3]["fingerprint"])


def get_fingerprint(name: str) -> Registered:
    """Return the fingerprint called ``name``.

    Raises:
        InputError: If no installed plugin registers it (the message lists those that do).
    """
    return _lookup("fingerprint", "--fingerprint", name)


def get_selection_policies() -> dict[str, Registered]:
    """Return the installed selection policies by name (``"protect"`` and ``"lean"`` built in)."""
    return dict(_load()[3]["policy"])


def get_selection_policy(name: str) -> Registered:
    """Return the selection policy called ``name``.

    Raises:
        InputError: If no installed plugin registers it (the message lists those that do).
    """
    return _lookup("policy", "--policy", name)


def get_free_energy_terms() -> dict[str, Registered]:
    """Return the installed free-energy term builders by name."""
    return dict(_load()[3]["term"])


def get_free_energy_term(name: str, option: str = "term name") -> Registered:
    """Return the free-energy term builder called ``name`` (call its ``provider`` to build a term).

    Args:
        name: The registered name.
        option: Where the name came from, for the error message (e.g. ``--term``).

    Raises:
        InputError: If no installed plugin registers it (the message lists those that do).
    """
    return _lookup("term", option, name)


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
