"""A loopback HTTP server that answers as Slack's Web API and incoming webhooks do.

Start it on port 0; it records every request (method, path, headers, parsed
body) and answers from a script of behaviours, so tests can assert on exactly
what was sent and script faults: 500s, 429 with Retry-After, API errors,
connection resets, latency and hangs.
"""

from __future__ import annotations

import json
import socket
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
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def method_name(self) -> str:
        """The Web API method, e.g. ``chat.postMessage`` (or the webhook path)."""
        return self.path.split("?")[0].rsplit("/api/", 1)[-1]


@dataclass
class Behaviour:
    """One scripted answer: ``ok``, ``status`` (code + body), ``error`` (ok:false),
    ``ratelimited`` (429 + Retry-After), ``reset`` (drop the connection), ``hang``."""

    kind: str = "ok"
    status: int = 200
    error: str = ""
    retry_after: int = 1
    delay: float = 0.0


class SlackServer:
    """The server and what it has seen. Use ``script`` to queue behaviours."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._script: list[Behaviour] = []
        self.default = Behaviour()
        self._lock = threading.Condition()
        self._hang = threading.Event()
        self._ts = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            do_GET = do_POST  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/api/"
        self.webhook_url = f"{self.url}/services/T000/B000/XXXXSECRETXXXX"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def script(self, *behaviours: Behaviour) -> None:
        """Answer the next requests with these behaviours, then with ``default``."""
        with self._lock:
            self._script.extend(behaviours)

    def close(self) -> None:
        self._hang.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- inspection -----------------------------------------------------------------
    def posted(self, method: str = "chat.postMessage") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method_name == method]

    def texts(self, method: str = "chat.postMessage") -> list[str]:
        return [str(r.body.get("text", "")) for r in self.posted(method)]

    def wait_for(
        self, count: int, method: str = "chat.postMessage", timeout: float = 30
    ) -> list[Request]:
        """Block until ``count`` requests for ``method`` arrived (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len([r for r in self.requests if r.method_name == method]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"expected {count} {method} requests, got "
                        f"{len([r for r in self.requests if r.method_name == method])}"
                    )
                self._lock.wait(left)
        return self.posted(method)

    # -- serving --------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        body: dict[str, Any]
        if "json" in content_type:
            body = json.loads(raw or b"{}")
        else:
            body = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
        request = Request(handler.command, handler.path, dict(handler.headers.items()), body, raw)
        with self._lock:
            self.requests.append(request)
            behaviour = self._script.pop(0) if self._script else self.default
            self._ts += 1
            ts = f"1700000000.{self._ts:06d}"
            self._lock.notify_all()
        if behaviour.delay:
            time.sleep(behaviour.delay)
        if behaviour.kind == "hang":
            self._hang.wait()
            return
        if behaviour.kind == "reset":
            # SO_LINGER 0 makes close() send a TCP RST: a "connection reset by peer".
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            handler.close_connection = True
            handler.connection.close()
            return
        webhook = "/services/" in handler.path
        headers: dict[str, str] = {}
        if behaviour.kind == "ratelimited":
            status, payload = 429, ({"ok": False, "error": "ratelimited"})
            headers["Retry-After"] = str(behaviour.retry_after)
        elif behaviour.kind == "status":
            status, payload = behaviour.status, behaviour.error or "<html>server error</html>"
        elif behaviour.kind == "error":
            status, payload = 200, {"ok": False, "error": behaviour.error}
            if webhook:
                status, payload = 404 if behaviour.error == "no_service" else 400, behaviour.error
        else:
            status = 200
            payload = "ok" if webhook else self._ok(request, ts)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        handler.send_response(status)
        ctype = "text/plain" if isinstance(payload, str) else "application/json; charset=utf-8"
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _ok(self, request: Request, ts: str) -> dict[str, Any]:
        method = request.method_name
        channel = request.body.get("channel", "C0TEST")
        if method == "auth.test":
            return {"ok": True, "user_id": "U0BOT", "team": "Test", "bot_id": "B0BOT"}
        if method in ("chat.postMessage", "chat.update"):
            return {
                "ok": True,
                "channel": channel,
                "ts": request.body.get("ts", ts),
                "message": {"text": request.body.get("text", ""), "ts": ts},
            }
        return {"ok": True}
