"""The apprise backend: real Apprise posting json:// notifications to a loopback HTTP server."""

from __future__ import annotations

import base64
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from notifier_backends.apprise_backend import AppriseBackend, split_urls, with_timeout

import notifier
from conftest import all_output
from http_server import ATTEMPTS, FAULTS, Behaviour, Fault, HTTPServer, run_fault
from notifier.backend import Message
from notifier.http import url_secrets
from notifier.outbox import Outbox
from notifier.secrets import redact
from tiny import make_trainer

pytest.importorskip("apprise")
# Apprise's e-mail plugin imports the deprecated imghdr module while Apprise loads its plugins.
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

PATH_TOKEN = "hooks/T0KEN-in-the-path-0123456789"
PASSWORD = "s3cret-pa55word"


@dataclass
class Posted:
    path: str
    auth: str
    body: dict[str, Any]


@dataclass
class Recorder:
    """A loopback HTTP server that records each POST and answers with scripted statuses."""

    statuses: list[int] = field(default_factory=list)
    posted: list[Posted] = field(default_factory=list)
    answered: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)

    def url(self, port: int, *, scheme: str = "json") -> str:
        return f"{scheme}://notifier:{PASSWORD}@127.0.0.1:{port}/{PATH_TOKEN}"

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length)
        with self.cond:
            status = self.statuses.pop(0) if self.statuses else 200
            if status == 200:
                auth = request.headers.get("Authorization", "")
                self.posted.append(Posted(request.path, auth, json.loads(raw)))
            self.answered += 1
            self.cond.notify_all()
        request.send_response(status)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Posted]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.posted) >= count, timeout)
            return list(self.posted)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, str]]:
    """The recorder and an Apprise json:// URL (with a password and a path token) for it."""
    monkeypatch.setenv("NO_PROXY", "*")  # requests must not send loopback calls to a proxy
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            recorder.handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield recorder, recorder.url(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def apprise_logs(notifier_logs: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """notifier at DEBUG and Apprise as talkative as it gets, to prove nothing leaks."""
    notifier_logs.set_level(logging.DEBUG, logger="apprise")
    return notifier_logs


def text(event: str = "epoch_end") -> Message:
    return Message(event=event, text="📈 run-a: epoch 1/2\nTrain: loss 0.5")


def test_trainer_delivers_start_epochs_and_end(
    recorder: tuple[Recorder, str], tmp_path: Path, apprise_logs: pytest.LogCaptureFixture
) -> None:
    server, url = recorder
    callback = notifier.NotifierCallback([AppriseBackend(urls=[url])])
    make_trainer(tmp_path / "run-a", [callback]).train()
    assert callback.flush(10)
    posted = server.wait_for(4)
    titles = [p.body["title"] for p in posted]
    assert titles[0] == "🚀 Training started: run-a"
    assert titles[1] == "📈 run-a: epoch 1/2" and titles[2] == "📈 run-a: epoch 2/2"
    assert titles[3] == "✅ Training finished: run-a"
    assert [p.body["type"] for p in posted] == ["info", "info", "info", "success"]
    for item in posted:
        assert item.path == "/" + PATH_TOKEN
        assert item.auth == "Basic " + base64.b64encode(f"notifier:{PASSWORD}".encode()).decode()
        assert str(tmp_path / "run-a") in item.body["message"]
        assert item.body["title"] not in item.body["message"]  # the body is the rest
    assert "Train: loss" in posted[1].body["message"]
    output = all_output(apprise_logs)
    assert "Loaded JSON URL" in output  # Apprise's own records were seen, and scrubbed:
    for secret in (url, PATH_TOKEN, PASSWORD, "127.0.0.1:"):
        assert secret not in output


def test_a_500_is_retried_and_logged_without_the_url(
    recorder: tuple[Recorder, str], apprise_logs: pytest.LogCaptureFixture
) -> None:
    server, url = recorder
    server.statuses = [500]
    backend = AppriseBackend(urls=url)
    redact.add(*backend.secrets())
    outbox = Outbox(backend, backoff=0.01)
    outbox.put(text())
    assert outbox.flush(10)
    assert server.answered == 2 and len(server.posted) == 1
    assert (outbox.sent, outbox.failed) == (1, 0)
    retries = [r.getMessage() for r in apprise_logs.records if "retry 1" in r.getMessage()]
    assert retries and "Apprise could not deliver to 1 of 1 URL(s) (json)" in retries[0]
    failure = [r for r in apprise_logs.records if "error=500" in r.getMessage()]
    assert failure and failure[0].levelname == "DEBUG"  # Apprise's own warning, demoted
    output = all_output(apprise_logs)
    for secret in (url, PATH_TOKEN, PASSWORD, "127.0.0.1:"):
        assert secret not in output


def test_persistent_failure_warns_once_with_the_scheme_only(
    recorder: tuple[Recorder, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, url = recorder
    server.statuses = [503] * 6
    backend = AppriseBackend(urls=[url])
    outbox = Outbox(backend, backoff=0.01, max_attempts=3)
    outbox.put(text())
    outbox.put(text())
    assert outbox.flush(10)
    assert server.answered == 6 and outbox.failed == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # Apprise's own warnings are not shown at INFO
    assert "after 3 attempts" in warnings[0] and "(json)" in warnings[0]
    assert PATH_TOKEN not in warnings[0]


def test_a_retry_does_not_repeat_urls_that_already_succeeded(
    recorder: tuple[Recorder, str],
) -> None:
    server, url = recorder
    second = url.replace(PATH_TOKEN, "second")
    server.statuses = [200, 500]  # the first URL gets it, the second fails once
    outbox = Outbox(AppriseBackend(urls=f"{url}, {second}"), backoff=0.01)
    outbox.put(text("train_error"))
    assert outbox.flush(10)
    assert [p.path for p in server.posted] == ["/" + PATH_TOKEN, "/second"]
    assert [p.body["type"] for p in server.posted] == ["failure", "failure"]


def test_urls_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, recorder: tuple[Recorder, str]
) -> None:
    _, url = recorder
    monkeypatch.setenv("APPRISE_URLS", f"  {url}\n  mailto://me:pw@example.org?to=a@x.org,b@x.org")
    backend = notifier.get_backend("apprise")
    assert isinstance(backend, AppriseBackend)
    assert backend.urls == [url, "mailto://me:pw@example.org?to=a@x.org,b@x.org"]
    assert backend.describe() == "apprise (json, mailto)"
    assert url in backend.secrets() and PASSWORD in backend.secrets()
    assert "notifier" not in backend.secrets()  # the URL's user: a plain word stays readable
    assert url not in repr(backend)


@pytest.mark.parametrize(
    ("urls", "words"),
    [
        (None, "APPRISE_URLS"),
        ("   ", "APPRISE_URLS"),
        (
            ["json://127.0.0.1/ok", "nosuchservice://SECRET-TOKEN-123/x"],
            "URL #2 (scheme nosuchservice://)",
        ),
        (["not a url SECRET-TOKEN-123"], "URL #1 (scheme ?://)"),
    ],
)
def test_bad_urls_are_refused_by_scheme_only(
    monkeypatch: pytest.MonkeyPatch,
    urls: Any,
    words: str,
    apprise_logs: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv("APPRISE_URLS", raising=False)
    with pytest.raises(notifier.ConfigurationError) as caught:
        AppriseBackend(urls=urls)
    assert words in str(caught.value)
    assert "SECRET-TOKEN-123" not in str(caught.value) + all_output(apprise_logs)


def test_missing_apprise_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "apprise", None)  # what an environment without it sees
    with pytest.raises(notifier.ConfigurationError, match=r"pip install 'notifier\[apprise\]'"):
        AppriseBackend(urls=["json://127.0.0.1/x"])


def test_splitting_and_secret_pieces() -> None:
    assert split_urls("a://x, b://y\tc://z?to=1,2") == ["a://x", "b://y", "c://z?to=1,2"]
    pieces = set(url_secrets("tgram://123456:AAbbCCdd/chat-000123?token=qwerty123"))
    assert {"123456:AAbbCCdd", "chat-000123", "qwerty123"} <= pieces
    assert "127.0.0.1" not in url_secrets("json://127.0.0.1:8080/short")
    # Masking is by substring in every log line: plain words must stay readable.
    words = set(url_secrets("json://notifier:pa55word@example.org/webhooks/Zx9-token-0001"))
    assert {"pa55word", "Zx9-token-0001"} <= words
    assert not {"notifier", "webhooks", "example.org"} & words


# -- timeouts and the shared fault table ------------------------------------------------------


def plugin_timeouts(backend: AppriseBackend) -> list[tuple[float, float]]:
    """(connect, read) timeouts of the Apprise plugin built for each URL."""
    return [
        (plugin.socket_connect_timeout, plugin.socket_read_timeout)
        for target in backend._targets
        for plugin in target
    ]


@pytest.mark.parametrize(
    ("url", "timeout", "env", "expected"),
    [
        ("json://127.0.0.1/x", None, None, (4.0, 4.0)),  # Apprise's own defaults
        ("json://127.0.0.1/x", 0.5, None, (0.5, 0.5)),
        ("json://127.0.0.1/x", None, "1.5", (1.5, 1.5)),
        ("json://127.0.0.1/x", "2", "9", (2.0, 2.0)),  # the option before the environment
        ("json://127.0.0.1/x?rto=3", 0.5, None, (0.5, 3.0)),  # the URL's own setting wins
        ("json://127.0.0.1/x?method=PUT&CTO=7", 0.5, None, (7.0, 0.5)),
        ("mailto://me:pw@example.org?to=a@x.org", 2.5, None, (2.5, 2.5)),  # SMTP: cto
        ("slack://T1aaaaaa/B1bbbbbbb/C1ccccccccccccccccccccccc/#general", 1.0, None, (1.0, 1.0)),
    ],
)
def test_timeout_sets_apprise_connect_and_read_timeouts(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    timeout: Any,
    env: str | None,
    expected: tuple[float, float],
) -> None:
    if env is None:
        monkeypatch.delenv("APPRISE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("APPRISE_TIMEOUT", env)
    backend = AppriseBackend(urls=[url], timeout=timeout)
    assert plugin_timeouts(backend) == [expected]
    assert backend.urls == [url]  # shown and scrubbed as given
    assert with_timeout(url, None) == url


@pytest.mark.parametrize("timeout", [0, -1, "soon", float("inf"), True])
def test_a_bad_timeout_names_the_fix(timeout: Any) -> None:
    with pytest.raises(notifier.ConfigurationError, match=r"APPRISE_TIMEOUT"):
        AppriseBackend(urls=["json://127.0.0.1/x"], timeout=timeout)


@pytest.fixture
def loopback(server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A json:// URL (with a password and a path token) for the shared loopback server."""
    monkeypatch.setenv("NO_PROXY", "*")  # requests must not send loopback calls to a proxy
    return f"json://notifier:{PASSWORD}@127.0.0.1:{server.port}/{PATH_TOKEN}"


def test_a_hung_server_costs_the_timeout_not_apprises_default(
    server: HTTPServer, loopback: str
) -> None:
    server.default = Behaviour.hang()
    backend = AppriseBackend(urls=[loopback], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(notifier.DeliveryError) as caught:
        backend.send(text())
    assert time.monotonic() - started < 2.0  # Apprise's default read timeout is 4 s
    assert caught.value.retryable and caught.value.retry_after is None
    assert len(server.wait_for(1)) == 1


_SHARED = {fault.name: fault for fault in FAULTS}
#: http_server.FAULTS as Apprise meets them. Apprise reports success or failure only, so:
#: a 429 is retried after the outbox's own backoff (its Retry-After unseen), and a 404
#: (a deleted webhook) is retried like a 500 instead of switching the backend off.
APPRISE_FAULTS: tuple[Fault, ...] = (
    _SHARED["500 always"],
    _SHARED["500 twice then OK"],
    replace(_SHARED["429 Retry-After header"], min_gap=0.0),
    _SHARED["connection reset"],
    _SHARED["timeout"],  # bounded by timeout=0.2 per attempt
    replace(_SHARED["404 deleted webhook"], requests=2 * ATTEMPTS, disables=False),
)


@pytest.mark.parametrize("fault", APPRISE_FAULTS, ids=[f.name for f in APPRISE_FAULTS])
def test_fault_table(
    fault: Fault,
    server: HTTPServer,
    loopback: str,
    tmp_path: Path,
    fast_retries: None,
    apprise_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend = AppriseBackend(urls=[loopback], timeout=0.2)
    started = time.monotonic()
    requests, warnings = run_fault(
        fault, server, backend, tmp_path, apprise_logs, fix="APPRISE_URLS"
    )
    # Ten attempts at a hung server: 0.2 s each, not Apprise's default 4 s.
    assert time.monotonic() - started < 15
    assert all(r.path == "/" + PATH_TOKEN for r in requests)
    if fault.name.startswith("429"):
        assert requests[1].at - requests[0].at < 1.0  # Retry-After: 1 is not seen
    if warnings:
        assert "Apprise could not deliver to 1 of 1 URL(s) (json)" in warnings[0]
    output = all_output(apprise_logs, capsys)
    for secret in (loopback, PATH_TOKEN, PASSWORD, "127.0.0.1:"):
        assert secret not in output
