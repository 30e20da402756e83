"""Metric alerts: NaN/inf, spikes, thresholds, stalls, improvement tracking and alert.j2."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from notifier import ConfigurationError
from notifier.alerts import Alert, AlertRules, Improvement, StallWatch, parse_threshold
from notifier.context import CONTEXT_NAMES, sample_context
from notifier.templates import EVENTS, Templates
from tiny import TinyRegressor, make_trainer

NAN, INF = float("nan"), float("inf")
TYPICAL = {"loss": 0.4312, "grad_norm": 1.873, "learning_rate": 1.7e-05, "epoch": 1.25}


def summary(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(a.kind, a.metric, a.message) for a in alerts]


# -- NaN / inf ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"loss": NAN, "epoch": 1.0}, [("nan", "loss", "NaN in loss")]),
        ({"loss": 0.3, "grad_norm": INF}, [("nan", "grad_norm", "inf in grad_norm")]),
        ({"loss": 0.3, "grad_norm": -INF}, [("nan", "grad_norm", "inf in grad_norm")]),
        ({"loss": NAN, "grad_norm": INF}, [("nan", "loss", "NaN/inf in loss, grad_norm")]),
        # logging_nan_inf_filter logs a NaN loss as 0.0: the gradient norm gives it away
        ({"loss": 0.0, "grad_norm": NAN}, [("nan", "loss", "NaN in loss, grad_norm")]),
        ({"loss": 0.0, "grad_norm": 0.5}, []),
        ({"loss": 0.0}, []),
        ({"eval_loss": NAN, "eval_accuracy": 0.5}, [("nan", "eval_loss", "NaN in eval_loss")]),
        ({"eval_accuracy": np.float32("nan")}, [("nan", "eval_accuracy", "NaN in eval_accuracy")]),
        ({"loss": torch.tensor(float("nan"))}, [("nan", "loss", "NaN in loss")]),
        # bookkeeping is not a training problem; text, flags and vectors are not numbers
        ({"epoch": NAN, "train_runtime": INF, "eval_samples_per_second": INF}, []),
        ({"note": "nan", "flag": True, "vector": [NAN], "tensor": torch.tensor([NAN, 1.0])}, []),
        (TYPICAL, []),
        ({}, []),
    ],
)
def test_nan_and_inf_are_detected(values: dict[str, Any], expected: list[tuple[str, ...]]) -> None:
    assert summary(AlertRules().check(values, step=120)) == expected


def test_hidden_nan_loss_is_reported_as_nan_with_the_reason() -> None:
    (alert,) = AlertRules().check({"loss": 0.0, "grad_norm": NAN}, step=120)
    assert math.isnan(alert.value or 0.0)
    assert "logging_nan_inf_filter" in alert.condition
    assert "grad_norm is NaN" in alert.condition
    assert alert.step == 120


def test_nan_fires_once_and_rearms_after_clearing() -> None:
    rules = AlertRules()
    assert summary(rules.check({"grad_norm": NAN}, step=1)) == [
        ("nan", "grad_norm", "NaN in grad_norm")
    ]
    assert rules.check({"grad_norm": NAN}, step=2) == []
    assert rules.check({"loss": 0.3}, step=3) == []  # no grad_norm: nothing cleared
    assert rules.firing == ["grad_norm is NaN"]
    # grad_norm is still firing (NaN -> inf is the same condition); only loss is new
    assert summary(rules.check({"grad_norm": INF, "loss": NAN}, step=4)) == [
        ("nan", "loss", "NaN in loss")
    ]
    assert rules.check({"grad_norm": 1.0, "loss": 0.2}, step=5) == []  # cleared, silently
    assert rules.firing == []
    assert len(rules.check({"grad_norm": NAN}, step=6)) == 1  # re-armed


def test_recoveries_report_the_clearing() -> None:
    rules = AlertRules(recoveries=True)
    rules.check({"loss": 0.0, "grad_norm": NAN}, step=10)
    alerts = rules.check({"loss": 0.25, "grad_norm": 1.5}, step=20)
    assert summary(alerts) == [
        ("recovered", "loss", "loss is finite again (0.25)"),
        ("recovered", "grad_norm", "grad_norm is finite again (1.5)"),
    ]
    assert all(a.step == 20 for a in alerts)
    assert "logging_nan_inf_filter" in alerts[0].condition


def test_nan_rule_can_be_switched_off() -> None:
    assert AlertRules(nan=False).check({"loss": NAN, "grad_norm": INF}, step=1) == []


def test_real_trainer_nan_run_alerts_once_for_train_and_once_for_eval(tmp_path: Path) -> None:
    """A real Trainer with the default logging_nan_inf_filter: losses log as 0.0."""
    rules = AlertRules()
    seen: list[tuple[int, Alert]] = []
    logged: list[dict[str, Any]] = []

    class Watch(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            logged.append(dict(logs))
            seen.extend((state.global_step, a) for a in rules.check(logs, step=state.global_step))

    trainer = make_trainer(
        tmp_path / "nan", [Watch()], model=TinyRegressor(nan_loss=True), eval_strategy="epoch"
    )
    trainer.train()
    assert logged[0]["loss"] == 0.0 and math.isnan(logged[0]["grad_norm"])  # the premise
    assert [(step, a.kind, a.message) for step, a in seen] == [
        (2, "nan", "NaN in loss, grad_norm"),
        (4, "nan", "NaN in eval_loss"),
    ]


# -- thresholds ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expression", "value", "holds"),
    [
        (">= 0.9", 0.9, True),
        (">= 0.9", 0.89, False),
        ("> 10", 10.0, False),
        (">10", 10.5, True),
        ("< 1e-3", 0.0005, True),
        ("<= -1", -1.0, True),
        ("== 0", 0.0, True),
        ("!= 0", 0.1, True),
        ("  >=  +2.5  ", 2.5, True),
        ("< inf", 1e300, True),
    ],
)
def test_threshold_operators(expression: str, value: float, holds: bool) -> None:
    threshold = parse_threshold("m", expression)
    assert threshold.holds(value) is holds
    assert str(threshold).startswith("m ")


@pytest.mark.parametrize(
    "expression", ["0.9", "=> 0.9", "= 0.9", ">= abc", ">= nan", "", ">=", "> 1 2", 0.9, None, []]
)
def test_invalid_threshold_names_the_key_and_the_syntax(expression: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        AlertRules({"eval_accuracy": expression})
    message = str(info.value)
    assert "'eval_accuracy'" in message
    assert ">, >=, <, <=, ==, !=" in message


def test_threshold_fires_once_rearms_and_ignores_unknown_metrics() -> None:
    rules = AlertRules({"eval_accuracy": ">= 0.9", "loss": "> 10", "never_logged": "< 0"})
    assert rules.check(TYPICAL, step=1) == []
    (alert,) = rules.check({"eval_accuracy": 0.9128, "eval_loss": 0.3}, step=2)
    assert (alert.kind, alert.metric, alert.value) == ("threshold", "eval_accuracy", 0.9128)
    assert alert.condition == "eval_accuracy >= 0.9"
    assert alert.message == "eval_accuracy 0.9128 >= 0.9"
    assert rules.check({"eval_accuracy": 0.95}, step=3) == []
    assert rules.check({"eval_accuracy": 0.85}, step=4) == []  # clears silently
    assert len(rules.check({"eval_accuracy": 0.91}, step=5)) == 1  # and fires again


def test_several_thresholds_per_metric_and_recoveries() -> None:
    rules = AlertRules({"loss": ["> 10", "< 0"]}, recoveries=True, nan=False)
    assert summary(rules.check({"loss": 12.0}, step=1)) == [("threshold", "loss", "loss 12 > 10")]
    assert summary(rules.check({"loss": 5.0}, step=2)) == [
        ("recovered", "loss", "loss 5 is no longer > 10")
    ]
    assert summary(rules.check({"loss": -1.0}, step=3)) == [("threshold", "loss", "loss -1 < 0")]


def test_threshold_skips_nan_and_the_hidden_nan_loss() -> None:
    rules = AlertRules({"loss": "< 0.1", "grad_norm": "!= 1"}, nan=False)
    assert rules.check({"loss": 0.0, "grad_norm": NAN}, step=1) == []


# -- spikes -------------------------------------------------------------------------------
def feed(rules: AlertRules, values: list[float], metric: str = "loss") -> list[Alert]:
    alerts: list[Alert] = []
    for step, value in enumerate(values):
        alerts += rules.check({metric: value}, step=step)
    return alerts


def test_spikes_are_off_by_default() -> None:
    assert feed(AlertRules(), [1.0] * 30 + [500.0]) == []


def test_spike_fires_above_factor_times_the_median_once() -> None:
    rules = AlertRules(spike_factor=3.0, spike_window=5, spike_min_samples=5)
    assert feed(rules, [1.0, 1.2, 0.9, 1.1, 1.0]) == []
    (alert,) = rules.check({"loss": 3.5}, step=5)
    assert (alert.kind, alert.metric, alert.value, alert.step) == ("spike", "loss", 3.5, 5)
    assert alert.message == "loss spiked to 3.5 (3.5× the recent median 1)"
    assert alert.condition == "loss > 3 × the median of its last 5 values (1)"
    assert rules.check({"loss": 4.0}, step=6) == []  # still spiking: quiet
    assert rules.check({"loss": 1.0}, step=7) == []  # cleared
    assert len(rules.check({"loss": 9.0}, step=8)) == 1


@pytest.mark.parametrize(
    ("values", "fires"),
    [
        ([1.0] * 9 + [100.0], False),  # fewer than spike_min_samples before the jump
        ([1.0] * 10 + [100.0], True),
        ([1.0] * 10 + [3.0], False),  # exactly factor × median is no spike
        ([0.0] * 10 + [5.0], False),  # a zero median gives no scale
        ([-1.0] * 10 + [5.0], False),
        ([1.0] * 10 + [NAN, 1.0], False),  # NaN is the nan rule's business
    ],
)
def test_spike_needs_enough_samples_and_a_positive_median(values: list[float], fires: bool) -> None:
    rules = AlertRules(spike_factor=3.0, nan=False)
    assert bool(feed(rules, values)) is fires


def test_spike_watches_loss_metrics_unless_told_otherwise() -> None:
    history = [1.0] * 10 + [50.0]
    assert [a.metric for a in feed(AlertRules(spike_factor=3), history, "eval_loss")] == [
        "eval_loss"
    ]
    assert feed(AlertRules(spike_factor=3), history, "grad_norm") == []
    only_grad = AlertRules(spike_factor=3, spike_metrics=["grad_norm"])
    assert [a.metric for a in feed(only_grad, history, "grad_norm")] == ["grad_norm"]
    assert feed(only_grad, history, "loss") == []


def test_hidden_nan_loss_stays_out_of_the_spike_window() -> None:
    rules = AlertRules(spike_factor=3.0, spike_window=4, spike_min_samples=4, nan=False)
    feed(rules, [1.0] * 4)
    for step in range(4):  # four hidden NaNs would make the median 0 if they counted
        rules.check({"loss": 0.0, "grad_norm": NAN}, step=step)
    assert summary(rules.check({"loss": 2.0}, step=9)) == []
    assert [a.kind for a in rules.check({"loss": 3.5}, step=10)] == ["spike"]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"spike_factor": 1.0}, "spike_factor must be a number greater than 1"),
        ({"spike_factor": "3"}, "spike_factor must be a number greater than 1"),
        ({"spike_factor": INF}, "spike_factor must be a number greater than 1"),
        ({"spike_window": 0}, "spike_window must be an integer >= 1"),
        ({"spike_window": 5, "spike_min_samples": 6}, "spike_min_samples must be an integer"),
        ({"spike_min_samples": 0}, "spike_min_samples must be an integer"),
        ({"thresholds": "loss > 1"}, "alert thresholds must be a mapping"),
    ],
)
def test_bad_rule_options_raise(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        AlertRules(**kwargs)


def test_reset_forgets_firing_conditions_and_windows() -> None:
    rules = AlertRules({"loss": "> 5"}, spike_factor=2.0, spike_min_samples=2)
    feed(rules, [1.0, 1.0, 6.0])
    assert len(rules.firing) == 2
    rules.reset()
    assert rules.firing == []
    assert [a.kind for a in rules.check({"loss": 6.0}, step=1)] == ["threshold"]  # no window


def test_check_is_cheap() -> None:
    """A few µs for a typical dict (measured figure in the report); bound generously here."""
    rules = AlertRules()
    for step in range(100):
        rules.check(TYPICAL, step=step)
    rounds = 20_000
    start = time.perf_counter()
    for step in range(rounds):
        rules.check(TYPICAL, step=step)
    assert (time.perf_counter() - start) / rounds < 100e-6


# -- Alert --------------------------------------------------------------------------------
def test_alert_is_frozen_and_its_context_is_plain() -> None:
    alert = Alert("threshold", "loss", 12.0, "loss > 10", "loss 12 > 10", 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        alert.kind = "nan"  # type: ignore[misc]
    context = alert.as_context()
    assert context == {
        "kind": "threshold",
        "metric": "loss",
        "value": 12.0,
        "condition": "loss > 10",
        "message": "loss 12 > 10",
        "step": 7,
    }
    assert all(isinstance(v, (str, int, float)) for v in context.values())


# -- Improvement --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("metric", "given", "greater"),
    [
        ("eval_loss", None, False),
        ("loss", None, False),
        ("eval_mlm_loss", None, False),
        ("eval_accuracy", None, True),
        ("eval_wer", None, True),  # not inferred: say greater_is_better=False
        ("eval_wer", False, False),
        ("eval_loss", True, True),
    ],
)
def test_improvement_direction(metric: str, given: bool | None, greater: bool) -> None:
    assert Improvement(metric, given).greater_is_better is greater


@pytest.mark.parametrize(
    ("metric", "values", "expected"),
    [
        ("eval_loss", [0.5, 0.4, 0.4, 0.45, 0.3], [True, True, False, False, True]),
        ("eval_accuracy", [0.5, 0.6, 0.55, 0.6, 0.7], [True, True, False, False, True]),
        ("eval_loss", [NAN, 0.5, INF, 0.6], [False, True, False, False]),
    ],
)
def test_improvement_updates(metric: str, values: list[float], expected: list[bool]) -> None:
    tracker = Improvement(metric)
    assert [tracker.update({metric: v}) for v in values] == expected


def test_improvement_records_best_previous_and_step() -> None:
    tracker = Improvement("eval_accuracy")
    assert tracker.update({"eval_loss": 0.1}) is False  # another metric: nothing
    assert tracker.update({"eval_accuracy": 0.8}, step=100) is True
    assert (tracker.best, tracker.previous, tracker.best_step) == (0.8, None, 100)
    assert tracker.update({"eval_accuracy": np.float64(0.85)}, step=200) is True
    assert (tracker.best, tracker.previous, tracker.best_step) == (0.85, 0.8, 200)
    tracker.reset()
    assert tracker.best is None
    with pytest.raises(ConfigurationError):
        Improvement("")


# -- stalls -------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stall_fires_once_then_reports_recovery() -> None:
    clock = Clock()
    watch = StallWatch(600, clock=clock)
    assert watch.check() is None  # not started: nothing to be stalled
    assert watch.progress(10) is None
    clock.now += 599
    assert watch.check() is None
    clock.now += 2
    stall = watch.check()
    assert stall is not None
    assert (stall.kind, stall.metric, stall.value, stall.step) == ("stall", "step", 601, 10)
    assert stall.message == "no progress for 10m 01s"
    clock.now += 3000
    assert watch.check() is None  # once per stall
    resumed = watch.progress(11)
    assert resumed is not None
    assert (resumed.kind, resumed.step) == ("recovered", 11)
    assert resumed.message == "training resumed after 1h 00m without progress"
    assert watch.progress(12) is None
    watch.stop()
    clock.now += 10_000
    assert watch.check() is None


@pytest.mark.parametrize("after", [0, -5, INF, NAN, "600", True])
def test_stall_after_must_be_positive_seconds(after: Any) -> None:
    with pytest.raises(ConfigurationError, match="stall_after"):
        StallWatch(after)


# -- the alert template -------------------------------------------------------------------
def test_alert_is_an_event_and_a_documented_context_name() -> None:
    assert "alert" in EVENTS
    assert "alert" in CONTEXT_NAMES
    assert sample_context("epoch_end")["alert"] is None


@pytest.mark.parametrize(
    ("alert", "headline"),
    [
        (
            Alert("nan", "grad_norm", NAN, "grad_norm is NaN", "NaN in grad_norm", 120),
            "⚠️ bert-base-sst2: NaN in grad_norm at step 120",
        ),
        (
            Alert("threshold", "eval_accuracy", 0.91, "eval_accuracy >= 0.9", "x", 120),
            "🔔 bert-base-sst2: x at step 120",
        ),
        (Alert("spike", "loss", 9.0, "c", "loss spiked", 120), "⚠️ bert-base-sst2: loss spiked"),
        (Alert("stall", "step", 700.0, "c", "no progress", 120), "⏸️ bert-base-sst2: no progress"),
        (Alert("recovered", "loss", 0.2, "c", "back", 120), "✅ bert-base-sst2: back at step 120"),
    ],
)
def test_default_alert_template(alert: Alert, headline: str) -> None:
    context = {**sample_context("alert"), "global_step": 120, "alert": alert.as_context()}
    text = Templates(events=("alert",)).render("alert", context)["text"]
    first, _, rest = text.partition("\n")
    assert first.startswith(headline)
    assert f"Rule: {alert.condition}" in rest
    assert "Output: runs/bert-base-sst2" in rest
    assert "None" not in text


def test_user_alert_template_may_use_the_alert_name() -> None:
    templates = Templates({"alert": "{{ alert.kind }}: {{ alert.metric }}"}, events=("alert",))
    context = {**sample_context("alert")}
    assert templates.render("alert", context)["text"] == "nan: grad_norm"
