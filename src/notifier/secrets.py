"""Scrubbing of tokens and webhook URLs from every log line notifier or its clients write."""

from __future__ import annotations

import logging
import threading

MASK = "***"
_MIN_SECRET = 6  # shorter strings would mask innocent text and are no real secret


class Redactor:
    """A set of secret strings and the means to remove them from text."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            for secret in secrets:
                if secret and len(secret) >= _MIN_SECRET:
                    self._secrets.add(secret)

    def __call__(self, text: str) -> str:
        # Longest first, so a webhook URL is masked whole rather than around its token.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text


#: Secrets are process-wide: a token seen by one callback must be masked in every log.
redact = Redactor()


class RedactingFilter(logging.Filter):
    """A logging filter that masks registered secrets in the message and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A logger whose records are scrubbed (a filter only sees its own logger's records)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
