"""NotifierCallback's watching features on a real Trainer: alerts, stalls, improvement filter,
throttles, routes, progress ticks, plots attachments and the configuration file."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import RecordingBackend
from notifier import ConfigurationError, NotifierCallback
from tiny import TinyRegressor, make_trainer

PNG = b"\x89PNG\r\n\x1a\n"


class SlowRegressor(TinyRegressor):
    """Sleeps ``pause`` s in every training forward, and ``stall`` s once at call ``stall_at``."""

    def __init__(self, pause: float = 0.0, stall_at: int | None = None, stall: float = 0.0) -> None:
        super().__init__()
        self.pause, self.stall_at, self.stall = pause, stall_at, stall

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.training:
            time.sleep(self.pause)
            if self.stall_at is not None and self.calls + 1 == self.stall_at:
                time.sleep(self.stall)
        return super().forward(x, labels)


class Ticking(RecordingBackend):
    """A recording backend that asks for progress messages, like a Slack live card."""

    name = "ticking"

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.progress_interval = interval


class Other(RecordingBackend):
    name = "other"


def run(tmp_path: Path, callback: NotifierCallback, **kwargs: Any) -> Any:
    trainer = make_trainer(tmp_path / "run", [callback], **kwargs)
    trainer.train()
    assert callback.flush(10)
    return trainer


def test_nan_model_triggers_exactly_one_nan_alert(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], config=False)
    run(tmp_path, callback, model=TinyRegressor(nan_loss=True), logging_steps=1)
    alerts = [m for m in backend.messages if m.event == "alert"]
    assert len(alerts) == 1, [m.text for m in alerts]
    assert alerts[0].context["alert"]["kind"] == "nan"
    assert "NaN" in alerts[0].title and "grad_norm" in alerts[0].title
    assert backend.events[0] == "train_begin" and backend.events[-1] == "train_end"


def test_threshold_alert_fires_once_per_condition(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], alerts={"loss": "> 0"}, config=False)
    run(tmp_path, callback, logging_steps=1)
    alerts = [m.context["alert"] for m in backend.messages if m.event == "alert"]
    assert [(a["kind"], a["metric"]) for a in alerts] == [("threshold", "loss")]


def test_alerts_false_sends_none(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], alerts=False, config=False)
    run(tmp_path, callback, model=TinyRegressor(nan_loss=True), logging_steps=1)
    assert "alert" not in backend.events


def test_stall_watchdog_alerts_then_recovers(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], stall_after=0.3, config=False)
    run(tmp_path, callback, model=SlowRegressor(stall_at=3, stall=1.5), epochs=1)
    kinds = [m.context["alert"]["kind"] for m in backend.messages if m.event == "alert"]
    assert kinds == ["stall", "recovered"]
    stall = next(m for m in backend.messages if m.event == "alert")
    assert stall.context["global_step"] == 2  # the last step completed before the stall


def test_only_improvements_filters_evaluate_messages(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback(
        [backend], events=["evaluate"], only_improvements="eval_loss", config=False
    )
    trainer = run(
        tmp_path, callback, eval_strategy="steps", eval_steps=1, epochs=3, learning_rate=0.9
    )
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    best, improvements = math.inf, 0
    for loss in losses:
        if loss < best:
            best, improvements = loss, improvements + 1
    assert 0 < improvements < len(losses)  # the data must exercise the filter
    sent = [m.context["eval_metrics"]["eval_loss"] for m in backend.messages]
    assert len(sent) == improvements
    assert sent == sorted(sent, reverse=True)


class SlowEval(TinyRegressor):
    """Each evaluation batch takes ``pause`` seconds."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if not self.training:
            time.sleep(self.pause)
        return super().forward(x, labels)


def test_a_long_evaluation_is_not_a_stall(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], stall_after=1.0, config=False)
    # 16 batches of 0.15 s: the evaluation lasts 2.4 s, each of its steps far less than 1 s.
    run(
        tmp_path,
        callback,
        model=SlowEval(0.15),
        epochs=1,
        eval_strategy="epoch",
        per_device_eval_batch_size=1,
    )
    assert "alert" not in backend.events, [m.text for m in backend.messages]
    assert backend.events == ["train_begin", "epoch_end", "train_end"]


def test_only_improvements_holds_back_epoch_messages_whose_evaluation_did_not_improve(
    tmp_path: Path,
) -> None:
    backend = RecordingBackend()
    # Without the eval_ prefix, as for metric_for_best_model.
    callback = NotifierCallback([backend], only_improvements="loss", config=False)
    trainer = run(tmp_path, callback, epochs=6, eval_strategy="epoch", learning_rate=0.9)
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    best, improved = math.inf, []
    for epoch, loss in enumerate(losses, 1):
        if loss < best:
            best = loss
            improved.append(float(epoch))
    assert 0 < len(improved) < len(losses)  # the data must exercise the filter
    assert [m.context["epoch"] for m in backend.messages if m.event == "epoch_end"] == improved
    assert backend.events[0] == "train_begin" and backend.events[-1] == "train_end"


def test_only_improvements_follows_the_trainers_direction_and_names_a_missing_metric(
    tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback(
        [backend], events=["evaluate"], only_improvements="eval_loss", config=False
    )
    # The Trainer is told a higher loss is better: the filter must agree with it.
    trainer = run(
        tmp_path,
        callback,
        epochs=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        metric_for_best_model="loss",
        greater_is_better=True,
    )
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    sent = [m.context["eval_metrics"]["eval_loss"] for m in backend.messages]
    assert sent == sorted(sent) and sent[0] == losses[0] and len(sent) < len(losses)

    typo = NotifierCallback([RecordingBackend()], only_improvements="acuracy", config=False)
    run(tmp_path, typo, epochs=2, eval_strategy="epoch")
    warnings = [
        r.getMessage() for r in notifier_logs.records if "only_improvements" in r.getMessage()
    ]
    assert warnings == [
        "notifier: only_improvements='eval_acuracy': the evaluation has no such metric (it has "
        "epoch, eval_loss, eval_runtime, eval_samples_per_second, eval_steps_per_second); "
        "evaluation messages wait until it appears"
    ]


def test_throttle_every_n_epochs_and_min_interval(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback(
        [backend],
        events=["train_begin", "epoch_end", "evaluate", "train_end"],
        throttle={"epoch_end": {"every_n_epochs": 2}, "evaluate": {"min_interval": 3600}},
        config=False,
    )
    run(tmp_path, callback, epochs=4, eval_strategy="steps", eval_steps=3)
    epochs = [m.context["epoch"] for m in backend.messages if m.event == "epoch_end"]
    assert epochs == [2.0, 4.0]
    assert backend.events.count("evaluate") == 1
    assert backend.events[0] == "train_begin" and backend.events[-1] == "train_end"


@pytest.mark.parametrize(
    "throttle",
    [
        {"train_end": {"min_interval": 5}},
        {"evaluate": {"every_n_epochs": 2}},
        {"epoch_end": {"x": 1}},
    ],
)
def test_bad_throttle_raises(throttle: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="throttle"):
        NotifierCallback([RecordingBackend()], throttle=throttle, config=False)


def test_routes_send_each_backend_its_events(tmp_path: Path) -> None:
    main, crashes = RecordingBackend(), Other()
    callback = NotifierCallback(
        [main, crashes], routes={"other": ["train_end", "train_error"]}, config=False
    )
    run(tmp_path, callback)
    assert main.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert crashes.events == ["train_end"]


def test_evaluations_merged_into_epoch_messages_still_reach_backends_routed_to_them(
    tmp_path: Path,
) -> None:
    main, evals = RecordingBackend(), Other()
    callback = NotifierCallback([main, evals], routes={"other": ["evaluate"]}, config=False)
    run(tmp_path, callback, eval_strategy="epoch")
    assert main.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert all("eval_loss" in m.context["eval_metrics"] for m in main.messages[1:3])
    assert evals.events == ["evaluate", "evaluate"]
    assert [m.context["global_step"] for m in evals.messages] == [4, 8]


def test_a_route_alone_can_ask_for_epoch_messages(tmp_path: Path) -> None:
    main, epochs = RecordingBackend(), Other()
    callback = NotifierCallback(
        [main, epochs],
        events=["train_begin", "train_end"],
        routes={"other": ["epoch_end"]},
        config=False,
    )
    run(tmp_path, callback, eval_strategy="epoch")
    assert main.events == ["train_begin", "train_end"]
    assert epochs.events == ["epoch_end", "epoch_end"]
    assert "eval_loss" in epochs.messages[0].context["eval_metrics"]


def test_an_evaluation_goes_on_its_own_when_its_epoch_message_is_throttled(
    tmp_path: Path,
) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback(
        [backend],
        events=["epoch_end", "evaluate"],
        throttle={"epoch_end": {"every_n_epochs": 2}},
        config=False,
    )
    run(tmp_path, callback, epochs=4, eval_strategy="epoch")
    sent = [(m.event, m.context["epoch"]) for m in backend.messages]
    assert sent == [
        ("evaluate", 1.0),
        ("epoch_end", 2.0),
        ("evaluate", 3.0),
        ("epoch_end", 4.0),
    ]


def test_an_evaluation_goes_on_its_own_when_its_epoch_template_renders_nothing(
    tmp_path: Path,
) -> None:
    backend = RecordingBackend()
    even_only = "{% if epoch|int % 2 == 0 %}epoch {{ epoch|number }}{% endif %}"
    callback = NotifierCallback(
        [backend],
        events=["epoch_end", "evaluate"],
        templates={"epoch_end": even_only},
        config=False,
    )
    run(tmp_path, callback, epochs=4, eval_strategy="epoch")
    sent = [(m.event, m.context["epoch"]) for m in backend.messages]
    assert sent == [("evaluate", 1.0), ("epoch_end", 2.0), ("evaluate", 3.0), ("epoch_end", 4.0)]


def test_a_template_that_renders_nothing_sends_nothing(tmp_path: Path) -> None:
    backend = RecordingBackend()
    only_last = "{% if epoch == num_train_epochs %}last epoch done{% endif %}"
    callback = NotifierCallback([backend], templates={"epoch_end": only_last}, config=False)
    run(tmp_path, callback, epochs=3)
    assert backend.events == ["train_begin", "epoch_end", "train_end"]
    assert backend.messages[1].text == "last epoch done"


def test_route_for_unknown_backend_raises() -> None:
    with pytest.raises(ConfigurationError, match="'email' is not among the backends"):
        NotifierCallback([RecordingBackend()], routes={"email": ["train_end"]}, config=False)


def test_progress_ticks_only_reach_backends_that_ask(tmp_path: Path) -> None:
    card, plain = Ticking(interval=0.2), RecordingBackend()
    callback = NotifierCallback([card, plain], config=False)
    started = time.monotonic()
    run(tmp_path, callback, model=SlowRegressor(pause=0.05), epochs=2)
    duration = time.monotonic() - started
    ticks = [m for m in card.messages if m.event == "progress"]
    assert 1 <= len(ticks) <= duration / 0.2 + 1
    assert all(m.title.startswith("⏳ run:") for m in ticks)
    assert "progress" not in plain.events
    steps = [m.context["global_step"] for m in ticks]
    assert steps == sorted(steps)


def test_plots_attach_a_png_at_train_end(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], plots=True, config=False)
    run(tmp_path, callback, eval_strategy="epoch", logging_steps=1)
    end = backend.messages[-1]
    assert end.event == "train_end"
    (attachment,) = end.attachments
    assert attachment.filename == "training-curves.png" and attachment.mime == "image/png"
    assert attachment.data.startswith(PNG)
    assert all(not m.attachments for m in backend.messages[:-1])


def test_a_config_file_alone_configures_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "echo.jsonl"
    (tmp_path / "notifier.toml").write_text(
        f"""
events = ["train_begin", "train_end", "train_error"]
flush_timeout = 5

[backends.echo]
path = "{out}"
""",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    for name in ("NOTIFIER_BACKENDS", "NOTIFIER_EVENTS", "NOTIFIER_CONFIG", "NOTIFIER_TEMPLATES"):
        monkeypatch.delenv(name, raising=False)
    callback = NotifierCallback()
    assert callback.flush_timeout == 5
    run(tmp_path, callback)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["event"] for line in lines] == ["train_begin", "train_end"]


def test_only_improvements_from_the_file(tmp_path: Path) -> None:
    config = tmp_path / "notifier.toml"
    config.write_text(
        'events = ["evaluate"]\nonly_improvements = {metric = "loss", greater_is_better = true}\n',
        encoding="utf-8",
    )
    backend = RecordingBackend()
    trainer = run(
        tmp_path, NotifierCallback([backend], config=config), epochs=4, eval_strategy="epoch"
    )
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    sent = [m.context["eval_metrics"]["eval_loss"] for m in backend.messages]
    assert sent == sorted(sent) and sent[0] == losses[0] and len(sent) < len(losses)


def test_arguments_beat_environment_beat_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notifier.toml").write_text(
        'events = ["train_begin"]\nflush_timeout = 5\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOTIFIER_FLUSH_TIMEOUT", "7")
    assert NotifierCallback([RecordingBackend()]).flush_timeout == 7
    assert NotifierCallback([RecordingBackend()], flush_timeout=9).flush_timeout == 9
    assert NotifierCallback([RecordingBackend()]).events == ("train_begin",)
