"""The webhook backend and notifier.http against a loopback server: bodies, headers, faults."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from notifier_backends.webhook import WebhookBackend

import notifier
from conftest import all_output
from http_server import FAULTS, Behaviour, Fault, HTTPServer, run_fault
from notifier.context import CONTEXT_NAMES
from notifier.errors import DeliveryError
from notifier.http import HTTPDeliveryError, post_json
from tiny import TinyRegressor, make_trainer

PATH = "/hooks/T0/SECRET-PATH-0123456789"
BEARER = "webhook-header-SECRET-0123456789"
AUTH = f"Bearer {BEARER}"
HEADERS = {"Authorization": AUTH, "X-Api-Key": "another-SECRET-value-42"}


@pytest.fixture
def webhook_env(server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """NOTIFIER_WEBHOOK_URL and NOTIFIER_WEBHOOK_HEADERS set for the loopback server."""
    url = server.url_for(PATH)
    monkeypatch.setenv("NOTIFIER_WEBHOOK_URL", url)
    monkeypatch.setenv("NOTIFIER_WEBHOOK_HEADERS", json.dumps(HEADERS))
    return url


def secrets_absent(text: str, url: str) -> None:
    for secret in (url, PATH, BEARER, "SECRET-PATH-0123456789", *HEADERS.values()):
        assert secret not in text


def test_default_body_headers_and_secrets(
    server: HTTPServer,
    webhook_env: str,
    tmp_path: Path,
    notifier_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    callback = notifier.NotifierCallback(["webhook"])
    make_trainer(tmp_path / "run-a", [callback]).train()
    assert callback.flush(10)
    requests = server.wait_for(4)
    bodies = [r.json for r in requests]
    assert [b["event"] for b in bodies] == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    for request, body in zip(requests, bodies, strict=True):
        assert request.path == PATH
        assert request.header("Authorization") == AUTH
        assert request.header("X-Api-Key") == HEADERS["X-Api-Key"]
        assert request.header("Content-Type") == "application/json; charset=utf-8"
        assert str(request.header("User-Agent")).startswith("notifier/")
        assert set(body) == {"event", "title", "text", *CONTEXT_NAMES}
        assert body["text"].startswith(body["title"])
        assert body["run_name"] == "run-a"
    assert bodies[0]["title"] == "🚀 Training started: run-a"
    assert bodies[1]["title"] == "📈 run-a: epoch 1/2" and bodies[1]["epoch"] == 1.0
    assert set(bodies[2]["metrics"]) >= {"loss", "learning_rate", "grad_norm"}
    assert bodies[3]["global_step"] == 8
    backend = callback.backends[0]
    assert backend.describe() == f"webhook (127.0.0.1:{server.port})"
    secrets_absent(repr(callback) + repr(backend), webhook_env)
    secrets_absent(all_output(notifier_logs, capsys), webhook_env)


def test_header_values_never_reach_logs_even_when_the_server_echoes_them(
    server: HTTPServer,
    webhook_env: str,
    tmp_path: Path,
    fast_retries: None,
    notifier_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Echoed whole, or only the bearer token and the path's last segment.
    echo = {"error": f"bad credentials {AUTH} at {webhook_env}"}
    bare = {"error": f"token {BEARER} is not valid for SECRET-PATH-0123456789"}
    server.script(Behaviour.answer(500, bare), Behaviour.answer(422, echo))
    callback = notifier.NotifierCallback(["webhook"], events=["train_begin"])
    make_trainer(tmp_path / "run-h", [callback]).train()
    assert callback.flush(10)
    assert len(server.wait_for(2)) == 2
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    assert (
        len(warnings) == 1 and "refused the message (HTTP 422): bad credentials ***" in warnings[0]
    )
    secrets_absent(all_output(notifier_logs, capsys), webhook_env)


def test_a_json_template_shapes_the_body_with_escaped_values(
    server: HTTPServer, webhook_env: str, tmp_path: Path
) -> None:
    run_name = 'say "hi"\\ {now}\tü'
    template = (
        '{"text": "{{ run_name }} reached epoch {{ epoch|number }}",'
        ' "loss": {{ metrics.loss|tojson }}, "checkpoint": {{ checkpoint|tojson }},'
        ' "eval": {{ eval_metrics|tojson }}}'
    )
    callback = notifier.NotifierCallback(
        ["webhook"],
        events=["train_begin", "epoch_end"],
        templates={"webhook/epoch_end.json.j2": template},
    )
    make_trainer(tmp_path / "run-j", [callback], run_name=run_name).train()
    assert callback.flush(10)
    begin, *epochs = [r.json for r in server.wait_for(3)]
    assert begin["event"] == "train_begin" and begin["run_name"] == run_name  # no template
    assert [e["text"] for e in epochs] == [
        f"{run_name} reached epoch 1",
        f"{run_name} reached epoch 2",
    ]
    for body in epochs:
        assert set(body) == {"text", "loss", "checkpoint", "eval"}
        assert isinstance(body["loss"], float) and body["checkpoint"] is None
        assert body["eval"] == {}


def test_a_template_that_is_not_json_warns_once_and_sends_the_default_body(
    server: HTTPServer, webhook_env: str, tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    broken = '{"loss": {{ metrics.loss }}, "best": {{ best_metric }}}'  # None renders as "—"
    callback = notifier.NotifierCallback(
        ["webhook"], events=["epoch_end"], templates={"epoch_end.json.j2": broken}
    )
    make_trainer(tmp_path / "run-x", [callback]).train()
    assert callback.flush(10)
    bodies = [r.json for r in server.wait_for(2)]
    assert [b["event"] for b in bodies] == ["epoch_end", "epoch_end"]
    assert all(set(b) == {"event", "title", "text", *CONTEXT_NAMES} for b in bodies)
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "epoch_end json template did not render valid JSON" in warnings[0]
    assert "line 1, column" in warnings[0] and "|tojson" in warnings[0]


def test_nan_metrics_are_sent_as_strict_json(
    server: HTTPServer, webhook_env: str, tmp_path: Path
) -> None:
    callback = notifier.NotifierCallback(["webhook"], events=["epoch_end"])
    make_trainer(tmp_path / "nan", [callback], epochs=1, model=TinyRegressor(nan_loss=True)).train()
    assert callback.flush(10)
    (request,) = server.wait_for(1)

    def strict(constant: str) -> Any:
        raise AssertionError(f"non-standard JSON constant {constant}")

    body = json.loads(request.raw, parse_constant=strict)
    assert body["metrics"]["grad_norm"] == "NaN"  # transformers itself zeroes a NaN loss


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_table(
    fault: Fault,
    server: HTTPServer,
    tmp_path: Path,
    fast_retries: None,
    notifier_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = server.url_for(PATH)
    backend = WebhookBackend(url, headers=HEADERS, timeout=0.2)
    requests, _ = run_fault(
        fault, server, backend, tmp_path, notifier_logs, fix="NOTIFIER_WEBHOOK_URL"
    )
    assert all(r.header("Authorization") == AUTH for r in requests)
    secrets_absent(all_output(notifier_logs, capsys), url)


@pytest.mark.parametrize(
    ("answer", "retryable", "disable", "retry_after"),
    [
        (Behaviour.answer(200), None, None, None),
        (Behaviour.answer(204), None, None, None),
        (Behaviour.answer(400, {"message": "bad"}), False, False, None),
        (Behaviour.answer(401), False, True, None),
        (Behaviour.answer(403), False, True, None),
        (Behaviour.answer(404), False, True, None),
        (Behaviour.answer(408), True, False, None),
        (Behaviour.answer(413), False, False, None),
        (Behaviour.answer(302, Location="http://127.0.0.1:9/elsewhere"), False, False, None),
        (Behaviour.ratelimited("3"), True, False, 3.0),
        (Behaviour.ratelimited(None, 0.25), True, False, 0.25),
        (Behaviour.answer(500), True, False, None),
        (Behaviour.answer(503, None, **{"Retry-After": "2"}), True, False, 2.0),
        (Behaviour.reset(), True, False, None),
    ],
)
def test_post_json_classifies_answers(
    server: HTTPServer,
    answer: Behaviour,
    retryable: bool | None,
    disable: bool | None,
    retry_after: float | None,
) -> None:
    server.script(answer)
    url = server.url_for(PATH)
    if retryable is None:
        status, headers, _ = post_json(url, {"x": 1}, timeout=2)
        assert status == answer.status
        return
    with pytest.raises(HTTPDeliveryError) as info:
        post_json(url, {"x": 1}, timeout=2)
    error = info.value
    assert (error.retryable, error.disable, error.retry_after) == (retryable, disable, retry_after)
    assert url not in str(error) and PATH not in str(error)
    assert len(server.received()) == 1  # a redirect is not followed


def test_post_json_times_out_and_cannot_connect(server: HTTPServer) -> None:
    server.default = Behaviour.hang()
    with pytest.raises(DeliveryError, match="did not answer within 0.2s") as info:
        post_json(server.url_for(PATH), {}, timeout=0.2)
    assert info.value.retryable
    closed = HTTPServer()
    url = closed.url_for(PATH)
    closed.close()
    with pytest.raises(DeliveryError, match="unreachable: ConnectionRefusedError") as info:
        post_json(url, {}, timeout=2)
    assert info.value.retryable and PATH not in str(info.value)


def test_secret_pieces_of_urls_and_headers_leave_plain_words_readable() -> None:
    backend = WebhookBackend(
        "https://hooks.example.org/services/T0/SECRET-PATH-0123456789?sig=abc123def",
        headers={
            **HEADERS,
            "Content-Type": "application/json",
            "X-Source": "notifier",
            "X-Team": "Research-Team-7",
        },
    )
    found = set(backend.secrets())
    assert {AUTH, BEARER, HEADERS["X-Api-Key"], "SECRET-PATH-0123456789", "abc123def"} <= found
    # Any custom header's value is a secret, even one that looks like a plain word.
    assert {"Research-Team-7", "notifier"} <= found
    # Masking is by substring in every log line: content headers, the auth scheme and the
    # URL's plain words stay readable.
    assert not {"application/json", "services", "Bearer", "hooks.example.org"} & found


def test_url_credentials_become_basic_auth(server: HTTPServer) -> None:
    url = server.url_for(PATH).replace("http://", "http://user:pa%3Ass@")
    backend = WebhookBackend(url)
    assert "pa%3Ass" in backend.secrets() and "user:" not in backend.describe()
    backend.send(notifier.Message(event="train_begin", text="hello"))
    (request,) = server.wait_for(1)
    assert request.header("Authorization") == "Basic dXNlcjpwYTpzcw=="  # user:pa:ss
    assert request.json["text"] == "hello"


@pytest.mark.parametrize(
    ("env", "options", "needle"),
    [
        ({}, {}, "NOTIFIER_WEBHOOK_URL"),
        ({}, {"url": "hooks.example.com/x"}, "absolute http(s) URL"),
        ({"NOTIFIER_WEBHOOK_HEADERS": "{not json SECRET-VALUE"}, {}, "not valid JSON"),
        ({"NOTIFIER_WEBHOOK_HEADERS": '["SECRET-VALUE"]'}, {}, "must be a JSON object"),
        ({}, {"headers": {"Bad Name": "SECRET-VALUE"}}, "invalid header name"),
        ({}, {"headers": {"X-Token": "SECRET-VALUE\r\nX-Evil: 1"}}, "line break"),
        ({}, {"headers": {"X-Token": ["SECRET-VALUE"]}}, "must be a string"),
        ({}, {"timeout": -1}, "timeout"),
        ({}, {"method": "PUT"}, "unknown option"),
    ],
)
def test_configuration_errors_say_the_fix_without_secrets(
    env: dict[str, str], options: dict[str, Any], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFIER_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("NOTIFIER_WEBHOOK_HEADERS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if env or (options and "url" not in options):
        options = {"url": "https://hooks.example.com/x", **options}
    with pytest.raises(notifier.ConfigurationError) as info:
        notifier.get_backend("webhook", **options)
    assert needle in str(info.value)
    assert "SECRET-VALUE" not in str(info.value)


def test_a_plain_word_api_key_is_masked_too(
    server: HTTPServer, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = WebhookBackend(server.url_for(PATH), headers={"X-Api-Key": "opensesame"})
    notifier.secrets.redact.add(*backend.secrets())
    server.script(Behaviour.answer(401, {"message": "bad api key opensesame"}))
    with pytest.raises(DeliveryError) as info:
        backend.send(notifier.Message(event="train_begin", text="hello"))
    assert "opensesame" not in str(info.value)
    assert "opensesame" not in notifier.secrets.redact("key opensesame rejected")


def test_post_json_hides_echoed_header_values_even_unregistered(server: HTTPServer) -> None:
    secret = "standalone-header-SECRET-987"
    server.script(Behaviour.answer(400, {"message": f"bad token {secret}"}))
    with pytest.raises(HTTPDeliveryError) as info:
        post_json(server.url_for("/x"), {}, headers={"X-Token": secret})
    assert secret not in str(info.value) and "bad token ***" in str(info.value)
