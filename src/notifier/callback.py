"""NotifierCallback: Trainer events in, rendered messages out to each backend's outbox."""

from __future__ import annotations

import functools
import html
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from transformers import TrainerCallback

from .alerts import Alert, AlertRules, Improvement, StallWatch
from .backend import Attachment, Backend, Message
from .config import UNTHROTTLED, Config, load_config
from .context import RunTracker, plain_metrics, plain_value
from .errors import ConfigurationError
from .filters import MISSING
from .guard import CrashGuard, track
from .outbox import Outbox
from .plugins import get_backend
from .secrets import get_logger, redact
from .templates import (
    DEFAULT_EVENTS,
    PROGRESS,
    SELECTABLE_EVENTS,
    Templates,
    TemplateSource,
    backend_events,
)
from .trap import ErrorTrap, describe, find_trainer

logger = get_logger("notifier")

#: Never coalesced or dropped when a backend is behind.
CRITICAL_EVENTS = frozenset({"train_begin", "train_end", "train_error", "alert"})
#: Sent by every rank; everything else only by world process zero. Of train_error, other
#: ranks send crashes only: a signal or an abandoned run is the whole job's (_report_end).
ANY_RANK_EVENTS = frozenset({"train_error"})
CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR

SLACK_HINT = (
    "notifier: no backend configured, notifying to the console. For Slack, set "
    "SLACK_BOT_TOKEN and SLACK_CHANNEL and pass backends=['slack']."
)

_hinted = False

F = TypeVar("F", bound=Callable[..., Any])


def _isolated(method: F) -> F:
    """Run a hook so that nothing it raises reaches the Trainer (which has no try/except)."""

    @functools.wraps(method)
    def hook(self: NotifierCallback, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a notifier bug must never stop training
            if method.__name__ not in self._hook_errors:
                self._hook_errors.add(method.__name__)
                logger.warning(
                    "notifier: internal error in %s, notifications may be incomplete: %s: %s",
                    method.__name__,
                    type(exc).__name__,
                    redact(str(exc)),
                )

    return hook  # type: ignore[return-value]


def _resolve_backends(backends: Iterable[Backend | str] | Backend | str | None) -> list[Backend]:
    if backends is None:
        global _hinted
        if not _hinted:
            # A warning, once: Python shows no INFO by default, and the hint is for
            # someone who has not configured anything yet.
            _hinted = True
            logger.warning(SLACK_HINT)
        return [get_backend("console")]
    if isinstance(backends, (Backend, str)):
        backends = [backends]
    resolved: list[Backend] = []
    for item in backends:
        if isinstance(item, str):
            resolved.append(get_backend(item))
        elif isinstance(item, Backend):
            resolved.append(item)
        else:
            raise ConfigurationError(
                f"backends: {item!r} is neither a backend name nor a notifier.Backend instance"
            )
    if not resolved:
        raise ConfigurationError(
            "backends=[] sends nowhere: pass None for the console, or name a backend"
        )
    return resolved


def _resolve_events(events: Iterable[str] | None, what: str = "events") -> tuple[str, ...]:
    if events is None:
        return DEFAULT_EVENTS
    if isinstance(events, str):
        events = [events]
    chosen = tuple(dict.fromkeys(events))
    unknown = [e for e in chosen if e not in SELECTABLE_EVENTS]
    if unknown:
        raise ConfigurationError(
            f"{what}: unknown event(s) {', '.join(unknown)}; "
            f"events: {', '.join(SELECTABLE_EVENTS)} "
            f"({PROGRESS!r} goes to backends that ask for it, such as a Slack live card)"
        )
    return chosen


def _resolve_alerts(alerts: AlertRules | Mapping[str, Any] | bool | None) -> AlertRules | None:
    if alerts is None or alerts is True:
        return AlertRules()  # NaN/inf watching only: cheap, and never a false alarm
    if alerts is False:
        return None
    if isinstance(alerts, AlertRules):
        return alerts
    if isinstance(alerts, Mapping):
        return AlertRules(dict(alerts))
    raise ConfigurationError(
        f"alerts must be a dict of thresholds such as {{'loss': '> 10'}}, an AlertRules, or "
        f"False, not {type(alerts).__name__}"
    )


def _resolve_improvement(value: str | Improvement | None) -> Improvement | None:
    if value is None or isinstance(value, Improvement):
        return value
    if isinstance(value, str) and value:
        return Improvement(value)
    raise ConfigurationError(
        "only_improvements must be an eval metric name such as 'eval_loss', or "
        f"notifier.Improvement('eval_wer', greater_is_better=False); got {value!r}"
    )


def _resolve_throttle(throttle: Mapping[str, Mapping[str, float]] | None) -> dict[str, Any]:
    """Validate ``{event: {"every_n_epochs": n, "min_interval": seconds}}``."""
    checked: dict[str, Any] = {}
    for event, options in (throttle or {}).items():
        if event not in SELECTABLE_EVENTS:
            raise ConfigurationError(f"throttle: unknown event {event!r}")
        if event in UNTHROTTLED:
            raise ConfigurationError(
                f"throttle: {event} is never throttled; a start, end or crash must always arrive"
            )
        for option, value in options.items():
            if option == "every_n_epochs" and event != "epoch_end":
                raise ConfigurationError("throttle: every_n_epochs applies to epoch_end only")
            if option not in ("every_n_epochs", "min_interval"):
                raise ConfigurationError(
                    f"throttle.{event}: unknown option {option!r}; use every_n_epochs or "
                    "min_interval"
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(f"throttle.{event}.{option} must be > 0, got {value!r}")
        checked[event] = dict(options)
    return checked


@dataclass
class _Route:
    """One backend with its templates, outbox, the events it gets and its progress clock."""

    backend: Backend
    templates: Templates
    outbox: Outbox
    events: frozenset[str]
    next_tick: float = 0.0


def _traceback_tail(text: str, limit: int) -> str:
    text = redact(text)
    if len(text) <= limit:
        return text
    # Keep whole lines from the end: the innermost frames and the error are what matter.
    tail = text[-(limit - 2) :]
    cut = tail.find("\n")
    return "…\n" + (tail[cut + 1 :] if 0 <= cut < len(tail) - 1 else tail)


class NotifierCallback(TrainerCallback):
    """Tells people how training is going, through one or more backends.

    Construction loads and checks every template and backend, so configuration
    errors surface before training starts. Hooks render and enqueue; delivery
    happens on one worker thread per backend.
    """

    def __init__(
        self,
        backends: Sequence[Backend | str] | Backend | str | None = None,
        *,
        events: Sequence[str] | None = None,
        templates: TemplateSource = None,
        flush_timeout: float | None = None,
        max_backlog: int | None = None,
        alerts: AlertRules | Mapping[str, Any] | bool | None = None,
        only_improvements: str | Improvement | None = None,
        stall_after: float | None = None,
        plots: bool | None = None,
        throttle: Mapping[str, Mapping[str, float]] | None = None,
        routes: Mapping[str, Sequence[str]] | None = None,
        config: str | os.PathLike[str] | bool | None = None,
    ) -> None:
        given = {
            "events": events,
            "templates": templates,
            "flush_timeout": flush_timeout,
            "max_backlog": max_backlog,
            "alerts": alerts,
            "stall_after": stall_after,
            "only_improvements": only_improvements,
            "plots": plots,
            "throttle": throttle,
            "routes": routes,
        }
        # Arguments beat the environment, which beats the configuration file.
        if config is False:
            cfg = Config()
        else:
            cfg = load_config(None if config is None or config is True else config)
        settings = {**cfg.callback_kwargs(), **{k: v for k, v in given.items() if v is not None}}
        flush_timeout = settings.get("flush_timeout", 10.0)
        max_backlog = settings.get("max_backlog", 10)
        if (
            isinstance(flush_timeout, bool)
            or not isinstance(flush_timeout, (int, float))
            or not math.isfinite(flush_timeout)
            or flush_timeout < 0
        ):
            raise ConfigurationError(
                f"flush_timeout must be a finite number of seconds >= 0, got {flush_timeout!r}"
            )
        if isinstance(max_backlog, bool) or not isinstance(max_backlog, int) or max_backlog < 1:
            raise ConfigurationError(f"max_backlog must be an integer >= 1, got {max_backlog!r}")
        self.events = _resolve_events(settings.get("events"))
        self.backends = _resolve_backends(cfg.build_backends(backends))
        self.flush_timeout = float(flush_timeout)
        self._alerts = _resolve_alerts(settings.get("alerts"))
        self._improvement = _resolve_improvement(settings.get("only_improvements"))
        stall = settings.get("stall_after")
        self._stall = StallWatch(stall) if stall is not None else None
        self._plots = bool(settings.get("plots", False))
        if self._plots:
            from .plots import require_matplotlib

            require_matplotlib()
        self._throttle = _resolve_throttle(settings.get("throttle"))
        route_events = self._route_events(settings.get("routes") or {}, from_file=routes is None)
        checked: list[tuple[Backend, Templates, tuple[str, ...]]] = []
        for backend in self.backends:
            redact.add(*backend.secrets())
            wanted = route_events.get(backend.name, self.events)
            compiled = backend_events(wanted, backend.progress_interval)
            rendered = Templates(
                settings.get("templates"),
                backend=backend.name,
                parts=backend.parts,
                optional_parts=backend.optional_parts,
                events=compiled,
                escape=backend.escape,
                known_backends=[b.name for b in self.backends],
            )
            checked.append((backend, rendered, compiled))
        # Worker threads start only once every template has passed: a callback that fails
        # to build (fixed and built again in a notebook) leaves no thread behind.
        self._routes = [
            _Route(backend, rendered, Outbox(backend, max_backlog=max_backlog), frozenset(events))
            for backend, rendered, events in checked
        ]
        self._all_events = frozenset().union(*(r.events for r in self._routes))
        self._ticking = [r for r in self._routes if r.backend.progress_interval]
        self._next_tick: float | None = None
        self._last_sent: dict[str, float] = {}
        self._tracker = RunTracker()
        self._state: Any = None
        self._args: Any = None
        self._active = False
        self._is_zero = True
        self._pending_epoch: dict[str, Any] | None = None
        # Evaluations and saves held with the epoch message: (step, event, context).
        self._held: list[tuple[int, str, dict[str, Any]]] = []
        # The step of an epoch message held back by only_improvements.
        self._quiet_step = -1
        self._epoch_end_step = -1
        self._hook_errors: set[str] = set()
        self._render_errors: set[tuple[str, str]] = set()
        self._tracked = False
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()
        self._trap = ErrorTrap()
        self._guard = CrashGuard(self._report_end)

    def _route_events(
        self, routes: Mapping[str, Sequence[str]], *, from_file: bool
    ) -> dict[str, tuple[str, ...]]:
        """Per-backend event lists; a route for a backend not in use is an error (a warning
        when it comes from the configuration file, which may list more backends)."""
        names = {b.name for b in self.backends}
        chosen: dict[str, tuple[str, ...]] = {}
        for name, events in routes.items():
            if name not in names:
                in_use = ", ".join(sorted(names))
                problem = f"routes: {name!r} is not among the backends in use ({in_use})"
                if not from_file:
                    raise ConfigurationError(problem)
                logger.warning("notifier: %s; that route is ignored", problem)
                continue
            chosen[name] = _resolve_events(events, what=f"routes[{name!r}]")
        return chosen

    def __repr__(self) -> str:
        names = ", ".join(b.describe() for b in self.backends)
        return f"<NotifierCallback [{names}] events={list(self.events)}>"

    # -- public ---------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is delivered or given up; False if time ran out."""
        timeout = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        done = True
        for route in self._routes:
            if not route.outbox.flush(max(deadline - time.monotonic(), 0.0)):
                done = False
                logger.warning(
                    "notifier: gave up waiting for %d message(s) to %s after %.1fs (flush_timeout)",
                    route.outbox.pending,
                    route.backend.describe(),
                    timeout,
                )
        return done

    def check(self) -> None:
        """Verify every backend's credentials now (Slack: auth.test); raises ConfigurationError."""
        for backend in self.backends:
            backend.check()

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per backend: messages sent, dropped when behind, and failed. Keyed by backend
        name; a second backend of the same name is ``name#2``, and so on."""
        found: dict[str, dict[str, int]] = {}
        for route in self._routes:
            key, n = route.backend.name, 1
            while key in found:
                n += 1
                key = f"{route.backend.name}#{n}"
            outbox = route.outbox
            found[key] = {"sent": outbox.sent, "dropped": outbox.dropped, "failed": outbox.failed}
        return found

    # -- Trainer hooks --------------------------------------------------------------------
    @_isolated
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_end_step = -1
        if self._active:
            if self._batch_size_retry(args, state):
                self._state = state  # a retry with a smaller batch: the same run goes on
                # The out-of-memory error it recovered from.
                self._trap.caught, self._trap.caught_oom = None, False
                return
            self._guard.report_unfinished()  # the previous train() never reached its end
        self._trap.install(find_trainer(self))
        self._args, self._state = args, state
        self._is_zero = bool(state.is_world_process_zero)
        self._tracker.reset()
        self._tracker.begin(args, state)
        self._pending_epoch = None
        self._active = True
        self._last_sent.clear()
        if self._alerts is not None:
            self._alerts.reset()
        if self._improvement is not None:
            self._improvement.reset()
        now = time.monotonic()
        for route in self._ticking:
            route.next_tick = now + float(route.backend.progress_interval or 0)
        self._next_tick = min((r.next_tick for r in self._ticking), default=None)
        self._start_watchdog(state)
        self._guard.arm(run=state)
        if not self._tracked:
            # Flushed at exit even if this callback has been garbage-collected by then.
            self._tracked = True
            track(self, [r.outbox for r in self._routes], self.flush_timeout)
        self._emit("train_begin")

    @_isolated
    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pending_epoch is not None:
            self._release_epoch()

    @_isolated
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._pending_epoch is not None:
            self._release_epoch()

    @_isolated
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._stall is not None:
            self._progressed(state.global_step)
        if self._next_tick is not None and time.monotonic() >= self._next_tick:
            self._tick()

    @_isolated
    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # A long evaluation is the run alive: not a stall; live cards and heartbeats go on.
        if self._stall is not None:
            self._progressed()
        if self._next_tick is not None and time.monotonic() >= self._next_tick:
            self._tick()

    @_isolated
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not logs:
            return
        # Shared with other callbacks (PrinterCallback pops from it): copy, never mutate.
        metrics = self._tracker.metrics
        for key, value in logs.items():
            if not key.startswith("eval_"):
                metrics[key] = plain_value(value)
        if self._alerts is not None:
            for alert in self._alerts.check(logs, step=state.global_step):
                self._emit_alert(alert)

    @_isolated
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_end_step = state.global_step
        if self._pending_epoch is not None:
            self._release_epoch()
        if "epoch_end" in self._all_events and self._is_zero:
            # transformers evaluates and saves *after* on_epoch_end: hold the message
            # until they are done so it carries this epoch's eval metrics and checkpoint.
            self._tracker.update(state)
            self._pending_epoch = self._tracker.context("epoch_end")

    @_isolated
    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if metrics:
            self._tracker.eval_metrics = plain_metrics(metrics)
        if self._stall is not None:
            self._progressed(state.global_step)
        improved = self._improved(args, metrics or {}, state.global_step)
        if self._merge_into_epoch(state, eval_metrics=dict(self._tracker.eval_metrics)):
            if improved:
                self._hold("evaluate", state)
            else:  # its epoch message is held back too
                self._quiet_step = state.global_step
        elif improved:
            self._emit("evaluate")

    @_isolated
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = os.path.join(str(args.output_dir), f"{CHECKPOINT_PREFIX}-{state.global_step}")
        self._tracker.checkpoint, self._tracker.checkpoint_step = path, state.global_step
        if self._merge_into_epoch(state, checkpoint=path):
            self._hold("save", state)
        else:
            self._emit("save")

    @_isolated
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._active:
            return  # e.g. a pruned Optuna trial calling on_train_end a second time
        if self._pending_epoch is not None or self._held:
            self._release_epoch()
        self._guard.disarm()
        self._trap.uninstall()
        self._active = False
        self._stop_watchdog()
        self._emit("train_end", attachments=self._curves())

    # -- internals ------------------------------------------------------------------------
    def _batch_size_retry(self, args: Any, state: Any) -> bool:
        """Whether this train_begin is ``auto_find_batch_size`` trying again after an
        out-of-memory error, rather than a new train() after a crash the caller caught."""
        if not getattr(args, "auto_find_batch_size", False) or args is not self._args:
            return False
        before = getattr(self._state, "train_batch_size", None)
        now = getattr(state, "train_batch_size", None)
        if isinstance(before, int) and isinstance(now, int) and now >= before:
            return False  # a retry always tries a smaller batch
        # With the Trainer's loop watched, a retry is known to follow an out-of-memory error.
        return self._trap.caught_oom or not self._trap.installed

    def _merge_into_epoch(self, state: Any, **values: Any) -> bool:
        """Add an evaluation or checkpoint at an epoch's last step to its epoch message
        (held, or still to come); False when it is to be sent on its own."""
        pending = self._pending_epoch
        if pending is None or pending["global_step"] != state.global_step:
            return self._epoch_end_follows(state)
        pending.update(values, best_metric=state.best_metric)
        pending["best_model_checkpoint"] = state.best_model_checkpoint
        return True

    def _hold(self, event: str, state: Any) -> None:
        """Keep an evaluation or save merged into the epoch message, for the backends that
        do not get that message (routes), or in case the throttle holds it back."""
        if not self._is_zero or event not in self._all_events:
            return
        self._tracker.update(state)
        self._held.append((state.global_step, event, self._tracker.context(event)))

    def _improved(self, args: Any, metrics: Mapping[str, Any], step: int) -> bool:
        """Whether this evaluation passes ``only_improvements`` (always, without it)."""
        tracker = self._improvement
        if tracker is None:
            return True
        if tracker.best is None:
            tracker.adopt(args)
        if tracker.value(metrics) is None:
            if not tracker.warned:
                tracker.warned = True
                logger.warning(
                    "notifier: only_improvements=%r: the evaluation has no such metric "
                    "(it has %s); evaluation messages wait until it appears",
                    tracker.metric,
                    ", ".join(sorted(metrics)) or "none",
                )
            return False
        return tracker.update(metrics, step=step)

    def _epoch_end_follows(self, state: Any) -> bool:
        """Whether on_epoch_end is still to come for this step, which is an epoch's last:
        with "steps" strategies transformers evaluates and saves there *before*
        on_epoch_end, and the epoch message (tracker values) then carries both."""
        epoch = state.epoch
        return bool(
            self._active
            and "epoch_end" in self._all_events
            and state.global_step > self._epoch_end_step
            and epoch
            and (float(epoch).is_integer() or state.global_step >= (state.max_steps or 0) > 0)
        )

    def _release_epoch(self) -> None:
        """Send the held epoch message, and what it carries to backends that miss it."""
        context, self._pending_epoch = self._pending_epoch, None
        step = context["global_step"] if context is not None else math.inf
        held = [h for h in self._held if h[0] <= step]
        self._held = [h for h in self._held if h[0] > step]
        carried: set[int] = set()  # the routes whose epoch message carries them
        if context is not None:
            quiet, self._quiet_step = self._quiet_step == step, -1
            if not quiet:
                carried = {id(r) for r in self._emit("epoch_end", context=context)}
        for _, event, held_context in held:
            routes = [r for r in self._routes if event in r.events and id(r) not in carried]
            if routes:
                self._emit(event, context=held_context, routes=routes)

    def _emit(
        self,
        event: str,
        *,
        error: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        alert: dict[str, Any] | None = None,
        attachments: tuple[Attachment, ...] = (),
        routes: Sequence[_Route] | None = None,
    ) -> list[_Route]:
        """Render ``event`` for each backend that gets it and queue it; the routes it was
        queued for (none: not selected, not this rank, throttled, or rendered empty)."""
        if event not in self._all_events:
            return []
        if not self._is_zero and event not in ANY_RANK_EVENTS:
            return []
        if context is None:
            if self._state is not None:
                self._tracker.update(self._state)
            context = self._tracker.context(event)
        if alert is not None:
            context["alert"] = alert
        if event in self._throttle and self._throttled(event, context):
            return []
        queued: list[_Route] = []
        for route in self._routes if routes is None else routes:
            if event not in route.events:
                continue
            backend = route.backend
            ctx = context
            if error is not None:
                ctx = {**context, "error": _error_for(error, backend.max_length)}
            try:
                parts = route.templates.render(event, ctx)
            except Exception as exc:  # noqa: BLE001 - a broken template must not stop the message
                parts = self._fallback(event, backend, ctx, exc)
            if event != PROGRESS and _shows_nothing(parts, backend):
                # A template that renders nothing ({% if … %} around it) means: not this time.
                logger.debug(
                    "notifier: the %s template for %s rendered nothing", event, backend.name
                )
                continue
            route.outbox.put(
                Message(
                    event=event,
                    text=parts.get("text", ""),
                    parts=parts,
                    context=ctx,
                    critical=event in CRITICAL_EVENTS,
                    attachments=attachments,
                    transient=event == PROGRESS,
                    urgent=event == "train_error",
                )
            )
            queued.append(route)
        return queued

    def _throttled(self, event: str, context: Mapping[str, Any]) -> bool:
        """Whether the user's throttle holds this message back (never start, end or crash)."""
        options = self._throttle[event]
        every = options.get("every_n_epochs")
        if every and round(float(context.get("epoch") or 0)) % int(every) != 0:
            return True
        interval = options.get("min_interval")
        now = time.monotonic()
        if interval and now - self._last_sent.get(event, -math.inf) < interval:
            return True
        self._last_sent[event] = now
        return False

    def _progressed(self, step: int | None = None) -> None:
        """Tell the stall watch the run moved; a stall it had reported has ended."""
        assert self._stall is not None
        recovered = self._stall.progress(step)
        if recovered is not None:
            self._emit_alert(recovered)

    def _emit_alert(self, alert: Alert) -> None:
        self._emit("alert", alert=alert.as_context())

    def _tick(self) -> None:
        """Send ``progress`` to each backend whose interval has come (live cards, heartbeats)."""
        now = time.monotonic()
        due = [r for r in self._ticking if now >= r.next_tick]
        for route in due:
            route.next_tick = now + float(route.backend.progress_interval or 0)
        self._next_tick = min((r.next_tick for r in self._ticking), default=None)
        if due and self._active:
            self._emit(PROGRESS, routes=due)

    def _curves(self) -> tuple[Attachment, ...]:
        """The training-curves PNG, drawn later on a worker thread from a copy of log_history."""
        if not self._plots or self._state is None or not self._is_zero:
            return ()
        from .plots import render_curves

        history = [dict(entry) for entry in self._state.log_history]
        best = self._state.best_model_checkpoint
        match = re.search(r"checkpoint-(\d+)$", str(best or ""))
        best_step = int(match.group(1)) if match else None
        title = str(self._tracker.static.get("run_name") or "")

        def produce() -> bytes:
            return render_curves(history, best_checkpoint_step=best_step, title=title)

        return (Attachment("training-curves.png", "image/png", produce, title="Training curves"),)

    def _start_watchdog(self, state: Any) -> None:
        if self._stall is None or not self._is_zero:
            return
        stall = self._stall
        stall.progress(state.global_step)
        self._watchdog_stop.clear()
        period = min(max(stall.after / 4, 0.05), 30.0)

        def watch() -> None:
            while not self._watchdog_stop.wait(period):
                try:
                    alert = stall.check()
                    if alert is not None:
                        self._emit_alert(alert)
                except Exception as exc:  # noqa: BLE001 - the watchdog must not die
                    logger.warning("notifier: stall watchdog error: %s", type(exc).__name__)

        if self._watchdog is None or not self._watchdog.is_alive():
            self._watchdog = threading.Thread(target=watch, name="notifier-watchdog", daemon=True)
            self._watchdog.start()

    def _stop_watchdog(self) -> None:
        if self._stall is not None:
            self._stall.stop()
        self._watchdog_stop.set()

    def _fallback(
        self, event: str, backend: Backend, context: dict[str, Any], exc: Exception
    ) -> dict[str, str]:
        if (event, backend.name) not in self._render_errors:
            self._render_errors.add((event, backend.name))
            logger.warning(
                "notifier: the %s template for %s failed (%s: %s); sending a plain message instead",
                event,
                backend.name,
                type(exc).__name__,
                redact(str(exc)),
            )
        name, step = context.get("run_name") or MISSING, context.get("global_step")
        text = f"{event.replace('_', ' ')}: {name} (step {MISSING if step is None else step})"
        # Escaped like any substituted value: a run name must not become <!channel> in Slack.
        return {
            part: html.escape(text) if part == "html" else backend.escape(text)
            for part in backend.parts
        }

    def _report_end(self, kind: str, exc: BaseException | None) -> None:
        """Called by the guard when the run ends without on_train_end."""
        self._active = False
        self._stop_watchdog()
        self._trap.uninstall()  # what it caught stays, for the report
        if kind != "crash" and not self._is_zero:
            return  # a signal or an abandoned run ends every rank: world process zero says so
        if self._pending_epoch is not None or self._held:
            self._release_epoch()
        error: dict[str, Any]
        if kind == "terminated":
            error = {"kind": kind, "type": "SIGTERM", "message": "the process was sent SIGTERM"}
        elif exc is not None:
            error = {**describe(exc), "kind": kind}
        elif self._trap.caught is not None:
            # The training loop raised (or was interrupted), and the calling code caught it.
            caught = self._trap.caught
            said = caught["message"] or caught["type"]
            message = f"{said} (caught by the calling code; train() never ended)"
            # A caught Ctrl-C is an interruption; any other caught error leaves it unfinished.
            ending = "interrupted" if caught["kind"] == "interrupted" else kind
            error = {**caught, "kind": ending, "message": message}
        else:
            error = {
                "kind": kind,
                "type": "unfinished",
                "message": "train() never reached its end; the error, if any, was caught by the "
                "calling code",
            }
        error["message"] = redact(error["message"])
        self._emit("train_error", error=error, attachments=self._curves())


def _shows_nothing(parts: Mapping[str, str], backend: Backend) -> bool:
    """Whether a rendered message is empty: its text, or every part of a backend without one."""
    if "text" in backend.parts:
        return not parts.get("text", "").strip()
    return not any(value.strip() for value in parts.values())


def _error_for(error: dict[str, Any], max_length: int) -> dict[str, Any]:
    """The error as plain values, with the traceback trimmed to leave room in the message."""
    text = error.get("traceback")
    plain = dict(error)
    plain["traceback"] = _traceback_tail(text, max(max_length // 2, 200)) if text else None
    return plain


class SlackCallback(NotifierCallback):
    """The original ``SlackCallback(channel, client=None)``: Slack only, same defaults.

    ``SlackCallback("#train")`` reads ``SLACK_BOT_TOKEN``;
    ``SlackCallback("#train", client=WebClient(...))`` uses that client.
    """

    def __init__(self, channel: str, client: Any = None, **kwargs: Any) -> None:
        backends = [get_backend("slack", channel=channel, client=client)]
        super().__init__(backends, **kwargs)
