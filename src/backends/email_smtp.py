"""The e-mail backend: one SMTP session per message, a text part and an HTML alternative.

Built on the standard library only (``smtplib`` and ``email.message.EmailMessage``).
An image attachment (the training-curves PNG) is shown inline: the HTML alternative
becomes multipart/related with the image as a part whose ``Content-ID`` an
``<img src="cid:…">`` before ``</body>`` refers to (``EmailMessage.add_related``);
the text part names it. Other attachments are attached as files.
The module is not called ``email.py`` so that no tool that puts ``src/backends`` on
``sys.path`` can shadow the standard library's ``email`` package.
"""

from __future__ import annotations

import html
import math
import re
import smtplib
import socket
import ssl as _ssl
from collections.abc import Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.policy import SMTPUTF8 as SMTPUTF8_POLICY
from email.utils import formatdate, getaddresses, make_msgid
from pathlib import Path
from typing import Any

import notifier
from notifier.backend import Attachment, check_options, option
from notifier.errors import ConfigurationError, DeliveryError
from notifier.secrets import get_logger, redact

logger = get_logger("notifier.email")

SUBJECT_LIMIT = 200  # characters; the policy folds long headers, but inboxes cut at ~80
#: Bytes of attachments per e-mail at most: base64 makes 7 MiB about 9.3 MiB, under
#: the 10 MB many mail servers accept; anything more is left out with a warning.
MAX_ATTACHED = 7 * 2**20
DEFAULT_TIMEOUT = 30.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def one_line(value: str, limit: int = SUBJECT_LIMIT) -> str:
    """``value`` as a single header-safe line: control characters and runs of
    whitespace (CR and LF included) collapse to one space, then it is trimmed."""
    line = " ".join(_CONTROL.sub(" ", value).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _flag(value: bool | str | None, env: str) -> bool | None:
    """An on/off option: a bool, or a string such as the environment holds."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(
        f"email backend: {env}={value!r} is not a yes/no value; use 1/0, true/false, yes/no or "
        "on/off."
    )


def _addresses(value: object, what: str) -> list[tuple[str, str]]:
    """Every address in ``value`` (``a@b.org``, ``Name <a@b.org>``, or several separated by
    commas) as (name, addr), with an internationalised domain in its ASCII (``xn--``) form;
    raise ``ConfigurationError`` naming the fix for anything else."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f"email backend: {what} {value!r} is not a string; write it as user@example.org or "
            "'Name <user@example.org>'."
        )
    if _CONTROL.search(value):
        raise ConfigurationError(
            f"email backend: {what} {value!r} is not a valid address (it holds a control or "
            "line-break character)."
        )
    # getaddresses keeps a quoted display name holding a comma ("Smith, Bob" <b@x.org>) in
    # one piece; parseaddr would silently keep only the first of several addresses.
    pairs = [pair for pair in getaddresses([value]) if any(pair)]
    if not pairs:
        pairs = [("", value)]  # reported below
    return [(name, _checked(addr, value, what)) for name, addr in pairs]


def _checked(addr: str, value: str, what: str) -> str:
    """``addr`` if it is one address, its domain IDNA-encoded; else raise with the fix."""
    local, at, domain = addr.rpartition("@")
    # Python's lenient parser (before 3.13 and its backports) glues words together
    # ("a@b.org c" becomes "a@b.orgc"): an address not written as such is refused.
    if not (at and local and domain) or any(c.isspace() for c in addr) or addr not in value:
        raise ConfigurationError(
            f"email backend: {what} {value!r} is not an e-mail address; write it as "
            "user@example.org or 'Name <user@example.org>' (separate several with commas)."
        )
    if domain.isascii():
        return addr
    try:
        return f"{local}@{_idna(domain)}"
    except UnicodeError as exc:
        raise ConfigurationError(
            f"email backend: {what} {value!r}: {domain!r} is not a valid internationalised "
            f"domain name ({exc}); check its spelling, or write it in its xn-- form."
        ) from None


def _idna(domain: str) -> str:
    """``domain`` in its ASCII form: IDNA 2008 (UTS #46) with the ``idna`` package when it is
    installed (it comes with requests and httpx), else the standard library's IDNA 2003."""
    try:
        import idna
    except ImportError:
        return domain.encode("idna").decode("ascii")
    return idna.encode(domain, uts46=True).decode("ascii")


def _sender(value: str) -> tuple[str, str]:
    found = _addresses(value, "sender")
    if len(found) != 1:
        raise ConfigurationError(
            f"email backend: the sender {value!r} holds {len(found)} addresses "
            f"({', '.join(addr for _, addr in found)}); SMTP_SENDER must be exactly one "
            "address, like bot@example.org or 'Name <bot@example.org>'."
        )
    return found[0]


def _recipients(value: str | Sequence[str] | None) -> list[tuple[str, str]]:
    """Every recipient: ``value`` is one string (SMTP_TO: comma-separated) or a list whose
    items may each hold several comma-separated addresses."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [pair for item in items for pair in _addresses(item, "recipient")]


def _header(pair: tuple[str, str]) -> Address:
    """An address for the From/To headers (a non-ASCII local part needs the SMTPUTF8 policy)."""
    name, addr = pair
    local, _, domain = addr.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


class EmailBackend(notifier.Backend):
    """Sends each notification as an e-mail through an SMTP server (STARTTLS by default)."""

    name = "email"
    env = {
        "host": "SMTP_HOST",
        "port": "SMTP_PORT",
        "sender": ("SMTP_SENDER", "SMTP_FROM"),
        "to": "SMTP_TO",
        "username": "SMTP_USERNAME",
        "password": "SMTP_PASSWORD",
        "starttls": "SMTP_STARTTLS",
        "ssl": "SMTP_SSL",
        "timeout": "SMTP_TIMEOUT",
        "cafile": "SMTP_CAFILE",
    }
    description = "e-mail through an SMTP server (STARTTLS or SMTPS, optional login)"
    parts = ("subject", "text", "html")
    max_length = 20_000
    interval = 2.0  # a modest pace: no mail server likes bursts from one sender
    burst = 5

    def __init__(
        self,
        host: str | None = None,
        port: int | str | None = None,
        *,
        sender: str | None = None,
        to: str | Sequence[str] | None = None,
        username: str | None = None,
        password: str | None = None,
        starttls: bool | str | None = None,
        ssl: bool | str | None = None,
        timeout: float | str | None = None,
        cafile: str | Path | None = None,
        ssl_context: _ssl.SSLContext | None = None,
        **options: Any,
    ) -> None:
        check_options(self, options)
        self.host = str(option(host, "SMTP_HOST", backend=self.name, what="SMTP server host"))
        if _CONTROL.search(self.host) or " " in self.host:
            raise ConfigurationError(f"email backend: SMTP_HOST {self.host!r} is not a host name.")

        sender = sender or _env("SMTP_SENDER") or _env("SMTP_FROM")
        if not sender:
            raise ConfigurationError(
                "email backend: no sender (From address) given. Pass sender='bot@example.org' "
                "or set the SMTP_SENDER (or SMTP_FROM) environment variable."
            )
        self.sender = _sender(str(sender))

        to = to if to else option(None, "SMTP_TO", backend=self.name, what="recipients")
        self.to = _recipients(to)
        if not self.to:
            raise ConfigurationError(
                "email backend: no recipients. Pass to=['you@example.org'] or set SMTP_TO to a "
                "comma-separated list."
            )
        # A non-ASCII local part (jörg@…) can only travel with SMTPUTF8 (RFC 6531).
        self.international = [a for _, a in [self.sender, *self.to] if not a.isascii()]

        self.username: str | None = username or _env("SMTP_USERNAME")
        self._password: str | None = password or _env("SMTP_PASSWORD")
        if bool(self.username) != bool(self._password):
            missing = "SMTP_PASSWORD" if self.username else "SMTP_USERNAME"
            raise ConfigurationError(
                f"email backend: a login needs both a username and a password; {missing} is "
                "missing (leave both unset for a server that needs no login)."
            )

        explicit_tls = _flag(
            starttls if starttls is not None else _env("SMTP_STARTTLS"), "SMTP_STARTTLS"
        )
        self.ssl = bool(_flag(ssl if ssl is not None else _env("SMTP_SSL"), "SMTP_SSL"))
        port = port if port not in (None, "") else _env("SMTP_PORT")
        if self.ssl and explicit_tls:
            raise ConfigurationError(
                "email backend: starttls and ssl are both on; choose one: ssl (SMTPS, usually "
                "port 465) or starttls (usually port 587). Unset SMTP_STARTTLS or SMTP_SSL."
            )
        if not self.ssl and explicit_tls is None and str(port) == "465":
            self.ssl = True  # port 465 is implicit TLS (SMTPS); STARTTLS would hang there
        self.starttls = not self.ssl if explicit_tls is None else explicit_tls
        self.port = _port(port, 465 if self.ssl else 587 if self.starttls else 25)

        raw_timeout = timeout if timeout not in (None, "") else _env("SMTP_TIMEOUT")
        try:
            self.timeout = DEFAULT_TIMEOUT if raw_timeout in (None, "") else float(raw_timeout)
        except (TypeError, ValueError):
            self.timeout = -1.0
        if not (self.timeout > 0 and math.isfinite(self.timeout)):
            raise ConfigurationError(
                f"email backend: timeout {raw_timeout!r} must be a positive number of seconds "
                "(SMTP_TIMEOUT)."
            )

        if self._password and not (self.ssl or self.starttls):
            raise ConfigurationError(
                "email backend: refusing to send the SMTP password unencrypted. Keep starttls on "
                "(the default) or set ssl=True / SMTP_SSL=1."
            )
        cafile = cafile or _env("SMTP_CAFILE")
        self.cafile = str(cafile) if cafile else None
        if (self.cafile or ssl_context is not None) and not (self.ssl or self.starttls):
            raise ConfigurationError(
                "email backend: cafile/ssl_context given but TLS is off; turn on starttls or ssl."
            )
        self._context = ssl_context or self._default_context()

    def _default_context(self) -> _ssl.SSLContext | None:
        if not (self.ssl or self.starttls):
            return None
        if self.cafile and not Path(self.cafile).is_file():
            raise ConfigurationError(
                f"email backend: cafile {self.cafile!r} (SMTP_CAFILE) is not a file; give the "
                "PEM certificate of the server or of the CA that signed it."
            )
        try:
            return _ssl.create_default_context(cafile=self.cafile)
        except (_ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"email backend: cannot load cafile {self.cafile!r}: {exc}; it must hold "
                "PEM certificates."
            ) from None

    # -- Backend API ----------------------------------------------------------------------
    def secrets(self) -> list[str]:
        return [self._password] if self._password else []

    def describe(self) -> str:
        count = len(self.to)
        return f"email {self.host}:{self.port} -> {count} recipient{'s' if count != 1 else ''}"

    def compose(self, message: notifier.Message) -> EmailMessage:
        """The e-mail for ``message``: headers only from validated or collapsed values."""
        subject = one_line(message.parts.get("subject") or message.title or message.event)
        text = message.parts.get("text") or message.text
        body = message.parts.get("html", "")
        if not body or body == text:
            # The callback's fallback after a template error puts the plain text in every
            # part: never send it as HTML unescaped.
            body = f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre>'
        mail = EmailMessage(policy=SMTPUTF8_POLICY if self.international else SMTP_POLICY)
        mail["Subject"] = subject
        mail["From"] = _header(self.sender)
        mail["To"] = [_header(pair) for pair in self.to]
        mail["Date"] = formatdate(localtime=True)
        # An explicit domain: make_msgid would otherwise call socket.getfqdn() (DNS).
        domain = self.sender[1].rpartition("@")[2] or "localhost"
        mail["Message-ID"] = make_msgid(domain=domain)
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
        mail["X-Notifier-Event"] = message.event
        files = self.attached(message)
        images = [(make_msgid(domain=domain), a, data) for a, data in files if _is_image(a)]
        mail.set_content(text + "\n" + "".join(_mention(a) for a, _ in files))
        mail.add_alternative(with_images(body, images) + "\n", subtype="html")
        if images:
            related = mail.get_body(preferencelist=("html",))  # becomes multipart/related
            assert isinstance(related, EmailMessage)
            for cid, attachment, data in images:
                maintype, subtype = _types(attachment.mime)
                related.add_related(
                    data,
                    maintype,
                    subtype,
                    cid=cid,
                    disposition="inline",
                    filename=one_line(attachment.filename),
                )
        for attachment, data in files:
            if not _is_image(attachment):
                maintype, subtype = _types(attachment.mime)
                mail.add_attachment(data, maintype, subtype, filename=one_line(attachment.filename))
        return mail

    def attached(self, message: notifier.Message) -> list[tuple[Attachment, bytes]]:
        """The message's attachments that could be produced, with their bytes, up to
        MAX_ATTACHED bytes in all; any other is left out with a warning."""
        kept: list[tuple[Attachment, bytes]] = []
        size = 0
        for attachment in message.attachments:
            data = attachment.read()  # None: its failure is logged once, by the core
            if data is None:
                continue
            if size + len(data) > MAX_ATTACHED:
                logger.warning(
                    "%s: %s (%.1f MiB) would take the e-mail past %d MiB of attachments; "
                    "sending the %s message without it",
                    self.describe(),
                    attachment.filename,
                    len(data) / 2**20,
                    MAX_ATTACHED // 2**20,
                    message.event,
                )
                continue
            kept.append((attachment, data))
            size += len(data)
        return kept

    def send(self, message: notifier.Message) -> None:
        mail = self.compose(message)
        recipients = [addr for _, addr in self.to]
        try:
            smtp = self._session()
            try:
                # The envelope is given explicitly: no header can add a recipient.
                refused = smtp.send_message(mail, from_addr=self.sender[1], to_addrs=recipients)
            finally:
                _quit(smtp)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a DeliveryError
            raise self._error(exc) from None
        if refused:
            logger.warning(
                "%s: the server refused %s; the others received the %s message",
                self.describe(),
                ", ".join(f"{addr} ({code})" for addr, (code, _) in refused.items()),
                message.event,
            )

    def check(self) -> None:
        """Connect, start TLS and log in now; raise ``ConfigurationError`` with the fix if not."""
        try:
            _quit(self._session())
        except Exception as exc:  # noqa: BLE001
            raise ConfigurationError(f"email backend: {self._error(exc)}") from None

    # -- internals ------------------------------------------------------------------------
    def _session(self) -> smtplib.SMTP:
        """A connected SMTP session: greeting, EHLO, STARTTLS and login done."""
        smtp: smtplib.SMTP
        if self.ssl:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self._context
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            smtp.ehlo()
            if self.starttls:
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(
                        f"{self.host}:{self.port} does not offer STARTTLS. Set ssl=True "
                        "(SMTP_SSL=1) if it is an SMTPS port (465), or starttls=False "
                        "(SMTP_STARTTLS=0) for a trusted relay that takes plain SMTP",
                        disable=True,
                    )
                smtp.starttls(context=self._context)
                smtp.ehlo()
            if self.international and not smtp.has_extn("smtputf8"):
                raise DeliveryError(
                    f"{self.host}:{self.port} does not offer SMTPUTF8, which the address "
                    f"{self.international[0]!r} needs (its part before the @ is not ASCII): use "
                    "an ASCII address there, or a server that supports SMTPUTF8",
                    disable=True,
                )
            if self.username and self._password:
                if not smtp.has_extn("auth"):
                    raise DeliveryError(
                        f"{self.host}:{self.port} offers no login (AUTH) on this connection: "
                        "check SMTP_PORT and TLS, or unset SMTP_USERNAME if it needs no login",
                        disable=True,
                    )
                smtp.login(self.username, self._password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _error(self, exc: BaseException) -> DeliveryError:
        """Map an smtplib/socket/ssl failure to a DeliveryError that says what to do."""
        where = f"{self.host}:{self.port}"
        if isinstance(exc, DeliveryError):
            return exc
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return DeliveryError(
                f"{where} refused the login for {self.username!r} ({_reply(exc)}): check "
                "SMTP_USERNAME and SMTP_PASSWORD (many providers need an app password)",
                disable=True,
                code=str(exc.smtp_code),
            )
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            replies = exc.recipients.items()
            detail = "; ".join(f"{addr}: {_reply_parts(c, m)}" for addr, (c, m) in replies)
            if all(400 <= code < 500 for _, (code, _) in replies):
                return DeliveryError(f"{where} deferred every recipient ({detail})", retryable=True)
            return DeliveryError(
                f"{where} refused every recipient ({detail}): check SMTP_TO", disable=True
            )
        if isinstance(exc, smtplib.SMTPSenderRefused):
            if 400 <= exc.smtp_code < 500:
                return DeliveryError(f"{where} deferred the sender ({_reply(exc)})", retryable=True)
            return DeliveryError(
                f"{where} refused the sender {exc.sender!r} ({_reply(exc)}): check SMTP_SENDER "
                "(many servers only accept the login's own address)",
                disable=True,
                code=str(exc.smtp_code),
            )
        if isinstance(exc, smtplib.SMTPResponseException):
            # 4xx (421 closing, 451 local error, 452 storage) are temporary; 5xx permanent.
            temporary = 400 <= exc.smtp_code < 500
            return DeliveryError(
                f"{where} answered {_reply(exc)}", retryable=temporary, code=str(exc.smtp_code)
            )
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):  # smtplib wraps a read timeout
                exc = exc.__context__
            else:
                return DeliveryError(f"{where} closed the connection: {exc}", retryable=True)
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return DeliveryError(f"{where}: {exc}", disable=True)
        if isinstance(exc, smtplib.SMTPException):
            return DeliveryError(f"{where}: {redact(str(exc))}")
        if isinstance(exc, _ssl.SSLCertVerificationError):
            return DeliveryError(
                f"{where}'s TLS certificate failed verification ({exc.verify_message}). For a "
                "self-signed or private CA, pass cafile= (SMTP_CAFILE) with its certificate; "
                "check that SMTP_HOST is the name the certificate was issued for",
                disable=True,
            )
        if isinstance(exc, _ssl.SSLError):
            return DeliveryError(
                f"TLS with {where} failed ({exc.reason or type(exc).__name__}): use ssl=True "
                "only for an SMTPS port (465) and starttls for a submission port (587)"
            )
        if isinstance(exc, TimeoutError):
            return DeliveryError(
                f"{where} did not answer within {self.timeout:g}s (SMTP_TIMEOUT)", retryable=True
            )
        if isinstance(exc, socket.gaierror):
            return DeliveryError(
                f"cannot resolve {self.host!r}: check SMTP_HOST ({exc.strerror})",
                retryable=exc.errno == socket.EAI_AGAIN,
            )
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            return DeliveryError(
                f"cannot connect to {where}: {type(exc).__name__}: {redact(reason)}",
                retryable=True,
            )
        return DeliveryError(f"{where}: {type(exc).__name__}: {redact(str(exc))}")


def _is_image(attachment: Attachment) -> bool:
    return attachment.mime.startswith("image/")


def _types(mime: str) -> tuple[str, str]:
    """``mime`` split into main type and subtype ("application/octet-stream" if unusable)."""
    maintype, _, subtype = mime.partition("/")
    if not (maintype and subtype) or _CONTROL.search(mime) or " " in mime:
        return "application", "octet-stream"
    return maintype, subtype


def _mention(attachment: Attachment) -> str:
    """The text part's line for an attachment (the image itself is in the HTML part)."""
    name = attachment.filename
    label = name if attachment.title == name else f"{one_line(attachment.title)} ({name})"
    where = "shown in the HTML version of this e-mail" if _is_image(attachment) else "attached"
    return f"\n📎 {label}: {where}\n"


def with_images(body: str, images: Sequence[tuple[str, Attachment, bytes]]) -> str:
    """``body`` with an ``<img src="cid:…">`` for each (Content-ID, attachment, bytes) in
    ``images``, placed before ``</body>`` (or at the end when there is none)."""
    if not images:
        return body
    tags = "".join(
        '<div style="max-width:640px;margin:12px auto 0;">'
        f'<img src="cid:{cid.strip("<>")}" alt="{html.escape(attachment.title)}" width="640" '
        'style="display:block;width:100%;max-width:640px;height:auto;border:1px solid #d0d7de;'
        'border-radius:8px;background:#ffffff;"></div>\n'
        for cid, attachment, _ in images
    )
    end = body.lower().rfind("</body>")
    return body + "\n" + tags if end < 0 else body[:end] + tags + body[end:]


def _env(name: str) -> str | None:
    value: str | None = option(None, name, backend="email", what="", required=False)
    return value


def _port(value: int | str | None, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        port = int(str(value))
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigurationError(
            f"email backend: port {value!r} (SMTP_PORT) is not a TCP port; usually 587 "
            "(STARTTLS), 465 (SMTPS) or 25."
        )
    return port


def _reply_parts(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {redact(one_line(text, 200))}".strip()


def _reply(exc: smtplib.SMTPResponseException) -> str:
    return _reply_parts(exc.smtp_code, exc.smtp_error)


def _quit(smtp: smtplib.SMTP) -> None:
    """End the session politely; the message is already accepted, so nothing here is an error."""
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        smtp.close()


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(EmailBackend)
