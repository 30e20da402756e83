"""A loopback HTTP server that records every request and answers from a script of behaviours.

Generic (any path, any method): used for Discord webhooks and plain JSON webhooks.
Also the fault table every webhook-style backend's tests share (``FAULTS``).

Start it on port 0; each request is recorded (method, path, query, headers, raw
and parsed body, arrival time) and answered by the next scripted ``Behaviour``, or
by ``default`` once the script is used up: a JSON status with optional headers, a
429 with ``Retry-After`` and/or a JSON ``retry_after``, a connection reset, a hang
(until the server closes) or a delay.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (None for an empty body)."""
        return json.loads(self.raw) if self.raw else None

    def header(self, name: str) -> str | None:
        """A request header, whatever the case of its name."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


@dataclass
class Behaviour:
    """One scripted answer. ``kind``: ``answer`` (``status`` with ``body``, a dict sent as
    JSON or a str as text, and ``headers``), ``ratelimited`` (429; ``retry_after`` in the
    ``Retry-After`` header and/or ``retry_after_body`` in a Discord-style JSON body),
    ``reset`` (drop the connection with a TCP RST) or ``hang`` (never answer)."""

    kind: str = "answer"
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None
    retry_after_body: float | None = None
    delay: float = 0.0

    @classmethod
    def ok(cls, body: Any = None) -> Behaviour:
        return cls(status=200, body=body)

    @classmethod
    def answer(cls, status: int, body: Any = None, **headers: str) -> Behaviour:
        return cls(status=status, body=body, headers=dict(headers))

    @classmethod
    def ratelimited(
        cls, retry_after: str | None = "1", retry_after_body: float | None = None
    ) -> Behaviour:
        return cls(kind="ratelimited", retry_after=retry_after, retry_after_body=retry_after_body)

    @classmethod
    def reset(cls) -> Behaviour:
        return cls(kind="reset")

    @classmethod
    def hang(cls) -> Behaviour:
        return cls(kind="hang")


class HTTPServer:
    """The server and what it has seen. ``script`` queues behaviours; ``default`` answers
    after them (200 with a JSON ``{"id": "<n>"}``, like Discord's ``?wait=true``)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: list[Behaviour] = []
        self.default = Behaviour()
        self._lock = threading.Condition()
        self._closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            do_GET = do_PUT = do_POST  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these behaviours, then with ``default``."""
        with self._lock:
            self._script.extend(behaviours)

    def close(self) -> None:
        self._closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- inspection -----------------------------------------------------------------
    def received(self, method: str | None = "POST") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def bodies(self) -> list[Any]:
        return [r.json for r in self.received()]

    def wait_for(
        self, count: int, method: str | None = "POST", timeout: float = 30
    ) -> list[Request]:
        """Block until ``count`` requests arrived (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received(method)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} {method} requests, got {len(self.received(method))}"
                    )
                self._lock.wait(left)
        return self.received(method)

    # -- serving --------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        split = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
        request = Request(handler.command, split.path, query, dict(handler.headers.items()), raw)
        with self._lock:
            self.requests.append(request)
            behaviour = self._script.pop(0) if self._script else self.default
            number = len(self.requests)
            self._lock.notify_all()
        if behaviour.delay:
            self._closed.wait(behaviour.delay)
        if behaviour.kind == "hang":
            self._closed.wait()
            return
        if behaviour.kind == "reset":
            # SO_LINGER 0 makes close() send a TCP RST: a "connection reset by peer".
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.close_connection = True
            handler.connection.close()
            return
        headers = dict(behaviour.headers)
        if behaviour.kind == "ratelimited":
            status = 429
            body: Any = {"message": "You are being rate limited.", "global": False}
            if behaviour.retry_after_body is not None:
                body["retry_after"] = behaviour.retry_after_body
            if behaviour.retry_after is not None:
                headers["Retry-After"] = behaviour.retry_after
        else:
            status = behaviour.status
            body = behaviour.body
            if body is None and status < 300 and status != 204:
                body = {"id": str(number)}
        if body is None:
            data, ctype = b"", "text/plain"
        elif isinstance(body, str):
            data, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


# -- the fault table shared by the Discord and webhook backend tests ------------------------


@dataclass(frozen=True)
class Fault:
    """A scripted server fault and what a backend on the outbox must make of it.

    ``script`` answers the first requests, then ``default`` (None: 200) answers the rest.
    A run sends two messages (train_begin, train_end); ``requests`` is how many reach
    the server, ``delivered`` how many of the two arrive, ``warns`` whether a warning
    is logged, ``disables`` whether the backend is switched off, ``min_gap`` the least
    time between the first two requests (a 429's asked wait).
    """

    name: str
    script: tuple[Behaviour, ...] = ()
    default: Behaviour | None = None
    requests: int = 2
    delivered: int = 2
    warns: bool = False
    disables: bool = False
    min_gap: float = 0.0


#: Attempts per message: the outbox's default max_attempts.
ATTEMPTS = 5

FAULTS: tuple[Fault, ...] = (
    Fault(
        "500 always",
        default=Behaviour.answer(500, "<html>oops</html>"),
        requests=2 * ATTEMPTS,
        delivered=0,
        warns=True,
    ),
    Fault("500 twice then OK", script=(Behaviour.answer(500), Behaviour.answer(502)), requests=4),
    Fault("429 Retry-After header", script=(Behaviour.ratelimited("1"),), requests=3, min_gap=1.0),
    Fault(
        "429 retry_after body (Discord)",
        script=(Behaviour.ratelimited("1", 0.4),),
        requests=3,
        min_gap=0.4,
    ),
    Fault(
        "429 retry_after in ms (Discord API v6)",
        script=(Behaviour.ratelimited("1", 400.0),),
        requests=3,
        min_gap=1.0,
    ),
    Fault(
        "connection reset",
        default=Behaviour.reset(),
        requests=2 * ATTEMPTS,
        delivered=0,
        warns=True,
    ),
    Fault("timeout", default=Behaviour.hang(), requests=2 * ATTEMPTS, delivered=0, warns=True),
    Fault(
        "404 deleted webhook",
        default=Behaviour.answer(404, {"message": "Unknown Webhook", "code": 10015}),
        requests=1,
        delivered=0,
        warns=True,
        disables=True,
    ),
)


def run_fault(
    fault: Fault,
    server: HTTPServer,
    backend: Any,
    tmp_path: Any,
    logs: Any,
    *,
    fix: str,
) -> tuple[list[Request], list[str]]:
    """Train a tiny model notifying ``backend`` while ``server`` plays ``fault``; check what
    every backend must do (training unaffected, the counts, one warning naming the fix
    ``fix`` when switched off); return the requests and the warnings for further checks."""
    import logging

    import notifier
    from tiny import make_trainer

    if fault.default is not None:
        server.default = fault.default
    server.script(*fault.script)
    callback = notifier.NotifierCallback([backend], events=["train_begin", "train_end"])
    trainer = make_trainer(tmp_path / "run", [callback])
    trainer.train()
    assert trainer.state.global_step == 8  # training unaffected
    assert callback.flush(30)
    requests = server.wait_for(fault.requests)
    assert len(requests) == fault.requests
    stats = callback.stats[backend.name]
    assert stats["sent"] == fault.delivered
    assert stats["failed"] == (1 if fault.disables else 2 - fault.delivered)
    if fault.min_gap:
        assert requests[1].at - requests[0].at >= fault.min_gap
    warnings = [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING]
    if fault.warns:
        assert len(warnings) == 1, warnings
        assert backend.describe() in warnings[0]
    else:
        assert warnings == []
    if fault.disables:
        assert "switched off" in warnings[0] and fix in warnings[0]
    return requests, warnings
