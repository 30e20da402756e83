"""NotifierCallback's events with a real Trainer: merging, retries, ranks, logs, config."""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

import notifier
from conftest import RecordingBackend
from tiny import TinyRegressor, make_trainer

#: The training events (alerts have their own tests).
EVENTS = ("train_begin", "epoch_end", "evaluate", "save", "train_end", "train_error")


def run(
    tmp_path: Path,
    backend: RecordingBackend,
    *,
    events: list[str] | tuple[str, ...] = EVENTS,
    extra: list[Any] | None = None,
    **args: Any,
) -> tuple[notifier.NotifierCallback, Trainer]:
    callback = notifier.NotifierCallback([backend], events=list(events))
    trainer = make_trainer(tmp_path / "run", [callback, *(extra or [])], **args)
    trainer.train()
    assert callback.flush(10)
    return callback, trainer


def eval_losses(trainer: Trainer) -> dict[int, float]:
    return {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}


def args_for(tmp_path: Path, **overrides: Any) -> TrainingArguments:
    options: dict[str, Any] = {"output_dir": str(tmp_path / "run"), "report_to": "none"}
    return TrainingArguments(**{"use_cpu": True, **options, **overrides})


def state_at(step: int, *, max_steps: int = 8, zero: bool = True) -> TrainerState:
    state = TrainerState(is_world_process_zero=zero, is_local_process_zero=zero)
    state.global_step, state.max_steps = step, max_steps
    state.epoch, state.num_train_epochs = step / 4, 2
    return state


@pytest.fixture
def uncaught(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """sys.excepthook as a recorder, under the guard, to feed it an uncaught exception."""
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sys, "excepthook", lambda *info: seen.append(info))
    return seen


@pytest.fixture
def process_hooks() -> Iterator[None]:
    """Put back every process-wide hook a callback's crash guard may have left installed."""
    saved = sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM)
    yield
    sys.excepthook, threading.excepthook = saved[0], saved[1]
    signal.signal(signal.SIGTERM, saved[2])


# -- evaluation and checkpoints at the end of an epoch -------------------------------------


def test_epoch_message_carries_its_evaluation_and_checkpoint(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    _, trainer = run(tmp_path, recording, eval_strategy="epoch", save_strategy="epoch")
    # transformers calls on_epoch_end before evaluating and saving: no separate messages.
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    losses = eval_losses(trainer)
    assert sorted(losses) == [4, 8]
    epochs = [m for m in recording.messages if m.event == "epoch_end"]
    for message, step in zip(epochs, (4, 8), strict=True):
        context = message.context
        checkpoint = str(tmp_path / "run" / f"checkpoint-{step}")
        assert context["global_step"] == step
        assert context["eval_metrics"]["eval_loss"] == losses[step]
        assert context["eval_metrics"]["epoch"] == step / 4
        assert context["checkpoint"] == checkpoint
        assert os.path.isdir(checkpoint)
        assert f"Checkpoint: {checkpoint}" in message.text
        assert "Eval: eval_loss" in message.text


def test_final_epoch_message_has_no_end_of_training_totals(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    run(tmp_path, recording, eval_strategy="epoch", save_strategy="epoch")
    last_epoch, end = recording.messages[-2], recording.messages[-1]
    assert (last_epoch.event, end.event) == ("epoch_end", "train_end")
    for name in ("train_runtime", "train_loss"):
        assert name not in last_epoch.context["metrics"]
        assert name not in last_epoch.text
        assert name in end.context["metrics"]
    assert "train_loss" in end.text


def test_evaluations_and_saves_between_epoch_ends_are_sent_on_their_own(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    _, trainer = run(
        tmp_path,
        recording,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
    )
    steps = [(m.event, m.context["global_step"]) for m in recording.messages]
    # Step 8 evaluates and saves too (the last step always saves), before on_epoch_end:
    # the epoch message carries those.
    assert steps == [
        ("train_begin", 0),
        ("evaluate", 3),
        ("save", 3),
        ("epoch_end", 4),
        ("evaluate", 6),
        ("save", 6),
        ("epoch_end", 8),
        ("train_end", 8),
    ]
    losses = eval_losses(trainer)
    assert sorted(losses) == [3, 6, 8]
    by_event = {(m.event, m.context["global_step"]): m for m in recording.messages}
    for step in (3, 6):
        assert by_event["evaluate", step].context["eval_metrics"]["eval_loss"] == losses[step]
        assert f"evaluation at step {step}/8" in by_event["evaluate", step].text
        checkpoint = str(tmp_path / "run" / f"checkpoint-{step}")
        assert by_event["save", step].context["checkpoint"] == checkpoint
        assert f"Saved: {checkpoint}" in by_event["save", step].text
    # A checkpoint from an earlier step is not this epoch's checkpoint.
    assert by_event["epoch_end", 4].context["checkpoint"] is None
    assert "Checkpoint:" not in by_event["epoch_end", 4].text
    last = by_event["epoch_end", 8].context
    assert last["eval_metrics"]["eval_loss"] == losses[8]
    assert last["checkpoint"] == str(tmp_path / "run" / "checkpoint-8")


def test_step_evaluations_at_an_epoch_end_go_into_the_epoch_message(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    _, trainer = run(
        tmp_path,
        recording,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    steps = [(m.event, m.context["global_step"]) for m in recording.messages]
    assert steps == [
        ("train_begin", 0),
        ("evaluate", 2),
        ("save", 2),
        ("epoch_end", 4),
        ("evaluate", 6),
        ("save", 6),
        ("epoch_end", 8),
        ("train_end", 8),
    ]
    losses = eval_losses(trainer)
    assert sorted(losses) == [2, 4, 6, 8]
    for message in recording.messages:
        if message.event == "epoch_end":
            step = message.context["global_step"]
            assert message.context["eval_metrics"]["eval_loss"] == losses[step]
            assert message.context["checkpoint"] == str(tmp_path / "run" / f"checkpoint-{step}")


def test_evaluate_after_training_is_sent(tmp_path: Path, recording: RecordingBackend) -> None:
    callback, trainer = run(tmp_path, recording, events=["evaluate", "epoch_end"])
    trainer.evaluate()  # state.epoch is 2.0, as at an epoch end: still its own message
    assert callback.flush(10)
    assert recording.events == ["epoch_end", "epoch_end", "evaluate"]
    assert recording.messages[-1].context["eval_metrics"]["epoch"] == 2.0


def test_only_the_chosen_events_are_sent(tmp_path: Path, recording: RecordingBackend) -> None:
    run(
        tmp_path,
        recording,
        events=["evaluate", "train_end"],
        eval_strategy="epoch",
        save_strategy="epoch",
    )
    # Without epoch_end in events, the evaluations are not held for an epoch message.
    assert recording.events == ["evaluate", "evaluate", "train_end"]
    assert [m.context["global_step"] for m in recording.messages] == [4, 8, 8]


# -- auto_find_batch_size ------------------------------------------------------------------


def test_train_begin_retried_with_the_same_args_is_one_run(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    callback = notifier.NotifierCallback([recording], events=list(EVENTS))
    args, control = args_for(tmp_path, auto_find_batch_size=True), TrainerControl()
    callback.on_train_begin(args, state_at(0), control)
    retry = state_at(0, max_steps=16)  # a smaller batch: more steps, a fresh TrainerState
    callback.on_train_begin(args, retry, control)
    retry.global_step = 16
    callback.on_train_end(args, retry, control)
    assert callback.flush(10)
    assert recording.events == ["train_begin", "train_end"]
    assert recording.messages[1].context["global_step"] == 16
    assert recording.messages[1].context["max_steps"] == 16  # the retry's state is followed


def test_a_second_train_call_is_a_new_run(
    tmp_path: Path, recording: RecordingBackend, process_hooks: None
) -> None:
    callback = notifier.NotifierCallback([recording], events=list(EVENTS))
    args, control = args_for(tmp_path), TrainerControl()  # no auto_find_batch_size
    callback.on_train_begin(args, state_at(0), control)
    callback.on_train_begin(args, state_at(0), control)
    callback.on_train_end(args, state_at(8), control)
    assert callback.flush(10)
    assert recording.events == ["train_begin", "train_error", "train_begin", "train_end"]
    assert recording.messages[1].context["error"]["kind"] == "unfinished"


class OutOfMemoryAbove7(TinyRegressor):
    """Fails as a GPU out of memory would, for any training batch larger than 7."""

    def __init__(self) -> None:
        super().__init__()
        self.out_of_memory = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.training and x.shape[0] > 7:
            self.out_of_memory += 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x, labels)


def test_real_auto_find_batch_size_sends_one_start_message(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    model = OutOfMemoryAbove7()
    gc.freeze()  # accelerate runs gc.collect() around each retry: keep that from taking seconds
    try:
        _, trainer = run(tmp_path, recording, model=model, auto_find_batch_size=True)
    finally:
        gc.unfreeze()
    assert model.out_of_memory == 1  # the Trainer really retried, with a batch of 7
    assert trainer.state.global_step == 10  # 32 samples in batches of 7: 5 steps an epoch
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert [m.context["global_step"] for m in recording.messages[1:]] == [5, 10, 10]


def test_with_auto_find_batch_size_a_train_after_a_caught_crash_is_still_a_new_run(
    tmp_path: Path, recording: RecordingBackend, process_hooks: None
) -> None:
    callback = notifier.NotifierCallback([recording], events=list(EVENTS))
    model = TinyRegressor(crash_at=3)
    trainer = make_trainer(tmp_path / "run", [callback], model=model, auto_find_batch_size=True)
    with pytest.raises(RuntimeError, match="boom"):  # not an out-of-memory error: no retry
        trainer.train()
    model.crash_at = None
    trainer.train()  # the same args: only the caught crash tells it from a batch-size retry
    assert callback.flush(10)
    assert recording.events == [
        "train_begin",
        "train_error",
        "train_begin",
        "epoch_end",
        "epoch_end",
        "train_end",
    ]
    assert recording.messages[1].context["error"]["type"] == "RuntimeError"


def test_stats_keep_two_backends_of_one_name_apart(tmp_path: Path) -> None:
    first, second = RecordingBackend(), RecordingBackend(fail=RuntimeError("down"))
    callback = notifier.NotifierCallback([first, second], config=False)
    make_trainer(tmp_path / "run", [callback], epochs=1).train()
    assert callback.flush(10)
    assert callback.stats == {
        "recording": {"sent": 3, "dropped": 0, "failed": 0},
        "recording#2": {"sent": 0, "dropped": 0, "failed": 3},
    }


class JsonOnly(RecordingBackend):
    """A plugin whose messages are one JSON part, with no text part at all."""

    name = "json-only"
    parts = ("json",)


def test_a_backend_without_a_text_part_gets_its_messages(tmp_path: Path) -> None:
    backend = JsonOnly()
    body = '{"event": "{{ event }}"}'
    callback = notifier.NotifierCallback(
        [backend],
        events=["train_begin", "train_end"],
        templates={"train_begin.json": body, "train_end.json": "{% if false %}{% endif %}"},
        config=False,
    )
    make_trainer(tmp_path / "run", [callback], epochs=1).train()
    assert callback.flush(10)
    # The empty end message is skipped, as an empty text would be.
    assert [m.parts for m in backend.messages] == [{"json": '{"event": "train_begin"}'}]


def test_a_callback_that_fails_to_build_leaves_no_worker_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    for _ in range(3):  # fixed and tried again, as in a notebook
        with pytest.raises(notifier.TemplateError):
            # The first backend's templates pass; the second's json ones do not exist.
            notifier.NotifierCallback([RecordingBackend(), JsonOnly()], config=False)
    assert {t.name for t in threading.enumerate()} - before == set()


# -- the logs dict ---------------------------------------------------------------------------


def test_on_log_leaves_the_logs_dict_alone(tmp_path: Path, recording: RecordingBackend) -> None:
    callback = notifier.NotifierCallback([recording])
    args, control = args_for(tmp_path), TrainerControl()
    callback.on_train_begin(args, state_at(0), control)
    logs: dict[str, Any] = {
        "loss": torch.tensor(0.5),
        "grad_norm": 1.5,
        "eval_loss": 2.0,
        "total_flos": 3.0,
        "nested": {"values": [1, 2]},
    }
    before, values = copy.deepcopy(logs), dict(logs)
    callback.on_log(args, state_at(2), control, logs=logs)
    callback.on_train_end(args, state_at(8), control)
    assert callback.flush(10)
    assert list(logs) == list(before)
    assert all(logs[k] is values[k] for k in logs)  # no value replaced
    assert logs["nested"] == before["nested"] and float(logs["loss"]) == 0.5
    assert recording.messages[-1].context["metrics"]["loss"] == 0.5  # plain float, copied


class LogSpy(TrainerCallback):
    """Copies every logs dict it sees, to compare what callbacks before and after saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, Any]]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.seen.append((id(logs), copy.deepcopy(logs)))


def test_callbacks_after_it_see_the_same_logs(tmp_path: Path, recording: RecordingBackend) -> None:
    before, after = LogSpy(), LogSpy()
    callback = notifier.NotifierCallback([recording], events=list(EVENTS))
    trainer = make_trainer(
        tmp_path / "run", [before, callback, after], eval_strategy="epoch", disable_tqdm=True
    )
    assert any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)
    trainer.train()
    assert callback.flush(10)
    assert len(before.seen) >= 7  # 4 training logs, 2 evaluations, the final summary
    assert after.seen == before.seen
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]


# -- ranks ---------------------------------------------------------------------------------


def test_only_world_process_zero_sends_progress(
    tmp_path: Path, recording: RecordingBackend, uncaught: list[tuple[Any, ...]]
) -> None:
    callback = notifier.NotifierCallback([recording], events=list(EVENTS))
    args, control = args_for(tmp_path), TrainerControl()
    callback.on_train_begin(args, state_at(0, zero=False), control)
    for step in (1, 2, 3, 4):
        callback.on_step_begin(args, state_at(step - 1, zero=False), control)
        callback.on_log(args, state_at(step, zero=False), control, logs={"loss": 1.0 / step})
    callback.on_epoch_end(args, state_at(4, zero=False), control)
    callback.on_evaluate(args, state_at(4, zero=False), control, metrics={"eval_loss": 0.5})
    callback.on_save(args, state_at(4, zero=False), control)
    callback.on_epoch_begin(args, state_at(4, zero=False), control)
    callback.on_evaluate(args, state_at(5, zero=False), control, metrics={"eval_loss": 0.4})
    callback.on_save(args, state_at(5, zero=False), control)
    assert callback.flush(10)
    assert recording.messages == []
    # A crash is reported by every rank.
    try:
        raise RuntimeError("rank 1 died")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    assert len(uncaught) == 1
    assert callback.flush(10)
    assert recording.events == ["train_error"]
    assert recording.messages[0].context["error"]["message"] == "rank 1 died"


# -- defaults and configuration -------------------------------------------------------------


def test_default_backend_is_the_console_on_stderr(
    tmp_path: Path,
    notifier_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("notifier.callback._hinted", False)
    callback = notifier.NotifierCallback()
    notifier.NotifierCallback()  # the hint is given once per process
    assert [b.name for b in callback.backends] == ["console"]
    hints = [r for r in notifier_logs.records if "SLACK_BOT_TOKEN" in r.getMessage()]
    assert len(hints) == 1
    assert "\n" not in hints[0].getMessage()
    assert "SLACK_CHANNEL" in hints[0].getMessage()
    assert "backends=['slack']" in hints[0].getMessage()
    assert hints[0].levelno == logging.WARNING  # Python shows no INFO unless configured
    make_trainer(tmp_path / "run", [callback], epochs=1).train()
    assert callback.flush(10)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("[notifier ")]
    assert len(lines) == 3
    assert "🚀 Training started: run" in lines[0]
    assert "📈 run: epoch 1/1" in lines[1]
    assert "✅ Training finished: run" in lines[2]
    assert "[notifier" not in captured.out


def test_the_hint_shows_without_any_logging_set_up(tmp_path: Path) -> None:
    code = "import notifier; notifier.NotifierCallback(config=False)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stderr.count("no backend configured") == 1, done.stderr


def test_named_backend_logs_no_hint(notifier_logs: pytest.LogCaptureFixture) -> None:
    notifier.NotifierCallback("console")
    assert not [r for r in notifier_logs.records if "SLACK_BOT_TOKEN" in r.getMessage()]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"backends": "nope"}, ["unknown backend 'nope'", "Available:", "console", "slack"]),
        ({"backends": ["slak"]}, ["unknown backend 'slak'", "Did you mean 'slack'?"]),
        ({"backends": []}, ["backends=[]", "None for the console"]),
        ({"backends": [42]}, ["42", "neither a backend name nor a notifier.Backend"]),
        ({"events": ["epoch_ned"]}, ["epoch_ned", "epoch_end", "train_begin"]),
        ({"events": "train_start"}, ["train_start", "events:"]),
        ({"flush_timeout": -1}, ["flush_timeout", "-1"]),
        ({"flush_timeout": math.nan}, ["flush_timeout", "nan"]),
        ({"flush_timeout": math.inf}, ["flush_timeout", "inf"]),
        ({"flush_timeout": "10"}, ["flush_timeout", "'10'"]),
        ({"max_backlog": 0}, ["max_backlog", ">= 1"]),
    ],
)
def test_configuration_errors(options: dict[str, Any], expected: list[str]) -> None:
    options.setdefault("backends", [RecordingBackend()])
    with pytest.raises(notifier.ConfigurationError) as info:
        notifier.NotifierCallback(**options)
    for text in expected:
        assert text in str(info.value)


# -- training itself -------------------------------------------------------------------------


def test_training_result_is_the_same_with_the_callback(
    tmp_path: Path, recording: RecordingBackend
) -> None:
    options: dict[str, Any] = {"eval_strategy": "epoch", "save_strategy": "epoch"}
    plain = make_trainer(tmp_path / "plain", None, **options)
    plain_output = plain.train()
    _, notified = run(tmp_path, recording, **options)
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert notified.state.global_step == plain_output.global_step == 8
    assert notified.state.log_history[-1]["train_loss"] == plain_output.training_loss

    def losses(trainer: Trainer) -> list[float]:
        return [e.get("loss", e.get("eval_loss")) for e in trainer.state.log_history[:-1]]

    assert losses(notified) == losses(plain)
    weights = dict(plain.model.state_dict())
    for name, value in notified.model.state_dict().items():
        assert torch.equal(value, weights[name]), name
