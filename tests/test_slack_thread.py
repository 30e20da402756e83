"""Slack threads: a run is one thread, its end is broadcast, and a resumed run goes on in it."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from notifier_backends.slack import STATE_DIR, STATE_FILE, SlackBackend

import notifier
from conftest import TOKEN, all_output
from notifier import ConfigurationError, DeliveryError, Message, get_backend
from notifier.run import run_command
from slack_server import Behaviour, SlackServer, channel_id
from tiny import make_trainer


def slack(server: SlackServer, **options: Any) -> SlackBackend:
    backend = get_backend(
        "slack", channel="#train", token=TOKEN, base_url=server.base_url, **options
    )
    assert isinstance(backend, SlackBackend)
    return backend


def message(event: str, output_dir: Path, text: str = "", **context: Any) -> Message:
    ctx: dict[str, Any] = {
        "event": event,
        "run_name": "run",
        "output_dir": str(output_dir),
        "host": "node-1",
        "resumed": False,
        "rank": 0,
        "global_step": 0,
        "max_steps": 8,
        "epoch": 0.0,
        "num_train_epochs": 2,
    }
    ctx.update(context)
    return Message(event, text or f"{event}: run\ndetails", context=ctx)


def parents(server: SlackServer) -> list[dict[str, Any]]:
    return [r.body for r in server.posted() if "thread_ts" not in r.body]


def saved(output_dir: Path) -> dict[str, Any]:
    return dict(json.loads((output_dir / STATE_DIR / STATE_FILE).read_text()))


def test_a_run_is_one_thread_and_its_end_is_broadcast(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    callback = notifier.NotifierCallback([slack(slack_server, thread=True)], config=False)
    make_trainer(tmp_path / "run-thread", [callback], eval_strategy="epoch").train()
    assert callback.flush(10)
    first, *replies = slack_server.wait_for(4)
    assert first.body["text"].startswith("🚀 Training started: run-thread")
    assert "thread_ts" not in first.body
    parent = slack_server.messages[next(iter(slack_server.messages))]["ts"]
    assert [r.body["thread_ts"] for r in replies] == [parent] * 3
    assert [r.body.get("reply_broadcast") for r in replies] == [None, None, True]
    assert replies[-1].body["text"].startswith("✅ Training finished: run-thread")
    state = saved(tmp_path / "run-thread")["#train"]
    assert state["thread_ts"] == parent
    assert state["channel_id"] == channel_id("#train")


@pytest.mark.parametrize(
    ("event", "broadcast"),
    [
        ("epoch_end", None),
        ("evaluate", None),
        ("save", None),
        ("alert", None),
        ("train_end", True),
        ("train_error", True),
    ],
)
def test_every_later_message_is_a_reply(
    event: str, broadcast: bool | None, slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = slack(slack_server, thread=True)
    backend.send(message("train_begin", tmp_path))
    backend.send(message(event, tmp_path, global_step=3))
    begin, reply = slack_server.wait_for(2)
    assert "thread_ts" not in begin.body
    assert reply.body["thread_ts"] == slack_server.messages["1700000000.000001"]["ts"]
    assert reply.body.get("reply_broadcast") is broadcast


def test_a_resumed_run_goes_on_in_the_same_thread(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    output_dir = tmp_path / "run-resume"
    first = notifier.NotifierCallback([slack(slack_server, thread=True)], config=False)
    make_trainer(output_dir, [first], epochs=1, save_strategy="epoch").train()
    assert first.flush(10)
    assert (output_dir / "checkpoint-4").is_dir()
    slack_server.wait_for(3)  # start, epoch 1, end

    second = notifier.NotifierCallback([slack(slack_server, thread=True)], config=False)
    make_trainer(output_dir, [second], epochs=2).train(resume_from_checkpoint=True)
    assert second.flush(10)
    requests = slack_server.wait_for(6)
    parent = requests[0]
    assert len(parents(slack_server)) == 1  # the second run opened no thread of its own
    thread = slack_server.messages["1700000000.000001"]["ts"]
    resumed = requests[3].body
    assert resumed["thread_ts"] == thread
    assert resumed["text"].startswith("🔁 Resumed run-resume at step 4/8\n🚀 Training started")
    assert "reply_broadcast" not in resumed
    assert requests[-1].body["thread_ts"] == thread
    assert requests[-1].body["reply_broadcast"] is True
    assert requests[-1].body["text"].startswith("✅ Training finished: run-resume")
    assert "thread_ts" not in parent.body


@pytest.mark.parametrize(
    ("resumed", "same_dir", "threads"),
    [(True, True, 1), (False, True, 2), (True, False, 2)],
    ids=["resumed", "fresh-run-same-dir", "resumed-elsewhere"],
)
def test_only_a_resumed_run_in_the_same_output_dir_reuses_the_thread(
    resumed: bool, same_dir: bool, threads: int, slack_server: SlackServer, tmp_path: Path
) -> None:
    one = slack(slack_server, thread=True)
    one.send(message("train_begin", tmp_path / "a"))
    one.send(message("train_error", tmp_path / "a", global_step=4))
    two = slack(slack_server, thread=True)  # a new process: nothing shared but the directory
    later = tmp_path / ("a" if same_dir else "b")
    two.send(message("train_begin", later, resumed=resumed, global_step=4))
    two.send(message("train_end", later, global_step=8))
    assert len(parents(slack_server)) == threads
    if threads == 1:
        texts = [r.body["text"].split("\n", 1)[0] for r in slack_server.wait_for(4)]
        assert texts[2] == "🔁 Resumed run at step 4/8"


def test_another_ranks_crash_report_goes_to_rank_zeros_thread(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    rank0 = slack(slack_server, thread=True)
    rank0.send(message("train_begin", tmp_path))
    rank1 = slack(slack_server, thread=True)  # rank 1's process: never sent train_begin
    rank1.send(message("train_error", tmp_path, rank=1, global_step=2))
    begin, crash = slack_server.wait_for(2)
    assert crash.body["thread_ts"] == slack_server.messages["1700000000.000001"]["ts"]
    assert crash.body["reply_broadcast"] is True
    assert saved(tmp_path)["#train"]["thread_ts"] == "1700000000.000001"  # rank 1 wrote nothing


def test_an_unwritable_output_dir_is_logged_once_and_threads_go_on(
    slack_server: SlackServer, tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the output directory should be")
    backend = slack(slack_server, thread=True)
    for event in ("train_begin", "epoch_end", "train_end"):
        backend.send(message(event, blocked))
    begin, *replies = slack_server.wait_for(3)
    assert [r.body["thread_ts"] for r in replies] == ["1700000000.000001"] * 2
    warnings = [
        r.getMessage()
        for r in notifier_logs.records
        if r.levelno == logging.WARNING and "cannot remember the run's thread" in r.getMessage()
    ]
    assert len(warnings) == 1 and str(blocked) in warnings[0]


def test_without_a_start_message_the_first_message_opens_the_thread(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = slack(slack_server, thread=True)
    backend.send(message("epoch_end", tmp_path, global_step=4))
    backend.send(message("train_end", tmp_path, global_step=8))
    first, end = slack_server.wait_for(2)
    assert "thread_ts" not in first.body
    assert end.body["thread_ts"] == "1700000000.000001"


def test_a_retried_start_opens_no_second_thread(slack_server: SlackServer, tmp_path: Path) -> None:
    backend = slack(slack_server, thread=True, card=True, max_attempts=1)
    slack_server.script(Behaviour("ok"), Behaviour("error", error="internal_error"))
    begin = message("train_begin", tmp_path)
    with pytest.raises(DeliveryError):
        backend.send(begin)  # the card (the thread's parent) went out, the start text did not
    backend.send(begin)  # the outbox's retry of the same message
    card, failed, start = slack_server.wait_for(3)
    assert card.body["text"].startswith("⏳ run: 0%")
    assert failed.body == start.body
    assert start.body["thread_ts"] == "1700000000.000001"
    assert len(parents(slack_server)) == 1


def test_a_refused_layout_in_a_reply_keeps_the_thread(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = slack(slack_server, thread=True)
    backend.send(message("train_begin", tmp_path))
    slack_server.script(Behaviour("error", error="invalid_blocks"))
    backend.send(message("train_end", tmp_path))
    _, refused, resent = slack_server.wait_for(3)
    assert "blocks" in refused.body and "blocks" not in resent.body
    assert resent.body["thread_ts"] == "1700000000.000001"
    assert resent.body["reply_broadcast"] is True


@pytest.mark.parametrize(
    ("code", "headline"), [(0, "✅ Finished"), (3, "❌ Failed with exit code 3")]
)
def test_notifier_run_is_one_thread_and_its_end_is_broadcast(
    code: int, headline: str, slack_server: SlackServer
) -> None:
    command = [sys.executable, "-c", f"import sys; sys.exit({code})"]
    err = io.StringIO()
    assert run_command(command, [slack(slack_server, thread=True)], stderr=err) == code
    assert err.getvalue() == ""  # both messages delivered
    start, end = slack_server.wait_for(2)
    assert start.body["text"].startswith("▶️ Started: ") and "thread_ts" not in start.body
    assert end.body["text"].startswith(headline)
    assert end.body["thread_ts"] == next(iter(slack_server.messages))
    assert end.body["reply_broadcast"] is True  # the end is seen in the channel too


@pytest.mark.parametrize("feature", ["thread", "card", "deadman"])
def test_webhooks_cannot_thread_edit_or_schedule(
    feature: str, slack_server: SlackServer, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_backend("slack", webhook_url=slack_server.webhook_url, **{feature: True})
    text = str(caught.value)
    assert f"{feature}=True needs the bot-token mode" in text
    assert "SLACK_BOT_TOKEN" in text
    assert "SECRET" not in text + all_output(caplog)
