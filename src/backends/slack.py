"""The Slack backend: chat.postMessage with a bot token, or an incoming webhook, via slack_sdk.

Retries are slack_sdk's own retry handlers, bounded in time (``slack_retry``); what is
sent, as data, is built in ``slack_layout``.

With a bot token a run can also live in one thread (``thread``), keep a card edited
in place (``card``: chat.update), keep a dead-man's alert scheduled that fires only
if the process dies without a word (``deadman``: chat.scheduleMessage), and upload
the training-curves plot (files_upload_v2). Each send() posts its text first; the
extras after it never raise (they are logged), so a failing upload or card edit can
neither lose the message nor make the outbox post it twice.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import http.client
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

import notifier
from notifier.backend import check_options, option
from notifier.errors import ConfigurationError, DeliveryError
from notifier.http import host_of
from notifier.secrets import get_logger, redact

from .slack_layout import (
    HEADER_LIMIT,
    MAX_FIELDS,
    SECTION_LIMIT,
    TEXT_LIMIT,
    alarm_text,
    blocks,
    card_message,
    escape,
    resumed_message,
    trim,
)
from .slack_retry import Budget, retry_handlers, sdk_logger

__all__ = [
    "BAD_LAYOUT",
    "HEADER_LIMIT",
    "MAX_FIELDS",
    "SECTION_LIMIT",
    "TEXT_LIMIT",
    "SlackBackend",
    "alarm_text",
    "blocks",
    "card_message",
    "escape",
    "register_backends",
    "resumed_message",
]

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


def _code(answer: Any, status: int) -> str:
    """Slack's error code (``invalid_auth``), or ``HTTP <status>`` when the answer holds
    none: an HTML error page, or slack_sdk's "Received a response in a non-JSON format"."""
    text = str(answer or "").strip()
    return text if re.fullmatch(r"[a-z0-9_]{1,64}", text) else f"HTTP {status}"


# -- live runs: threads, the run card, the dead-man's switch ---------------------------------
#: The events that end a run (a training run, or ``notifier run``'s command): thread replies
#: also shown in the channel, the card's last edit.
FINAL_EVENTS = frozenset({"train_end", "train_error", "run_end", "run_error"})
#: Where a run remembers its thread (and its pending dead-man's alert) for a resumed run.
# A leading underscore: Trainer.push_to_hub skips "_*", so run state never reaches the Hub.
STATE_DIR, STATE_FILE = "_notifier", "slack-thread.json"
_STATE_LOCK = threading.Lock()  # backends of one process may share an output_dir

# chat.scheduleMessage's limits (https://docs.slack.dev/reference/methods/chat.scheduleMessage):
# post_at must be in the future (else time_in_past) and at most 120 days ahead (else
# time_too_far), and at most 30 messages may be scheduled to one channel within a 5-minute
# window (else restricted_too_many). A re-arm is one schedule and one delete, at most every
# deadman_rearm seconds, so MIN_REARM keeps a run at or under 30 per 5 minutes, and the
# backend counts its own calls so back-to-back runs cannot pass SCHEDULE_LIMIT either.
# Runs sharing a channel share the limit: keep the sum of 300/deadman_rearm under 30.
MAX_SCHEDULE_AHEAD = 120 * 86400.0
SCHEDULE_WINDOW, SCHEDULE_LIMIT = 300.0, 30
MIN_REARM = 10.0

#: chat.update errors meaning the card is gone for good (deleted, or not ours to edit).
CARD_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
#: The scope each extra needs, named when Slack answers missing_scope.
SCOPES = {"card": "chat:write", "deadman": "chat:write", "upload": "files:write"}


@dataclasses.dataclass
class _Run:
    """What the backend knows about the run in progress (reset at train_begin)."""

    output_dir: str | None = None
    running: bool = False
    channel_id: str | None = None  # Slack's ID for the channel, from its answers
    thread_ts: str | None = None
    card_ts: str | None = None
    card_tried: bool = False
    card_at: float = -math.inf  # monotonic: when the last card write finished
    card_pending: notifier.Message | None = None
    alarm: tuple[str, str] | None = None  # (channel ID, scheduled_message_id)
    alarm_at: float = -math.inf  # monotonic: the last arming attempt
    stale: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _seconds(name: str, value: Any, minimum: float = 0.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not value > minimum
    ):
        raise ConfigurationError(
            f"slack backend: {name} must be a number of seconds > {minimum:g}, got {value!r}"
        )
    return float(value)


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

    Bot-token mode only: ``thread`` keeps a run in one thread (the end is also shown in
    the channel; a resumed run goes on in the same thread); ``card`` keeps a card edited
    in place at most every ``card_interval`` seconds; ``deadman`` keeps an alert
    scheduled ``deadman_after`` seconds ahead, re-armed at most every ``deadman_rearm``
    seconds, that fires only if the process dies without reporting. Attachments (the
    training-curves plot) are uploaded after the text (scope files:write).
    """

    name = "slack"
    env = {
        "channel": "SLACK_CHANNEL",
        "token": "SLACK_BOT_TOKEN",
        "base_url": "SLACK_BASE_URL",
        "webhook_url": "SLACK_WEBHOOK_URL",
    }
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
        thread: bool = False,
        card: bool = False,
        card_interval: float = 30.0,
        deadman: bool = False,
        deadman_after: float = 600.0,
        deadman_rearm: float = 60.0,
        **options: Any,
    ) -> None:
        check_options(self, options)
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
        self._configure_run(thread, card, card_interval, deadman, deadman_after, deadman_rearm)
        self._retries = Budget(float(max_retry_time))
        retries = functools.partial(retry_handlers, attempts=max_attempts, limit=self._retries)
        self.use_blocks = blocks
        self._token: str | None = None
        self._webhook: WebhookClient | None = None
        self._client: WebClient | None = None
        self.channel = ""
        wanted = [n for n, on in (("thread", thread), ("card", card), ("deadman", deadman)) if on]
        webhook_url = self._choose_mode(client, token, channel, webhook_url, wanted)
        if webhook_url:
            if not str(webhook_url).startswith(("https://", "http://")):
                raise ConfigurationError("slack backend: webhook_url must be an http(s) URL")
            self._webhook_url = str(webhook_url)
            self._webhook = WebhookClient(
                self._webhook_url,
                timeout=timeout,  # type: ignore[arg-type]  # urllib takes float seconds
                logger=sdk_logger(),
                retry_handlers=retries(),
            )
            return
        self.channel = option(channel, "SLACK_CHANNEL", backend=self.name, what="channel")
        if client is not None:
            # A copy with our retry handlers: the caller's client is theirs, left as it was
            # (its token, base_url, proxy and headers carry over).
            self._client = copy.copy(client)
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
            logger=sdk_logger(),
            retry_handlers=retries(),
            **kwargs,
        )

    def _choose_mode(
        self,
        client: WebClient | None,
        token: str | None,
        channel: str | None,
        webhook_url: str | None,
        wanted: list[str],
    ) -> str | None:
        """The incoming webhook's URL in webhook mode, None in bot-token mode.

        Options beat the environment. From the environment alone, a complete bot-token
        configuration (SLACK_BOT_TOKEN and SLACK_CHANNEL) beats SLACK_WEBHOOK_URL: it can do
        everything a webhook can, and threads, cards, the dead-man's switch and uploads too.
        """
        bot_options = client is not None or token not in (None, "") or channel not in (None, "")
        if webhook_url:
            if bot_options and wanted:
                mode = "bot-token mode (the options give a token; webhook_url is not used)"
                logger.debug("slack backend: %s", mode)
                return None
            if wanted:
                raise self._needs_bot(wanted, "webhook_url")
            logger.debug("slack backend: incoming webhook mode (the webhook_url option)")
            return webhook_url
        if bot_options:
            logger.debug("slack backend: bot-token mode (the options)")
            return None
        env_url = option(None, "SLACK_WEBHOOK_URL", backend=self.name, what="", required=False)
        env_bot = [name for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL") if os.environ.get(name)]
        if len(env_bot) == 2 or not env_url:
            also = "; SLACK_WEBHOOK_URL is set too and not used" if env_url else ""
            logger.debug("slack backend: bot-token mode (SLACK_BOT_TOKEN, SLACK_CHANNEL)%s", also)
            return None
        if wanted:
            missing = [n for n in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL") if n not in env_bot]
            raise self._needs_bot(wanted, "SLACK_WEBHOOK_URL", missing)
        logger.debug("slack backend: incoming webhook mode (SLACK_WEBHOOK_URL)")
        return str(env_url)

    @staticmethod
    def _needs_bot(
        wanted: list[str], source: str, missing: tuple[str, ...] | list[str] = ()
    ) -> ConfigurationError:
        unset = f" ({' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set)"
        return ConfigurationError(
            f"slack backend: {', '.join(f'{n}=True' for n in wanted)} needs the bot-token "
            "mode: an incoming webhook can only post (no threads, edits or scheduled messages). "
            f"Set SLACK_BOT_TOKEN and SLACK_CHANNEL (scope chat:write) instead of {source}"
            + (unset if missing else "")
            + "."
        )

    def _configure_run(
        self,
        thread: bool,
        card: bool,
        card_interval: float,
        deadman: bool,
        deadman_after: float,
        deadman_rearm: float,
    ) -> None:
        for name, value in (("thread", thread), ("card", card), ("deadman", deadman)):
            if not isinstance(value, bool):
                raise ConfigurationError(f"slack backend: {name} must be True or False")
        self.thread, self.card, self.deadman = thread, card, deadman
        self.card_interval = _seconds("card_interval", card_interval)
        self.deadman_rearm = _seconds("deadman_rearm", deadman_rearm)
        self.deadman_after = _seconds("deadman_after", deadman_after)
        if deadman:
            if self.deadman_rearm < MIN_REARM:
                raise ConfigurationError(
                    f"slack backend: deadman_rearm must be >= {MIN_REARM:g} seconds: Slack "
                    "takes at most 30 scheduled messages per channel in 5 minutes"
                )
            if self.deadman_after > MAX_SCHEDULE_AHEAD:
                raise ConfigurationError(
                    "slack backend: deadman_after must be at most 120 days (Slack schedules "
                    "no further ahead)"
                )
            if self.deadman_after < 2 * self.deadman_rearm:
                raise ConfigurationError(
                    f"slack backend: deadman_after ({self.deadman_after:g} s) must be at least "
                    f"twice deadman_rearm ({self.deadman_rearm:g} s), or a healthy run's alert "
                    "could fire between two re-arms"
                )
        # The core sends a ``progress`` message at most this often: the card's edits and
        # the dead-man's heartbeats.
        wanted = [s for s, on in ((self.card_interval, card), (self.deadman_rearm, deadman)) if on]
        self.progress_interval: float | None = min(wanted) if wanted else None
        # A card edit due less than this much later waits for it on the worker thread
        # rather than be skipped: the core's ticks and Slack's latency jitter by that much.
        self._card_grace = min(1.0, self.card_interval / 4)
        self._run = _Run()
        self._current: notifier.Message | None = None
        self._done: set[str] = set()
        self._saved: dict[str, Any] | None = None
        self._last_ts: str | None = None
        self._warned: set[tuple[str, str]] = set()
        # When this backend called chat.scheduleMessage (monotonic), over every run it served.
        self._scheduled: deque[float] = deque()

    def escape(self, value: str) -> str:
        return escape(value)

    def secrets(self) -> list[str]:
        return [s for s in (self._token, getattr(self, "_webhook_url", None)) if s]

    def describe(self) -> str:
        return f"slack {self.channel}" if self.channel else "slack (incoming webhook)"

    def payload(self, message: notifier.Message) -> dict[str, Any]:
        body: dict[str, Any] = {"text": trim(message.text, TEXT_LIMIT)}
        if self.use_blocks:
            body["blocks"] = blocks(message)
        return body

    # -- sending ------------------------------------------------------------------------------
    def send(self, message: notifier.Message) -> None:
        if self._webhook is not None:
            self._send_webhook(message)
            return
        if message is not self._current:
            # The outbox retries a message by sending it again: the steps done on an earlier
            # attempt (a thread's parent, say) are not repeated.
            self._current, self._done = message, set()
        if message.event == "train_begin":
            self._begin(message)
        elif message.event == "run_begin":
            self._begin_command(message)
            self._event(message)
        elif message.event == "progress":
            self._progress(message)
        else:
            self._event(message)
        self._heartbeat(message)

    def _send_webhook(self, message: notifier.Message) -> None:
        if message.event == "progress":
            return  # nothing to edit or re-arm through a webhook
        self._post_message(message)
        if message.attachments:
            self._warn_once(
                "upload",
                "webhook",
                "%s: %s not sent: uploading plots needs the bot-token mode "
                "(SLACK_BOT_TOKEN + SLACK_CHANNEL, scope files:write)",
                self.describe(),
                ", ".join(a.filename for a in message.attachments),
            )

    def _step(self, name: str, action: Callable[[], Any]) -> None:
        """Do ``action`` once per message, however often the outbox retries it."""
        if name not in self._done:
            action()
            self._done.add(name)

    def _begin(self, message: notifier.Message) -> None:
        if "begin" not in self._done:
            old = self._run
            # A previous run in this process that never reported its end: its alarm goes.
            stale = old.stale + ([old.alarm] if old.alarm else [])
            self._run = _Run(
                output_dir=message.context.get("output_dir"), running=True, stale=stale
            )
            self._saved = self._load_state() if self.thread or self.deadman else None
            alarm = (self._saved or {}).get("alarm") if self.deadman else None
            if isinstance(alarm, list) and len(alarm) == 2:
                # Left by a run in this output_dir that was killed: it is superseded now.
                self._run.stale.append((str(alarm[0]), str(alarm[1])))
            self._done.add("begin")
        run, saved = self._run, self._saved or {}
        if self.thread:
            if message.context.get("resumed") and saved.get("thread_ts"):
                run.thread_ts = str(saved["thread_ts"])
                run.channel_id = saved.get("channel_id") or run.channel_id
                if self.card and saved.get("card_ts"):
                    run.card_ts = str(saved["card_ts"])
                self._step(
                    "text",
                    lambda: self._post_message(resumed_message(message), thread_ts=run.thread_ts),
                )
            else:
                if self.card:
                    # The card is the thread's parent: the channel shows one live line per
                    # run, and the details go in the thread below it. Should Slack refuse
                    # the card, the start message opens the thread instead.
                    self._step("card", lambda: self._post_card(message, quiet=True))
                self._step("text", lambda: self._post_reply(message))
            self._save_state(message)
        else:
            self._step("text", lambda: self._post_message(message))
        if self.card:
            if run.card_ts is None:
                self._step("card", lambda: self._post_card(message, quiet=True))
            else:
                self._step("card", lambda: self._edit_card(card_message(message, "start")))

    def _begin_command(self, message: notifier.Message) -> None:
        """``notifier run``'s start: a new thread. It sends no progress, so there is no card
        to keep edited and no heartbeat to keep an alert re-armed: those stay off."""
        if "begin" in self._done:
            return
        self._done.add("begin")
        old = self._run  # a run before it in this process that never ended: its alarm goes
        self._run = _Run(stale=old.stale + ([old.alarm] if old.alarm else []))
        extras = [name for name, on in (("card", self.card), ("deadman", self.deadman)) if on]
        if extras:
            self._warn_once(
                "run",
                "extras",
                "%s: %s appl%s to training runs only (NotifierCallback): notifier run sends "
                "its start and end, with no progress to show or heartbeat to watch",
                self.describe(),
                " and ".join(extras),
                "ies" if len(extras) == 1 else "y",
            )

    def _post_card(self, message: notifier.Message, *, quiet: bool = False) -> None:
        """Post the card; ``quiet``: a failure is logged, not raised (the text went out)."""
        run = self._run
        run.card_tried = True
        try:
            data = self._post_message(card_message(message, "start"), thread_ts=run.thread_ts)
        except DeliveryError as error:
            if not quiet:
                raise
            self._warn("card", error)
            return
        run.card_ts = str(data.get("ts") or "") or None
        run.card_at = time.monotonic()
        if self.thread and run.thread_ts is None:
            run.thread_ts = run.card_ts

    def _post_reply(self, message: notifier.Message) -> None:
        run = self._run
        data = self._post_message(message, thread_ts=run.thread_ts)
        if run.thread_ts is None:
            run.thread_ts = str(data.get("ts") or "") or None

    def _event(self, message: notifier.Message) -> None:
        run = self._run
        run.output_dir = run.output_dir or message.context.get("output_dir")
        final = message.event in FINAL_EVENTS
        if self.thread and run.thread_ts is None and message.context.get("rank"):
            # Another rank's crash report: rank 0 opened the thread and wrote it down.
            saved = self._load_state() or {}
            run.thread_ts = saved.get("thread_ts") or None
            run.channel_id = saved.get("channel_id") or run.channel_id
        if self.thread:
            opens = run.thread_ts is None  # no train_begin: this message starts the thread
            self._step(
                "text",
                lambda: self._post_message(
                    message,
                    thread_ts=run.thread_ts,
                    reply_broadcast=True if final and run.thread_ts else None,
                ),
            )
            if opens and run.thread_ts is None and "text" in self._done:
                run.thread_ts = self._last_ts
                self._save_state(message)
        else:
            self._step("text", lambda: self._post_message(message))
        if final:
            if self.card and run.card_ts:
                self._step("card", lambda: self._edit_card(card_message(message, "final")))
            if self.deadman:
                self._step("disarm", self._disarm)
            run.running = False
            self._save_state(message)
        for i, attachment in enumerate(message.attachments):
            self._step(f"upload{i}", functools.partial(self._upload, attachment))

    def _progress(self, message: notifier.Message) -> None:
        run = self._run
        run.running = True
        if not self.card:
            return  # a heartbeat only
        if run.card_ts is None:
            if not run.card_tried:  # no train_begin came: the card starts now
                self._post_card(message, quiet=True)
            return
        wait = run.card_at + self.card_interval - time.monotonic()
        if wait > 0:
            if wait > self._card_grace:
                run.card_pending = message  # too early: the newest state goes out later
                return
            time.sleep(wait)
        self._edit_card(message)

    def _heartbeat(self, message: notifier.Message) -> None:
        """After every message of a live run: a due card edit, a due dead-man's re-arm."""
        run = self._run
        if not run.running or message.event in FINAL_EVENTS:
            return
        now = time.monotonic()
        pending = run.card_pending
        if (
            pending is not None
            and message is not pending
            and now >= run.card_at + self.card_interval
        ):
            self._edit_card(pending)
        if self.deadman and now - run.alarm_at >= self.deadman_rearm:
            self._arm(message)

    # -- the run card ---------------------------------------------------------------------------
    def _edit_card(self, message: notifier.Message) -> None:
        """chat.update the card with ``message``; failures are logged, never raised."""
        run = self._run
        if run.card_ts is None:
            return
        run.card_pending = None
        payload = self.payload(message)
        try:
            try:
                self._api("chat_update", channel=self._channel_id(), ts=run.card_ts, **payload)
            except DeliveryError as error:
                if "blocks" not in payload or error.code not in BAD_LAYOUT:
                    raise
                text = trim(message.text, SECTION_LIMIT)
                self._api("chat_update", channel=self._channel_id(), ts=run.card_ts, text=text)
        except DeliveryError as error:
            gone = error.code in CARD_GONE
            if gone:
                run.card_ts = None  # deleted by someone: stop editing it
            self._warn("card", error, after="; it is no longer edited" if gone else "")
        finally:
            run.card_at = time.monotonic()

    # -- the dead-man's switch ------------------------------------------------------------------
    def _arm(self, message: notifier.Message) -> None:
        """Schedule a fresh alert, then delete the one it replaces.

        Scheduling first means a run killed mid-re-arm leaves an alert (two at worst, never
        none), and a failed schedule leaves the previous alert in place.
        """
        run = self._run
        now = time.monotonic()
        run.alarm_at = now
        while self._scheduled and self._scheduled[0] <= now - SCHEDULE_WINDOW:
            self._scheduled.popleft()
        if len(self._scheduled) >= SCHEDULE_LIMIT - 1:
            self._warn_once(
                "deadman",
                "budget",
                "%s: dead-man's alert not re-armed: Slack takes at most 30 scheduled messages "
                "per channel in 5 minutes",
                self.describe(),
            )
            return
        wall = time.time()
        request: dict[str, Any] = {
            "channel": self._channel_id(),
            # A whole second in the future, never past 120 days (see MAX_SCHEDULE_AHEAD).
            "post_at": int(math.ceil(wall + self.deadman_after)),
            "text": alarm_text(message.context, self.deadman_after, wall),
        }
        if self.thread and run.thread_ts:
            # In the run's thread, and in the channel too: an alarm must be seen.
            request.update(thread_ts=run.thread_ts, reply_broadcast=True)
        self._scheduled.append(now)
        try:
            data = self._api("chat_scheduleMessage", **request)
        except DeliveryError as error:
            self._warn("deadman", error)
            return
        ident = data.get("scheduled_message_id")
        if not ident:
            return
        channel = str(data.get("channel") or self._channel_id())
        run.channel_id = run.channel_id or (channel if _is_channel_id(channel) else None)
        if run.alarm is not None:
            run.stale.append(run.alarm)
        run.alarm = (channel, str(ident))
        self._sweep()
        self._save_state(message)

    def _disarm(self) -> None:
        run = self._run
        if run.alarm is not None:
            run.stale.append(run.alarm)
            run.alarm = None
        self._sweep()

    def _sweep(self) -> None:
        """Delete the alerts no longer wanted; those Slack could not delete are tried again."""
        run = self._run
        keep: list[tuple[str, str]] = []
        for channel, ident in run.stale:
            try:
                self._api(
                    "chat_deleteScheduledMessage", channel=channel, scheduled_message_id=ident
                )
            except DeliveryError as error:
                if error.code == "invalid_scheduled_message_id":
                    continue  # already posted or deleted: nothing left to do
                keep.append((channel, ident))
                self._warn("deadman", error)
        run.stale = keep

    # -- files ----------------------------------------------------------------------------------
    def _upload(self, attachment: notifier.backend.Attachment) -> None:
        """files_upload_v2: files.getUploadURLExternal, a POST of the bytes, then
        files.completeUploadExternal into the channel (by ID) or the run's thread."""
        run = self._run
        data = attachment.read()
        if data is None:
            return  # it could not be drawn: the core has said so, once for every backend
        request: dict[str, Any] = {
            "channel": self._channel_id(),
            "file": data,
            "filename": attachment.filename,
            "title": attachment.title,
        }
        if self.thread and run.thread_ts:
            request["thread_ts"] = run.thread_ts
        try:
            self._api("files_upload_v2", **request)
        except DeliveryError as error:
            self._warn("upload", error, f" ({attachment.filename})")

    # -- Slack calls ----------------------------------------------------------------------------
    def _channel_id(self) -> str:
        """The channel's ID once Slack has named it (chat.update, deleting scheduled messages
        and sharing files take IDs only), else the channel as configured."""
        return self._run.channel_id or self.channel

    def _post_message(self, message: notifier.Message, **extra: Any) -> dict[str, Any]:
        """Post ``message`` (text and blocks; the text alone if Slack refuses the blocks)."""
        extra = {k: v for k, v in extra.items() if v is not None}
        payload = {**self.payload(message), **extra}
        try:
            data = self._post(payload)
        except DeliveryError as error:
            if "blocks" in payload and error.code in BAD_LAYOUT:
                # Never lose a message to a layout Slack refuses: send the text alone.
                data = self._post({"text": trim(message.text, SECTION_LIMIT), **extra})
            else:
                raise
        channel = data.get("channel")
        if isinstance(channel, str) and _is_channel_id(channel):
            self._run.channel_id = channel
        self._last_ts = str(data.get("ts") or "") or None
        return data

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._webhook is None:
            return self._api("chat_postMessage", channel=self.channel, **payload)
        self._retries.retried.clear()
        try:
            response = self._webhook.send(**payload)
        except (SlackClientError, OSError, ValueError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        status = response.status_code
        if status != 200:
            raise self._error(_code(response.body, status), status)
        self._report_retries("the message")
        return {}

    def _report_retries(self, what: str) -> None:
        """A delivery that needed retries succeeded: say so once, so a flaky Slack is seen."""
        retried, self._retries.retried = self._retries.retried, []
        if retried:
            logger.warning(
                "%s: %s was delivered after %d retr%s (%s)",
                self.describe(),
                what,
                len(retried),
                "y" if len(retried) == 1 else "ies",
                ", ".join(retried),
            )

    def _api(self, method: str, **kwargs: Any) -> dict[str, Any]:
        """Call a WebClient method; Slack's answer as a dict, or DeliveryError."""
        assert self._client is not None
        self._retries.retried.clear()
        try:
            response = getattr(self._client, method)(**kwargs)
        except SlackApiError as exc:
            answer = exc.response.data if isinstance(exc.response.data, dict) else {}
            status = exc.response.status_code
            raise self._error(_code(answer.get("error"), status), status) from None
        except (SlackClientError, OSError, ValueError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        self._report_retries(method.replace("_", "."))
        data = getattr(response, "data", None)
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _unreachable(exc: BaseException) -> DeliveryError:
        # URLError, timeouts, resets, an unresolvable host, a non-JSON answer, a refused
        # upload: slack_sdk has already retried what it retries; no token in the reason.
        reason = getattr(exc, "reason", exc)
        return DeliveryError(f"Slack unreachable: {type(exc).__name__}: {redact(str(reason))}")

    def _not_found(self) -> str:
        """The fix for an HTTP 404 that carries no Slack error code: a wrong address."""
        if self._webhook is not None:
            return "the webhook URL is unknown or was removed: check SLACK_WEBHOOK_URL"
        where = host_of(self._client.base_url) if self._client is not None else "?"
        return (
            f"there is no Slack Web API at {where}: check base_url (SLACK_BASE_URL); "
            "Slack's own is https://slack.com/api/"
        )

    def _error(self, code: str, status: int) -> DeliveryError:
        fix = FATAL_ERRORS.get(code)
        if fix is None and code in ("HTTP 404", "HTTP 410"):
            fix = self._not_found()
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

    def _warn(self, what: str, error: DeliveryError, detail: str = "", after: str = "") -> None:
        """Log an extra's failure: a warning the first time per kind and code, then debug."""
        code = error.code or "error"
        if code == "missing_scope":
            reason = f"the token lacks the {SCOPES[what]} scope: add it to the app and reinstall"
        else:
            reason = redact(str(error))
        label = {"card": "run card", "deadman": "dead-man's alert", "upload": "upload"}[what]
        self._warn_once(
            what, code, "%s: %s failed%s: %s%s", self.describe(), label, detail, reason, after
        )

    def _warn_once(self, what: str, code: str, text: str, *args: Any) -> None:
        level = logging.DEBUG if (what, code) in self._warned else logging.WARNING
        self._warned.add((what, code))
        logger.log(level, text, *args)

    # -- the thread, remembered in the output directory ----------------------------------------
    def _state_path(self) -> Path | None:
        output_dir = self._run.output_dir
        return Path(output_dir) / STATE_DIR / STATE_FILE if output_dir else None

    def _load_state(self) -> dict[str, Any] | None:
        """This channel's entry in the output dir's state file, if there is a readable one."""
        path = self._state_path()
        if path is None:
            return None
        try:
            with _STATE_LOCK:
                data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.debug("%s: ignoring %s: %s", self.describe(), path, type(exc).__name__)
            return None
        entry = data.get(self.channel) if isinstance(data, dict) else None
        return entry if isinstance(entry, dict) else None

    def _save_state(self, message: notifier.Message) -> None:
        """Write this channel's thread and pending alert to the state file, atomically (a
        temporary file renamed over it). Rank 0 only: it opened the thread."""
        if not (self.thread or self.deadman) or message.context.get("rank"):
            return
        path = self._state_path()
        if path is None:
            return
        run = self._run
        entry = {
            "channel_id": run.channel_id,
            "thread_ts": run.thread_ts if self.thread else None,
            "card_ts": run.card_ts if self.thread else None,
            "alarm": list(run.alarm) if run.alarm else None,
            "run_name": message.context.get("run_name"),
            "saved_at": time.time(),
        }
        temporary: str | None = None
        with _STATE_LOCK:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    data = {}
                data = data if isinstance(data, dict) else {}
                data[self.channel] = entry
                fd, temporary = tempfile.mkstemp(
                    prefix=f".{STATE_FILE}.", suffix=".tmp", dir=path.parent
                )
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    json.dump(data, file, indent=2, sort_keys=True)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
                temporary = None
            except OSError as exc:
                self._warn_once(
                    "state",
                    "write",
                    "%s: cannot remember the run's thread in %s (%s): a resumed run will start "
                    "a new thread",
                    self.describe(),
                    path.parent,
                    exc.strerror or type(exc).__name__,
                )
            finally:
                if temporary is not None:
                    try:
                        os.unlink(temporary)
                    except OSError:
                        pass

    def check(self) -> None:
        """Verify the token with auth.test (webhooks cannot be checked without posting)."""
        if self._client is None:
            return
        try:
            self._client.auth_test()
        except SlackApiError as exc:
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            code = _code(data.get("error"), exc.response.status_code)
            fix = FATAL_ERRORS.get(code) or (
                self._not_found()
                if code in ("HTTP 404", "HTTP 410")
                else "see https://api.slack.com/methods/auth.test"
            )
            raise ConfigurationError(f"slack backend: auth.test failed: {code}: {fix}") from None
        except (SlackClientError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            raise ConfigurationError(
                f"slack backend: cannot reach Slack ({type(exc).__name__}: {reason})"
            ) from None


def _is_channel_id(channel: str) -> bool:
    """Slack's channel IDs: C… (public), G… (private, older), D… (direct messages)."""
    return re.fullmatch(r"[CGD][A-Z0-9]{8,}", channel) is not None


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(SlackBackend)
