"""A loopback HTTP server that answers as Slack's Web API and incoming webhooks do.

Start it on port 0; it records every request (method, path, headers, parsed
body) and answers from a script of behaviours, so tests can assert on exactly
what was sent and script faults: 500s, 429 with Retry-After, API errors,
connection resets, latency and hangs.

Beyond chat.postMessage it keeps the state the live-run features need, with
Slack's own rules: channel names resolve to IDs (chat.update, scheduled-message
deletion and file sharing accept IDs only); chat.update edits a posted message;
chat.scheduleMessage keeps a message until chat.deleteScheduledMessage (post_at
in the future and within 120 days, at most 30 per channel in 5 minutes);
files.getUploadURLExternal hands out an upload URL on this server, the upload
is a POST of the raw bytes, and files.completeUploadExternal shares the file.
"""

from __future__ import annotations

import hashlib
import json
import re
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
        """The Web API method, e.g. ``chat.postMessage`` (``upload`` for a file's bytes,
        the path for a webhook)."""
        path = self.path.split("?")[0]
        if path.startswith(UPLOAD_PATH):
            return "upload"
        return path.rsplit("/api/", 1)[-1]


UPLOAD_PATH = "/upload/v1/"
#: Slack's limits on chat.scheduleMessage.
MAX_SCHEDULE_AHEAD = 120 * 86400
SCHEDULE_WINDOW, SCHEDULE_LIMIT = 300.0, 30


def channel_id(channel: str) -> str:
    """The ID Slack would answer for ``channel``: IDs stay, names get a stable made-up ID."""
    if is_channel_id(channel):
        return channel
    digest = hashlib.sha1(channel.lstrip("#").encode()).hexdigest().upper()
    return "C" + digest[:10]


def is_channel_id(channel: str) -> bool:
    return re.fullmatch(r"[CGD][A-Z0-9]{8,}", channel) is not None


@dataclass
class Scheduled:
    """A message waiting in chat.scheduleMessage's queue."""

    id: str
    channel: str
    post_at: int
    text: str
    thread_ts: str | None
    body: dict[str, Any]


@dataclass
class Upload:
    """A file between files.getUploadURLExternal and files.completeUploadExternal."""

    id: str
    filename: str
    length: int
    data: bytes | None = None
    shared: dict[str, Any] | None = None


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
        self._ids = 0
        #: Posted messages by ts (chat.update edits them), scheduled ones by id, files by id.
        self.messages: dict[str, dict[str, Any]] = {}
        self.scheduled: dict[str, Scheduled] = {}
        self.uploads: dict[str, Upload] = {}
        self._schedule_times: dict[str, list[float]] = {}
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
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
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

    def count(self, method: str) -> int:
        with self._lock:
            return len([r for r in self.requests if r.method_name == method])

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
        if handler.path.startswith(UPLOAD_PATH):
            body = {}  # a file's raw bytes, kept in ``raw``
        elif "json" in content_type:
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
        elif request.method_name == "upload":
            status, payload = self._upload(request)
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

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._ids += 1
            return f"{prefix}{self._ids:010d}"

    def _upload(self, request: Request) -> tuple[int, str]:
        file_id = request.path.split("?")[0][len(UPLOAD_PATH) :]
        with self._lock:
            upload = self.uploads.get(file_id)
            if upload is None:
                return 404, "file not found"
            upload.data = request.raw
        return 200, f"OK - {len(request.raw)}"

    def _ok(self, request: Request, ts: str) -> dict[str, Any]:
        method = request.method_name
        body = request.body
        channel = str(body.get("channel", "C0TEST"))
        if method == "auth.test":
            return {"ok": True, "user_id": "U0BOT", "team": "Test", "bot_id": "B0BOT"}
        if method == "chat.postMessage":
            message = {
                "text": body.get("text", ""),
                "ts": ts,
                "channel": channel_id(channel),
                "thread_ts": body.get("thread_ts"),
                "blocks": body.get("blocks"),
                "edits": 0,
            }
            with self._lock:
                self.messages[ts] = message
            return {
                "ok": True,
                "channel": channel_id(channel),
                "ts": ts,
                "message": {k: v for k, v in message.items() if v is not None and k != "edits"},
            }
        if method == "chat.update":
            if not is_channel_id(channel):
                return {"ok": False, "error": "channel_not_found"}
            with self._lock:
                found = self.messages.get(str(body.get("ts")))
                if found is None or found["channel"] != channel:
                    return {"ok": False, "error": "message_not_found"}
                found.update(text=body.get("text", ""), blocks=body.get("blocks"))
                found["edits"] += 1
            return {"ok": True, "channel": channel, "ts": found["ts"], "text": found["text"]}
        if method == "chat.scheduleMessage":
            return self._schedule(request, channel)
        if method == "chat.deleteScheduledMessage":
            with self._lock:
                found_scheduled = self.scheduled.get(str(body.get("scheduled_message_id")))
                if found_scheduled is None:
                    return {"ok": False, "error": "invalid_scheduled_message_id"}
                if channel != found_scheduled.channel:
                    return {"ok": False, "error": "channel_not_found"}
                del self.scheduled[found_scheduled.id]
            return {"ok": True}
        if method == "chat.scheduledMessages.list":
            with self._lock:
                listed = [
                    {
                        "id": m.id,
                        "channel_id": m.channel,
                        "post_at": m.post_at,
                        "date_created": int(time.time()),
                        "text": m.text,
                    }
                    for m in self.scheduled.values()
                    if not body.get("channel") or m.channel == body["channel"]
                ]
            return {
                "ok": True,
                "scheduled_messages": listed,
                "response_metadata": {"next_cursor": ""},
            }
        if method == "files.getUploadURLExternal":
            try:
                length = int(body["length"])
            except (KeyError, ValueError):
                return {"ok": False, "error": "invalid_arguments"}
            file_id = self._next_id("F")
            with self._lock:
                self.uploads[file_id] = Upload(file_id, str(body.get("filename", "")), length)
            return {
                "ok": True,
                "upload_url": f"{self.url}{UPLOAD_PATH}{file_id}",
                "file_id": file_id,
            }
        if method == "files.completeUploadExternal":
            return self._complete(body)
        return {"ok": True}

    def _schedule(self, request: Request, channel: str) -> dict[str, Any]:
        body = request.body
        try:
            post_at = int(body["post_at"])
        except (KeyError, ValueError, TypeError):
            return {"ok": False, "error": "invalid_time"}
        now = time.time()
        if post_at <= now:
            return {"ok": False, "error": "time_in_past"}
        if post_at > now + MAX_SCHEDULE_AHEAD:
            return {"ok": False, "error": "time_too_far"}
        ident = channel_id(channel)
        with self._lock:
            recent = [t for t in self._schedule_times.get(ident, []) if t > now - SCHEDULE_WINDOW]
            if len(recent) >= SCHEDULE_LIMIT:
                return {"ok": False, "error": "restricted_too_many"}
            self._schedule_times[ident] = [*recent, now]
        scheduled = Scheduled(
            self._next_id("Q"),
            ident,
            post_at,
            str(body.get("text", "")),
            body.get("thread_ts"),
            dict(body),
        )
        with self._lock:
            self.scheduled[scheduled.id] = scheduled
        return {
            "ok": True,
            "channel": ident,
            "scheduled_message_id": scheduled.id,
            "post_at": post_at,
            "message": {"text": scheduled.text, "type": "delayed_message"},
        }

    def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            files = json.loads(body.get("files") or "[]")
        except ValueError:
            return {"ok": False, "error": "invalid_arguments"}
        target = body.get("channel_id")
        if target is not None and not is_channel_id(str(target)):
            return {"ok": False, "error": "invalid_channel"}
        shared = []
        with self._lock:
            for item in files:
                upload = self.uploads.get(str(item.get("id")))
                if upload is None or upload.data is None:
                    return {"ok": False, "error": "file_not_found"}
                if len(upload.data) != upload.length:
                    return {"ok": False, "error": "file_upload_size_mismatch"}
                upload.shared = {
                    "channel_id": target,
                    "thread_ts": body.get("thread_ts"),
                    "title": item.get("title"),
                }
                shared.append(
                    {"id": upload.id, "name": upload.filename, "title": item.get("title")}
                )
        return {"ok": True, "files": shared}
