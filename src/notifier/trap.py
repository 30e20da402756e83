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
import threading
import traceback
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

#: Methods of the training loop that run every part of an epoch, newest layout first.
WRAPPED = ("_run_epoch", "_evaluate", "_finalize_training")
#: For transformers whose epoch loop is inlined in ``_inner_training_loop``.
WRAPPED_OLD = ("training_step", "_maybe_log_save_evaluate")


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


class _Wrapping:
    """One Trainer's wrapped methods, shared by every trap watching it (two callbacks on
    one Trainer), and what its instance held under those names before (a user's patch)."""

    def __init__(self, trainer: Any) -> None:
        self.traps: weakref.WeakSet[ErrorTrap] = weakref.WeakSet()
        self.saved: dict[str, Any] = {}
        names = WRAPPED if hasattr(trainer, "_run_epoch") else WRAPPED_OLD
        # The Trainer is reached through a weak reference and the class's function: a
        # wrapper holding the bound method would make the Trainer keep itself alive.
        ref = weakref.ref(trainer)
        for name in names:
            own = trainer.__dict__.get(name, _ABSENT)
            if own is not _ABSENT:
                self.saved[name] = own
                target: Callable[..., Any] = own
                bound = False
            else:
                target = getattr(type(trainer), name, None)  # type: ignore[assignment]
                bound = True
            if callable(target):
                setattr(trainer, name, _wrap(target, ref if bound else None, self.traps))
                self.saved.setdefault(name, _ABSENT)

    def restore(self, trainer: Any) -> None:
        for name, own in self.saved.items():
            if own is _ABSENT:
                trainer.__dict__.pop(name, None)
            else:
                setattr(trainer, name, own)


_ABSENT = object()
#: Trainer -> its wrapping, while any trap watches it.
_wrapped: weakref.WeakKeyDictionary[Any, _Wrapping] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _wrap(
    function: Callable[..., Any],
    trainer: weakref.ReferenceType[Any] | None,
    traps: weakref.WeakSet[ErrorTrap],
) -> Callable[..., Any]:
    """``function`` (called on ``trainer()`` when given), noting what leaves it in ``traps``."""

    @functools.wraps(function)
    def notifier_noted_this_error(*args: Any, **kwargs: Any) -> Any:
        try:
            if trainer is None:
                return function(*args, **kwargs)
            return function(trainer(), *args, **kwargs)
        except BaseException as exc:
            tb = exc.__traceback__
            if tb is not None and tb.tb_frame is sys._getframe():
                exc.__traceback__ = tb.tb_next  # this frame: not part of the user's story
            del tb  # a frame referring to its own traceback would keep the failed step alive
            if not isinstance(exc, SystemExit):
                noted, oom = describe(exc), out_of_memory(exc)
                for trap in list(traps):
                    trap.caught, trap.caught_oom = noted, oom
            raise

    return notifier_noted_this_error


class ErrorTrap:
    """Watches one Trainer's loop methods during a run and keeps what left them."""

    def __init__(self) -> None:
        #: The latest exception raised out of the training loop in this run, if any, as
        #: ``{"type", "message", "traceback", "kind"}`` (plain text).
        self.caught: dict[str, str] | None = None
        #: Whether that exception is an out-of-memory error, which ``auto_find_batch_size``
        #: recovers from by training again with a smaller batch.
        self.caught_oom = False
        self._trainer: weakref.ReferenceType[Any] | None = None

    def install(self, trainer: Any) -> None:
        """Start a run: forget the last exception and watch ``trainer``'s loop methods."""
        self.uninstall()
        self.caught, self.caught_oom = None, False
        if trainer is None:
            return
        with _lock:
            wrapping = _wrapped.get(trainer)
            if wrapping is None:
                wrapping = _wrapped[trainer] = _Wrapping(trainer)
            wrapping.traps.add(self)
        self._trainer = weakref.ref(trainer)

    @property
    def installed(self) -> bool:
        """Whether a Trainer is watched (it was found on the stack)."""
        return self._trainer is not None

    def uninstall(self) -> None:
        """Stop watching; the last trap to go puts the Trainer's methods back."""
        trainer = self._trainer() if self._trainer is not None else None
        self._trainer = None
        if trainer is None:
            return
        with _lock:
            wrapping = _wrapped.get(trainer)
            if wrapping is None:
                return
            wrapping.traps.discard(self)
            if not wrapping.traps:
                wrapping.restore(trainer)
                del _wrapped[trainer]


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an error ``auto_find_batch_size`` retries (accelerate's test)."""
    try:
        from accelerate.utils.memory import should_reduce_batch_size
    except ImportError:  # no accelerate, no auto_find_batch_size
        return False
    return isinstance(exc, Exception) and bool(should_reduce_batch_size(exc))


def describe(exc: BaseException) -> dict[str, str]:
    """An exception as plain text: its qualified type, its message, its traceback, and the
    kind of end it makes (``interrupted`` for Ctrl-C, else ``crash``)."""
    kind = type(exc)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    text = "".join(traceback.format_exception(kind, exc, exc.__traceback__)).rstrip()
    ending = "interrupted" if isinstance(exc, KeyboardInterrupt) else "crash"
    return {"type": name, "message": str(exc), "traceback": text, "kind": ending}
