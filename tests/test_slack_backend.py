"""The Slack backend's configuration, payloads and Slack's answers, against the loopback server."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from notifier_backends.slack import BAD_LAYOUT, HEADER_LIMIT, MAX_FIELDS, SECTION_LIMIT, blocks
from slack_sdk import WebClient
from transformers import EvalPrediction

import notifier
from conftest import TOKEN
from notifier import ConfigurationError, Message, NotifierCallback, SlackCallback, get_backend
from slack_server import Behaviour, SlackServer
from tiny import make_trainer

SLACK_VARS = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_BASE_URL")


@pytest.fixture(autouse=True)
def no_slack_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from no Slack configuration (the fixtures then add what they need)."""
    for name in SLACK_VARS:
        monkeypatch.delenv(name, raising=False)


def webhook_path(server: SlackServer) -> str:
    return urllib.parse.urlsplit(server.webhook_url).path


def message(event: str = "train_begin", text: str = "🚀 Training started: run\nbody") -> Message:
    return Message(event=event, text=text)


def assert_valid_blocks(layout: list[dict[str, Any]]) -> None:
    """The Block Kit limits Slack enforces for the blocks this backend builds."""
    assert 0 < len(layout) <= 50
    for block in layout:
        assert block["type"] in ("header", "section"), block
        if block["type"] == "header":
            assert set(block) == {"type", "text"}
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= HEADER_LIMIT
        elif "fields" in block:
            assert set(block) == {"type", "fields"}
            assert 0 < len(block["fields"]) <= MAX_FIELDS
            for item in block["fields"]:
                assert item["type"] == "mrkdwn" and 0 < len(item["text"]) <= 2000
        else:
            assert set(block) == {"type", "text"}
            assert block["text"]["type"] == "mrkdwn"
            assert 0 < len(block["text"]["text"]) <= SECTION_LIMIT


# -- bot token + channel ---------------------------------------------------------------------
@pytest.mark.parametrize("how", ["option", "env", "env-without-slash"])
def test_token_and_channel_come_from_the_environment(
    how: str, slack_env: SlackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = {}
    if how == "option":
        options["base_url"] = slack_env.base_url
    else:
        url = slack_env.base_url if how == "env" else slack_env.base_url.rstrip("/")
        monkeypatch.setenv("SLACK_BASE_URL", url)
    backend = get_backend("slack", **options)
    backend.send(message())
    (request,) = slack_env.wait_for(1)
    assert request.path == "/api/chat.postMessage"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.body["channel"] == "#train"
    assert request.body["text"] == "🚀 Training started: run\nbody"


def test_options_override_the_environment(slack_env: SlackServer) -> None:
    other = "xoxb-111111111111-1111111111111-OTHEROTHEROTHER"
    backend = get_backend("slack", channel="C0123456789", token=other, base_url=slack_env.base_url)
    backend.send(message())
    (request,) = slack_env.wait_for(1)
    assert request.headers["Authorization"] == f"Bearer {other}"
    assert request.body["channel"] == "C0123456789"


WEBHOOK = "https://hooks.slack.com/services/T000/B000/XXXXSECRETXXXX"


# -- which mode: bot token or incoming webhook ------------------------------------------------
BOTH = ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL")


@pytest.mark.parametrize(
    ("env", "options", "mode"),
    [
        (BOTH, {}, "bot"),  # a complete bot configuration beats the webhook variable
        (BOTH, {"thread": True}, "bot"),
        (BOTH, {"deadman": True, "card": True}, "bot"),
        (("SLACK_CHANNEL", "SLACK_WEBHOOK_URL"), {}, "webhook"),  # the bot half-configured
        (("SLACK_BOT_TOKEN", "SLACK_WEBHOOK_URL"), {}, "webhook"),
        (("SLACK_WEBHOOK_URL",), {"channel": "#train", "token": TOKEN}, "bot"),  # options win
        (("SLACK_BOT_TOKEN", "SLACK_CHANNEL"), {"webhook_url": "server"}, "webhook"),
        (BOTH, {"webhook_url": "server"}, "webhook"),
        (BOTH, {"webhook_url": "server", "token": TOKEN, "thread": True}, "bot"),
    ],
)
def test_the_mode_follows_options_then_a_complete_bot_configuration(
    env: tuple[str, ...],
    options: dict[str, Any],
    mode: str,
    slack_server: SlackServer,
    monkeypatch: pytest.MonkeyPatch,
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    values = {
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_CHANNEL": "#train",
        "SLACK_WEBHOOK_URL": slack_server.webhook_url,
    }
    for name in env:
        monkeypatch.setenv(name, values[name])
    monkeypatch.setenv("SLACK_BASE_URL", slack_server.base_url)
    if options.get("webhook_url") == "server":
        options = {**options, "webhook_url": slack_server.webhook_url}
    backend = get_backend("slack", **options)
    backend.send(message())
    request = slack_server.wait_for(
        1, "chat.postMessage" if mode == "bot" else webhook_path(slack_server)
    )[0]
    if mode == "bot":
        assert request.path == "/api/chat.postMessage"
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert backend.describe() == "slack #train"
    else:
        assert request.path == webhook_path(slack_server)
        assert backend.describe() == "slack (incoming webhook)"
    chosen = [r.getMessage() for r in notifier_logs.records if "mode (" in r.getMessage()]
    assert len(chosen) == 1 and chosen[0].startswith(
        f"slack backend: {'bot-token' if mode == 'bot' else 'incoming webhook'} mode"
    )
    assert notifier_logs.records[0].levelno == logging.DEBUG
    if mode == "bot" and "SLACK_WEBHOOK_URL" in env and not options:
        assert "SLACK_WEBHOOK_URL is set too and not used" in chosen[0]


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        (("SLACK_WEBHOOK_URL",), "SLACK_BOT_TOKEN and SLACK_CHANNEL are not set"),
        (("SLACK_WEBHOOK_URL", "SLACK_CHANNEL"), "(SLACK_BOT_TOKEN is not set)"),
        (("SLACK_WEBHOOK_URL", "SLACK_BOT_TOKEN"), "(SLACK_CHANNEL is not set)"),
    ],
)
def test_a_bot_only_feature_with_the_webhook_variable_names_what_is_missing(
    env: tuple[str, ...], missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_CHANNEL": "#train", "SLACK_WEBHOOK_URL": WEBHOOK}
    for name in env:
        monkeypatch.setenv(name, values[name])
    with pytest.raises(ConfigurationError) as caught:
        get_backend("slack", thread=True)
    text = str(caught.value)
    assert "thread=True needs the bot-token mode" in text and missing in text
    assert "SECRET" not in text and TOKEN not in text


# -- a ready WebClient -----------------------------------------------------------------------
def test_a_given_client_is_used_through_a_copy_left_untouched(slack_server: SlackServer) -> None:
    other = "xoxb-222222222222-2222222222222-CLIENTCLIENTCLIENT"
    client = WebClient(token=other, base_url=slack_server.base_url)
    handlers = client.retry_handlers
    before = list(handlers)
    backend = get_backend("slack", channel="#train", client=client, max_attempts=2)
    assert client.retry_handlers is handlers and client.retry_handlers == before
    # Our handlers are on the copy: a 500 is retried (the client's own would not retry it).
    slack_server.script(Behaviour("status", status=500))
    backend.send(message())
    first, second = slack_server.wait_for(2)
    for request in (first, second):
        assert request.path == "/api/chat.postMessage"  # the client's base_url
        assert request.headers["Authorization"] == f"Bearer {other}"  # and its token
    assert client.retry_handlers is handlers and client.retry_handlers == before
    assert other in backend.secrets()


@pytest.mark.parametrize(
    ("env", "options", "names"),
    [
        ({"SLACK_CHANNEL": "#c"}, {}, "SLACK_BOT_TOKEN"),
        ({}, {"channel": "#c"}, "SLACK_BOT_TOKEN"),
        ({"SLACK_BOT_TOKEN": TOKEN}, {}, "SLACK_CHANNEL"),
        ({}, {}, "SLACK_CHANNEL"),
        ({"SLACK_CHANNEL": "#c", "SLACK_BOT_TOKEN": WEBHOOK}, {}, "SLACK_BOT_TOKEN"),
        ({"SLACK_CHANNEL": "#c", "SLACK_BOT_TOKEN": "not-a-token-at-all"}, {}, "SLACK_BOT_TOKEN"),
        ({"SLACK_CHANNEL": "#c", "SLACK_BOT_TOKEN": TOKEN, "SLACK_BASE_URL": "x"}, {}, "BASE_URL"),
        ({}, {"webhook_url": "hooks.slack.com/services/T0/B0/XXXXSECRET"}, "webhook_url"),
        ({}, {"channel": "#c", "colour": "red"}, "colour"),
    ],
    ids=[
        "no-token",
        "no-token-option",
        "no-channel",
        "nothing",
        "url-as-token",
        "junk-token",
        "bad-base-url",
        "bad-webhook",
        "unknown-option",
    ],
)
def test_configuration_errors_name_the_fix(
    env: dict[str, str], options: dict[str, Any], names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        get_backend("slack", **options)
    text = str(caught.value)
    assert text.startswith("slack backend: ") and names in text
    assert TOKEN not in text and "SECRET" not in text


# -- incoming webhooks -----------------------------------------------------------------------
@pytest.mark.parametrize("how", ["option", "env"])
def test_webhook_posts_json_with_text_and_blocks(
    how: str, slack_server: SlackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how == "env":
        monkeypatch.setenv("SLACK_WEBHOOK_URL", slack_server.webhook_url)
        backend = get_backend("slack")
    else:
        backend = get_backend("slack", webhook_url=slack_server.webhook_url)
    backend.send(message("epoch_end", "📈 run: epoch 1/2\nTrain: loss 0.5"))
    (request,) = slack_server.wait_for(1, webhook_path(slack_server))
    assert request.headers["Content-Type"].startswith("application/json")
    assert "Authorization" not in request.headers
    assert request.body["text"] == "📈 run: epoch 1/2\nTrain: loss 0.5"
    assert request.body["blocks"][0]["text"]["text"] == "📈 run: epoch 1/2"
    assert_valid_blocks(request.body["blocks"])
    assert slack_server.posted() == []  # no chat.postMessage in webhook mode


# -- Block Kit layout ------------------------------------------------------------------------
METRICS = {f"metric_{i:02d}": i / 7 for i in range(12)}


@pytest.mark.parametrize(
    ("msg", "header", "body", "fields"),
    [
        (Message("train_begin", "🚀 Started: run\n2 epochs"), "🚀 Started: run", "2 epochs", 0),
        (Message("train_begin", "x" * 400 + "\nmore"), "x" * (HEADER_LIMIT - 1) + "…", "more", 0),
        (Message("train_begin", "a &amp; b &lt;c&gt;"), "a & b <c>", None, 0),
        (Message("save", "saved\n" + "y" * 5000), "saved", "y" * (SECTION_LIMIT - 1) + "…", 0),
        (
            Message("epoch_end", "📈 epoch\nTrain: …", context={"metrics": METRICS}),
            "📈 epoch",
            "Train: …",
            MAX_FIELDS,
        ),
        (
            Message(
                "train_end",
                "✅ done",
                context={
                    "metrics": {"loss": 0.25, "epoch": 2.0, "total_flos": 1e9},
                    "eval_metrics": {"eval_loss": 0.5},
                },
            ),
            "✅ done",
            None,
            2,
        ),
        (Message("train_begin", "🚀", context={"metrics": METRICS}), "🚀", None, 0),
    ],
    ids=["plain", "long-title", "escaped-title", "long-body", "many-metrics", "end", "no-fields"],
)
def test_block_kit_layout(msg: Message, header: str, body: str | None, fields: int) -> None:
    layout = blocks(msg)
    assert_valid_blocks(layout)
    assert layout[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": header, "emoji": True},
    }
    sections = [b["text"]["text"] for b in layout if b["type"] == "section" and "text" in b]
    assert sections == ([] if body is None else [body])
    field_blocks = [b["fields"] for b in layout if "fields" in b]
    assert sum(len(f) for f in field_blocks) == fields
    if msg.event == "train_end":
        texts = [f["text"] for f in field_blocks[0]]
        assert texts == ["*eval_loss*\n0.5", "*loss*\n0.25"]  # epoch and total_flos left out


def test_every_message_of_a_real_run_has_valid_blocks(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = get_backend("slack", channel="#train", token=TOKEN, base_url=slack_server.base_url)
    callback = notifier.NotifierCallback(
        [backend], events=["train_begin", "epoch_end", "train_end"]
    )
    make_trainer(tmp_path / "run-blocks", [callback], eval_strategy="epoch").train()
    assert callback.flush(10)
    requests = slack_server.wait_for(4)
    for request in requests:
        assert_valid_blocks(request.body["blocks"])
    epoch_fields = [
        f["text"] for b in requests[1].body["blocks"] if "fields" in b for f in b["fields"]
    ]
    assert any(text.startswith("*loss*\n") for text in epoch_fields)
    assert any(text.startswith("*eval_loss*\n") for text in epoch_fields)


def five_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Four evaluation metrics besides eval_loss, as a compute_metrics would give."""
    predictions, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    error = predictions - labels
    return {
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "max_error": float(np.abs(error).max()),
        "bias": float(error.mean()),
    }


def test_the_fields_show_every_eval_metric_and_no_bookkeeping(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = get_backend("slack", channel="#train", token=TOKEN, base_url=slack_server.base_url)
    callback = notifier.NotifierCallback([backend], events=["epoch_end", "train_end"])
    trainer = make_trainer(tmp_path / "run", [callback], eval_strategy="epoch")
    trainer.compute_metrics = five_metrics
    trainer.train()
    assert callback.flush(10)
    requests = slack_server.wait_for(3)
    evals = ["eval_loss", "eval_mae", "eval_rmse", "eval_max_error", "eval_bias"]
    for request in requests:
        names = [
            f["text"].split("\n")[0].strip("*")
            for b in request.body["blocks"]
            if "fields" in b
            for f in b["fields"]
        ]
        assert 0 < len(names) <= MAX_FIELDS
        assert names[: len(evals)] == evals  # evaluation first, none cut off
        for name in names:
            assert not name.endswith(("_runtime", "_per_second")), name
            assert name not in ("epoch", "total_flos", "step"), name
    final = requests[-1].body["text"]
    assert final.startswith("✅ Training finished: run")


# -- Slack's answers -------------------------------------------------------------------------
@pytest.mark.parametrize("code", sorted(BAD_LAYOUT))
@pytest.mark.parametrize("mode", ["bot", "webhook"])
def test_refused_layout_falls_back_to_text(mode: str, code: str, slack_server: SlackServer) -> None:
    if mode == "bot":
        backend = get_backend("slack", channel="#c", token=TOKEN, base_url=slack_server.base_url)
        method = "chat.postMessage"
    else:
        backend = get_backend("slack", webhook_url=slack_server.webhook_url)
        method = webhook_path(slack_server)
    slack_server.script(Behaviour("error", error=code))
    backend.send(message("train_begin", "🚀 Training started: run\nbody"))
    first, second = slack_server.wait_for(2, method)
    assert "blocks" in first.body
    assert "blocks" not in second.body
    assert second.body["text"] == "🚀 Training started: run\nbody"


def test_refused_layout_loses_no_message_in_a_run(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    slack_server.script(Behaviour("error", error="invalid_blocks"))
    backend = get_backend("slack", channel="#c", token=TOKEN, base_url=slack_server.base_url)
    callback = notifier.NotifierCallback([backend])
    make_trainer(tmp_path / "run-fallback", [callback]).train()
    assert callback.flush(10)
    texts = slack_server.texts()
    assert len(texts) == 5  # the refused first attempt, its text-only resend, and three more
    assert texts[0] == texts[1] and texts[1].startswith("🚀 Training started: run-fallback")
    assert texts[4].startswith("✅ Training finished: run-fallback")
    assert callback.stats["slack"] == {"sent": 4, "dropped": 0, "failed": 0}


def test_check_calls_auth_test(slack_env: SlackServer) -> None:
    backend = get_backend("slack", base_url=slack_env.base_url)
    backend.check()
    (request,) = slack_env.wait_for(1, "auth.test")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert slack_env.posted() == []  # checking posts nothing


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        ("invalid_auth", "check SLACK_BOT_TOKEN"),
        ("token_revoked", "reinstall the app"),
        ("some_new_error", "https://api.slack.com/methods/auth.test"),
    ],
)
def test_check_raises_configuration_error_with_the_fix(
    code: str,
    fix: str,
    slack_env: SlackServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    slack_env.script(Behaviour("error", error=code))
    backend = get_backend("slack", base_url=slack_env.base_url)
    with pytest.raises(ConfigurationError) as caught:
        backend.check()
    assert str(caught.value).startswith(f"slack backend: auth.test failed: {code}: ")
    assert fix in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in caplog.text


def test_a_wrong_web_api_address_is_named_by_check_and_switches_delivery_off(
    slack_env: SlackServer, tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    # A base_url that is no Slack: an HTML 404 page, whatever the method.
    slack_env.default = Behaviour("status", status=404, error="<html>Not Found</html>")
    backend = get_backend("slack", base_url=slack_env.base_url)
    with pytest.raises(ConfigurationError) as caught:
        backend.check()
    where = f"127.0.0.1:{slack_env.port}"
    assert str(caught.value) == (
        f"slack backend: auth.test failed: HTTP 404: there is no Slack Web API at {where}: "
        "check base_url (SLACK_BASE_URL); Slack's own is https://slack.com/api/"
    )
    callback = NotifierCallback([backend], config=False)
    make_trainer(tmp_path / "run", [callback]).train()
    assert callback.flush(10)
    assert len(slack_env.posted()) == 1  # not retried, and nothing more is tried
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"no Slack Web API at {where}" in warnings[0], warnings
    assert "switched off" in warnings[0]


def test_webhook_check_posts_nothing(slack_server: SlackServer) -> None:
    get_backend("slack", webhook_url=slack_server.webhook_url).check()
    assert slack_server.requests == []


# -- secrets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bot", "webhook"])
def test_repr_and_describe_hold_no_secret(mode: str, slack_server: SlackServer) -> None:
    if mode == "bot":
        backend = get_backend("slack", channel="#train", token=TOKEN, base_url=slack_server.url)
        secret, described = TOKEN, "slack #train"
    else:
        backend = get_backend("slack", webhook_url=slack_server.webhook_url)
        secret, described = slack_server.webhook_url, "slack (incoming webhook)"
    assert backend.describe() == described
    for shown in (repr(backend), backend.describe(), repr(notifier.NotifierCallback([backend]))):
        assert secret not in shown
        assert "SECRET" not in shown
    assert secret in backend.secrets()


# -- the original SlackCallback --------------------------------------------------------------
def test_slack_callback_reads_the_token_and_base_url(
    slack_env: SlackServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SLACK_BASE_URL", slack_env.base_url)
    callback = SlackCallback("#ch")
    assert TOKEN not in repr(callback)
    make_trainer(tmp_path / "run-env", [callback]).train()
    assert callback.flush(10)
    requests = slack_env.wait_for(4)
    assert [r.body["text"].split("\n", 1)[0] for r in requests] == [
        "🚀 Training started: run-env",
        "📈 run-env: epoch 1/2",
        "📈 run-env: epoch 2/2",
        "✅ Training finished: run-env",
    ]
    for request in requests:
        assert request.body["channel"] == "#ch"  # the argument wins over SLACK_CHANNEL
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
