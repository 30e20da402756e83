"""A real SMTP server's handler for aiosmtpd on loopback: what it received, scripted answers."""

from __future__ import annotations

import email
import email.policy
import socket
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

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Inbox:
    """The aiosmtpd handler: keeps each accepted message; ``replies`` scripts DATA answers."""

    received: list[Received] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
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
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    bytes(envelope.original_content),
                    server.transport.get_extra_info("ssl_object") is not None,
                    session.auth_data.decode() if session.authenticated else None,
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
