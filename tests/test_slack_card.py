"""The live run card: posted at the start, edited at most every card_interval, final at the end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from notifier_backends.slack import SlackBackend, card_message

import notifier
from conftest import TOKEN
from notifier import ConfigurationError, Message, get_backend
from slack_server import Behaviour, SlackServer, channel_id
from test_slack_backend import assert_valid_blocks
from tiny import TinyRegressor, make_trainer


class SlowRegressor(TinyRegressor):
    """The tiny model, sleeping in each training step so a run lasts a few card intervals."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.training:
            time.sleep(self.pause)
        return super().forward(x, labels)


def slack(server: SlackServer, **options: Any) -> SlackBackend:
    backend = get_backend(
        "slack", channel="#train", token=TOKEN, base_url=server.base_url, **options
    )
    assert isinstance(backend, SlackBackend)
    return backend


def message(event: str, text: str = "", **context: Any) -> Message:
    ctx: dict[str, Any] = {
        "event": event,
        "run_name": "run",
        "output_dir": None,
        "host": "node-1",
        "resumed": False,
        "rank": 0,
        "global_step": 0,
        "max_steps": 8,
        "progress": 0.0,
        "epoch": 0.0,
        "num_train_epochs": 2,
        "elapsed": 1.0,
        "metrics": {},
        "eval_metrics": {},
    }
    ctx.update(context)
    return Message(event, text or f"{event}: run\ndetails", context=ctx)


INTERVAL = 0.5


class Unpaced(SlackBackend):
    """Slack without the outbox's one-message-a-second pacing, which would otherwise space
    the edits further apart than the card's interval and hide what the backend does."""

    interval = 0.0

    def __init__(self, **options: Any) -> None:
        super().__init__(card=True, **options)


def test_the_card_is_edited_no_more_often_than_the_interval(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    backend = Unpaced(
        channel="#train", token=TOKEN, base_url=slack_server.base_url, card_interval=INTERVAL
    )
    assert backend.progress_interval == INTERVAL
    callback = notifier.NotifierCallback([backend], config=False)
    make_trainer(tmp_path / "run-card", [callback], epochs=4, model=SlowRegressor(0.1)).train()
    assert callback.flush(20)
    posts = slack_server.posted()
    start, card = posts[0], posts[1]
    assert start.body["text"].startswith("🚀 Training started: run-card")
    assert card.body["text"].startswith("⏳ run-card: 0% · step 0/16")
    *edits, final = slack_server.posted("chat.update")
    assert len(edits) >= 2
    for edit in [*edits, final]:
        assert edit.body["ts"] == "1700000000.000002"  # the card, not the start message
        assert edit.body["channel"] == channel_id("#train")  # chat.update takes IDs only
        assert_valid_blocks(edit.body["blocks"])
    writes = [card.at] + [e.at for e in edits]
    gaps = [b - a for a, b in zip(writes, writes[1:], strict=False)]
    assert min(gaps) >= INTERVAL, gaps
    steps = [int(e.body["text"].split("step ", 1)[1].split("/", 1)[0]) for e in edits]
    assert steps == sorted(steps) and steps[0] > 0
    assert edits[0].body["text"].startswith("⏳ run-card: ")
    assert "Train: loss" in edits[-1].body["text"]
    full = "▓" * 20 + " 100%"
    assert final.body["text"].startswith(f"✅ run-card: finished · step 16/16\n{full}")
    assert slack_server.messages["1700000000.000002"]["text"] == final.body["text"]


def test_an_early_update_waits_and_the_newest_state_wins(slack_server: SlackServer) -> None:
    backend = slack(slack_server, card=True, card_interval=30)
    backend.send(message("train_begin"))
    backend.send(message("progress", "⏳ run: 12% · step 1/8", global_step=1))
    backend.send(message("progress", "⏳ run: 25% · step 2/8", global_step=2))
    backend.send(message("epoch_end", global_step=4))
    assert slack_server.posted("chat.update") == []  # all within 30 s of the card's post
    backend._run.card_at -= 30  # as if the interval had passed
    backend.send(message("evaluate", global_step=4))  # any message brings the held state out
    backend.send(message("train_end", global_step=8, progress=1.0))  # final: at once
    held, final = slack_server.wait_for(2, "chat.update")
    assert held.body["text"] == "⏳ run: 25% · step 2/8"
    assert final.body["text"].startswith("✅ run: finished · step 8/8")


def test_with_a_thread_the_card_is_the_parent(slack_server: SlackServer, tmp_path: Path) -> None:
    backend = slack(slack_server, thread=True, card=True, card_interval=30)
    backend.send(message("train_begin", output_dir=str(tmp_path)))
    backend.send(message("train_end", output_dir=str(tmp_path), global_step=8, progress=1.0))
    card, start, end = slack_server.wait_for(3)
    assert card.body["text"].startswith("⏳ run: 0% · step 0/8")
    assert "thread_ts" not in card.body
    assert start.body["thread_ts"] == end.body["thread_ts"] == "1700000000.000001"
    (final,) = slack_server.posted("chat.update")
    assert final.body["ts"] == "1700000000.000001"
    assert final.body["text"].startswith("✅ run: finished")


def test_a_refused_card_leaves_the_thread_to_the_start_message(
    slack_server: SlackServer, tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = slack(slack_server, thread=True, card=True, max_attempts=1)
    slack_server.script(Behaviour("status", status=503))
    backend.send(message("train_begin", output_dir=str(tmp_path)))
    backend.send(message("progress", global_step=2))
    backend.send(message("train_end", output_dir=str(tmp_path), global_step=8))
    refused, start, end = slack_server.wait_for(3)
    assert refused.body["text"].startswith("⏳ run: 0%")
    assert "thread_ts" not in start.body and start.body["text"].startswith("train_begin")
    assert end.body["thread_ts"] == "1700000000.000002"
    assert slack_server.posted("chat.update") == []
    assert "slack #train: run card failed: Slack answered HTTP 503" in notifier_logs.text


def test_a_resumed_run_edits_its_threads_card(slack_server: SlackServer, tmp_path: Path) -> None:
    where = str(tmp_path)
    one = slack(slack_server, thread=True, card=True)
    one.send(message("train_begin", output_dir=where))
    one.send(message("train_error", output_dir=where, global_step=4, progress=0.5))
    two = slack(slack_server, thread=True, card=True)
    two.send(message("train_begin", output_dir=where, resumed=True, global_step=4, progress=0.5))
    assert len(slack_server.posted()) == 4  # card, start, crash, resumed: no second card
    failed, resumed = slack_server.wait_for(2, "chat.update")
    assert failed.body["text"].startswith("❌ run: failed at step 4/8")
    assert resumed.body["ts"] == "1700000000.000001"
    assert resumed.body["text"].startswith("⏳ run: 50% · step 4/8")
    assert "resumed on node-1" in resumed.body["text"]


def test_a_deleted_card_is_left_alone(
    slack_server: SlackServer, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = slack(slack_server, card=True, card_interval=30)
    backend.send(message("train_begin"))
    slack_server.script(Behaviour("error", error="message_not_found"))
    backend._run.card_at -= 30
    backend.send(message("progress", global_step=2))
    backend._run.card_at -= 30
    backend.send(message("progress", global_step=4))
    backend.send(message("train_end", global_step=8))
    assert len(slack_server.posted("chat.update")) == 1  # the refused edit, then none
    assert slack_server.texts()[-1].startswith("train_end")  # the end still went out
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert warnings == [
        "slack #train: run card failed: Slack answered message_not_found (HTTP 200); it is no "
        "longer edited"
    ]


@pytest.mark.parametrize(
    ("event", "error", "headline"),
    [
        ("train_end", None, "✅ run: finished · step 3/8"),
        ("train_error", {"kind": "crash"}, "❌ run: failed at step 3/8"),
        ("train_error", {"kind": "interrupted"}, "⏹️ run: interrupted at step 3/8"),
        ("train_error", {"kind": "terminated"}, "🛑 run: terminated at step 3/8"),
        ("train_error", {"kind": "unfinished"}, "⚠️ run: ended without finishing at step 3/8"),
        ("train_begin", None, "⏳ run: 38% · step 3/8"),
    ],
)
def test_card_states(
    event: str, error: dict[str, str] | None, headline: str, slack_server: SlackServer
) -> None:
    stage = "start" if event == "train_begin" else "final"
    card = card_message(
        message(
            event,
            global_step=3,
            progress=3 / 8,
            error=error,
            run_name="run",
            metrics={"loss": 0.5, "train_runtime": 3.0},
            eval_metrics={"eval_loss": 0.25},
        ),
        stage,
    )
    assert card.title == headline
    bar = card.body.split("\n", 1)[0]
    assert bar == ("▓" * 20 + " 100%" if event == "train_end" else "▓" * 8 + "░" * 12 + " 38%")
    layout = slack(slack_server).payload(card)["blocks"]
    assert_valid_blocks(layout)
    if stage == "final":
        fields = [f["text"] for b in layout if "fields" in b for f in b["fields"]]
        assert fields == ["*eval_loss*\n0.25", "*loss*\n0.5"]  # eval first, no bookkeeping


def test_values_in_the_card_are_escaped() -> None:
    card = card_message(message("train_begin", run_name="<!channel> & co", host="<@U1>"), "start")
    assert "<!channel>" not in card.text and "&lt;!channel&gt; &amp; co" in card.text
    assert "<@U1>" not in card.text


@pytest.mark.parametrize(
    ("options", "interval"),
    [
        ({}, None),
        ({"thread": True}, None),
        ({"card": True}, 30.0),
        ({"card": True, "card_interval": 0.5}, 0.5),
        ({"deadman": True}, 60.0),
        ({"card": True, "deadman": True}, 30.0),
        ({"card": True, "card_interval": 120, "deadman": True}, 60.0),
    ],
)
def test_progress_interval_follows_the_options(
    options: dict[str, Any], interval: float | None, slack_server: SlackServer
) -> None:
    assert slack(slack_server, **options).progress_interval == interval


@pytest.mark.parametrize("value", [0, -1, "30", float("nan"), True])
def test_card_interval_must_be_seconds(value: Any, slack_server: SlackServer) -> None:
    with pytest.raises(ConfigurationError, match="card_interval must be a number of seconds"):
        slack(slack_server, card=True, card_interval=value)
