"""Plots to Slack: files_upload_v2 into the run's thread, never at the cost of the text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from notifier_backends.slack import SlackBackend

import notifier
from conftest import TOKEN, RecordingBackend, all_output
from notifier import Message, get_backend
from notifier.backend import Attachment
from slack_server import Behaviour, SlackServer, channel_id
from tiny import make_trainer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
UPLOAD = ["files.getUploadURLExternal", "upload", "files.completeUploadExternal"]


def slack(server: SlackServer, **options: Any) -> SlackBackend:
    backend = get_backend(
        "slack", channel="#train", token=TOKEN, base_url=server.base_url, **options
    )
    assert isinstance(backend, SlackBackend)
    return backend


def ending(*attachments: Attachment, event: str = "train_end") -> Message:
    context = {"run_name": "run", "output_dir": None, "global_step": 8, "max_steps": 8}
    return Message(event, f"{event}: run", context=context, attachments=attachments)


def curves(data: bytes = PNG) -> Attachment:
    return Attachment("training-curves.png", "image/png", lambda: data, title="Training curves")


def methods(server: SlackServer) -> list[str]:
    return [r.method_name for r in server.requests]


def test_a_runs_plot_goes_into_its_thread(slack_server: SlackServer, tmp_path: Path) -> None:
    recording = RecordingBackend()
    backend = slack(slack_server, thread=True)
    callback = notifier.NotifierCallback([backend, recording], plots=True, config=False)
    make_trainer(tmp_path / "run-plot", [callback], eval_strategy="epoch").train()
    assert callback.flush(30)
    assert methods(slack_server)[-4:] == ["chat.postMessage", *UPLOAD]
    end = slack_server.posted()[-1]
    assert end.body["text"].startswith("✅ Training finished: run-plot")
    (attachment,) = recording.messages[-1].attachments  # the same Attachment Slack was given
    asked, uploaded, completed = (slack_server.posted(m)[0] for m in UPLOAD)
    assert asked.body["filename"] == "training-curves.png"
    assert int(asked.body["length"]) == len(attachment.data)
    assert uploaded.raw == attachment.data and uploaded.raw.startswith(b"\x89PNG")
    assert uploaded.path.endswith(json.loads(completed.body["files"])[0]["id"])
    assert json.loads(completed.body["files"]) == [
        {"id": "F0000000001", "title": "Training curves"}
    ]
    assert completed.body["channel_id"] == channel_id("#train")  # an ID, never "#train"
    assert completed.body["thread_ts"] == "1700000000.000001" == end.body["thread_ts"]
    assert slack_server.uploads["F0000000001"].shared == {
        "channel_id": channel_id("#train"),
        "thread_ts": "1700000000.000001",
        "title": "Training curves",
    }


def test_without_a_thread_the_plot_goes_to_the_channel(slack_server: SlackServer) -> None:
    slack(slack_server).send(ending(curves()))
    assert methods(slack_server) == ["chat.postMessage", *UPLOAD]
    completed = slack_server.posted("files.completeUploadExternal")[0]
    assert completed.body["channel_id"] == channel_id("#train")
    assert "thread_ts" not in completed.body
    assert slack_server.uploads["F0000000001"].data == PNG


def fails_to_draw() -> bytes:
    raise RuntimeError("matplotlib could not draw")


@pytest.mark.parametrize(
    ("behaviour", "at", "attachment", "logged"),
    [
        (Behaviour("error", error="missing_scope"), 1, curves(), "lacks the files:write scope"),
        (Behaviour("status", status=500), 2, curves(), "Slack unreachable: HTTPError"),
        (Behaviour("error", error="file_not_found"), 3, curves(), "Slack answered file_not_found"),
        (Behaviour("reset"), 2, curves(), "Slack unreachable"),
        (
            None,
            0,
            Attachment("training-curves.png", "image/png", fails_to_draw),
            "notifier: could not produce training-curves.png (RuntimeError: matplotlib could not "
            "draw); messages go without it",
        ),
    ],
    ids=["no-scope", "upload-500", "not-completed", "upload-reset", "drawing-fails"],
)
def test_a_failed_upload_is_logged_and_the_text_is_not_lost(
    behaviour: Behaviour | None,
    at: int,
    attachment: Attachment,
    logged: str,
    slack_server: SlackServer,
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    backend = slack(slack_server, max_attempts=1)
    if behaviour is not None:
        slack_server.script(*[Behaviour("ok")] * at, behaviour)
    backend.send(ending(attachment, event="train_error"))  # raises nothing
    assert slack_server.texts() == ["train_error: run"]  # posted once, first
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and logged in warnings[0], warnings
    assert TOKEN not in all_output(notifier_logs)


def test_webhooks_send_the_text_and_say_once_why_not_the_plot(
    slack_server: SlackServer, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = get_backend("slack", webhook_url=slack_server.webhook_url)
    backend.send(ending(curves()))
    backend.send(ending(curves(), event="train_error"))
    assert [r.body["text"] for r in slack_server.requests] == ["train_end: run", "train_error: run"]
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert warnings == [
        "slack (incoming webhook): training-curves.png not sent: uploading plots needs the "
        "bot-token mode (SLACK_BOT_TOKEN + SLACK_CHANNEL, scope files:write)"
    ]
    assert "SECRET" not in all_output(notifier_logs)
