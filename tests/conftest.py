"""Shared fixtures: the loopback Slack server, a recording backend and tiny trainers."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import notifier  # noqa: E402
from http_server import HTTPServer  # noqa: E402
from notifier.outbox import Outbox  # noqa: E402
from slack_server import SlackServer  # noqa: E402

TOKEN = "xoxb-000000000000-0000000000000-SECRETSECRETSECRET"


class RecordingBackend(notifier.Backend):
    """A backend that keeps every message it is sent (a fake, not a mock)."""

    name = "recording"
    description = "keeps messages in a list (tests only)"

    def __init__(self, fail: Exception | None = None) -> None:
        self.messages: list[notifier.Message] = []
        self.fail = fail

    def send(self, message: notifier.Message) -> None:
        if self.fail is not None:
            raise self.fail
        self.messages.append(message)

    @property
    def events(self) -> list[str]:
        return [m.event for m in self.messages]


@pytest.fixture
def slack_server() -> Iterator[SlackServer]:
    server = SlackServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    """A loopback recording HTTP server (Discord, webhooks, Apprise's json://)."""
    running = HTTPServer()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox's real retry logic with millisecond backoff, so fault tests stay fast."""
    defaults = {**(Outbox.__init__.__kwdefaults__ or {}), "backoff": 0.01, "max_backoff": 0.05}
    monkeypatch.setattr(Outbox.__init__, "__kwdefaults__", defaults)


@pytest.fixture
def slack_env(monkeypatch: pytest.MonkeyPatch, slack_server: SlackServer) -> SlackServer:
    """SLACK_BOT_TOKEN and SLACK_CHANNEL set, for backends built by name."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_CHANNEL", "#train")
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    return slack_server


@pytest.fixture
def recording() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def notifier_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="notifier")
    return caplog


def all_output(caplog: pytest.LogCaptureFixture, capsys: Any = None) -> str:
    """Every log line (with tracebacks) and captured output, for secret checks."""
    text = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    if capsys is not None:
        captured = capsys.readouterr()
        text += captured.out + captured.err
    return text
