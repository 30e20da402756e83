"""The plugin hooks a backend package implements, and the markers to implement them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "notifier"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register: Callable[[type[Any]], None]) -> None:
    """Register backend classes by calling ``register(BackendClass)`` once for each.

    Called once when the plugin manager is built. ``BackendClass`` must subclass
    ``notifier.Backend`` and set a unique ``name``.
    """
