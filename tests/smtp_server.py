"""A real SMTP server's handler for aiosmtpd on loopback (what it received, scripted answers),
and a raw TCP server that plays connection-level SMTP faults."""

from __future__ import annotations

import email
import email.policy
import socket
import struct
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import AuthResult, LoginPassword

USER, PASSWORD = "trainer", "pa55-w0rd-SECRET-xyz"


def free_port() -> int:
    """A loopback port nothing listens on (aiosmtpd's Controller cannot bind port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None
    smtputf8: bool = False  # MAIL FROM carried the SMTPUTF8 parameter

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Inbox:
    """The aiosmtpd handler: keeps each accepted message; ``replies`` scripts DATA answers,
    then ``always`` (None: accept) answers every later DATA."""

    received: list[Received] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    always: str | None = None
    refuse: set[str] = field(default_factory=set)
    data_attempts: int = 0
    logins: set[Any] = field(default_factory=set)  # connections that tried AUTH
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.cond:
            self.data_attempts += 1
            if self.replies:
                return self.replies.pop(0)
            if self.always is not None:
                return self.always
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content),
                    server.transport.get_extra_info("ssl_object") is not None,
                    session.auth_data.decode() if session.authenticated else None,
                    bool(envelope.smtp_utf8),
                )
            )
            self.cond.notify_all()
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        self.logins.add(session.peer)  # smtplib tries PLAIN, then LOGIN, per connection
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.received) >= count, timeout), (
                f"{len(self.received)} of {count} messages arrived"
            )
            return list(self.received)


class FaultServer:
    """A loopback TCP server that plays one SMTP fault on every connection it accepts:
    ``reset`` (a TCP RST before any greeting), ``greet_then_reset`` (a 220 greeting, then a
    RST once the client speaks), ``busy`` (a 421 greeting, then close) or ``silent`` (say
    nothing, keep the connection open). ``connections`` counts them; ``wait_for`` waits."""

    GREETING = b"220 faults.example.org ESMTP\r\n"
    BUSY = b"421 4.3.2 too busy, try again later\r\n"

    def __init__(self, mode: str) -> None:
        assert mode in ("reset", "greet_then_reset", "busy", "silent"), mode
        self.mode = mode
        self.connections = 0
        self._cond = threading.Condition()
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._cond:
                self.connections += 1
                self._cond.notify_all()
            try:
                self._play(conn)
            except OSError:
                conn.close()

    def _play(self, conn: socket.socket) -> None:
        if self.mode == "silent":
            self._held.append(conn)
            return
        if self.mode == "busy":
            conn.sendall(self.BUSY)
            conn.close()
            return
        if self.mode == "greet_then_reset":
            conn.sendall(self.GREETING)
            conn.recv(1024)  # EHLO
        # SO_LINGER 0 makes close() send a TCP RST: a "connection reset by peer".
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def wait_for(self, count: int, timeout: float = 10.0) -> int:
        with self._cond:
            assert self._cond.wait_for(lambda: self.connections >= count, timeout), (
                f"{self.connections} of {count} connections arrived"
            )
            return self.connections

    def close(self) -> None:
        # shutdown wakes the accept() blocked in the serving thread (close alone does not).
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
