"""Metric alerts (NaN/inf, loss spikes, user thresholds, stalls) that fire once per condition.

Everything here is pure bookkeeping, cheap enough to run on the training thread
for every logged dict: no I/O, no threads, no imports beyond the standard library.
"""

from __future__ import annotations

import math
import operator
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigurationError
from .filters import NOISE, NOISE_SUFFIXES, duration, number

AlertKind = Literal["nan", "spike", "threshold", "stall", "recovered"]
#: Every kind an Alert can have.
ALERT_KINDS: tuple[str, ...] = ("nan", "spike", "threshold", "stall", "recovered")

#: Comparison operators a threshold may use, longest first so ">=" is not read as ">".
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
THRESHOLD_SYNTAX = (
    'an operator (>, >=, <, <=, ==, !=) followed by a number, e.g. ">= 0.9" or "> 10"'
)
_EXPRESSION = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*\Z")


@dataclass(frozen=True)
class Alert:
    """One alert: what happened (``kind``), to which metric, and a one-line ``message``.

    ``condition`` is the rule that now holds (for ``recovered``: the rule that no
    longer does); ``value`` is the metric's value (seconds without progress for
    ``stall``); ``step`` is the global step it was seen at.
    """

    kind: AlertKind
    metric: str
    value: float | None
    condition: str
    message: str
    step: int | None = None

    def as_context(self) -> dict[str, Any]:
        """The alert as plain values, for the template context name ``alert``."""
        return {
            "kind": self.kind,
            "metric": self.metric,
            "value": self.value,
            "condition": self.condition,
            "message": self.message,
            "step": self.step,
        }


@dataclass(frozen=True)
class Threshold:
    """A parsed user threshold such as ``eval_accuracy >= 0.9``."""

    metric: str
    op: str
    bound: float

    def holds(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def parse_threshold(metric: str, expression: Any) -> Threshold:
    """Parse ``">= 0.9"`` for ``metric``; raises ConfigurationError naming the key and syntax."""
    if not isinstance(metric, str) or not metric:
        raise ConfigurationError(f"alert thresholds: {metric!r} is not a metric name")
    problem = f"alert threshold for {metric!r}: {expression!r} is not {THRESHOLD_SYNTAX}"
    if not isinstance(expression, str):
        raise ConfigurationError(problem)
    match = _EXPRESSION.match(expression)
    if match is None:
        raise ConfigurationError(problem)
    op, text = match.groups()
    try:
        bound = float(text)
    except ValueError:
        raise ConfigurationError(problem) from None
    if math.isnan(bound):
        raise ConfigurationError(problem + " (NaN compares false with everything)")
    return Threshold(metric, op, bound)


def parse_thresholds(
    thresholds: Mapping[str, str | Sequence[str]] | None,
) -> dict[str, tuple[Threshold, ...]]:
    """Parse ``{metric: expression or [expressions]}`` into Thresholds per metric."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise ConfigurationError(
            f"alert thresholds must be a mapping such as {{'loss': '> 10'}}, "
            f"not {type(thresholds).__name__}"
        )
    parsed: dict[str, tuple[Threshold, ...]] = {}
    for metric, spec in thresholds.items():
        expressions = [spec] if isinstance(spec, str) else spec
        if not isinstance(expressions, Sequence) or not expressions:
            raise ConfigurationError(
                f"alert threshold for {metric!r}: {spec!r} is not {THRESHOLD_SYNTAX}, "
                "or a list of them"
            )
        parsed[metric] = tuple(parse_threshold(metric, e) for e in expressions)
    return parsed


def _as_float(value: Any) -> float | None:
    """A logged value as a float, or None when it is not a single number."""
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return float(value)
    if value is None or kind is bool or kind is str:
        return None
    if hasattr(value, "__float__"):  # numpy scalars, 0-d tensors
        try:
            return float(value)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _is_noise(metric: str) -> bool:
    """Bookkeeping (epoch, runtime, throughput) that no alert is about."""
    return metric in NOISE or metric.endswith(NOISE_SUFFIXES)


def hidden_nan_loss(values: Mapping[str, Any]) -> bool:
    """True for a logged ``loss`` of exactly 0.0 next to a non-finite ``grad_norm``.

    With ``logging_nan_inf_filter`` (the Trainer's default) non-finite step losses
    are left out of the logged average, so a window of NaN losses logs as 0.0;
    the gradient norm, which is not filtered, gives it away.
    """
    loss = _as_float(values.get("loss"))
    grad_norm = _as_float(values.get("grad_norm"))
    return loss == 0.0 and grad_norm is not None and not math.isfinite(grad_norm)


def _median(values: Iterable[float]) -> float:
    """The median (statistics.median is several times slower on a short window)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _nan_word(values: Iterable[float]) -> str:
    kinds = {"NaN" if math.isnan(x) else "inf" for x in values}
    return kinds.pop() if len(kinds) == 1 else "NaN/inf"


class AlertRules:
    """Which metric conditions alert, and which of them are currently firing.

    ``check(values, step=...)`` is called with every logged dict and returns the
    alerts that *started* with it: a condition fires once, stays quiet while it
    holds, and re-arms only when a later value of the same metric no longer meets
    it (a dict without the metric changes nothing). With ``recoveries=True`` the
    clearing is itself reported as a ``recovered`` alert.

    - ``nan``: any non-finite logged number (bookkeeping such as ``epoch`` or
      ``*_runtime`` aside), including a ``loss`` of 0.0 logged next to a
      non-finite ``grad_norm`` (see ``hidden_nan_loss``). The metrics that turn
      non-finite together are reported in one alert.
    - spikes, off unless ``spike_factor`` is set: a value above ``spike_factor``
      times the median of the metric's previous ``spike_window`` finite values,
      once at least ``spike_min_samples`` were seen. Watched metrics:
      ``spike_metrics``, default every metric whose name contains "loss".
    - ``thresholds``: ``{"eval_accuracy": ">= 0.9", "loss": ["> 10", "< 0"]}``.
      A metric never logged is not an error (it may appear later).
    """

    def __init__(
        self,
        thresholds: Mapping[str, str | Sequence[str]] | None = None,
        *,
        nan: bool = True,
        spike_factor: float | None = None,
        spike_window: int = 20,
        spike_min_samples: int = 10,
        spike_metrics: Iterable[str] | None = None,
        recoveries: bool = False,
    ) -> None:
        self.thresholds = parse_thresholds(thresholds)
        if spike_factor is not None:
            if isinstance(spike_factor, bool) or not isinstance(spike_factor, (int, float)):
                raise ConfigurationError(
                    f"spike_factor must be a number greater than 1 (e.g. 3.0), got {spike_factor!r}"
                )
            if not (math.isfinite(spike_factor) and spike_factor > 1):
                raise ConfigurationError(
                    f"spike_factor must be a number greater than 1 (e.g. 3.0), got {spike_factor!r}"
                )
        if isinstance(spike_window, bool) or not isinstance(spike_window, int) or spike_window < 1:
            raise ConfigurationError(f"spike_window must be an integer >= 1, got {spike_window!r}")
        if (
            isinstance(spike_min_samples, bool)
            or not isinstance(spike_min_samples, int)
            or not 1 <= spike_min_samples <= spike_window
        ):
            raise ConfigurationError(
                f"spike_min_samples must be an integer from 1 to spike_window ({spike_window}), "
                f"got {spike_min_samples!r}"
            )
        if isinstance(spike_metrics, str):
            spike_metrics = [spike_metrics]
        self.nan = bool(nan)
        self.spike_factor = float(spike_factor) if spike_factor is not None else None
        self.spike_window = spike_window
        self.spike_min_samples = spike_min_samples
        self.spike_metrics = frozenset(spike_metrics) if spike_metrics is not None else None
        self.recoveries = bool(recoveries)
        self.reset()

    def __repr__(self) -> str:
        rules = [str(t) for ts in self.thresholds.values() for t in ts]
        if self.nan:
            rules.insert(0, "nan")
        if self.spike_factor is not None:
            rules.append(f"spike>{self.spike_factor:g}x median/{self.spike_window}")
        return f"<AlertRules {', '.join(rules) or 'none'}>"

    def reset(self) -> None:
        """Forget every firing condition and spike window (a new run begins)."""
        self._firing: dict[tuple[str, str], str] = {}  # (kind, key) -> condition text
        self._windows: dict[str, deque[float]] = {}

    @property
    def firing(self) -> list[str]:
        """The conditions currently holding (already reported), as text."""
        return list(self._firing.values())

    def check(self, values: Mapping[str, Any], *, step: int | None = None) -> list[Alert]:
        """The alerts that start with this logged dict (empty when nothing new happened)."""
        numbers: dict[str, float] = {}
        for key, raw in values.items():
            x = _as_float(raw)
            if x is not None:
                numbers[key] = x
        if not numbers:
            return []
        alerts: list[Alert] = []
        hidden = hidden_nan_loss(numbers)
        if self.nan:
            self._check_nan(numbers, hidden, step, alerts)
        if self.spike_factor is not None:
            self._check_spikes(numbers, hidden, step, alerts)
        if self.thresholds:
            self._check_thresholds(numbers, hidden, step, alerts)
        return alerts

    # -- rules ---------------------------------------------------------------------------
    def _clear(
        self,
        key: tuple[str, str],
        metric: str,
        x: float,
        message: str,
        step: int | None,
        alerts: list[Alert],
    ) -> None:
        """A firing condition no longer holds: re-arm it, and say so if asked to."""
        condition = self._firing.pop(key)
        if self.recoveries:
            alerts.append(Alert("recovered", metric, x, condition, message, step))

    def _check_nan(
        self, numbers: dict[str, float], hidden: bool, step: int | None, alerts: list[Alert]
    ) -> None:
        bad = {k: x for k, x in numbers.items() if not math.isfinite(x) and not _is_noise(k)}
        if hidden:
            bad = {"loss": math.nan, **bad}  # what the logged 0.0 stands for
        started = [k for k in bad if ("nan", k) not in self._firing]
        if self._firing:
            for metric, x in numbers.items():
                key = ("nan", metric)
                if key in self._firing and metric not in bad:
                    message = f"{metric} is finite again ({number(x)})"
                    self._clear(key, metric, x, message, step, alerts)
        if not started:
            return
        conditions: dict[str, str] = {}
        for metric in started:
            if hidden and metric == "loss":
                conditions[metric] = (
                    "loss == 0.0 while grad_norm is not finite (logging_nan_inf_filter logs "
                    "non-finite losses as 0)"
                )
            else:
                conditions[metric] = f"{metric} is {_nan_word([bad[metric]])}"
            self._firing[("nan", metric)] = conditions[metric]
        primary = started[0]
        alerts.append(
            Alert(
                "nan",
                primary,
                bad[primary],
                "; ".join(conditions.values()),
                f"{_nan_word(bad[m] for m in started)} in {', '.join(started)}",
                step,
            )
        )

    def _check_spikes(
        self, numbers: dict[str, float], hidden: bool, step: int | None, alerts: list[Alert]
    ) -> None:
        assert self.spike_factor is not None
        factor = self.spike_factor
        for metric, x in numbers.items():
            if self.spike_metrics is None:
                if "loss" not in metric:
                    continue
            elif metric not in self.spike_metrics:
                continue
            if not math.isfinite(x) or (hidden and metric == "loss"):
                continue
            window = self._windows.get(metric)
            if window is None:
                window = self._windows[metric] = deque(maxlen=self.spike_window)
            if len(window) >= self.spike_min_samples:
                median = _median(window)
                key = ("spike", metric)
                spiking = median > 0 and x > factor * median
                if spiking and key not in self._firing:
                    condition = (
                        f"{metric} > {factor:g} × the median of its last {len(window)} values "
                        f"({number(median)})"
                    )
                    self._firing[key] = condition
                    alerts.append(
                        Alert(
                            "spike",
                            metric,
                            x,
                            condition,
                            f"{metric} spiked to {number(x)} "
                            f"({x / median:.1f}× the recent median {number(median)})",
                            step,
                        )
                    )
                elif not spiking and key in self._firing:
                    message = f"{metric} is back to {number(x)} (recent median {number(median)})"
                    self._clear(key, metric, x, message, step, alerts)
            window.append(x)

    def _check_thresholds(
        self, numbers: dict[str, float], hidden: bool, step: int | None, alerts: list[Alert]
    ) -> None:
        for metric, thresholds in self.thresholds.items():
            x = numbers.get(metric)
            if x is None or math.isnan(x) or (hidden and metric == "loss"):
                continue
            for threshold in thresholds:
                key = ("threshold", str(threshold))
                holds = threshold.holds(x)
                if holds and key not in self._firing:
                    self._firing[key] = str(threshold)
                    alerts.append(
                        Alert(
                            "threshold",
                            metric,
                            x,
                            str(threshold),
                            f"{metric} {number(x)} {threshold.op} {threshold.bound:g}",
                            step,
                        )
                    )
                elif not holds and key in self._firing:
                    message = (
                        f"{metric} {number(x)} is no longer {threshold.op} {threshold.bound:g}"
                    )
                    self._clear(key, metric, x, message, step, alerts)


class Improvement:
    """Tracks the best value of one metric; ``update`` says whether the latest is a new best.

    The direction is ``greater_is_better``; when not given, it is the Trainer's own
    (``args.greater_is_better``, see ``adopt``) if the metric is its
    ``metric_for_best_model``, else a metric whose name contains "loss" is
    lower-is-better and any other higher-is-better. Error rates, perplexity, WER and
    the like need ``greater_is_better=False``. As for ``metric_for_best_model``, a
    name without the ``eval_`` prefix (``"accuracy"``) means ``eval_accuracy``.
    """

    def __init__(self, metric: str, greater_is_better: bool | None = None) -> None:
        if not isinstance(metric, str) or not metric:
            raise ConfigurationError(f"Improvement needs a metric name, got {metric!r}")
        self.metric = metric if metric.startswith("eval_") else f"eval_{metric}"
        self._given = greater_is_better is not None
        self.greater_is_better = (
            "loss" not in metric if greater_is_better is None else bool(greater_is_better)
        )
        #: Set once the missing metric has been reported.
        self.warned = False
        self.reset()

    def adopt(self, args: Any) -> None:
        """Take the Trainer's direction when the metric is its ``metric_for_best_model``
        and none was given here."""
        name = getattr(args, "metric_for_best_model", None)
        greater = getattr(args, "greater_is_better", None)
        if self._given or not isinstance(name, str) or not isinstance(greater, bool):
            return
        if (name if name.startswith("eval_") else f"eval_{name}") == self.metric:
            self.greater_is_better = greater

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The metric's finite value in ``metrics``, or None."""
        x = _as_float(metrics.get(self.metric))
        return x if x is not None and math.isfinite(x) else None

    def __repr__(self) -> str:
        direction = "higher" if self.greater_is_better else "lower"
        return f"<Improvement {self.metric} ({direction} is better) best={self.best}>"

    def reset(self) -> None:
        """Forget the best value (a new run begins)."""
        #: The best value so far, and the step it was seen at (when given).
        self.best: float | None = None
        self.best_step: int | None = None
        #: The best value before the latest improvement (None after the first).
        self.previous: float | None = None

    def update(self, metrics: Mapping[str, Any], *, step: int | None = None) -> bool:
        """Record ``metrics[metric]``; True when it is a new best (the first finite value is).

        Absent and non-finite values change nothing and return False; ties are no
        improvement.
        """
        x = self.value(metrics)
        if x is None:
            return False
        best = self.best
        if best is not None and not (x > best if self.greater_is_better else x < best):
            return False
        self.previous, self.best, self.best_step = best, x, step
        return True


class StallWatch:
    """Notices when training stops making progress for ``after`` seconds.

    Pure and thread-safe: ``progress(step)`` is called from the training thread on
    every step (and on evaluation steps, so a long evaluation is not a stall);
    ``check()`` is called periodically from a timer or worker thread and returns
    one ``stall`` alert per stall. The watch starts at the first ``progress`` and
    stops at ``stop()``. The ``progress`` that ends a reported stall returns a
    ``recovered`` alert.
    """

    def __init__(self, after: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(after, bool) or not isinstance(after, (int, float)):
            raise ConfigurationError(f"stall_after must be a number of seconds, got {after!r}")
        if not (math.isfinite(after) and after > 0):
            raise ConfigurationError(f"stall_after must be > 0 seconds, got {after!r}")
        self.after = float(after)
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._step: int | None = None
        self._stalled_since: float | None = None

    def progress(self, step: int | None = None) -> Alert | None:
        """Record activity; returns a ``recovered`` alert if this ends a reported stall."""
        now = self._clock()
        with self._lock:
            last, stalled = self._last, self._stalled_since is not None
            self._last, self._stalled_since = now, None
            if step is not None:
                self._step = step
        if not stalled or last is None:
            return None
        waited = now - last
        return Alert(
            "recovered",
            "step",
            waited,
            self._condition(),
            f"training resumed after {duration(waited)} without progress",
            step,
        )

    def check(self) -> Alert | None:
        """A ``stall`` alert when nothing happened for ``after`` seconds (once per stall)."""
        now = self._clock()
        with self._lock:
            if self._last is None or self._stalled_since is not None:
                return None
            waited = now - self._last
            if waited < self.after:
                return None
            self._stalled_since = now
            step = self._step
        return Alert(
            "stall",
            "step",
            waited,
            self._condition(),
            f"no progress for {duration(waited)}",
            step,
        )

    def stop(self) -> None:
        """Stop watching until the next ``progress`` (training ended)."""
        with self._lock:
            self._last = self._stalled_since = None

    def _condition(self) -> str:
        return f"no new step for {duration(self.after)} (stall_after={self.after:g}s)"
