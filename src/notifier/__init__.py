"""notifier: hear how your transformers training is going, where you already look."""

from .backend import Backend, Message
from .callback import NotifierCallback, SlackCallback
from .errors import ConfigurationError, DeliveryError, NotifierError, TemplateError
from .hookspecs import hookimpl, hookspec
from .plugins import available_backends, get_backend

__all__ = [
    "Backend",
    "ConfigurationError",
    "DeliveryError",
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
