"""The Slack backend: chat.postMessage with a bot token, or an incoming webhook, via slack_sdk.

Retries are slack_sdk's own retry handlers (the rate-limit handler sleeps for
Retry-After, which is fine on the worker thread); this file adds only a total
time budget and the 5xx codes slack_sdk's server handler leaves out.
"""

from __future__ import annotations

import functools
import html
import logging
import random
import re
import socket
import time
from http.client import RemoteDisconnected
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    RetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.jitter import Jitter
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

import notifier
from notifier.backend import check_options, option
from notifier.errors import ConfigurationError, DeliveryError
from notifier.filters import number
from notifier.secrets import get_logger, redact

logger = get_logger("notifier.slack")

#: Error codes no retry can fix, and what the user should do about each.
FATAL_ERRORS = {
    "invalid_auth": "Slack rejected the token: check SLACK_BOT_TOKEN (a bot token, xoxb-…)",
    "not_authed": "no token reached Slack: check SLACK_BOT_TOKEN",
    "token_revoked": "the token was revoked: reinstall the app and update SLACK_BOT_TOKEN",
    "token_expired": "the token expired: refresh it and update SLACK_BOT_TOKEN",
    "account_inactive": "the app's account is inactive: reinstall the app",
    "channel_not_found": "channel {channel} not found: check SLACK_CHANNEL (a private channel "
    "needs the app invited; a channel ID such as C0123456789 always works)",
    "not_in_channel": "the app is not a member of {channel}: run /invite @your-app there, or add "
    "the chat:write.public scope",
    "is_archived": "channel {channel} is archived: choose another SLACK_CHANNEL",
    "missing_scope": "the token lacks the chat:write scope: add it to the app and reinstall",
    "restricted_action": "the workspace does not allow this app to post in {channel}",
    # incoming webhooks
    "no_service": "the webhook URL is unknown or was removed: check SLACK_WEBHOOK_URL",
    "invalid_token": "the webhook URL's token is invalid: check SLACK_WEBHOOK_URL",
    "no_active_hooks": "the webhook is disabled: re-enable it or make a new one",
    "channel_is_archived": "the webhook's channel is archived: make a new webhook",
    "action_prohibited": "a workspace admin blocked this webhook",
}
BAD_LAYOUT = {"invalid_blocks", "invalid_blocks_format", "msg_too_long"}
HEADER_LIMIT, SECTION_LIMIT, MAX_FIELDS = 150, 3000, 10
TEXT_LIMIT = 39_000  # chat.postMessage truncates past 40,000 characters


class _SdkLogFilter(logging.Filter):
    """slack_sdk logs connection failures at ERROR: we report those ourselves, once and
    without the URL, so its records are scrubbed and only shown when notifier debugs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.getLogger("notifier").isEnabledFor(logging.DEBUG):
            return False
        record.msg, record.args = redact(record.getMessage()), None
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _sdk_logger() -> logging.Logger:
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


class _Budget:
    """Stops retrying once ``seconds`` have passed since the first failure of a request."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def exhausted(self, state: RetryState) -> bool:
        if state.custom_values is None:
            state.custom_values = {}
        started = state.custom_values.setdefault("notifier_started", time.monotonic())
        return bool(time.monotonic() - started > self.seconds)


class ServerErrorRetryHandler(RetryHandler):
    """Retries any 5xx (slack_sdk's own handler only retries 500 and 503), within a budget."""

    def __init__(self, max_retry_count: int, budget: _Budget) -> None:
        super().__init__(
            max_retry_count,
            BackoffRetryIntervalCalculator(backoff_factor=0.5, jitter=_PrivateJitter()),
        )
        self.budget = budget

    def _can_retry(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> bool:
        return (
            response is not None
            and 500 <= response.status_code < 600
            and not self.budget.exhausted(state)
        )


class _BudgetedConnectionErrorRetryHandler(ConnectionErrorRetryHandler):
    """slack_sdk's connection-error handler, plus timeouts and a total time budget."""

    def __init__(self, max_retry_count: int, budget: _Budget) -> None:
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
        ) and not self.budget.exhausted(state)


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

    def __init__(self, max_retry_count: int, budget: _Budget) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.budget = budget

    def _can_retry(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> bool:
        if response is None or response.status_code != 429 or self.budget.exhausted(state):
            return False
        started = (state.custom_values or {}).get("notifier_started", time.monotonic())
        return bool(time.monotonic() - started + _retry_after(response) <= self.budget.seconds)

    def prepare_for_next_attempt(
        self, *, state: RetryState, request: Any, response: Any = None, error: Any = None
    ) -> None:
        if response is None:
            raise error
        state.next_attempt_requested = True
        time.sleep(_retry_after(response) + _rng.random())
        state.increment_current_attempt()


def retry_handlers(*, attempts: int = 4, budget: float = 60.0) -> list[RetryHandler]:
    """slack_sdk retry handlers for connection errors, 5xx and 429 (Retry-After honoured)."""
    limit = _Budget(budget)
    return [
        _BudgetedConnectionErrorRetryHandler(attempts - 1, limit),
        ServerErrorRetryHandler(attempts - 1, limit),
        _RateLimitRetryHandler(attempts - 1, limit),
    ]


def _code(answer: Any, status: int) -> str:
    """Slack's error code (``invalid_auth``), or ``HTTP <status>`` when the answer holds
    none: an HTML error page, or slack_sdk's "Received a response in a non-JSON format"."""
    text = str(answer or "").strip()
    return text if re.fullmatch(r"[a-z0-9_]{1,64}", text) else f"HTTP {status}"


def escape(value: str) -> str:
    """Slack's escaping for message text: only &, < and > (so no value becomes <!channel>)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def blocks(message: notifier.Message) -> list[dict[str, Any]]:
    """A Block Kit layout built alongside the text: a header, the body and metric fields."""
    layout: list[dict[str, Any]] = []
    if message.title:
        # plain_text is shown literally: undo the entity escaping meant for mrkdwn.
        header = _trim(html.unescape(message.title), HEADER_LIMIT)
        layout.append(
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}
        )
    if message.body:
        layout.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _trim(message.body, SECTION_LIMIT)},
            }
        )
    values: dict[str, Any] = {}
    if message.event in ("epoch_end", "evaluate", "train_end"):
        for group in ("metrics", "eval_metrics"):
            source = message.context.get(group) or {}
            values.update({k: v for k, v in source.items() if k not in ("epoch", "total_flos")})
    fields = [
        {"type": "mrkdwn", "text": _trim(f"*{escape(str(k))}*\n{escape(number(v))}", 2000)}
        for k, v in list(values.items())[:MAX_FIELDS]
    ]
    if fields:
        layout.append({"type": "section", "fields": fields})
    return layout


class SlackBackend(notifier.Backend):
    """Posts to a Slack channel with a bot token (chat.postMessage) or an incoming webhook.

    Options, each falling back to an environment variable: ``channel``
    (``SLACK_CHANNEL``), ``token`` (``SLACK_BOT_TOKEN``), ``base_url``
    (``SLACK_BASE_URL``: the Web API root, default ``https://slack.com/api/``; set it
    for a Slack-compatible endpoint such as an Enterprise Grid proxy or a test
    server) and ``webhook_url`` (``SLACK_WEBHOOK_URL``, used when no channel,
    token or client is given). ``client`` is a ready ``slack_sdk.WebClient``.
    ``timeout`` is each request's limit in seconds; a failed request (5xx, 429,
    connection error, timeout) is tried at most ``max_attempts`` times within
    ``max_retry_time`` seconds, with exponential backoff and jitter (429: Retry-After).
    """

    name = "slack"
    description = "Slack: bot token + channel (chat.postMessage) or an incoming webhook"
    max_length = SECTION_LIMIT
    interval = 1.0  # Slack allows about one message per second per channel
    burst = 3

    def __init__(
        self,
        channel: str | None = None,
        *,
        token: str | None = None,
        base_url: str | None = None,
        client: WebClient | None = None,
        webhook_url: str | None = None,
        timeout: float = 10.0,
        max_attempts: int = 4,
        max_retry_time: float = 60.0,
        blocks: bool = True,
        **options: Any,
    ) -> None:
        check_options(self.name, options, set())
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ConfigurationError(
                f"slack backend: timeout must be a number of seconds > 0, got {timeout!r}"
            )
        self.timeout = float(timeout)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(
                f"slack backend: max_attempts must be an integer >= 1, got {max_attempts!r}"
            )
        if not isinstance(max_retry_time, (int, float)) or not max_retry_time >= 0:
            raise ConfigurationError(
                f"slack backend: max_retry_time must be seconds >= 0, got {max_retry_time!r}"
            )
        retries = functools.partial(
            retry_handlers, attempts=max_attempts, budget=float(max_retry_time)
        )
        self.use_blocks = blocks
        self._token: str | None = None
        self._webhook: WebhookClient | None = None
        self._client: WebClient | None = None
        self.channel = ""
        if client is None and token is None and channel is None:
            webhook_url = option(
                webhook_url, "SLACK_WEBHOOK_URL", backend=self.name, what="", required=False
            )
        if webhook_url:
            if not str(webhook_url).startswith(("https://", "http://")):
                raise ConfigurationError("slack backend: webhook_url must be an http(s) URL")
            self._webhook_url = str(webhook_url)
            self._webhook = WebhookClient(
                self._webhook_url,
                timeout=timeout,  # type: ignore[arg-type]  # urllib takes float seconds
                logger=_sdk_logger(),
                retry_handlers=retries(),
            )
            return
        self.channel = option(channel, "SLACK_CHANNEL", backend=self.name, what="channel")
        if client is not None:
            self._client = client
            self._client.retry_handlers = retries()
            self._token = getattr(client, "token", None)
            return
        self._token = option(token, "SLACK_BOT_TOKEN", backend=self.name, what="token")
        if not str(self._token).startswith("xox"):
            raise ConfigurationError(
                "slack backend: the token does not look like a Slack token (xoxb-…). Set "
                "SLACK_BOT_TOKEN to the app's Bot User OAuth Token, or use SLACK_WEBHOOK_URL."
            )
        base_url = option(base_url, "SLACK_BASE_URL", backend=self.name, what="", required=False)
        kwargs: dict[str, Any] = {}
        if base_url:
            if not str(base_url).startswith(("https://", "http://")):
                raise ConfigurationError(
                    "slack backend: base_url (SLACK_BASE_URL) must be an http(s) URL such as "
                    "https://slack.com/api/"
                )
            # slack_sdk joins method names onto it: without the slash "/api" would be lost.
            kwargs["base_url"] = str(base_url).rstrip("/") + "/"
        self._client = WebClient(
            token=self._token,
            timeout=timeout,  # type: ignore[arg-type]  # urllib takes float seconds
            logger=_sdk_logger(),
            retry_handlers=retries(),
            **kwargs,
        )

    def escape(self, value: str) -> str:
        return escape(value)

    def secrets(self) -> list[str]:
        return [s for s in (self._token, getattr(self, "_webhook_url", None)) if s]

    def describe(self) -> str:
        return f"slack {self.channel}" if self.channel else "slack (incoming webhook)"

    def payload(self, message: notifier.Message) -> dict[str, Any]:
        body: dict[str, Any] = {"text": _trim(message.text, TEXT_LIMIT)}
        if self.use_blocks:
            body["blocks"] = blocks(message)
        return body

    def send(self, message: notifier.Message) -> None:
        payload = self.payload(message)
        try:
            self._post(payload)
        except DeliveryError as error:
            if "blocks" in payload and error.code in BAD_LAYOUT:
                # Never lose a message to a layout Slack refuses: send the text alone.
                self._post({"text": _trim(message.text, SECTION_LIMIT)})
                return
            raise

    def _post(self, payload: dict[str, Any]) -> None:
        try:
            if self._webhook is not None:
                response = self._webhook.send(**payload)
                status = response.status_code
                if status != 200:
                    raise self._error(_code(response.body, status), status)
                return
            assert self._client is not None
            self._client.chat_postMessage(channel=self.channel, **payload)
        except SlackApiError as exc:
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            status = exc.response.status_code
            raise self._error(_code(data.get("error"), status), status) from None
        except (OSError, ValueError) as exc:
            # URLError, timeouts, resets, an unresolvable host, a non-JSON answer: slack_sdk
            # has already retried these; the reason never holds the token or the URL path.
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(
                f"Slack unreachable: {type(exc).__name__}: {redact(str(reason))}"
            ) from None

    def _error(self, code: str, status: int) -> DeliveryError:
        fix = FATAL_ERRORS.get(code)
        if fix is not None:
            error = DeliveryError(f"{code}: {fix.format(channel=self.channel)}", disable=True)
        elif status == 429:
            error = DeliveryError("rate limited by Slack (429) after retrying")
        else:
            error = DeliveryError(
                f"Slack answered {code}" + (f" (HTTP {status})" if code != f"HTTP {status}" else "")
            )
        error.code = code
        return error

    def check(self) -> None:
        """Verify the token with auth.test (webhooks cannot be checked without posting)."""
        if self._client is None:
            return
        try:
            self._client.auth_test()
        except SlackApiError as exc:
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            code = str(data.get("error") or f"HTTP {exc.response.status_code}")
            fix = FATAL_ERRORS.get(code, "see https://api.slack.com/methods/auth.test")
            raise ConfigurationError(f"slack backend: auth.test failed: {code}: {fix}") from None
        except OSError as exc:
            raise ConfigurationError(
                f"slack backend: cannot reach Slack: {type(exc).__name__}"
            ) from None


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(SlackBackend)
