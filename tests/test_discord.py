"""The discord backend against a loopback webhook: embeds, Discord's limits, fallbacks, faults."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from notifier_backends.discord import (
    COLOURS,
    CONTENT_LIMIT,
    DESCRIPTION_LIMIT,
    FIELD_NAME_LIMIT,
    FIELD_VALUE_LIMIT,
    FOOTER_LIMIT,
    MAX_EMBEDS,
    MAX_FIELDS,
    TITLE_LIMIT,
    TOTAL_LIMIT,
    DiscordBackend,
    embed,
    escape,
    fit_fields,
    units,
    webhook_url_with_wait,
)

import notifier
from conftest import all_output
from http_server import FAULTS, Behaviour, Fault, HTTPServer, run_fault
from notifier.cli import main
from notifier.filters import MISSING
from notifier.http import retry_after
from tiny import TinyRegressor, make_trainer

TOKEN = "DiscordWebhookToken-SECRET-abcdefghijklmnopqrstuvwxyz0123456789"
PATH = f"/api/webhooks/1234567890/{TOKEN}"


@pytest.fixture
def webhook_url(server: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """DISCORD_WEBHOOK_URL pointing at the loopback server."""
    url = server.url_for(PATH)
    monkeypatch.setenv("DISCORD_WEBHOOK_URL", url)
    return url


def assert_within_limits(payload: dict[str, Any]) -> None:
    """Every documented Discord webhook limit, counted in UTF-16 units (>= characters)."""
    assert payload["allowed_mentions"] == {"parse": []}
    assert units(payload.get("content", "")) <= CONTENT_LIMIT
    embeds = payload.get("embeds", [])
    assert len(embeds) <= MAX_EMBEDS
    total = 0
    for item in embeds:
        title, description = item.get("title", ""), item.get("description", "")
        footer = item.get("footer", {}).get("text", "")
        assert 0 < units(title) <= TITLE_LIMIT
        assert units(description) <= DESCRIPTION_LIMIT
        assert units(footer) <= FOOTER_LIMIT
        fields = item.get("fields", [])
        assert len(fields) <= MAX_FIELDS
        for field in fields:
            assert 0 < units(field["name"]) <= FIELD_NAME_LIMIT and field["name"].strip()
            assert 0 < units(field["value"]) <= FIELD_VALUE_LIMIT and field["value"].strip()
        total += units(title) + units(description) + units(footer)
        total += sum(units(f["name"]) + units(f["value"]) for f in fields)
    assert total <= TOTAL_LIMIT


def test_two_epoch_run_posts_one_valid_embed_per_event(
    server: HTTPServer, webhook_url: str, tmp_path: Path
) -> None:
    callback = notifier.NotifierCallback(["discord"])
    make_trainer(tmp_path / "run-a", [callback]).train()
    assert callback.flush(10)
    requests = server.wait_for(4)
    assert len(requests) == 4
    for request in requests:
        assert request.path == PATH
        assert request.query == {"wait": "true"}
        assert str(request.header("User-Agent")).startswith("notifier/")
        assert request.header("Content-Type") == "application/json; charset=utf-8"
        assert_within_limits(request.json)
        assert "content" not in request.json
        assert len(request.json["embeds"]) == 1
    embeds = [r.json["embeds"][0] for r in requests]
    assert [e["title"] for e in embeds] == [
        "🚀 Training started: run-a",
        "📈 run-a: epoch 1/2",
        "📈 run-a: epoch 2/2",
        "✅ Training finished: run-a",
    ]
    assert [e["color"] for e in embeds] == [
        COLOURS["train_begin"],
        COLOURS["epoch_end"],
        COLOURS["epoch_end"],
        COLOURS["train_end"],
    ]
    assert "Output: " in embeds[0]["description"]
    assert "fields" not in embeds[0]
    epoch = {f["name"]: f["value"] for f in embeds[2]["fields"]}
    assert {"loss", "grad_norm", "learning_rate"} <= set(epoch)
    assert all(f["inline"] for f in embeds[2]["fields"])
    assert "epoch" not in epoch
    assert float(epoch["loss"]) > 0
    assert embeds[0]["footer"]["text"].startswith("notifier · ")
    assert embeds[0]["timestamp"].endswith("+00:00")
    assert callback.stats["discord"] == {"sent": 4, "dropped": 0, "failed": 0}


def _many_metrics(_: Any) -> dict[str, float]:
    """30 evaluation metrics whose names are too long for a field name."""
    return {f"m{i:02d}_" + "@everyone" * 30: i / 7 for i in range(30)}


def test_everyone_run_name_is_trimmed_within_every_limit_and_pings_nobody(
    server: HTTPServer, webhook_url: str, tmp_path: Path
) -> None:
    run_name = "@everyone" * 300
    body = "{{ run_name }}\n{{ run_name }}\n{{ run_name }}"  # description past 4,096 too
    callback = notifier.NotifierCallback(
        ["discord"], events=["train_begin", "epoch_end"], templates={"epoch_end.j2": body}
    )
    trainer = make_trainer(
        tmp_path / "everyone",
        [callback],
        run_name=run_name,
        eval_strategy="epoch",
    )
    trainer.compute_metrics = _many_metrics
    trainer.train()
    assert callback.flush(10)
    requests = server.wait_for(3)
    for request in requests:
        assert_within_limits(request.json)
    begin, *epochs = [r.json["embeds"][0] for r in requests]
    assert begin["title"].startswith("🚀 Training started: @everyone@everyone")
    assert begin["title"].endswith("…") and units(begin["title"]) == TITLE_LIMIT
    for item in epochs:
        assert item["title"].endswith("…")
        assert item["description"].endswith("…")
        fields = item["fields"]
        # Fields give way first to the 6,000 total: some kept, then the marker.
        assert 0 < len(fields) < MAX_FIELDS
        assert fields[-1]["name"] == "…" and fields[-1]["value"].endswith("more")
        long_names = [f["name"] for f in fields if f["name"].startswith("eval_m")]
        assert long_names and all(n.endswith("…") for n in long_names)


def test_a_400_on_the_embed_is_retried_as_plain_content(
    server: HTTPServer, webhook_url: str, tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    invalid = {"code": 50035, "message": "Invalid Form Body", "errors": {"embeds": {}}}
    server.script(Behaviour.answer(400, invalid))
    callback = notifier.NotifierCallback(["discord"], events=["train_begin", "train_end"])
    make_trainer(tmp_path / "run-b", [callback]).train()
    assert callback.flush(10)
    first, fallback, end = server.wait_for(3)
    assert "embeds" in first.json
    assert "embeds" not in fallback.json
    assert fallback.json["content"].startswith("🚀 Training started: run-b\n")
    assert fallback.json["allowed_mentions"] == {"parse": []}
    assert_within_limits(fallback.json)
    assert fallback.query == {"wait": "true"}
    assert "embeds" in end.json  # the next message tries an embed again
    assert callback.stats["discord"] == {"sent": 2, "dropped": 0, "failed": 0}
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "refused the embed" in warnings[0] and "Invalid Form Body (code 50035)" in warnings[0]


def test_long_content_fallback_is_trimmed_to_2000(server: HTTPServer, webhook_url: str) -> None:
    backend = DiscordBackend(embeds=False)
    message = notifier.Message(event="train_end", text="✅ done\n" + "x" * 5000)
    backend.send(message)
    (request,) = server.wait_for(1)
    assert request.json["content"].endswith("…")
    assert_within_limits(request.json)


@pytest.fixture
def uncaught(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """sys.excepthook as a recorder, under the guard, to feed it an uncaught exception."""
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: seen.append(info))
    return seen


def test_crash_report_shows_the_traceback_unescaped_in_a_code_block(
    server: HTTPServer, webhook_url: str, tmp_path: Path, uncaught: list[tuple[Any, ...]]
) -> None:
    callback = notifier.NotifierCallback(["discord"], events=["train_error"])
    trainer = make_trainer(tmp_path / "my_run", [callback], model=TinyRegressor(crash_at=3))
    with pytest.raises(RuntimeError, match="boom") as info:
        trainer.train()
    sys.excepthook(info.type, info.value, info.tb)
    assert callback.flush(10)
    (request,) = server.wait_for(1)
    assert_within_limits(request.json)
    item = request.json["embeds"][0]
    assert item["color"] == COLOURS["train_error"]
    assert item["title"] == "❌ Training failed: my_run"
    text, block = item["description"].split("\n```py\n", 1)
    assert "RuntimeError: boom at forward call 3" in text
    assert block.endswith("\n```") and block.count("```") == 1
    assert "RuntimeError: boom at forward call 3" in block
    assert "\\_" not in block and "raise RuntimeError(f" in block  # as Python printed it


def test_run_quotes_stderr_as_written_in_a_code_block(
    server: HTTPServer, webhook_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    # Markdown escapes inside a code block would show as stray backslashes.
    code = "import sys; print('in x/__init__.py: *args ``` <x>', file=sys.stderr); sys.exit(2)"
    assert main(["run", "--backend", "discord", "--", sys.executable, "-c", code]) == 2
    _, end = server.wait_for(2)
    description = end.json["embeds"][0]["description"]
    quote = description.split("Last lines of stderr:\n```\n", 1)[1]
    assert quote == "in x/__init__.py: *args `\u200b`` <x>\n```"
    assert "\\" not in quote
    capfd.readouterr()


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
    backend = DiscordBackend(url, timeout=0.2)
    run_fault(fault, server, backend, tmp_path, notifier_logs, fix="DISCORD_WEBHOOK_URL")
    output = all_output(notifier_logs, capsys)
    for secret in (url, PATH, TOKEN):
        assert secret not in output


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain words", "plain words"),
        ("__init__", "\\_\\_init\\_\\_"),
        ("learning_rate my_run_2", "learning_rate my_run_2"),  # inside a word: inert
        ("_private, trailing_ a__b", "\\_private, trailing\\_ a\\_\\_b"),
        ("**bold** ~~gone~~ ||spoiler||", "\\*\\*bold\\*\\* \\~\\~gone\\~\\~ \\|\\|spoiler\\|\\|"),
        ("expected `int", "expected \\`int"),
        ("[click](https://evil.example)", "\\[click\\](https://evil.example)"),
        ("<@123> <t:1700000000:R>", "\\<@123> \\<t:1700000000:R>"),
        ("# big\n> quote\n- item\n-# small", "\\# big\n\\> quote\n\\- item\n\\-# small"),
        ("C:\\runs\\x", "C:\\\\runs\\\\x"),
        ("-0.5 and a-b", "-0.5 and a-b"),
        ("see https://hf.co/my_org/my_model now", "see https://hf.co/my_org/my_model now"),
        ("@everyone @here", "@everyone @here"),  # inert through allowed_mentions
    ],
)
def test_escape(value: str, escaped: str) -> None:
    assert escape(value) == escaped


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://discord.com/api/webhooks/1/T", "https://discord.com/api/webhooks/1/T?wait=true"),
        (
            "https://discord.com/api/webhooks/1/T?thread_id=99",
            "https://discord.com/api/webhooks/1/T?thread_id=99&wait=true",
        ),
        (
            "https://discord.com/api/webhooks/1/T?wait=false&thread_id=9",
            "https://discord.com/api/webhooks/1/T?thread_id=9&wait=true",
        ),
    ],
)
def test_wait_true_is_added_to_the_query(url: str, expected: str) -> None:
    assert webhook_url_with_wait(url) == expected


@pytest.mark.parametrize(
    ("headers", "body", "seconds"),
    [
        ({"Retry-After": "2"}, None, 2.0),
        ({"Retry-After": "1"}, {"retry_after": 0.25}, 0.25),  # Discord v8+: precise seconds
        ({"Retry-After": "2"}, {"retry_after": 1500}, 2.0),  # Discord v6 (unversioned): ms
        ({}, {"retry_after": 0.5}, 0.5),
        ({}, {"message": "no hint"}, None),
        ({"Retry-After": "soon"}, None, None),
    ],
)
def test_retry_after(headers: dict[str, str], body: Any, seconds: float | None) -> None:
    assert retry_after(headers, body) == seconds


def test_embed_limits_for_long_values_many_fields_and_wide_characters() -> None:
    metrics: dict[str, Any] = {f"metric_{i}": i for i in range(40)}
    metrics["note"] = "n" * 3000
    message = notifier.Message(
        event="epoch_end",
        text="📈" * 300 + "\n" + "🙂" * 3000,  # 2 UTF-16 units each
        context={"metrics": metrics, "eval_metrics": {}},
    )
    item = embed(message, footer="f" * 3000)
    assert_within_limits({"allowed_mentions": {"parse": []}, "embeds": [item]})
    assert units(item["title"]) <= TITLE_LIMIT and item["title"].endswith("…")
    assert item["footer"]["text"].endswith("…")
    assert item["description"].endswith("…")
    fields = item["fields"]  # the description left them room
    assert 0 < len(fields) <= MAX_FIELDS and fields[-1]["name"] == "…"


def test_fields_cap_at_25_with_a_marker() -> None:
    metrics: dict[str, Any] = {f"m{i}": i for i in range(40)}
    metrics["note"] = "n" * 3000
    item = embed(notifier.Message(event="evaluate", text="t", context={"metrics": metrics}))
    fields = item["fields"]
    assert len(fields) == MAX_FIELDS
    assert fields[-1] == {"name": "…", "value": "17 more", "inline": True}
    item = embed(
        notifier.Message(event="evaluate", text="t", context={"metrics": {"n": "v" * 3000}})
    )
    assert units(item["fields"][0]["value"]) == FIELD_VALUE_LIMIT


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("loss", "   ", ("loss", MISSING)),
        ("loss", "\t\n", ("loss", MISSING)),
        ("loss", None, ("loss", MISSING)),
        ("loss", "", ("loss", MISSING)),
        (" ", 0.5, (MISSING, "0.5")),
        ("\u3000", "ok", (MISSING, "ok")),  # an ideographic space is blank too
        ("", "  ", (MISSING, MISSING)),
        (" note ", " kept ", (" note ", " kept ")),  # not blank: sent as written
    ],
)
def test_blank_field_names_and_values_are_shown_as_missing(
    server: HTTPServer, webhook_url: str, name: str, value: Any, expected: tuple[str, str]
) -> None:
    """Discord answers 400 to a blank field name or value (then the plain fallback)."""
    message = notifier.Message(event="evaluate", text="t\nb", context={"metrics": {name: value}})
    DiscordBackend().send(message)
    (request,) = server.wait_for(1)
    assert_within_limits(request.json)
    (field,) = request.json["embeds"][0]["fields"]
    assert (field["name"], field["value"]) == expected


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"webhook_url": "ftp://discord.com/api/webhooks/1/x"}, "absolute http(s) URL"),
        ({"webhook_url": "https://discord.com/channels/1/2"}, "not a webhook URL"),
        ({"webhook_url": None}, "DISCORD_WEBHOOK_URL"),
        ({"username": "Discord Bot"}, "'discord'"),
        ({"username": "x" * 81}, "1–80"),
        ({"timeout": 0}, "timeout"),
        ({"colour": "red"}, "unknown option"),
    ],
)
def test_configuration_errors_say_the_fix(
    options: dict[str, Any], needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCORD_WEBHOOK_URL", raising=False)
    options = {"webhook_url": f"https://discord.com{PATH}", **options}
    with pytest.raises(notifier.ConfigurationError) as info:
        notifier.get_backend("discord", **options)
    assert needle in str(info.value)
    assert TOKEN not in str(info.value)


def test_describe_secrets_and_repr_show_the_host_only(webhook_url: str) -> None:
    backend = notifier.get_backend("discord")
    assert backend.describe() == f"discord (127.0.0.1:{webhook_url.split(':')[2].split('/')[0]})"
    assert TOKEN not in repr(backend)
    assert webhook_url in backend.secrets() and TOKEN in backend.secrets()


def test_check_gets_the_webhook_and_reports_a_deleted_one(
    server: HTTPServer, webhook_url: str
) -> None:
    backend = notifier.get_backend("discord")
    backend.check()
    assert server.received("GET")[0].path == PATH
    server.default = Behaviour.answer(404, {"message": "Unknown Webhook", "code": 10015})
    with pytest.raises(notifier.ConfigurationError, match="does not exist") as info:
        backend.check()
    assert webhook_url not in str(info.value) and TOKEN not in str(info.value)
    assert server.received("POST") == []  # checking posts nothing


def test_pacing_is_within_discords_webhook_rate_limits() -> None:
    # At most 5 requests per 2 s per webhook and 30 messages a minute per channel.
    assert DiscordBackend.burst < 5
    assert 60 / DiscordBackend.interval + DiscordBackend.burst <= 30


@pytest.mark.parametrize(
    ("event", "context", "expected"),
    [
        ("train_begin", {}, 0x3498DB),
        ("epoch_end", {}, 0x99AAB5),
        ("train_end", {}, 0x2ECC71),
        ("train_error", {}, 0xE74C3C),
        ("alert", {"alert": {"kind": "nan"}}, 0xE67E22),
        ("alert", {"alert": {"kind": "recovered"}}, 0x2ECC71),
    ],
)
def test_colour_by_event(event: str, context: dict[str, Any], expected: int) -> None:
    message = notifier.Message(event=event, text="headline", context=context)
    assert embed(message)["color"] == expected


@pytest.mark.parametrize(
    ("count", "cost", "budget", "kept", "more"),
    [
        (3, 10, 100, 3, None),  # all fit
        (30, 2, 6000, 24, "6 more"),  # the 25 cap
        (10, 10, 55, 4, "6 more"),  # the budget: 5 would fit, one gives way to the marker
        (10, 10, 5, 0, None),  # not even the marker fits
    ],
)
def test_fit_fields(count: int, cost: int, budget: int, kept: int, more: str | None) -> None:
    half = cost // 2
    candidates = [{"name": "n" * half, "value": "v" * (cost - half)} for _ in range(count)]
    fitted = fit_fields(candidates, budget)
    real = [f for f in fitted if f["name"] != "…"]
    assert len(real) == kept
    assert len(fitted) <= MAX_FIELDS
    assert sum(units(f["name"]) + units(f["value"]) for f in fitted) <= budget
    assert (fitted[-1]["value"] if fitted and fitted[-1]["name"] == "…" else None) == more
