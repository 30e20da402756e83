"""``notifier run``: run any command, and notify when it starts and how it ended.

The command inherits stdin and stdout untouched. Its stderr goes through a pipe:
a thread copies each chunk to our stderr as it arrives and keeps the end of it,
which a failure message quotes. The exit status is the command's, as a shell
reports it (128+N after death by signal N, 127 when the command is not found).
"""

from __future__ import annotations

import codecs
import contextlib
import html
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, Any

from .backend import Backend, Message
from .errors import DeliveryError
from .filters import duration
from .outbox import Outbox
from .secrets import redact

#: How much of the command's stderr a failure message quotes (also capped by the backend).
TAIL_LINES = 20
TAIL_CHARS = 3000
#: Signals passed on to the command while it runs.
FORWARDED: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
#: Seconds to wait, after the command exits, for the rest of its stderr: a background
#: process it started may hold the pipe open for ever.
PUMP_GRACE = 2.0
HEADLINE_COMMAND = 100
BODY_COMMAND = 1000
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_HEADLINES = {
    "SIGINT": "⏹️ Interrupted (SIGINT)",
    "SIGTERM": "🛑 Terminated (SIGTERM)",
}


# -- delivery -------------------------------------------------------------------------------
class _CliOutbox(Outbox):
    """An outbox that keeps why a message was not delivered, for the command to report."""

    def __init__(self, backend: Backend) -> None:
        self.errors: list[str] = []
        super().__init__(backend)

    def _give_up(self, message: Message, error: DeliveryError, attempts: int) -> None:
        # Reported once by the command, in its own words, instead of the library's log
        # line written for a training run ("switched off for this run").
        self.failed += 1
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        self.errors.append(
            f"could not send the {message.event} message to {self.backend.describe()}: "
            f"{redact(str(error))}{tries}"
        )
        if error.disable:
            with self._cond:
                self.disabled = True
                self._queue.clear()


class Delivery:
    """Messages to several backends, each through its own outbox (pacing, retries)."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        for backend in backends:
            redact.add(*backend.secrets())
        self._outboxes = [_CliOutbox(backend) for backend in backends]

    def put(self, build: Callable[[Backend], Message]) -> None:
        """Queue the message ``build`` makes for each backend; returns at once."""
        for outbox in self._outboxes:
            outbox.put(build(outbox.backend))

    def finish(self, timeout: float) -> list[tuple[Backend, list[str]]]:
        """Wait for every queued message; per backend, what went wrong (nothing: delivered)."""
        deadline = time.monotonic() + timeout
        results: list[tuple[Backend, list[str]]] = []
        for outbox in self._outboxes:
            backend = outbox.backend
            problems: list[str] = []
            done = outbox.flush(max(deadline - time.monotonic(), 0.0))
            if not done:
                problems.append(
                    f"{backend.describe()}: gave up waiting after {timeout:g}s "
                    f"({outbox.pending} message(s) not delivered; --timeout sets the limit)"
                )
            problems.extend(outbox.errors)
            if outbox.failed > len(outbox.errors):
                problems.append(
                    f"{backend.describe()}: the backend failed unexpectedly (see the warning above)"
                )
            if done:
                try:
                    backend.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            results.append((backend, problems))
        return results


def message_parts(backend: Backend, title: str, text: str) -> dict[str, str]:
    """Every part ``backend`` asks for, from one text: subject is the headline, html a <pre>."""
    parts: dict[str, str] = {}
    for part in backend.parts:
        if part == "subject":
            parts[part] = title
        elif part == "html":
            parts[part] = f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre>'
        else:
            parts[part] = text
    return parts


# -- the messages ---------------------------------------------------------------------------
@dataclass
class RunInfo:
    """What the run messages say: the command, where it ran, and how it ended."""

    command: list[str]
    host: str = field(default_factory=socket.gethostname)
    cwd: str = field(default_factory=os.getcwd)
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    #: The exit status as a shell reports it: 128+N after death by signal N.
    exit_code: int | None = None
    #: The signal that killed the command (``SIGKILL``), if one did.
    signal: str | None = None
    #: Why the command could not be started (``command not found``), if it was not.
    failure: str | None = None
    stderr_tail: str = ""

    @property
    def shell_command(self) -> str:
        """The command line as a shell would take it, with any registered secret masked."""
        return redact(shlex.join(self.command))

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def context(self, event: str) -> dict[str, Any]:
        """Plain values about the run (the webhook backend's default body carries them)."""
        return {
            "event": event,
            "command": self.shell_command,
            "host": self.host,
            "cwd": self.cwd,
            "elapsed": self.elapsed,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "failure": self.failure,
            "stderr_tail": self.stderr_tail or None,
        }


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _build(info: RunInfo, backend: Backend, event: str, headline: str, details: str) -> Message:
    escape = backend.escape
    command = info.shell_command
    title = f"{headline}: {escape(_short(command, HEADLINE_COMMAND))}"
    lines = [title, details]
    if len(command) > HEADLINE_COMMAND:
        lines.append(f"Command: {escape(_short(command, BODY_COMMAND))}")
    if info.stderr_tail and event == "run_error":
        limit = max(min(TAIL_CHARS, backend.max_length // 2), 200)
        tail = _short_tail(info.stderr_tail, limit).replace("```", "`\u200b``")
        lines += ["", "Last lines of stderr:", "```", backend.escape_code(tail), "```"]
    text = "\n".join(lines)
    return Message(
        event=event,
        text=text,
        parts=message_parts(backend, title, text),
        context=info.context(event),
        critical=True,
    )


def begin_message(info: RunInfo, backend: Backend) -> Message:
    """``▶️ Started: CMD``, with the host and the working directory."""
    where = f"On {backend.escape(info.host)} in {backend.escape(info.cwd)}"
    return _build(info, backend, "run_begin", "▶️ Started", where)


def end_message(info: RunInfo, backend: Backend) -> Message:
    """Finished, failed (with the end of stderr), killed by a signal, or could not start."""
    escape = backend.escape
    where = f"on {escape(info.host)} in {escape(info.cwd)}"
    after = f"after {duration(info.elapsed)}"
    code = info.exit_code
    if info.failure is not None:
        return _build(
            info,
            backend,
            "run_error",
            "❌ Could not start",
            f"{escape(info.failure)} (exit code {code}) {where}",
        )
    if info.ok:
        return _build(info, backend, "run_end", "✅ Finished", f"Exit code 0 {after} {where}")
    if info.signal is not None:
        headline = _HEADLINES.get(info.signal, f"💀 Killed by {info.signal}")
        return _build(info, backend, "run_error", headline, f"Exit code {code} {after} {where}")
    headline = f"❌ Failed with exit code {code}"
    return _build(info, backend, "run_error", headline, f"{after.capitalize()} {where}")


# -- stderr ---------------------------------------------------------------------------------
class _Tail:
    """The end of a byte stream: at most about ``keep`` bytes are held."""

    def __init__(self, keep: int = 64 * 1024) -> None:
        self._keep = keep
        self._data = bytearray()

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        if len(self._data) > 2 * self._keep:
            del self._data[: -self._keep]

    def text(self) -> str:
        return tail_text(bytes(self._data))


def tail_text(data: bytes, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    """The last ``lines`` lines of terminal output as a reader saw them, at most ``chars`` long.

    Colour codes are removed, and a line rewritten with carriage returns (a progress
    bar) keeps only its last state; registered secrets are masked.
    """
    text = _ANSI.sub("", data.decode("utf-8", errors="replace"))
    shown = [line.rstrip("\r").rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    while shown and not shown[-1]:
        shown.pop()
    return _short_tail(redact("\n".join(shown[-lines:])), chars)


def _short_tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _pump(source: IO[bytes], sink: IO[str], tail: _Tail) -> None:
    """Copy the command's stderr to ``sink`` as it arrives, keeping its end in ``tail``."""
    fd = source.fileno()
    raw: IO[bytes] | None = getattr(sink, "buffer", None)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    writable = True
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        tail.add(chunk)
        if not writable:
            continue  # keep draining, so that the command never blocks on a full pipe
        try:
            if raw is not None:
                sink.flush()  # text written before (a log line) comes first
                raw.write(chunk)
                raw.flush()
            else:
                sink.write(decoder.decode(chunk))
                sink.flush()
        except (OSError, ValueError):
            writable = False


# -- signals --------------------------------------------------------------------------------
def _terminal_reaches_command() -> bool:
    """Whether our process group (the command's too) is its terminal's foreground job.

    Then Ctrl-C has already sent the command SIGINT, and forwarding it would deliver
    it twice (a second KeyboardInterrupt inside the first one's cleanup).
    """
    if not hasattr(os, "tcgetpgrp"):
        return False
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | getattr(os, "O_NOCTTY", 0))
    except OSError:
        return False  # no controlling terminal: a batch job, nohup, a test
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


class _Forwarder:
    """Passes the signals we receive on to the command, instead of dying of them."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._pending: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the default behaviour stays
        for signum in FORWARDED:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.process is None:
            self._pending.append(signum)  # arrived before the command started
            return
        if signum == signal.SIGINT and _terminal_reaches_command():
            return
        self._send(signum)

    def _send(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(OSError):  # it has just exited
            self.process.send_signal(signum)

    def attach(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        for signum in self._pending:
            self._send(signum)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: a handler set from C, which cannot be put back; the default is closest.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()


# -- the command ----------------------------------------------------------------------------
def _cannot_start(command: str, exc: OSError) -> tuple[int, str]:
    """The shell's exit status and words for a command that could not be started."""
    if isinstance(exc, FileNotFoundError):
        return 127, "no such file or directory" if "/" in command else "command not found"
    if isinstance(exc, PermissionError):
        return 126, "permission denied"
    return 126, f"cannot run it: {exc.strerror or type(exc).__name__}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_command(
    command: Sequence[str],
    backends: Sequence[Backend],
    *,
    timeout: float = 60.0,
    stderr: IO[str] | None = None,
) -> int:
    """Run ``command``, notify its start and end through ``backends``; return its exit status.

    Notification problems are reported on ``stderr`` (default ``sys.stderr``) and never
    change the status, which is the command's own as a shell reports it.
    """
    sink = stderr if stderr is not None else sys.stderr
    info = RunInfo(list(command))
    delivery = Delivery(backends)
    forwarder = _Forwarder()
    forwarder.install()
    try:
        try:
            process = subprocess.Popen(info.command, stderr=subprocess.PIPE)
        except OSError as exc:
            info.exit_code, info.failure = _cannot_start(info.command[0], exc)
            sink.write(f"notifier: {info.command[0]}: {info.failure}\n")
        else:
            # Only a command that started is announced: one that cannot start gets one message.
            delivery.put(lambda backend: begin_message(info, backend))
            forwarder.attach(process)
            assert process.stderr is not None
            tail = _Tail()
            pump = threading.Thread(
                target=_pump,
                args=(process.stderr, sink, tail),
                name="notifier-run-stderr",
                daemon=True,
            )
            pump.start()
            returncode = process.wait()
            pump.join(PUMP_GRACE)
            if not pump.is_alive():
                process.stderr.close()
            info.stderr_tail = tail.text()
            if returncode < 0:
                info.signal = _signal_name(-returncode)
                info.exit_code = 128 - returncode
            else:
                info.exit_code = returncode
    finally:
        forwarder.restore()
    info.elapsed = time.monotonic() - info.started
    assert info.exit_code is not None
    delivery.put(lambda backend: end_message(info, backend))
    try:
        results = delivery.finish(timeout)
    except KeyboardInterrupt:
        sink.write("notifier: interrupted; the end message may not have been sent\n")
        return info.exit_code
    for _, problems in results:
        for problem in problems:
            sink.write(f"notifier: {problem}\n")
    sink.flush()
    return info.exit_code
