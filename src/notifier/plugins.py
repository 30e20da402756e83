"""Finding backends: the pluggy manager, entry-point loading and the name -> class registry."""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import ConfigurationError
from .secrets import get_logger

logger = get_logger("notifier")

#: The distribution whose backends no other distribution may replace.
BUILTIN_DISTRIBUTION = "notifier"


@dataclass(frozen=True)
class BackendInfo:
    """A registered backend class and the distribution (or plugin) that provided it."""

    name: str
    cls: type[Backend]
    provider: str


def get_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows the hookspecs and has no plugins yet."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    return pm


def load_entrypoints(pm: pluggy.PluginManager) -> dict[str, str]:
    """Register every installed ``notifier`` entry point; return plugin name -> distribution.

    Each entry point is loaded on its own: one that fails to import is skipped
    with one warning naming it, and the others keep working.
    """
    providers: dict[str, str] = {}
    for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        provider = entry_point.dist.name if entry_point.dist else entry_point.value
        if pm.has_plugin(entry_point.name):
            continue  # the same distribution seen twice on sys.path
        try:
            pm.register(entry_point.load(), name=entry_point.name)
        except Exception as exc:  # noqa: BLE001 - any failure in a third-party import
            logger.warning(
                "notifier plugin %r from %s failed to load and is skipped: %s: %s",
                entry_point.name,
                provider,
                type(exc).__name__,
                exc,
            )
            continue
        providers[entry_point.name] = provider
    return providers


def _collect(cls: Any, *, into: list[type[Backend]], provider: str) -> None:
    """The ``register`` a plugin's hook calls: checks ``cls`` is a named Backend subclass."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigurationError(
            f"plugin {provider} registered {cls!r}, which is not a notifier.Backend subclass"
        )
    if not cls.name:
        raise ConfigurationError(f"plugin {provider}: {cls.__name__} has no `name`")
    into.append(cls)


class Registry:
    """The backends available by name, collected from a plugin manager's plugins."""

    def __init__(self, pm: pluggy.PluginManager, providers: dict[str, str] | None = None) -> None:
        self._backends: dict[str, BackendInfo] = {}
        providers = providers or {}
        for impl in pm.hook.register_backends.get_hookimpls():
            provider = providers.get(impl.plugin_name, impl.plugin_name)
            # A plugin's backends are added only once its hook has returned: one that fails
            # halfway is skipped whole, not left half-registered.
            registered: list[type[Backend]] = []
            try:
                impl.function(
                    register=functools.partial(_collect, into=registered, provider=provider)
                )
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break others
                logger.warning(
                    "notifier plugin %r failed in register_backends and is skipped: %s: %s",
                    impl.plugin_name,
                    type(exc).__name__,
                    exc,
                )
                continue
            for cls in registered:
                self._add(cls, provider=provider)

    def _add(self, cls: type[Backend], *, provider: str) -> None:
        existing = self._backends.get(cls.name)
        if existing is not None and existing.cls is not cls:
            # The first provider keeps a name, except that a built-in always wins, in
            # whichever order the plugins were loaded; either way the loser is named.
            keep = existing.provider == BUILTIN_DISTRIBUTION or provider != BUILTIN_DISTRIBUTION
            loser, winner = (provider, existing.provider) if keep else (existing.provider, provider)
            logger.warning(
                "backend name %r from %s is also provided by %s; keeping %s's",
                cls.name,
                loser,
                winner,
                winner,
            )
            if keep:
                return
        self._backends[cls.name] = BackendInfo(cls.name, cls, provider)

    def names(self) -> list[str]:
        return sorted(self._backends)

    def info(self) -> list[BackendInfo]:
        return [self._backends[name] for name in self.names()]

    def get(self, name: str) -> type[Backend]:
        try:
            return self._backends[name].cls
        except KeyError:
            close = difflib.get_close_matches(name, self._backends, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"unknown backend {name!r}.{hint} Available: {', '.join(self.names()) or 'none'}. "
                "Backends come from installed plugins: `notifier backends` lists them."
            ) from None

    def create(self, name: str, **options: Any) -> Backend:
        cls = self.get(name)
        try:
            return cls(**options)
        except TypeError as exc:
            raise ConfigurationError(f"{name} backend: {exc}") from None


@functools.cache
def default_registry() -> Registry:
    """The registry of installed plugins, built on first use (never at import)."""
    pm = get_plugin_manager()
    return Registry(pm, load_entrypoints(pm))


def available_backends() -> list[str]:
    """The names of every installed backend."""
    return default_registry().names()


def get_backend(name: str, **options: Any) -> Backend:
    """Build the backend registered as ``name``; missing options come from the environment."""
    return default_registry().create(name, **options)
