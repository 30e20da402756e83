"""slack_sdk's retry handlers, bounded by a total time budget and kept off the global ``random``.

Retries are slack_sdk's own handlers (the rate-limit one sleeps for Retry-After,
which is fine on the worker thread); this module adds only a time budget, the 5xx
codes slack_sdk's server handler leaves out, a note of why each retry happened, and
a logger that keeps slack_sdk's request dumps (with the bearer token) out of sight.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    RetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.jitter import Jitter
from slack_sdk.http_retry.state import RetryState

from notifier.secrets import redact


class _SdkLogFilter(logging.Filter):
    """slack_sdk logs connection failures at ERROR: we report those ourselves, once and
    without the URL, so its records are scrubbed and only shown when notifier debugs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.getLogger("notifier").isEnabledFor(logging.DEBUG):
            return False
        record.msg, record.args = redact(record.getMessage()), None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def sdk_logger() -> logging.Logger:
    sdk_logger = logging.getLogger("notifier.slack.sdk")
    if not any(isinstance(f, _SdkLogFilter) for f in sdk_logger.filters):
        sdk_logger.addFilter(_SdkLogFilter())
    # slack_sdk builds its request dumps (with the Authorization header) only at DEBUG.
    sdk_logger.setLevel(logging.INFO)
    return sdk_logger


#: slack_sdk's jitter and rate-limit waits draw from the global ``random``, which the
#: Trainer seeds: a draw on the worker thread mid-training would change the training
#: results. Ours come from this private generator.
_rng = random.Random()


class _PrivateJitter(Jitter):
    """slack_sdk's RandomJitter (adds 0-1 s), from a private generator."""

    def recalculate(self, duration: float) -> float:
        return duration + _rng.random()


class Budget:
    """Stops retrying once ``seconds`` have passed since the first failure of a request,
    and notes why each retry happened (the backend reports them once the call is done)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.retried: list[str] = []

    def allow(self, state: RetryState, reason: str) -> bool:
        """True, noting ``reason``, when the budget leaves room for another attempt."""
        if self.exhausted(state):
            return False
        self.retried.append(reason)
        return True

    def exhausted(self, state: RetryState) -> bool:
        if state.custom_values is None:
            state.custom_values = {}
        started = state.custom_values.setdefault("notifier_started", time.monotonic())
        return bool(time.monotonic() - started > self.seconds)


class ServerErrorRetryHandler(RetryHandler):
    """Retries any 5xx (slack_sdk's own handler only retries 500 and 503), within a budget."""

    def __init__(self, max_retry_count: int, budget: Budget) -> None:
        super().__init__(
            max_retry_count,
            BackoffRetryIntervalCalculator(backoff_factor=0.5, jitter=_PrivateJitter()),
        )
        self.budget = budget

    def _can_retry(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> bool:
        if response is None or not 500 <= response.status_code < 600:
            return False
        return self.budget.allow(state, f"HTTP {response.status_code}")


class _BudgetedConnectionErrorRetryHandler(ConnectionErrorRetryHandler):
    """slack_sdk's connection-error handler, plus timeouts and a total time budget."""

    def __init__(self, max_retry_count: int, budget: Budget) -> None:
        super().__init__(
            max_retry_count=max_retry_count,
            interval_calculator=BackoffRetryIntervalCalculator(
                backoff_factor=0.5, jitter=_PrivateJitter()
            ),
            error_types=[
                URLError,
                ConnectionError,
                RemoteDisconnected,
                TimeoutError,
                socket.timeout,
            ],
        )
        self.budget = budget

    def _can_retry(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> bool:
        return super()._can_retry(
            state=state, request=request, response=response, error=error
        ) and self.budget.allow(state, type(error).__name__)


def _retry_after(response: Any) -> float:
    """The Retry-After header in seconds (1 when missing or not a number of seconds)."""
    for key, value in (response.headers or {}).items():
        if key.lower() == "retry-after":
            text = value[0] if isinstance(value, (list, tuple)) and value else value
            try:
                return max(float(str(text).strip()), 0.0)
            except ValueError:
                return 1.0
    return 1.0


class _RateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler: waits Retry-After plus up to 1 s of jitter (from the private
    generator), accepts any number of seconds, and gives up rather than wait past the budget."""

    def __init__(self, max_retry_count: int, budget: Budget) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.budget = budget

    def _can_retry(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> bool:
        if response is None or response.status_code != 429 or self.budget.exhausted(state):
            return False
        started = (state.custom_values or {}).get("notifier_started", time.monotonic())
        wait = _retry_after(response)
        if time.monotonic() - started + wait > self.budget.seconds:
            return False
        self.budget.retried.append(f"rate limited, Retry-After {wait:g}s")
        return True

    def prepare_for_next_attempt(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> None:
        if response is None:
            raise error
        state.next_attempt_requested = True
        time.sleep(_retry_after(response) + _rng.random())
        state.increment_current_attempt()


def retry_handlers(
    *, attempts: int = 4, budget: float = 60.0, limit: Budget | None = None
) -> list[RetryHandler]:
    """slack_sdk retry handlers for connection errors, 5xx and 429 (Retry-After honoured)."""
    limit = limit or Budget(budget)
    return [
        _BudgetedConnectionErrorRetryHandler(attempts - 1, limit),
        ServerErrorRetryHandler(attempts - 1, limit),
        _RateLimitRetryHandler(attempts - 1, limit),
    ]
