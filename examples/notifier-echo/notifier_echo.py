"""notifier-echo: an example third-party notifier backend that writes each message as a JSON line.

``NotifierCallback(backends=["echo"])`` writes to the file named by the ``path``
option or the ``ECHO_FILE`` environment variable, else to stdout; a ``stream``
option (any text stream) takes precedence over both.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import IO, Any

import notifier
from notifier.backend import check_options


class EchoBackend(notifier.Backend):
    """Appends ``{"event": ..., "text": ...}`` per message to a file or stream."""

    name = "echo"
    env = {"path": "ECHO_FILE"}
    description = "JSON lines to a file (ECHO_FILE) or stdout; an example plugin"
    max_length = 100_000

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        stream: IO[str] | None = None,
        **options: Any,
    ) -> None:
        check_options(self, options)
        self._stream = stream
        self._path = None if stream is not None else (path or os.environ.get("ECHO_FILE") or None)
        if self._path is not None:
            directory = os.path.dirname(os.path.abspath(self._path))
            if not os.path.isdir(directory):
                raise notifier.ConfigurationError(
                    f"echo backend: the directory of {self._path} does not exist; create it or "
                    "set ECHO_FILE (or the path option) to a path in an existing directory."
                )
        self._lock = threading.Lock()

    def send(self, message: notifier.Message) -> None:
        line = json.dumps({"event": message.event, "text": message.text}, ensure_ascii=False)
        with self._lock:
            if self._path is None:
                stream = self._stream or sys.stdout  # looked up late: tests swap stdout
                stream.write(line + "\n")
                stream.flush()
                return
            try:
                with open(self._path, "a", encoding="utf-8") as out:
                    out.write(line + "\n")
            except OSError as exc:
                raise notifier.DeliveryError(
                    f"echo backend: cannot write {self._path}: {exc.strerror}"
                ) from None

    def describe(self) -> str:
        if self._path is not None:
            return f"echo {self._path}"
        return "echo (stream)" if self._stream is not None else "echo (stdout)"


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(EchoBackend)
