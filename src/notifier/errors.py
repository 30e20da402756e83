"""The exceptions notifier raises (configuration) and backends raise (delivery)."""

from __future__ import annotations


class NotifierError(Exception):
    """Base class of every exception notifier raises."""


class ConfigurationError(NotifierError, ValueError):
    """Bad configuration found while building a callback or backend; the message says the fix."""


class TemplateError(ConfigurationError):
    """A template that cannot be loaded or compiled."""


class DeliveryError(NotifierError):
    """A backend could not deliver a message.

    ``retryable`` says whether the same message may succeed later (a 5xx, a
    timeout); ``retry_after`` is the wait the service asked for, in seconds.
    ``disable`` marks errors that no later message can get past either (a revoked
    token, a deleted webhook): the backend is switched off after one warning.
    ``code`` is the service's own error code, if any. The message must never
    contain a secret.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        disable: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.retry_after = retry_after
        self.disable = disable
