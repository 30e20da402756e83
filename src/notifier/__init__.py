"""notifier: hear how your transformers training is going, where you already look."""

from typing import TYPE_CHECKING, Any

from .backend import Attachment, Backend, Message
from .errors import ConfigurationError, DeliveryError, NotifierError, TemplateError
from .hookspecs import hookimpl, hookspec
from .plugins import available_backends, get_backend

if TYPE_CHECKING:
    from .alerts import AlertRules, Improvement
    from .callback import NotifierCallback, SlackCallback

__all__ = [
    "AlertRules",
    "Attachment",
    "Backend",
    "ConfigurationError",
    "DeliveryError",
    "Improvement",
    "Message",
    "NotifierCallback",
    "NotifierError",
    "SlackCallback",
    "TemplateError",
    "available_backends",
    "get_backend",
    "hookimpl",
    "hookspec",
]

#: Loaded on first use: the callbacks import transformers (seconds), which the
#: command line and backend plugins do not need.
_LAZY = {
    "NotifierCallback": "callback",
    "SlackCallback": "callback",
    "AlertRules": "alerts",
    "Improvement": "alerts",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'notifier' has no attribute {name!r}")
