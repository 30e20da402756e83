"""Reporting the end of a run that never reached on_train_end: crash, Ctrl-C, SIGTERM, abandonment.

transformers has no exception hook, so while a run is live the guard chains
``sys.excepthook``, ``threading.excepthook``, a SIGTERM handler and IPython's
``post_run_cell`` event. Each reports, flushes (bounded), then hands over to
what was there before, so the exit code and signal behaviour stay as they
were. ``disarm`` restores the previous hooks, or, where someone installed
theirs on top of ours, leaves ours in place but inert.

Process-wide: a registry of armed guards (a run that begins on a thread retires
an earlier run of that thread that never ended, so only the newest one reports),
and the flush at exit, which holds every callback's outboxes with work still
queued (so messages survive the callback being garbage-collected) and waits
against one exit deadline shared by every exit-time flush (a crash's, a
SIGTERM's, the atexit handler's), warning once per backend.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from .secrets import get_logger

if TYPE_CHECKING:
    from .outbox import Outbox

logger = get_logger("notifier")

#: report(kind, exception or None); kinds: crash, interrupted, terminated, unfinished.
Report = Callable[[str, "BaseException | None"], None]


def kind_of(exc: BaseException | None) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "crash" if exc is not None else "unfinished"


# -- process-wide state ------------------------------------------------------------------
# Re-entrant: a SIGTERM handler may run on the main thread while it holds the lock.
_lock = threading.RLock()
#: Armed guards, oldest first. Strong: an armed run must be reportable at exit.
_armed: list[CrashGuard] = []


@dataclass
class _Tracked:
    """One callback's outboxes, flushed at exit; kept after the callback is collected
    for as long as any of them has work queued."""

    owner: weakref.ReferenceType[Any]
    outboxes: tuple[Outbox, ...]
    timeout: float
    pid: int

    def needed(self) -> bool:
        return self.owner() is not None or any(o.pending for o in self.outboxes)


_tracked: list[_Tracked] = []
_exit_registered_pid = 0
#: The one exit deadline (time.monotonic), set by the first exit-time flush; a new run clears it.
_exit_deadline: float | None = None
#: Outboxes (by id) already warned about at this exit.
_warned: set[int] = set()


def track(owner: object, outboxes: Sequence[Outbox], timeout: float) -> None:
    """Have ``outboxes`` flushed at exit (within ``timeout``), even if ``owner`` is gone by then."""
    global _exit_registered_pid
    pid = os.getpid()
    with _lock:
        _tracked[:] = [t for t in _tracked if t.pid == pid and t.needed()]
        _tracked.append(_Tracked(weakref.ref(owner), tuple(outboxes), timeout, pid))
        if _exit_registered_pid != pid:  # once per process (again in a forked child)
            _exit_registered_pid = pid
            atexit.register(_at_exit, pid)


def flush_at_exit(*, shared: bool = True) -> bool:
    """Wait for every tracked outbox with work queued, all against the process's one exit
    deadline; warn once per backend that is still behind when it passes. False if any is.

    ``shared=False`` (a training thread crashed; the process goes on) waits against a
    deadline of its own and leaves the exit's alone.
    """
    global _exit_deadline
    pid = os.getpid()
    with _lock:
        busy = [(o, t.timeout) for t in _tracked if t.pid == pid for o in t.outboxes if o.pending]
        if not busy:
            return True
        now = time.monotonic()
        deadline = now + max(timeout for _, timeout in busy)
        if shared:
            if _exit_deadline is None:
                _exit_deadline = deadline
            deadline = _exit_deadline
    done = True
    for outbox, timeout in busy:
        left = min(deadline, now + timeout) - time.monotonic()
        if outbox.flush(max(left, 0.0)):
            continue
        done = False
        with _lock:
            first = id(outbox) not in _warned
            _warned.add(id(outbox))
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "notifier: gave up waiting for %d message(s) to %s after %.1fs (flush_timeout)",
            outbox.pending,
            outbox.backend.describe(),
            timeout,
        )
    return done


def _stop_waiting() -> None:
    """Ctrl-C during the exit's wait: stop it now, and do not wait again at exit."""
    global _exit_deadline
    with _lock:
        _exit_deadline = time.monotonic()
    logger.warning("notifier: stopped waiting for pending messages")


def _at_exit(pid: int) -> None:
    if os.getpid() != pid:
        return  # inherited by a forked child, which registers its own
    try:
        with _lock:
            unfinished = [g for g in _armed if g._pid == pid]
        for guard in unfinished:
            guard.report_unfinished()
        flush_at_exit()
    except KeyboardInterrupt:  # Ctrl-C while waiting: stop waiting, exit as asked
        _stop_waiting()
    except Exception:  # noqa: BLE001 - exit must not be disturbed
        logger.exception("notifier: error while flushing at exit")


class CrashGuard:
    """Hooks that report a live run's abnormal end exactly once."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self.armed = False
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._run: object = None
        self._prev_excepthook: Any = None
        self._prev_thread_hook: Any = None
        self._prev_sigterm: Any = None
        self._excepthook_installed = False
        self._thread_hook_installed = False
        self._sigterm_installed = False
        self._in_sigterm = False
        self._ipython: Any = None

    # -- installing -------------------------------------------------------------------
    # Each hook is tracked on its own: one that someone chained on top of stays installed
    # (inert while disarmed) and is never installed twice, which would chain it to itself.
    def arm(self, run: object = None) -> None:
        """Start reporting for ``run`` (the Trainer's state): several callbacks of one
        Trainer arm for the same run and leave each other alone."""
        global _exit_deadline
        if self.armed:
            return
        pid, here = os.getpid(), threading.current_thread()
        with _lock:
            # A run of this thread (or of a thread gone since) that never ended was
            # abandoned: report it now, so that only this run's hooks report from here on.
            # A run training on another live thread goes on and keeps its own hooks.
            _armed[:] = [g for g in _armed if g._pid == pid]
            stale = [
                g
                for g in _armed
                if (g._thread is here or not _alive(g._thread))
                and (run is None or g._run is not run)
            ]
            _exit_deadline = None  # a new run: the process is not exiting after all
            _warned.clear()
        for guard in stale:
            guard.report_unfinished()
        self.armed = True
        self._pid = pid
        self._thread = here
        self._run = run
        with _lock:
            _armed.append(self)
        if not self._excepthook_installed:
            self._prev_excepthook = sys.excepthook
            sys.excepthook = self._excepthook
            self._excepthook_installed = True
        if not self._thread_hook_installed:
            self._prev_thread_hook = threading.excepthook
            threading.excepthook = self._thread_excepthook
            self._thread_hook_installed = True
        if not self._sigterm_installed:
            self._install_sigterm()
        if self._ipython is None:
            self._install_ipython()

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        try:
            previous = signal.getsignal(signal.SIGTERM)
            if previous is signal.SIG_IGN or previous is None:
                return  # ignored on purpose, or set from C: not ours to change
            self._prev_sigterm = previous
            signal.signal(signal.SIGTERM, self._on_sigterm)
            self._sigterm_installed = True
        except (ValueError, OSError) as exc:
            logger.debug("no SIGTERM handler installed: %s", exc)

    def _install_ipython(self) -> None:
        ipython_module = sys.modules.get("IPython")
        shell = ipython_module.get_ipython() if ipython_module else None
        if shell is None or not hasattr(shell, "events"):
            return
        shell.events.register("post_run_cell", self._post_run_cell)
        self._ipython = shell

    def disarm(self) -> None:
        """Stop reporting; restore every hook that is still the current one.

        Also called after a report (which by itself only stops reporting), so the
        process's hooks are back as they were once the run is over either way.
        """
        self._forget()
        if self._excepthook_installed and sys.excepthook == self._excepthook:
            sys.excepthook = self._prev_excepthook
            self._excepthook_installed = False
        if self._thread_hook_installed and threading.excepthook == self._thread_excepthook:
            threading.excepthook = self._prev_thread_hook
            self._thread_hook_installed = False
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._prev_sigterm)
                    self._sigterm_installed = False
            except (ValueError, OSError):
                pass
        if self._ipython is not None:
            try:
                self._ipython.events.unregister("post_run_cell", self._post_run_cell)
            except ValueError:
                pass
            self._ipython = None

    def _forget(self) -> None:
        self.armed = False
        self._run = None
        with _lock:
            if self in _armed:
                _armed.remove(self)

    # -- reporting --------------------------------------------------------------------
    def _fire(self, kind: str, exc: BaseException | None, *, flush: bool = True) -> bool:
        """Report once, from the process that armed us (not a forked DataLoader worker).

        A second Ctrl-C while flushing cuts the wait short; nothing else is raised.
        """
        if not self.armed or os.getpid() != self._pid:
            return False
        self._forget()
        try:
            self._report(kind, exc)
            if flush:
                flush_at_exit()
        except BaseException:  # noqa: BLE001 - reporting must never change how the process ends
            logger.exception("notifier: could not report the end of the run")
        return True

    def _flush_quietly(self, *, shared: bool = True) -> None:
        try:
            flush_at_exit(shared=shared)
        except BaseException:  # noqa: BLE001 - e.g. a second Ctrl-C: stop waiting, end as usual
            if shared:
                _stop_waiting()
            else:
                logger.warning("notifier: stopped waiting for pending messages")

    def report_unfinished(self) -> None:
        """The run began and never ended (process exit, or a new run on this thread).
        Queued, not flushed: the flush at exit delivers it."""
        self._fire("unfinished", None, flush=False)
        self.disarm()

    def _elsewhere(self) -> bool:
        """Whether the run trains on another thread that is still alive."""
        thread = self._thread
        return thread is not None and thread is not threading.current_thread() and thread.is_alive()

    def _excepthook(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        # An uncaught exception on the main thread ends a run of the main thread; a run
        # on another thread goes on (the interpreter waits for it) and reports its own end.
        ours = self._thread is None or self._thread is threading.current_thread()
        reported = False
        if ours and (not isinstance(exc, SystemExit) or exc.code not in (None, 0)):
            reported = self._fire(kind_of(exc), exc, flush=False)
        previous = (
            self._prev_excepthook if self._prev_excepthook is not None else sys.__excepthook__
        )
        try:
            previous(exc_type, exc, tb)  # the traceback first: the user is watching the terminal
            if ours:
                self.disarm()
            if reported:
                self._flush_quietly()
        except KeyboardInterrupt:  # Ctrl-C once the traceback is out: the user wants out
            _stop_waiting()

    def _thread_excepthook(self, args: threading.ExceptHookArgs) -> None:
        # Only the thread that trains matters (train() run from a thread, as some notebook
        # and UI tools do); a crashed helper thread is not the run dying.
        reported = False
        if args.thread is self._thread and args.exc_value is not None:
            reported = self._fire(kind_of(args.exc_value), args.exc_value, flush=False)
        previous = self._prev_thread_hook or threading.__excepthook__
        previous(args)
        if args.thread is self._thread:
            self.disarm()
        if reported:
            self._flush_quietly(shared=False)  # the process goes on: not its exit deadline

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._in_sigterm:
            # A second SIGTERM while this one is reported (torchrun passes on the one a
            # whole process group got): the first ends the process once the flush is over.
            return
        self._in_sigterm = True
        try:
            previous = self._prev_sigterm
            if os.getpid() == self._pid:
                self._fire("terminated", None)
                self.disarm()
        finally:
            self._in_sigterm = False
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            # End as the default action would: killed by the signal, same exit status.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _post_run_cell(self, result: Any) -> None:
        # The cell has ended, and with it a train() it ran; a run training on a
        # background thread the cell started goes on and reports its own end.
        if self._elsewhere():
            return
        error = None
        if self._thread is None or self._thread is threading.current_thread():
            error = getattr(result, "error_in_exec", None)
        self._fire(kind_of(error), error, flush=False)  # the kernel lives on: no waiting
        self.disarm()


def _alive(thread: threading.Thread | None) -> bool:
    return thread is not None and thread.is_alive()
