"""NotifierCallback: Trainer events in, rendered messages out to each backend's outbox."""

from __future__ import annotations

import atexit
import functools
import html
import math
import os
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from transformers import TrainerCallback

from .backend import Backend, Message
from .context import RunTracker, plain_metrics
from .errors import ConfigurationError
from .filters import MISSING
from .outbox import Outbox
from .plugins import get_backend
from .secrets import get_logger, redact
from .templates import EVENTS, Templates, TemplateSource

logger = get_logger("notifier")

DEFAULT_EVENTS: tuple[str, ...] = ("train_begin", "epoch_end", "train_end", "train_error")
#: Never coalesced or dropped when a backend is behind.
CRITICAL_EVENTS = frozenset({"train_begin", "train_end", "train_error"})
#: Sent by every rank; everything else only by world process zero.
ANY_RANK_EVENTS = frozenset({"train_error"})
CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR

SLACK_HINT = (
    "notifier: no backend configured, notifying to the console. For Slack, set "
    "SLACK_BOT_TOKEN and SLACK_CHANNEL and pass backends=['slack']."
)

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
        logger.info(SLACK_HINT)
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


def _resolve_events(events: Iterable[str] | None) -> tuple[str, ...]:
    if events is None:
        return DEFAULT_EVENTS
    if isinstance(events, str):
        events = [events]
    chosen = tuple(dict.fromkeys(events))
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown:
        raise ConfigurationError(
            f"unknown event(s) {', '.join(unknown)}; events: {', '.join(EVENTS)}"
        )
    return chosen


def _traceback_tail(exc: BaseException, limit: int) -> str:
    text = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :]


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
        flush_timeout: float = 10.0,
        max_backlog: int = 10,
    ) -> None:
        if (
            isinstance(flush_timeout, bool)
            or not isinstance(flush_timeout, (int, float))
            or not math.isfinite(flush_timeout)
            or flush_timeout < 0
        ):
            raise ConfigurationError(
                f"flush_timeout must be a finite number of seconds >= 0, got {flush_timeout!r}"
            )
        if max_backlog < 1:
            raise ConfigurationError(f"max_backlog must be >= 1, got {max_backlog}")
        self.events = _resolve_events(events)
        self.backends = _resolve_backends(backends)
        self.flush_timeout = flush_timeout
        self._routes: list[tuple[Backend, Templates, Outbox]] = []
        for backend in self.backends:
            redact.add(*backend.secrets())
            rendered = Templates(
                templates,
                backend=backend.name,
                parts=backend.parts,
                optional_parts=backend.optional_parts,
                events=self.events,
                escape=backend.escape,
            )
            self._routes.append((backend, rendered, Outbox(backend, max_backlog=max_backlog)))
        self._tracker = RunTracker()
        self._state: Any = None
        self._args: Any = None
        self._active = False
        self._is_zero = True
        self._pending_epoch: dict[str, Any] | None = None
        self._epoch_end_step = -1
        self._hook_errors: set[str] = set()
        self._render_errors: set[tuple[str, str]] = set()
        self._exit_registered = False
        from .guard import CrashGuard

        self._guard = CrashGuard(self._report_end, self._flush_for_exit)

    def __repr__(self) -> str:
        names = ", ".join(b.describe() for b in self.backends)
        return f"<NotifierCallback [{names}] events={list(self.events)}>"

    # -- public ---------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued message is delivered or given up; False if time ran out."""
        timeout = self.flush_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        done = True
        for backend, _, outbox in self._routes:
            if not outbox.flush(max(deadline - time.monotonic(), 0.0)):
                done = False
                logger.warning(
                    "notifier: gave up waiting for %d message(s) to %s after %.1fs (flush_timeout)",
                    outbox.pending,
                    backend.describe(),
                    timeout,
                )
        return done

    def check(self) -> None:
        """Verify every backend's credentials now (Slack: auth.test); raises ConfigurationError."""
        for backend in self.backends:
            backend.check()

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per backend: messages sent, dropped when behind, and failed."""
        return {
            b.name: {"sent": o.sent, "dropped": o.dropped, "failed": o.failed}
            for b, _, o in self._routes
        }

    # -- Trainer hooks --------------------------------------------------------------------
    @_isolated
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_end_step = -1
        if self._active:
            if getattr(args, "auto_find_batch_size", False) and args is self._args:
                self._state = state  # a retry with a smaller batch: the same run goes on
                return
            self._guard.report_unfinished()  # the previous train() never reached its end
        self._args, self._state = args, state
        self._is_zero = bool(state.is_world_process_zero)
        self._tracker.reset()
        self._tracker.begin(args, state)
        self._pending_epoch = None
        self._active = True
        self._guard.arm()
        if not self._exit_registered:
            self._exit_registered = True
            atexit.register(_at_exit, weakref.ref(self))
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
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not logs:
            return
        # Shared with other callbacks (PrinterCallback pops from it): copy, never mutate.
        train = {k: v for k, v in logs.items() if not k.startswith("eval_")}
        if train:
            self._tracker.metrics.update(plain_metrics(train))

    @_isolated
    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_end_step = state.global_step
        if self._pending_epoch is not None:
            self._release_epoch()
        if "epoch_end" in self.events and self._is_zero:
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
        if not self._merge_into_epoch(state, eval_metrics=dict(self._tracker.eval_metrics)):
            self._emit("evaluate")

    @_isolated
    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = os.path.join(str(args.output_dir), f"{CHECKPOINT_PREFIX}-{state.global_step}")
        self._tracker.checkpoint, self._tracker.checkpoint_step = path, state.global_step
        if not self._merge_into_epoch(state, checkpoint=path):
            self._emit("save")

    @_isolated
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._active:
            return  # e.g. a pruned Optuna trial calling on_train_end a second time
        if self._pending_epoch is not None:
            self._release_epoch()
        self._guard.disarm()
        self._active = False
        self._emit("train_end")

    # -- internals ------------------------------------------------------------------------
    def _merge_into_epoch(self, state: Any, **values: Any) -> bool:
        """Add an evaluation or checkpoint at an epoch's last step to its epoch message
        (held, or still to come); False when it is to be sent on its own."""
        pending = self._pending_epoch
        if pending is None or pending["global_step"] != state.global_step:
            return self._epoch_end_follows(state)
        pending.update(values, best_metric=state.best_metric)
        pending["best_model_checkpoint"] = state.best_model_checkpoint
        return True

    def _epoch_end_follows(self, state: Any) -> bool:
        """Whether on_epoch_end is still to come for this step, which is an epoch's last:
        with "steps" strategies transformers evaluates and saves there *before*
        on_epoch_end, and the epoch message (tracker values) then carries both."""
        epoch = state.epoch
        return bool(
            self._active
            and "epoch_end" in self.events
            and state.global_step > self._epoch_end_step
            and epoch
            and (float(epoch).is_integer() or state.global_step >= (state.max_steps or 0) > 0)
        )

    def _release_epoch(self) -> None:
        context, self._pending_epoch = self._pending_epoch, None
        self._emit("epoch_end", context=context)

    def _emit(
        self,
        event: str,
        *,
        error: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        if event not in self.events:
            return
        if not self._is_zero and event not in ANY_RANK_EVENTS:
            return
        if context is None:
            if self._state is not None:
                self._tracker.update(self._state)
            context = self._tracker.context(event)
        for backend, templates, outbox in self._routes:
            ctx = context
            if error is not None:
                ctx = {**context, "error": _error_for(error, backend.max_length)}
            try:
                parts = templates.render(event, ctx)
            except Exception as exc:  # noqa: BLE001 - a broken template must not stop the message
                parts = self._fallback(event, backend, ctx, exc)
            outbox.put(
                Message(
                    event=event,
                    text=parts.get("text", ""),
                    parts=parts,
                    context=ctx,
                    critical=event in CRITICAL_EVENTS,
                )
            )

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
        if self._pending_epoch is not None:
            self._release_epoch()
        error: dict[str, Any]
        if kind == "terminated":
            error = {"kind": kind, "type": "SIGTERM", "message": "the process was sent SIGTERM"}
        elif exc is None:
            error = {
                "kind": kind,
                "type": "unfinished",
                "message": "train() never reached its end; the error, if any, was caught by the "
                "calling code",
            }
        else:
            name = type(exc).__qualname__
            module = type(exc).__module__
            error = {
                "kind": kind,
                "type": name if module == "builtins" else f"{module}.{name}",
                "message": redact(str(exc)),
                "exception": exc,
            }
        self._emit("train_error", error=error)

    def _flush_for_exit(self) -> None:
        self.flush()


def _error_for(error: dict[str, Any], max_length: int) -> dict[str, Any]:
    """The error as plain values, with the traceback trimmed to leave room in the message."""
    exc = error.get("exception")
    plain = {k: v for k, v in error.items() if k != "exception"}
    plain["traceback"] = _traceback_tail(exc, max(max_length // 2, 200)) if exc else None
    return plain


def _at_exit(ref: weakref.ReferenceType[NotifierCallback]) -> None:
    callback = ref()
    if callback is None:
        return
    try:
        if callback._guard.armed:
            callback._guard.report_unfinished()
        else:
            callback.flush()
    except Exception:  # noqa: BLE001 - exit must not be disturbed
        logger.exception("notifier: error while flushing at exit")


class SlackCallback(NotifierCallback):
    """The original ``SlackCallback(channel, client=None)``: Slack only, same defaults.

    ``SlackCallback("#train")`` reads ``SLACK_BOT_TOKEN``;
    ``SlackCallback("#train", client=WebClient(...))`` uses that client.
    """

    def __init__(self, channel: str, client: Any = None, **kwargs: Any) -> None:
        backends = [get_backend("slack", channel=channel, client=client)]
        super().__init__(backends, **kwargs)
