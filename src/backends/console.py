"""The console backend: notifications as readable lines on stderr (the default)."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any

import notifier
from notifier.backend import check_options


class ConsoleBackend(notifier.Backend):
    """Writes each message to a stream, stderr by default, prefixed with the time."""

    name = "console"
    description = "readable lines on stderr; the default when nothing else is configured"
    max_length = 100_000

    def __init__(self, stream: IO[str] | None = None, **options: Any) -> None:
        check_options(self, options)
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: notifier.Message) -> None:
        stream = self._stream or sys.stderr  # looked up late: pytest and notebooks swap it
        stamp = time.strftime("%H:%M:%S")
        lines = message.text.splitlines() or [""]
        text = f"[notifier {stamp}] {lines[0]}\n" + "".join(f"    {line}\n" for line in lines[1:])
        with self._lock:
            stream.write(text)
            stream.flush()

    def describe(self) -> str:
        return "console"


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(ConsoleBackend)
