"""The dead-man's switch: an alert scheduled while a run lives, gone at its end, kept if killed."""

from __future__ import annotations

import io
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from notifier_backends import slack as slack_module
from notifier_backends.slack import STATE_DIR, STATE_FILE, SlackBackend, alarm_text
from slack_sdk import WebClient

import notifier
from conftest import TOKEN, all_output
from notifier import ConfigurationError, Message, get_backend
from notifier.run import run_command
from scripts import runner
from slack_server import Behaviour, SlackServer, channel_id
from tiny import TinyRegressor, make_trainer

REARM = 0.3


class SlowRegressor(TinyRegressor):
    """The tiny model, sleeping in each training step so a run outlasts a few re-arms."""

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.training:
            time.sleep(0.1)
        return super().forward(x, labels)


@pytest.fixture
def quick_rearm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allow re-arming every 0.3 s (Slack's limits call for 10 s or more; the server has none)."""
    monkeypatch.setattr(slack_module, "MIN_REARM", 0.1)


def slack(server: SlackServer, **options: Any) -> SlackBackend:
    backend = get_backend(
        "slack", channel="#train", token=TOKEN, base_url=server.base_url, deadman=True, **options
    )
    assert isinstance(backend, SlackBackend)
    return backend


def message(event: str, output_dir: Path | None = None, **context: Any) -> Message:
    ctx: dict[str, Any] = {
        "event": event,
        "run_name": "run",
        "output_dir": str(output_dir) if output_dir else None,
        "host": "node-1",
        "resumed": False,
        "rank": 0,
        "global_step": 0,
        "max_steps": 8,
        "epoch": 0.0,
    }
    ctx.update(context)
    return Message(event, f"{event}: run", context=ctx)


def scheduled_now(server: SlackServer) -> list[dict[str, Any]]:
    """What chat.scheduledMessages.list answers, asked with the real client."""
    client = WebClient(token=TOKEN, base_url=server.base_url)
    answer = client.chat_scheduledMessages_list(channel=channel_id("#train"))
    return list(answer["scheduled_messages"])


@pytest.mark.parametrize("thread", [False, True])
def test_a_run_arms_rearms_and_disarms_its_alert(
    thread: bool, quick_rearm: None, slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = slack(slack_server, thread=thread, deadman_rearm=REARM, deadman_after=600)
    assert backend.progress_interval == REARM
    callback = notifier.NotifierCallback([backend], config=False)
    before = time.time()
    make_trainer(tmp_path / "run-deadman", [callback], epochs=3, model=SlowRegressor()).train()
    assert callback.flush(20)
    schedules = slack_server.posted("chat.scheduleMessage")
    deletes = slack_server.posted("chat.deleteScheduledMessage")
    assert len(schedules) >= 2
    ids = [f"Q{n:010d}" for n in range(1, len(schedules) + 1)]
    assert [d.body["scheduled_message_id"] for d in deletes] == ids  # every one, in order
    assert {d.body["channel"] for d in deletes} == {channel_id("#train")}
    # A re-arm schedules the new alert, then deletes the one it replaces.
    alarm_methods = ("chat.scheduleMessage", "chat.deleteScheduledMessage")
    methods = [r.method_name for r in slack_server.requests if r.method_name in alarm_methods]
    assert methods == ["chat.scheduleMessage"] + [
        "chat.scheduleMessage",
        "chat.deleteScheduledMessage",
    ] * (len(schedules) - 1) + ["chat.deleteScheduledMessage"]
    gaps = [b.at - a.at for a, b in zip(schedules, schedules[1:], strict=False)]
    assert min(gaps) >= REARM
    for request in schedules:
        assert before + 600 <= request.body["post_at"] <= time.time() + 601
        assert request.body["text"].startswith("⚠️ run run-deadman has been silent since <!date^")
        assert "(no heartbeat for 10 min): the process may have been killed" in request.body["text"]
        if thread:
            assert request.body["thread_ts"] == "1700000000.000001"
            assert request.body["reply_broadcast"] is True
        else:
            assert "thread_ts" not in request.body
    assert "Last seen: step 0/12, epoch 0 on host " in schedules[0].body["text"]
    assert "Last seen: step 0/12" not in schedules[-1].body["text"]
    # The end: the final message went out, then the alert was deleted.
    end = slack_server.posted()[-1]
    assert end.body["text"].startswith("✅ Training finished: run-deadman")
    assert end.at <= deletes[-1].at
    assert slack_server.scheduled == {}
    assert scheduled_now(slack_server) == []
    state = json.loads((tmp_path / "run-deadman" / STATE_DIR / STATE_FILE).read_text())
    assert state["#train"]["alarm"] is None


def test_a_killed_run_leaves_exactly_one_alert(slack_server: SlackServer, tmp_path: Path) -> None:
    output_dir = tmp_path / "run-killed"
    args = runner.command(
        "--base-url",
        slack_server.base_url,
        "--output-dir",
        str(output_dir),
        "--epochs",
        "50",
        "--slow",
        "0.2",
        "--option",
        "deadman=true",
    )
    process = runner.Live(args, runner.script_env(TOKEN))
    try:
        (armed,) = slack_server.wait_for(1, "chat.scheduleMessage", timeout=runner.TIMEOUT)
    finally:
        process.process.send_signal(signal.SIGKILL)
    run = process.finish()
    assert run.returncode == -signal.SIGKILL
    assert TOKEN not in run.output
    schedules = slack_server.count("chat.scheduleMessage")
    deletes = slack_server.count("chat.deleteScheduledMessage")
    assert schedules - deletes == 1
    (left,) = scheduled_now(slack_server)
    assert left["id"] == "Q0000000001"
    assert left["post_at"] == armed.body["post_at"] > time.time() + 500
    assert "run run-killed has been silent since" in left["text"]
    assert "Last seen: step 0/" in left["text"]


def test_training_again_in_the_same_output_dir_cancels_a_dead_runs_alert(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    dead = slack(slack_server)
    dead.send(message("train_begin", tmp_path))  # armed, then never heard of again
    (left,) = scheduled_now(slack_server)
    state = json.loads((tmp_path / STATE_DIR / STATE_FILE).read_text())
    assert state["#train"]["alarm"] == [channel_id("#train"), left["id"]]
    backend = slack(slack_server)  # a new process, the same output directory
    backend.send(message("train_begin", tmp_path))
    (fresh,) = scheduled_now(slack_server)
    assert fresh["id"] != left["id"]
    backend.send(message("train_end", tmp_path, global_step=8))
    assert scheduled_now(slack_server) == []


def test_a_failed_delete_is_tried_again(
    quick_rearm: None, slack_server: SlackServer, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = slack(slack_server, deadman_rearm=REARM, deadman_after=600)
    backend.send(message("train_begin"))  # post, schedule Q1
    slack_server.script(Behaviour("ok"), Behaviour("ok"), Behaviour("error", error="fatal_error"))
    backend._run.alarm_at -= REARM  # as if the re-arm interval had passed
    backend.send(message("epoch_end", global_step=4))  # post, schedule Q2, delete Q1: refused
    assert set(slack_server.scheduled) == {"Q0000000001", "Q0000000002"}
    backend.send(message("train_end", global_step=8))  # deletes both
    assert slack_server.scheduled == {}
    assert "dead-man's alert failed: Slack answered fatal_error" in notifier_logs.text
    assert TOKEN not in all_output(notifier_logs)


def test_rearming_stays_within_slacks_schedule_limit(
    quick_rearm: None,
    slack_server: SlackServer,
    monkeypatch: pytest.MonkeyPatch,
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(slack_module, "SCHEDULE_LIMIT", 4)  # 30 in Slack: the same rule
    backend = slack(slack_server, deadman_rearm=REARM, deadman_after=600)
    backend.send(message("train_begin"))
    for step in range(1, 6):
        backend._run.alarm_at -= REARM  # as if the re-arm interval had passed
        backend.send(message("progress", global_step=step))
    assert slack_server.count("chat.scheduleMessage") == 3  # one below the limit
    assert len(slack_server.scheduled) == 1  # the last one armed stays in place
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert warnings == [
        "slack #train: dead-man's alert not re-armed: Slack takes at most 30 scheduled "
        "messages per channel in 5 minutes"
    ]


@pytest.mark.parametrize(
    "code", ["restricted_too_many", "time_in_past", "invalid_auth", "missing_scope"]
)
def test_a_refused_alert_loses_no_message(
    code: str, slack_server: SlackServer, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = slack(slack_server)
    slack_server.script(Behaviour("ok"), Behaviour("error", error=code))
    backend.send(message("train_begin"))
    backend.send(message("train_end", global_step=8))
    assert [t.split(":")[0] for t in slack_server.texts()] == ["train_begin", "train_end"]
    assert slack_server.count("chat.deleteScheduledMessage") == 0  # nothing was armed
    (warning,) = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert warning.startswith("slack #train: dead-man's alert failed: ")
    assert code in warning or "chat:write" in warning


CONTEXT = {
    "run_name": "bert <x>",
    "global_step": 1400,
    "max_steps": 2100,
    "epoch": 2.5,
    "host": "gpu-07",
}


def test_the_alert_text() -> None:
    assert alarm_text(CONTEXT, 600, 1_700_000_000.0) == (
        "⚠️ run bert &lt;x&gt; has been silent since "
        "<!date^1700000000^{date_short_pretty} {time}|2023-11-14 22:13 UTC> (no heartbeat for "
        "10 min): the process may have been killed (OOM, SIGKILL, lost node). Last seen: step "
        "1400/2100, epoch 2.5 on host gpu-07."
    )


@pytest.mark.parametrize(
    ("after", "shown"), [(600, "10 min"), (90, "1.5 min"), (45, "45 s"), (7200, "120 min")]
)
def test_the_alert_says_how_long(after: float, shown: str) -> None:
    assert f"(no heartbeat for {shown}):" in alarm_text(CONTEXT, after, 0.0)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"deadman_rearm": 5}, "deadman_rearm must be >= 10 seconds"),
        ({"deadman_after": 121 * 86400}, "at most 120 days"),
        ({"deadman_after": 100, "deadman_rearm": 60}, "at least twice deadman_rearm"),
        ({"deadman_after": 0}, "deadman_after must be a number of seconds > 0"),
        ({"deadman_rearm": "60"}, "deadman_rearm must be a number of seconds > 0"),
        ({"deadman": "yes"}, "deadman must be True or False"),
    ],
)
def test_deadman_options_are_checked(
    options: dict[str, Any], problem: str, slack_server: SlackServer
) -> None:
    options = {"deadman": True, **options}
    with pytest.raises(ConfigurationError, match=problem):
        get_backend("slack", channel="#c", token=TOKEN, base_url=slack_server.base_url, **options)


@pytest.mark.parametrize(
    "options",
    [{}, {"card": True}, {"thread": True, "card": True}],
    ids=["deadman", "card", "thread"],
)
def test_notifier_run_says_card_and_deadman_are_for_training(
    options: dict[str, Any], slack_server: SlackServer, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = slack(slack_server, **options)
    command = [sys.executable, "-c", "pass"]
    assert run_command(command, [backend], stderr=io.StringIO()) == 0
    assert run_command(command, [backend], stderr=io.StringIO()) == 0
    texts = [t.split(":")[0] for t in slack_server.texts()]
    assert texts == ["▶️ Started", "✅ Finished"] * 2  # no card was posted
    assert slack_server.count("chat.scheduleMessage") == 0
    assert slack_server.count("chat.update") == 0
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    said = "card and deadman apply" if options.get("card") else "deadman applies"
    assert warnings == [  # once per backend, not once per command
        f"slack #train: {said} to training runs only (NotifierCallback): notifier run sends "
        "its start and end, with no progress to show or heartbeat to watch"
    ]
