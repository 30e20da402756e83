"""Attachments (the training-curves PNG) delivered: a Discord upload and an inline e-mail image."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import math
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from notifier_backends import discord, email_smtp
from notifier_backends.discord import DiscordBackend
from notifier_backends.email_smtp import EmailBackend

import notifier
from http_server import Behaviour, HTTPServer, Request
from notifier.backend import Attachment, Message
from notifier.context import sample_context
from notifier.http import FormFile, multipart_form, safe_filename
from notifier.outbox import Outbox
from notifier.plots import render_curves
from notifier.templates import Templates
from smtp_server import Inbox, free_port
from tiny import make_trainer

PATH = "/api/webhooks/1234567890/DiscordWebhookToken-SECRET-attachments"
NAME, TITLE = "training-curves.png", "Training curves"
INVALID = {"code": 50035, "message": "Invalid Form Body", "errors": {"embeds": {}}}
TOO_LARGE = {"code": 40005, "message": "Request entity too large"}


@pytest.fixture(scope="module")
def png() -> bytes:
    """A real PNG: render_curves on a small log history with losses and an eval metric."""
    history: list[dict[str, Any]] = [
        {"loss": 2.0 / math.sqrt(step), "grad_norm": 1.0, "step": step} for step in range(1, 21)
    ]
    history += [{"eval_loss": 1.2, "eval_accuracy": 0.7, "step": 10}]
    history += [{"eval_loss": 0.9, "eval_accuracy": 0.8, "step": 20}]
    data = render_curves(history, best_checkpoint_step=20, title="run-a")
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


class Producer:
    """A producer that records the threads it ran on, returning ``data`` or raising."""

    def __init__(self, data: bytes | None) -> None:
        self.data = data
        self.threads: list[threading.Thread] = []

    def __call__(self) -> bytes:
        self.threads.append(threading.current_thread())
        if self.data is None:
            raise RuntimeError("matplotlib exploded")
        return self.data


def curves(producer: Producer) -> Attachment:
    return Attachment(NAME, "image/png", producer, title=TITLE)


def message(*attachments: Attachment, event: str = "train_end") -> Message:
    templates = Templates(backend="email", parts=EmailBackend.parts, events=(event,))
    parts = templates.render(event, sample_context(event))
    return Message(event, parts["text"], parts=parts, attachments=attachments)


def warnings(logs: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]


# -- Discord ----------------------------------------------------------------------------------
def form(request: Request) -> dict[str, EmailMessage]:
    """The parts of a multipart/form-data request by field name, parsed by the stdlib."""
    content_type = str(request.header("Content-Type"))
    assert content_type.startswith("multipart/form-data; boundary=")
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    parsed = email.message_from_bytes(head + request.raw, policy=email.policy.HTTP)
    assert isinstance(parsed, EmailMessage) and parsed.is_multipart() and not parsed.defects
    return {
        str(part.get_param("name", header="content-disposition")): part
        for part in parsed.iter_parts()
    }


def payload_json(request: Request) -> Any:
    part = form(request)["payload_json"]
    assert part.get_content_type() == "application/json"
    return json.loads(part.get_payload(decode=True))


def uploaded(request: Request) -> bytes:
    part = form(request)["files[0]"]
    assert part.get_filename() == NAME and part.get_content_type() == "image/png"
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


def test_discord_uploads_the_png_from_the_worker_and_the_embed_shows_it(
    server: HTTPServer, png: bytes, notifier_logs: pytest.LogCaptureFixture
) -> None:
    producer = Producer(png)
    outbox = Outbox(DiscordBackend(server.url_for(PATH)))
    outbox.put(message(curves(producer)))
    assert outbox.flush(10) and outbox.sent == 1
    (request,) = server.wait_for(1)
    assert producer.threads and threading.main_thread() not in producer.threads
    assert request.path == PATH and request.query == {"wait": "true"}
    assert set(form(request)) == {"payload_json", "files[0]"}
    body = payload_json(request)
    assert body["allowed_mentions"] == {"parse": []}
    assert body["attachments"] == [{"id": 0, "filename": NAME, "description": TITLE}]
    (item,) = body["embeds"]
    assert item["image"] == {"url": f"attachment://{NAME}"}
    assert item["title"] == "✅ Training finished: bert-base-sst2"
    assert uploaded(request) == png
    assert warnings(notifier_logs) == []


def test_discord_message_without_attachments_is_still_plain_json(server: HTTPServer) -> None:
    DiscordBackend(server.url_for(PATH)).send(message())
    (request,) = server.wait_for(1)
    assert request.header("Content-Type") == "application/json; charset=utf-8"
    assert "image" not in request.json["embeds"][0] and "attachments" not in request.json


@pytest.mark.parametrize(
    ("embeds", "script", "file_kept", "warned"),
    [
        (True, [Behaviour.answer(400, INVALID)], True, ["refused the embed"]),
        (True, [Behaviour.answer(413, TOO_LARGE)], False, ["with its files"]),
        (True, [Behaviour.answer(400, INVALID)] * 2, False, ["refused the embed", "its files"]),
        (False, [Behaviour.answer(400, INVALID)], False, ["refused the message with its files"]),
    ],
    ids=["400: text and file", "413: text alone", "400 twice: text alone", "no embeds, 400"],
)
def test_discord_refusals_fall_back_to_the_text_keeping_the_file_when_it_may(
    server: HTTPServer,
    png: bytes,
    notifier_logs: pytest.LogCaptureFixture,
    embeds: bool,
    script: list[Behaviour],
    file_kept: bool,
    warned: list[str],
) -> None:
    server.script(*script)
    DiscordBackend(server.url_for(PATH), embeds=embeds).send(message(curves(Producer(png))))
    requests = server.wait_for(len(script) + 1)
    assert uploaded(requests[0]) == png
    last = requests[-1]
    if file_kept:
        body = payload_json(last)
        assert uploaded(last) == png
        assert body["attachments"] == [{"id": 0, "filename": NAME, "description": TITLE}]
    else:
        body = last.json  # plain JSON: no file
        assert last.header("Content-Type") == "application/json; charset=utf-8"
        assert "attachments" not in body
    assert "embeds" not in body
    assert body["content"].startswith("✅ Training finished: bert-base-sst2\n")
    said = warnings(notifier_logs)
    assert len(said) == len(warned)
    for line, words in zip(said, warned, strict=True):
        assert words in line and "Discord refused the message (HTTP 4" in line


def test_discord_leaves_out_a_file_past_the_upload_cap(
    server: HTTPServer,
    png: bytes,
    notifier_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(discord, "MAX_UPLOAD", len(png) - 1)
    DiscordBackend(server.url_for(PATH)).send(message(curves(Producer(png))))
    (request,) = server.wait_for(1)
    assert "image" not in request.json["embeds"][0]
    (line,) = warnings(notifier_logs)
    assert NAME in line and "upload limit" in line and "without it" in line


# -- e-mail -----------------------------------------------------------------------------------
@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    """A plain aiosmtpd server on loopback: its inbox and port."""
    received, port = Inbox(), free_port()
    controller = Controller(received, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield received, port
    finally:
        controller.stop()


def mailer(port: int) -> EmailBackend:
    return EmailBackend(
        host="127.0.0.1", port=port, sender="bot@example.org", to="ann@example.org", starttls=False
    )


def test_email_shows_the_png_inline_in_a_related_html_part(
    inbox: tuple[Inbox, int], png: bytes, notifier_logs: pytest.LogCaptureFixture
) -> None:
    received, port = inbox
    mailer(port).send(message(curves(Producer(png))))
    (item,) = received.wait_for(1)
    mail = item.message
    assert mail.get_content_type() == "multipart/alternative"
    text_part, related = mail.iter_parts()
    assert text_part.get_content_type() == "text/plain"
    text = text_part.get_content()
    assert text.startswith("✅ Training finished: bert-base-sst2")
    assert f"📎 {TITLE} ({NAME}): shown in the HTML version of this e-mail" in text
    assert related.get_content_type() == "multipart/related"
    page_part, image = related.iter_parts()
    page = page_part.get_content()
    assert page_part.get_content_type() == "text/html"
    cid = str(image["Content-ID"])
    assert cid.startswith("<") and cid.endswith("@example.org>")
    assert page.count(f'<img src="cid:{cid[1:-1]}" alt="{TITLE}"') == 1
    assert page.index("<img") < page.rindex("</body>") and page.rstrip().endswith("</html>")
    assert image.get_content_type() == "image/png"
    assert image.get_content_disposition() == "inline" and image.get_filename() == NAME
    assert image.get_content() == png
    assert warnings(notifier_logs) == []


def test_a_non_image_attachment_is_attached_as_a_file(inbox: tuple[Inbox, int]) -> None:
    received, port = inbox
    table = Attachment("metrics.csv", "text/csv", lambda: b"step,loss\n1,0.5\n")
    mailer(port).send(message(table))
    (item,) = received.wait_for(1)
    mail = item.message
    assert mail.get_content_type() == "multipart/mixed"
    body, attached = mail.iter_parts()
    assert body.get_content_type() == "multipart/alternative"
    assert attached.get_filename() == "metrics.csv" and attached.is_attachment()
    assert attached.get_payload(decode=True) == b"step,loss\n1,0.5\n"
    text = body.get_body(("plain",))
    assert text is not None and "📎 metrics.csv: attached" in text.get_content()


def test_email_leaves_out_attachments_past_its_cap(
    inbox: tuple[Inbox, int],
    png: bytes,
    notifier_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(email_smtp, "MAX_ATTACHED", len(png) - 1)
    received, port = inbox
    mailer(port).send(message(curves(Producer(png))))
    (item,) = received.wait_for(1)
    assert [p.get_content_type() for p in item.message.walk()] == [
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]
    (line,) = warnings(notifier_logs)
    assert NAME in line and "without it" in line


# -- a producer that fails ----------------------------------------------------------------------
def test_a_failing_producer_runs_once_warns_once_and_every_message_still_goes(
    server: HTTPServer, inbox: tuple[Inbox, int], notifier_logs: pytest.LogCaptureFixture
) -> None:
    received, port = inbox
    producer = Producer(None)
    attachment = curves(producer)
    server.script(Behaviour.answer(500))  # Discord's first try fails: the retry reads it again
    outboxes = [
        Outbox(DiscordBackend(server.url_for(PATH)), backoff=0.01),
        Outbox(mailer(port), backoff=0.01),
    ]
    for outbox in outboxes:
        outbox.put(message(attachment))
    assert all(outbox.flush(10) and outbox.sent == 1 for outbox in outboxes)
    assert len(producer.threads) == 1  # not run again for the retry or the other backend
    for request in server.wait_for(2):  # the 500, then the retry: plain JSON both times
        assert request.header("Content-Type") == "application/json; charset=utf-8"
        assert "image" not in request.json["embeds"][0] and "attachments" not in request.json
    (item,) = received.wait_for(1)
    mail = item.message
    assert [p.get_content_type() for p in mail.walk()] == [
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]
    text = mail.get_body(("plain",))
    page = mail.get_body(("html",))
    assert text is not None and page is not None
    assert text.get_content().startswith("✅ Training finished") and "📎" not in text.get_content()
    assert "<img" not in page.get_content()
    (line,) = warnings(notifier_logs)
    assert f"could not produce {NAME} (RuntimeError: matplotlib exploded)" in line


# -- a real run ---------------------------------------------------------------------------------
def test_a_run_with_plots_sends_the_same_curves_to_discord_and_email(
    server: HTTPServer,
    inbox: tuple[Inbox, int],
    tmp_path: Path,
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    received, port = inbox
    backends = [DiscordBackend(server.url_for(PATH)), mailer(port)]
    callback = notifier.NotifierCallback(backends, events=["train_end"], plots=True)
    make_trainer(tmp_path / "run-a", [callback]).train()
    assert callback.flush(30)
    (request,) = server.wait_for(1)
    assert payload_json(request)["embeds"][0]["image"] == {"url": f"attachment://{NAME}"}
    drawn = uploaded(request)
    assert drawn.startswith(b"\x89PNG\r\n\x1a\n")
    (item,) = received.wait_for(1)
    (image,) = [p for p in item.message.walk() if p.get_content_type() == "image/png"]
    assert image.get_content() == drawn  # produced once, shared by both backends
    assert warnings(notifier_logs) == []


# -- the multipart encoder --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "safe"),
    [
        (NAME, NAME),
        ("run 1/curves ü.png", "run_1_curves__.png"),
        ('a"b\r\nX: y.png', "a_b__X__y.png"),
        ("", "file"),
    ],
)
def test_file_names_are_safe_for_form_data_and_attachment_urls(name: str, safe: str) -> None:
    assert safe_filename(name) == safe
    content_type, body = multipart_form({}, [FormFile("files[0]", name, "image/png", b"x")])
    assert f'filename="{safe}"\r\n'.encode() in body
    assert body.endswith(f"--{content_type.split('boundary=')[1]}--\r\n".encode())
