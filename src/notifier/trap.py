"""Notes the exception that ends a Trainer's training loop, so that a crash the calling
code catches (a retry loop, a notebook cell's try/except) is still reported with its cause.

transformers offers no hook for a failed ``train()``, and the exception never passes
through a callback. What does work is to wrap, for the length of one training run, the
Trainer methods the training loop calls per epoch (``_run_epoch`` and the evaluation and
finishing steps; ``training_step`` and ``_maybe_log_save_evaluate`` on transformers
versions without ``_run_epoch``). The wrappers are instance attributes on that one
Trainer, cost one Python call per wrapped call (per epoch, on current transformers),
re-raise everything unchanged, and are removed when the run ends. The Trainer is found
from the stack when ``on_train_begin`` runs: the callback is not given it.

What is kept is text (type, message, traceback), never the exception: its traceback
holds the frames of the failed step, and with them tensors a retry would need the memory
of (a caught CUDA OOM retried with a smaller batch). The wrapper takes its own frame out
of the traceback before re-raising, so what the caller sees is what it would have seen
without it (Python 3.11+; on 3.10 a frame named ``notifier_noted_this_error`` may show).

Why not ``sys.settrace`` (or frame tracing): it slows every Python call of the run.
"""

from __future__ import annotations

import functools
import sys
import traceback
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

#: Methods of the training loop that run every part of an epoch, newest layout first.
WRAPPED = ("_run_epoch", "_evaluate", "_finalize_training")
#: For transformers whose epoch loop is inlined in ``_inner_training_loop``.
WRAPPED_OLD = ("training_step", "_maybe_log_save_evaluate")

_MARK = "__notifier_trap__"


def find_trainer(callback: object, depth: int = 12) -> Any | None:
    """The Trainer whose callback handler is calling ``callback`` right now, or None."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        candidate = frame.f_locals.get("self")
        handler = getattr(candidate, "callback_handler", None)
        if handler is not None and callback in getattr(handler, "callbacks", ()):
            return candidate
        frame = frame.f_back
    return None


class ErrorTrap:
    """Wraps one Trainer's loop methods during a run and keeps the exception that left them."""

    def __init__(self) -> None:
        #: The latest exception raised out of the training loop in this run, if any, as
        #: ``{"type": ..., "message": ..., "traceback": ...}`` (plain text).
        self.caught: dict[str, str] | None = None
        #: Whether that exception is an out-of-memory error, which ``auto_find_batch_size``
        #: recovers from by training again with a smaller batch.
        self.caught_oom = False
        self._trainer: weakref.ReferenceType[Any] | None = None
        self._names: tuple[str, ...] = ()

    def install(self, trainer: Any) -> None:
        """Start a run: forget the last exception and wrap ``trainer``'s loop methods."""
        self.uninstall()
        self.caught, self.caught_oom = None, False
        if trainer is None:
            return
        names = WRAPPED if hasattr(trainer, "_run_epoch") else WRAPPED_OLD
        wrapped = []
        for name in names:
            method = getattr(trainer, name, None)
            if callable(method) and not getattr(method, _MARK, False):
                setattr(trainer, name, self._wrap(method))
                wrapped.append(name)
        self._trainer = weakref.ref(trainer)
        self._names = tuple(wrapped)

    @property
    def installed(self) -> bool:
        """Whether a Trainer's methods are wrapped (it was found on the stack)."""
        return bool(self._names)

    def uninstall(self) -> None:
        """Remove the wrappers (the class's methods show through again)."""
        trainer = self._trainer() if self._trainer is not None else None
        for name in self._names:
            if trainer is not None and getattr(trainer.__dict__.get(name), _MARK, False):
                delattr(trainer, name)
        self._trainer, self._names = None, ()

    def _wrap(self, method: Callable[..., Any]) -> Callable[..., Any]:
        trap = weakref.ref(self)

        @functools.wraps(method)
        def notifier_noted_this_error(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except BaseException as exc:
                tb = exc.__traceback__
                if tb is not None and tb.tb_frame is sys._getframe():
                    exc.__traceback__ = tb.tb_next  # this frame: not part of the user's story
                owner = trap()
                if owner is not None:
                    owner.caught, owner.caught_oom = describe(exc), out_of_memory(exc)
                raise

        setattr(notifier_noted_this_error, _MARK, True)
        return notifier_noted_this_error


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an error ``auto_find_batch_size`` retries (accelerate's test)."""
    try:
        from accelerate.utils.memory import should_reduce_batch_size
    except ImportError:  # no accelerate, no auto_find_batch_size
        return False
    return isinstance(exc, Exception) and bool(should_reduce_batch_size(exc))


def describe(exc: BaseException) -> dict[str, str]:
    """An exception as plain text: its qualified type, its message and its traceback."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = "".join(traceback.format_exception(kind, exc, exc.__traceback__)).rstrip()
    return {"type": name, "message": str(exc), "traceback": text}
