"""The email backend against a real aiosmtpd server on loopback: delivery, TLS, AUTH, faults."""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from notifier_backends.email_smtp import EmailBackend, one_line

import notifier
from conftest import all_output
from notifier.backend import Message
from notifier.context import sample_context
from notifier.outbox import Outbox
from notifier.secrets import redact
from notifier.templates import EVENTS, Templates
from smtp_server import PASSWORD, USER, FaultServer, Inbox, free_port
from tiny import make_trainer

SENDER = "Trainer <trainer@example.org>"
TO = ["ann@example.org", "Bob Smith <bob@example.net>"]
INJECTION = "evil\r\nBcc: x@example.org"
_plain: dict[str, Any] = {"sender": SENDER, "to": TO, "starttls": False}


@dataclass
class Server:
    inbox: Inbox
    port: int


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certfile, keyfile)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        _certificate_with_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("needs the cryptography package or the openssl command")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key)]
            + ["-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True,
            capture_output=True,
        )
    return cert, key


def _certificate_with_cryptography(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def smtp_server(certificate: tuple[Path, Path]) -> Iterator[Callable[..., Server]]:
    """Starts aiosmtpd servers: ``start(tls=, auth=, smtps=, utf8=)``; all stopped after."""
    controllers: list[Controller] = []

    def start(
        *, tls: bool = False, auth: bool = False, smtps: bool = False, utf8: bool = False
    ) -> Server:
        inbox = Inbox()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        options: dict[str, Any] = {"server_hostname": "localhost", "enable_SMTPUTF8": utf8}
        if tls:
            options.update(tls_context=context, require_starttls=True)
        if smtps:
            options.update(ssl_context=context)
        if auth:
            options.update(authenticator=inbox.authenticate, auth_required=True)
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return Server(inbox, port)

    yield start
    for controller in controllers:
        controller.stop()


def backend_for(server: Server, **options: Any) -> EmailBackend:
    settings: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": server.port,
        "sender": SENDER,
        "to": TO,
        "starttls": False,
        "timeout": 5,
    }
    settings.update(options)
    return EmailBackend(**settings)


def message(event: str = "epoch_end", run_name: str = "run-a") -> Message:
    text = f"📈 {run_name}: epoch 1/2\nTrain: loss 0.5"
    parts = {"subject": f"📈 {run_name}: epoch 1/2", "text": text, "html": "<p>epoch 1</p>"}
    return Message(event=event, text=text, parts=parts)


def parts_of(mail: EmailMessage) -> tuple[str, str]:
    text = mail.get_body(("plain",))
    page = mail.get_body(("html",))
    assert text is not None and page is not None
    return text.get_content(), page.get_content()


# -- configuration ---------------------------------------------------------------------------
BASE = {"host": "smtp.example.org", "sender": SENDER, "to": TO}


@pytest.mark.parametrize(
    ("options", "fix"),
    [
        ({"host": None}, "SMTP_HOST"),
        ({"sender": None}, "SMTP_SENDER"),
        ({"sender": "not-an-address"}, "user@example.org"),
        ({"sender": "a@example.org\r\nBcc: x@example.org"}, "line-break"),
        ({"to": []}, "SMTP_TO"),
        ({"to": ["ann@example.org", "nobody"]}, "user@example.org"),
        ({"to": ["ann@example.org\nBcc: x@example.org"]}, "line-break"),
        ({"sender": "Evil <a@example.org>, c@example.org"}, "exactly one address"),
        ({"sender": "a@example.org, c@example.org"}, "holds 2 addresses"),
        ({"to": ["ann@example.org bob@example.net"]}, "separate several with commas"),
        ({"to": ["ann@example.org", 42]}, "not a string"),
        ({"to": "ann@-bad-ä.example"}, "not a valid internationalised domain name"),
        ({"sender": "jörg@exa mple.org"}, "user@example.org"),  # not glued into example.org
        ({"to": "ann@example.org bob"}, "separate several with commas"),
        ({"starttls": True, "ssl": True}, "choose one"),
        ({"username": USER}, "SMTP_PASSWORD"),
        ({"password": PASSWORD}, "SMTP_USERNAME"),
        ({"username": USER, "password": PASSWORD, "starttls": False}, "unencrypted"),
        ({"port": "smtp"}, "SMTP_PORT"),
        ({"port": 70000}, "SMTP_PORT"),
        ({"timeout": 0}, "SMTP_TIMEOUT"),
        ({"timeout": float("inf")}, "SMTP_TIMEOUT"),
        ({"starttls": "maybe"}, "SMTP_STARTTLS"),
        ({"cafile": "/nonexistent/ca.pem"}, "SMTP_CAFILE"),
        ({"cafile": "/nonexistent/ca.pem", "starttls": False}, "TLS is off"),
        ({"colour": "blue"}, "unknown option"),
    ],
)
def test_bad_configuration_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], fix: str
) -> None:
    for name in ("SMTP_HOST", "SMTP_SENDER", "SMTP_FROM", "SMTP_TO", "SMTP_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("SMTP_PASSWORD", raising=False)
    with pytest.raises(notifier.ConfigurationError, match="email backend") as caught:
        EmailBackend(**{**BASE, **options})
    assert fix in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_every_option_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]
) -> None:
    env = {
        "SMTP_HOST": "smtp.example.org",
        "SMTP_PORT": "2525",
        "SMTP_FROM": SENDER,
        "SMTP_TO": 'ann@example.org, "Smith, Bob" <bob@example.net>',
        "SMTP_USERNAME": USER,
        "SMTP_PASSWORD": PASSWORD,
        "SMTP_STARTTLS": "yes",
        "SMTP_SSL": "0",
        "SMTP_TIMEOUT": "7.5",
        "SMTP_CAFILE": str(certificate[0]),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SMTP_SENDER", raising=False)
    backend = notifier.get_backend("email")
    assert isinstance(backend, EmailBackend)
    assert (backend.host, backend.port, backend.timeout) == ("smtp.example.org", 2525, 7.5)
    assert backend.sender == ("Trainer", "trainer@example.org")
    assert [addr for _, addr in backend.to] == ["ann@example.org", "bob@example.net"]
    assert backend.to[1][0] == "Smith, Bob"
    assert (backend.starttls, backend.ssl, backend.cafile) == (True, False, env["SMTP_CAFILE"])
    assert backend.secrets() == [PASSWORD]
    assert backend.describe() == "email smtp.example.org:2525 -> 2 recipients"
    assert PASSWORD not in repr(backend)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, (587, True, False)),
        ({"ssl": True}, (465, False, True)),
        ({"port": 465}, (465, False, True)),
        ({"starttls": False}, (25, False, False)),
        ({"starttls": "off", "port": "2525"}, (2525, False, False)),
    ],
)
def test_port_and_tls_defaults(options: dict[str, Any], expected: tuple[int, bool, bool]) -> None:
    backend = EmailBackend(**{**BASE, **options})
    assert (backend.port, backend.starttls, backend.ssl) == expected


@pytest.mark.parametrize(
    ("to", "expected"),
    [
        (["x@example.org, z@example.net"], ["x@example.org", "z@example.net"]),  # one item, two
        ("x@example.org, z@example.net", ["x@example.org", "z@example.net"]),  # as SMTP_TO
        (
            ['"Smith, Bob" <bob@example.net>', "ann@example.org"],
            ["bob@example.net", "ann@example.org"],
        ),
        (["Jörg <jorg@exämple.org>"], ["jorg@xn--exmple-cua.org"]),
        (["ann@straße.de"], ["ann@xn--strae-oqa.de"]),  # IDNA 2008 keeps ß (2003 made strasse)
        (["jörg@exämple.org"], ["jörg@xn--exmple-cua.org"]),  # the local part needs SMTPUTF8
        (["ann@EXAMPLE.org"], ["ann@EXAMPLE.org"]),  # an ASCII domain is left as written
    ],
)
def test_every_recipient_is_kept_and_domains_are_idna_encoded(
    to: str | list[str], expected: list[str]
) -> None:
    backend = EmailBackend(**{**BASE, "to": to})
    assert [addr for _, addr in backend.to] == expected
    mail = backend.compose(message())
    assert [a.addr_spec for a in mail["To"].addresses] == expected


def test_sender_with_an_idn_domain_and_a_non_ascii_name() -> None:
    backend = EmailBackend(**{**BASE, "sender": "Jörg Müller <bot@exämple.org>"})
    assert backend.sender == ("Jörg Müller", "bot@xn--exmple-cua.org")
    mail = backend.compose(message())
    assert mail["Message-ID"].endswith("@xn--exmple-cua.org>")
    headers = mail.as_bytes().split(b"\r\n\r\n", 1)[0]
    assert headers.isascii() and b"=?utf-8?" in headers  # the name as an encoded word


def test_subject_collapses_to_one_line() -> None:
    assert one_line("a\r\nBcc: x@example.org\t b\x00c") == "a Bcc: x@example.org b c"
    assert one_line("x" * 500).endswith("…") and len(one_line("x" * 500)) == 200


# "progress" only goes to backends that ask for it (live cards); e-mail never does.
@pytest.mark.parametrize("event", [e for e in EVENTS if e != "progress"])
def test_every_event_has_a_subject_and_an_escaped_html_part(event: str) -> None:
    templates = Templates(backend="email", parts=EmailBackend.parts, events=(event,))
    context = {**sample_context(event), "run_name": "<b>run</b>\nBcc: x@example.org"}
    parts = templates.render(event, context)
    mail = EmailBackend(**BASE).compose(Message(event, parts["text"], parts=parts))
    assert "\n" not in mail["Subject"] and "<b>run</b> Bcc: x@example.org" in mail["Subject"]
    page = parts["html"]
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>")
    assert "&lt;b&gt;run&lt;/b&gt;" in page and "<b>run" not in page
    assert "None" not in page and "None" not in mail["Subject"]


# -- delivery with a real Trainer ------------------------------------------------------------
def test_trainer_emails_every_event(
    smtp_server: Callable[..., Server], tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    server = smtp_server()
    callback = notifier.NotifierCallback([backend_for(server)])
    make_trainer(tmp_path / "run-a", [callback]).train()
    assert callback.flush(10)
    received = server.inbox.wait_for(4)
    assert len(received) == 4
    subjects = [r.message["Subject"] for r in received]
    assert subjects[0] == "🚀 Training started: run-a"
    assert subjects[1].startswith("📈 run-a: epoch 1/2 · loss ")
    assert subjects[2].startswith("📈 run-a: epoch 2/2")
    assert subjects[3] == "✅ Training finished: run-a"
    for item in received:
        mail = item.message
        assert item.mail_from == "trainer@example.org"
        assert item.rcpt_tos == ["ann@example.org", "bob@example.net"]
        assert mail["To"] == "ann@example.org, Bob Smith <bob@example.net>"
        assert mail["From"] == SENDER
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail["Message-ID"].endswith("@example.org>") and mail["Date"]
        assert mail.get_content_type() == "multipart/alternative"
        text, page = parts_of(mail)
        assert "run-a" in text and str(tmp_path / "run-a") in text
        assert page.lstrip().startswith("<!DOCTYPE html>") and "run-a" in page
        assert "None" not in text and "None" not in page
    _, last = parts_of(received[3].message)
    assert "train_loss" in last  # the metrics table
    assert received[1].message["X-Notifier-Event"] == "epoch_end"
    assert callback.stats["email"] == {"sent": 4, "dropped": 0, "failed": 0}
    notes = [r for r in notifier_logs.records if r.name.startswith("notifier")]
    assert not [r.getMessage() for r in notes if r.levelname == "WARNING"]


def test_run_name_cannot_inject_headers_or_recipients(
    smtp_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = smtp_server()
    callback = notifier.NotifierCallback([backend_for(server)], events=["train_begin"])
    make_trainer(tmp_path / "run", [callback], run_name=INJECTION).train()
    assert callback.flush(10)
    (item,) = server.inbox.wait_for(1)
    mail = item.message
    assert item.rcpt_tos == ["ann@example.org", "bob@example.net"]
    assert mail["Bcc"] is None and "x@example.org" not in mail["To"]
    assert mail["Subject"] == "🚀 Training started: evil Bcc: x@example.org"
    header_lines = item.data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert not [line for line in header_lines if line.lower().startswith(b"bcc")]
    assert sorted(set(mail.keys())) == sorted(
        {"Subject", "From", "To", "Date", "Message-ID", "Auto-Submitted", "X-Notifier-Event"}
        | {"Content-Type", "MIME-Version"}
    )


def test_html_part_escapes_the_run_name(smtp_server: Callable[..., Server], tmp_path: Path) -> None:
    server = smtp_server()
    callback = notifier.NotifierCallback([backend_for(server)], events=["train_end"])
    make_trainer(tmp_path / "run", [callback], run_name="<script>alert(1)</script>").train()
    assert callback.flush(10)
    (item,) = server.inbox.wait_for(1)
    text, page = parts_of(item.message)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page
    assert "<script>alert(1)</script>" in text  # plain text is shown literally


def test_fallback_text_is_escaped_in_the_html_part(smtp_server: Callable[..., Server]) -> None:
    """After a template error the callback sends the same plain text in every part."""
    server = smtp_server()
    text = "train begin: <b>run</b> (step 0)"
    backend_for(server).send(
        Message("train_begin", text, parts={"subject": text, "text": text, "html": text})
    )
    (item,) = server.inbox.wait_for(1)
    assert "&lt;b&gt;run&lt;/b&gt;" in parts_of(item.message)[1]


# -- internationalised addresses -------------------------------------------------------------
def test_idn_domains_travel_in_ascii_form_without_smtputf8(
    smtp_server: Callable[..., Server],
) -> None:
    server = smtp_server()  # no SMTPUTF8: an ASCII local part does not need it
    backend = backend_for(
        server, sender="Jörg Müller <bot@exämple.org>", to=["ann@exämple.org, bob@example.net"]
    )
    backend.send(message())
    (item,) = server.inbox.wait_for(1)
    assert item.mail_from == "bot@xn--exmple-cua.org" and not item.smtputf8
    assert item.rcpt_tos == ["ann@xn--exmple-cua.org", "bob@example.net"]
    assert item.message["From"] == "Jörg Müller <bot@xn--exmple-cua.org>"
    assert item.message["To"] == "ann@xn--exmple-cua.org, bob@example.net"


def test_a_non_ascii_local_part_travels_with_smtputf8(
    smtp_server: Callable[..., Server], tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    server = smtp_server(utf8=True)
    backend = backend_for(server, to=["Jörg <jörg@exämple.org>", "ann@example.org"])
    callback = notifier.NotifierCallback([backend], events=["train_begin", "train_end"])
    make_trainer(tmp_path / "run", [callback]).train()
    assert callback.flush(10)
    received = server.inbox.wait_for(2)
    for item in received:
        assert item.smtputf8 and item.mail_from == "trainer@example.org"
        assert item.rcpt_tos == ["jörg@xn--exmple-cua.org", "ann@example.org"]
        assert item.message["To"] == "Jörg <jörg@xn--exmple-cua.org>, ann@example.org"
    assert received[1].message["Subject"] == "✅ Training finished: run"
    assert callback.stats["email"] == {"sent": 2, "dropped": 0, "failed": 0}
    assert not [r for r in notifier_logs.records if r.levelno >= logging.WARNING]


def test_a_non_ascii_local_part_without_smtputf8_is_reported_once(
    smtp_server: Callable[..., Server], notifier_logs: pytest.LogCaptureFixture
) -> None:
    server = smtp_server()  # aiosmtpd's default: no SMTPUTF8
    backend = backend_for(server, to=["jörg@exämple.org"])
    with pytest.raises(notifier.ConfigurationError, match="does not offer SMTPUTF8"):
        backend.check()
    outbox = Outbox(backend, backoff=0.01)
    outbox.put(message())
    outbox.put(message())
    assert outbox.flush(10)
    assert outbox.disabled and (outbox.sent, outbox.failed) == (0, 1)
    assert server.inbox.data_attempts == 0
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "'jörg@xn--exmple-cua.org' needs" in warnings[0] and "use an ASCII" in warnings[0]
    assert "switched off" in warnings[0]


# -- TLS and login ---------------------------------------------------------------------------
def test_starttls_with_a_self_signed_certificate(
    smtp_server: Callable[..., Server], certificate: tuple[Path, Path]
) -> None:
    server = smtp_server(tls=True)
    backend_for(server, starttls=True, cafile=certificate[0]).send(message())
    (item,) = server.inbox.wait_for(1)
    assert item.tls and item.login is None


def test_smtps_with_a_custom_ssl_context(
    smtp_server: Callable[..., Server], certificate: tuple[Path, Path]
) -> None:
    server = smtp_server(smtps=True)
    context = ssl.create_default_context(cafile=str(certificate[0]))
    backend_for(server, ssl=True, ssl_context=context).send(message())
    (item,) = server.inbox.wait_for(1)
    assert item.tls


def test_login_over_starttls(
    smtp_server: Callable[..., Server],
    certificate: tuple[Path, Path],
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server(tls=True, auth=True)
    backend = backend_for(
        server, starttls=True, cafile=certificate[0], username=USER, password=PASSWORD
    )
    backend.check()
    backend.send(message())
    (item,) = server.inbox.wait_for(1)
    assert item.tls and item.login == USER
    assert len(server.inbox.logins) == 2
    assert PASSWORD not in all_output(notifier_logs)


def test_wrong_password_disables_after_one_warning(
    smtp_server: Callable[..., Server],
    certificate: tuple[Path, Path],
    notifier_logs: pytest.LogCaptureFixture,
) -> None:
    server = smtp_server(tls=True, auth=True)
    backend = backend_for(
        server, starttls=True, cafile=certificate[0], username=USER, password=PASSWORD + "-nope"
    )
    with pytest.raises(notifier.ConfigurationError, match="SMTP_PASSWORD"):
        backend.check()
    redact.add(*backend.secrets())  # as NotifierCallback does
    outbox = Outbox(backend, backoff=0.01)
    for _ in range(3):
        outbox.put(message())
    assert outbox.flush(10)
    assert outbox.disabled and outbox.failed == 1 and outbox.sent == 0
    assert len(server.inbox.logins) == 2  # check() and the first message, nothing after
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "refused the login for 'trainer'" in warnings[0] and "switched off" in warnings[0]
    assert PASSWORD not in all_output(notifier_logs)


@pytest.mark.parametrize(
    ("server_options", "options", "fix"),
    [
        ({"tls": True}, {"starttls": True}, "SMTP_CAFILE"),  # self-signed, no cafile
        ({}, {"starttls": True}, "does not offer STARTTLS"),
        ({}, {"to": ["ann@example.org", "nobody@example.org"]}, "nobody@example.org: 550"),
    ],
)
def test_unfixable_errors_disable_the_backend(
    smtp_server: Callable[..., Server],
    server_options: dict[str, Any],
    options: dict[str, Any],
    fix: str,
) -> None:
    server = smtp_server(**server_options)
    server.inbox.refuse = {"nobody@example.org", "ann@example.org"}
    with pytest.raises(notifier.DeliveryError) as caught:
        backend_for(server, **options).send(message())
    assert caught.value.disable and not caught.value.retryable
    assert fix in str(caught.value)
    assert server.inbox.received == []


# -- faults ----------------------------------------------------------------------------------
#: Attempts per message: the outbox's default max_attempts.
ATTEMPTS = 5


@dataclass(frozen=True)
class MailFault:
    """One row of the fault table. ``server``: ``none`` (nothing listens), a FaultServer mode
    (``silent``, ``reset``, ``greet_then_reset``, ``busy``) or ``smtp`` (aiosmtpd with TLS
    and login, answering DATA with ``replies`` then ``always``). ``words`` must be in the
    DeliveryError and the run's one warning; ``delivered`` of the run's two messages arrive."""

    name: str
    server: str
    words: str
    retryable: bool = True
    replies: tuple[str, ...] = ()
    always: str | None = None
    delivered: int = 0

    def attempts(self) -> int:
        """Connections (or DATA commands, for ``smtp``) the run's two messages make."""
        if self.delivered:
            return 2 + len(self.replies)
        return 2 * ATTEMPTS if self.retryable else 2


MAIL_FAULTS = (
    MailFault("refused", "none", "ConnectionRefusedError"),
    MailFault("silent", "silent", "did not answer within 0.2s"),
    MailFault("reset at connect", "reset", "Connection reset by peer"),
    MailFault("reset after greeting", "greet_then_reset", "Connection reset by peer"),
    MailFault("421 at greeting", "busy", "answered 421 4.3.2 too busy"),
    MailFault(
        "554 at DATA",
        "smtp",
        "554 5.7.1 rejected as spam",
        False,
        always="554 5.7.1 rejected as spam",
    ),
    MailFault(
        "552 at DATA",
        "smtp",
        "552 5.3.4 message too big",
        False,
        always="552 5.3.4 message too big",
    ),
    MailFault(
        "451 once",
        "smtp",
        "451 4.3.0 try again later",
        replies=("451 4.3.0 try again later",),
        delivered=2,
    ),
)


@pytest.fixture
def fault_backend(
    smtp_server: Callable[..., Server], certificate: tuple[Path, Path]
) -> Iterator[Callable[[MailFault], tuple[EmailBackend, Callable[[int], int]]]]:
    """``make(fault)``: a backend (STARTTLS, login) on a server playing ``fault``, and a
    function waiting until the server has seen n connections (DATA commands for ``smtp``)."""
    started: list[FaultServer] = []

    def make(fault: MailFault) -> tuple[EmailBackend, Callable[[int], int]]:
        login = {"starttls": True, "cafile": certificate[0], "username": USER, "password": PASSWORD}
        if fault.server == "smtp":
            server = smtp_server(tls=True, auth=True)
            server.inbox.replies, server.inbox.always = list(fault.replies), fault.always

            def data_commands(count: int) -> int:
                with server.inbox.cond:
                    assert server.inbox.cond.wait_for(
                        lambda: server.inbox.data_attempts >= count, 10
                    )
                    return server.inbox.data_attempts

            return backend_for(server, **login), data_commands
        if fault.server == "none":
            return EmailBackend(
                host="127.0.0.1", port=free_port(), timeout=5, **{**_plain, **login}
            ), lambda n: n
        raw = FaultServer(fault.server)
        started.append(raw)
        backend = EmailBackend(host="127.0.0.1", port=raw.port, timeout=0.2, **{**_plain, **login})
        return backend, raw.wait_for

    yield make
    for raw in started:
        raw.close()


@pytest.mark.parametrize("fault", MAIL_FAULTS, ids=[f.name for f in MAIL_FAULTS])
def test_fault_is_classified(
    fault: MailFault, fault_backend: Callable[..., tuple[EmailBackend, Any]]
) -> None:
    backend, _ = fault_backend(fault)
    started = time.monotonic()
    with pytest.raises(notifier.DeliveryError) as caught:
        backend.send(message())
    assert caught.value.retryable is fault.retryable and not caught.value.disable
    assert fault.words in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert time.monotonic() - started < 3


@pytest.fixture(scope="module")
def baseline_loss(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The tiny model's training loss without any callback."""
    return float(make_trainer(tmp_path_factory.mktemp("plain") / "run").train().training_loss)


@pytest.mark.parametrize("fault", MAIL_FAULTS, ids=[f.name for f in MAIL_FAULTS])
def test_fault_never_changes_training(
    fault: MailFault,
    fault_backend: Callable[..., tuple[EmailBackend, Callable[[int], int]]],
    baseline_loss: float,
    fast_retries: None,
    tmp_path: Path,
    notifier_logs: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend, seen = fault_backend(fault)
    callback = notifier.NotifierCallback([backend], events=["train_begin", "train_end"])
    trainer = make_trainer(tmp_path / "run", [callback])
    result = trainer.train()
    assert result.training_loss == baseline_loss and trainer.state.global_step == 8
    assert callback.flush(30)
    if fault.server != "none":
        assert seen(fault.attempts()) == fault.attempts()
    failed = 2 - fault.delivered
    assert callback.stats["email"] == {"sent": fault.delivered, "dropped": 0, "failed": failed}
    warnings = [
        r.getMessage()
        for r in notifier_logs.records
        if r.levelno >= logging.WARNING and r.name.startswith("notifier")  # not aiosmtpd's
    ]
    if failed:
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith(f"{backend.describe()}: could not deliver the train_begin")
        assert fault.words in warnings[0]
        assert ("after 5 attempts" in warnings[0]) is fault.retryable
    else:
        assert warnings == []
    assert PASSWORD not in all_output(notifier_logs, capsys)


@pytest.mark.parametrize("reply", ["421 4.3.2 shutting down", "451 4.3.0 try again later"])
def test_temporary_errors_are_retried_then_delivered(
    smtp_server: Callable[..., Server], reply: str, notifier_logs: pytest.LogCaptureFixture
) -> None:
    server = smtp_server()
    server.inbox.replies = [reply]
    outbox = Outbox(backend_for(server), backoff=0.01)
    outbox.put(message())
    assert outbox.flush(10)
    (item,) = server.inbox.wait_for(1)
    assert item.rcpt_tos == ["ann@example.org", "bob@example.net"]
    assert server.inbox.data_attempts == 2
    assert (outbox.sent, outbox.failed) == (1, 0)
    retries = [r.getMessage() for r in notifier_logs.records if "retry 1" in r.getMessage()]
    assert retries and reply.split()[0] in retries[0]


def test_partly_refused_recipients_still_deliver(
    smtp_server: Callable[..., Server], notifier_logs: pytest.LogCaptureFixture
) -> None:
    server = smtp_server()
    server.inbox.refuse = {"nobody@example.org"}
    backend_for(server, to=["ann@example.org", "nobody@example.org"]).send(message())
    (item,) = server.inbox.wait_for(1)
    assert item.rcpt_tos == ["ann@example.org"]
    assert "refused nobody@example.org (550)" in notifier_logs.text
