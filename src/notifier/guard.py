"""Reporting the end of a run that never reached on_train_end: crash, Ctrl-C, SIGTERM, abandonment.

transformers has no exception hook, so while a run is live the guard chains
``sys.excepthook``, ``threading.excepthook``, a SIGTERM handler and IPython's
``post_run_cell`` event. Each reports, flushes (bounded), then hands over to
what was there before, so the exit code and signal behaviour stay as they
were. ``disarm`` restores the previous hooks, or, where someone installed
theirs on top of ours, leaves ours in place but inert.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

from .secrets import get_logger

logger = get_logger("notifier")

#: report(kind, exception or None); kinds: crash, interrupted, terminated, unfinished.
Report = Callable[[str, "BaseException | None"], None]


def kind_of(exc: BaseException | None) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return "crash" if exc is not None else "unfinished"


class CrashGuard:
    """Hooks that report a live run's abnormal end exactly once."""

    def __init__(self, report: Report, flush: Callable[[], None]) -> None:
        self._report = report
        self._flush = flush
        self.armed = False
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._prev_excepthook: Any = None
        self._prev_thread_hook: Any = None
        self._prev_sigterm: Any = None
        self._excepthook_installed = False
        self._thread_hook_installed = False
        self._sigterm_installed = False
        self._ipython: Any = None

    # -- installing -------------------------------------------------------------------
    # Each hook is tracked on its own: one that someone chained on top of stays installed
    # (inert while disarmed) and is never installed twice, which would chain it to itself.
    def arm(self) -> None:
        if self.armed:
            return
        self.armed = True
        self._pid = os.getpid()
        self._thread = threading.current_thread()
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
        self.armed = False
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

    # -- reporting --------------------------------------------------------------------
    def _fire(self, kind: str, exc: BaseException | None, *, flush: bool = True) -> bool:
        """Report once, from the process that armed us (not a forked DataLoader worker).

        A second Ctrl-C while flushing cuts the wait short; nothing else is raised.
        """
        if not self.armed or os.getpid() != self._pid:
            return False
        self.armed = False
        try:
            self._report(kind, exc)
            if flush:
                self._flush()
        except BaseException:  # noqa: BLE001 - reporting must never change how the process ends
            logger.exception("notifier: could not report the end of the run")
        return True

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except BaseException:  # noqa: BLE001 - e.g. a second Ctrl-C: stop waiting, end as usual
            logger.warning("notifier: stopped waiting for pending messages")

    def report_unfinished(self) -> None:
        """For process exit, or a new run on the same callback: the run began and never ended."""
        self._fire("unfinished", None)

    def _excepthook(
        self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        reported = False
        if not isinstance(exc, SystemExit) or exc.code not in (None, 0):
            reported = self._fire(kind_of(exc), exc, flush=False)
        previous = (
            self._prev_excepthook if self._prev_excepthook is not None else sys.__excepthook__
        )
        previous(exc_type, exc, tb)  # the traceback first: the user is watching the terminal
        self.disarm()
        if reported:
            self._flush_quietly()

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
            self._flush_quietly()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        previous = self._prev_sigterm
        if os.getpid() == self._pid:
            self._fire("terminated", None)
            self.disarm()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            # End as the default action would: killed by the signal, same exit status.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _post_run_cell(self, result: Any) -> None:
        error = getattr(result, "error_in_exec", None)
        self._fire(kind_of(error), error)
        self.disarm()
