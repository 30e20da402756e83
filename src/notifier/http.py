"""One JSON POST for webhook-style backends, with failures classified as DeliveryError.

A message with files goes as multipart/form-data instead (``post_multipart``).

Why the standard library (urllib) and not requests or httpx: a backend sends one
small POST per message, at most a few a second, from one worker thread; there is
no session, pool or streaming to gain, and urllib adds no dependency to every
install (slack_sdk made the same choice). Retries are not done here: the
outbox retries what this module marks retryable, with backoff and ``retry_after``.

Classification of a failed POST:

* 429: retryable, ``retry_after`` from the ``Retry-After`` header or the JSON body's
  ``retry_after`` (Discord's; see ``retry_after``);
* 5xx, 408, connection errors, resets and timeouts: retryable;
* 401, 403, 404: ``disable=True`` with the fix (a deleted webhook or a wrong URL: no
  later message can get through either);
* a redirect: not retryable and not followed (urllib would turn the POST into a GET
  and lose the body); any other 4xx: not retryable.

The URL is a secret (a webhook URL is its own credential): no message written here
names more of it than its host.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import http.client
import importlib.metadata
import json
import math
import os
import platform
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from .errors import ConfigurationError, DeliveryError
from .secrets import redact

#: Bytes of a response body read at most (error pages can be large; we need a few lines).
MAX_BODY = 64 * 1024
#: Characters of an error body quoted in a DeliveryError.
EXCERPT = 160
#: The Content-Type of a JSON body.
JSON_TYPE = "application/json; charset=utf-8"

#: What each disabling status means when the backend gives no fix of its own.
DEFAULT_FIXES: dict[int, str] = {
    401: "the server refused the credentials: check the URL's token or the Authorization header",
    403: "the server forbids this request: check the URL and the credentials",
    404: "nothing is at this URL: the webhook may have been deleted; check the URL",
}


def _version() -> str:
    try:
        return importlib.metadata.version("notifier")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _project_url() -> str | None:
    try:
        urls = importlib.metadata.metadata("notifier").get_all("Project-URL") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in urls:  # "Homepage, https://…"
        url = str(entry).split(",", 1)[-1].strip()
        if url.startswith("https://"):
            return url
    return None


def default_user_agent() -> str:
    """``notifier/<version> (+<project URL>) Python/<x.y>``: Discord (behind Cloudflare)
    refuses urllib's default ``Python-urllib/x.y`` with a 403 (error 1010)."""
    url = _project_url()
    home = f" (+{url})" if url else ""
    return f"notifier/{_version()}{home} Python/{platform.python_version()}"


USER_AGENT = default_user_agent()


class Response(NamedTuple):
    """A successful answer: unpacks as ``status, headers, body``."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON, or None if it is not JSON."""
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None


class HTTPDeliveryError(DeliveryError):
    """A DeliveryError for an HTTP answer, with its ``status`` (0 when none arrived)."""

    def __init__(self, message: str, *, status: int = 0, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status = status


def host_of(url: str) -> str:
    """The host (and port, if any) of ``url``: the only part of a secret URL ever shown."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "?"
    return f"{host}:{port}" if port else host


def token_like(piece: str) -> bool:
    """Whether a piece of a URL or header may be a token. Masking is process-wide and by
    substring, so a plain lower-case word (a path such as "webhooks", a user such as
    "notifier") is left alone: masking it would garble every log line that mentions it."""
    return len(piece) >= 6 and not (piece.isalpha() and piece.islower())


def url_secrets(url: str) -> list[str]:
    """``url`` and each piece of it that may be a secret: the password; the path with its
    query; the user, a host that is no host name (Apprise puts tokens there), path
    segments and query values when they look like tokens."""
    found = {url}
    _, sep, rest = url.partition("://")
    if not sep:
        return [url]
    found.add(rest)
    parts = urllib.parse.urlsplit("x://" + rest)
    found.add(urllib.parse.urlunsplit(("", "", parts.path, parts.query, "")))
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    found |= {password, urllib.parse.unquote(password)}  # whatever it looks like
    host = hostport.rsplit(":", 1)[0] if hostport.rsplit(":", 1)[-1].isdigit() else hostport
    pieces = [user, *parts.path.split("/"), *(v for _, v in urllib.parse.parse_qsl(parts.query))]
    if host != "localhost" and "." not in host:
        pieces += [hostport, host]
    for piece in pieces:
        found |= {p for p in (piece, urllib.parse.unquote(piece)) if token_like(p)}
    return sorted(s for s in found if s)


#: Headers that only describe the content; their values are not masked (masking
#: "application/json" everywhere would garble logs). Every other value is a secret,
#: whatever it looks like (an API key may well be a plain word).
PLAIN_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The values of ``headers`` to scrub from logs: each whole value and, for a scheme
    and credentials (``Bearer abc``, ``Basic …``), the credentials alone too."""
    found: set[str] = set()
    for name, value in headers.items():
        if name.lower() in PLAIN_HEADERS or name.lower() == "user-agent":
            continue
        found.add(value)
        # The credentials after a scheme word ("Bearer", "Basic"), which stays readable.
        found |= {word for word in value.split() if token_like(word) and not word.isalpha()}
    return sorted(found)


def check_url(url: Any, *, backend: str, what: str = "url") -> str:
    """``url`` as a string if it is an absolute http(s) URL; else ConfigurationError (the
    message never quotes the URL)."""
    text = str(url).strip()
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{backend} backend: {what} must be an absolute http(s) URL "
            "(https://host/path…); the value given is not"
        )
    return text


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("NaN", "Infinity") and anything else
    JSON cannot hold as its ``str``: strict JSON, which every receiver can parse."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return str(value)


def retry_after(headers: Mapping[str, str], body: Any) -> float | None:
    """The wait a 429 (or 503) asks for, in seconds.

    The JSON body's ``retry_after`` (Discord) is a precise float, but Discord's
    unversioned ``/api/webhooks/…`` URLs, the ones its UI hands out, answer with API
    v6, where it is in milliseconds. The ``Retry-After`` header is whole seconds
    (rounded up) on every version. So the body's value is used when there is no
    header or when it is not longer than the header's; otherwise the header's.
    """
    header: float | None = None
    raw = headers.get("Retry-After")
    if raw:
        raw = raw.strip()
        try:
            header = max(float(raw), 0.0)
        except ValueError:
            try:  # the other form: an HTTP date
                when = email.utils.parsedate_to_datetime(raw)
            except (ValueError, TypeError):
                when = None
            if when is not None:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.timezone.utc)
                header = max(when.timestamp() - time.time(), 0.0)
    from_body: float | None = None
    if isinstance(body, Mapping):
        value = body.get("retry_after")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value) and value >= 0:
                from_body = float(value)
    if from_body is not None and (header is None or from_body <= header):
        return from_body
    return header


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect as the 3xx it is: following it would resend the POST as a GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _split_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` without ``user:password@``, and a Basic Authorization value for it."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), f"Basic {token}"


def _excerpt(body: bytes, content_type: str, url: str, hidden: list[str]) -> str:
    """A short, secret-free quote of an error body: Discord's ``message`` (and ``code``),
    else the first line of text; nothing for an HTML page."""
    if not body:
        return ""
    text = body[:MAX_BODY].decode("utf-8", "replace")
    parsed: Any = None
    if "json" in content_type or text.lstrip().startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    if isinstance(parsed, Mapping):
        message = parsed.get("message") or parsed.get("error") or ""
        code = parsed.get("code")
        text = f"{message} (code {code})" if message and code is not None else str(message)
        if not text:
            text = json.dumps(parsed)[:EXCERPT]
    elif "html" in content_type or text.lstrip()[:1] == "<":
        return "an HTML page"
    text = " ".join(text.split())
    for secret in sorted([*url_secrets(url), *hidden], key=len, reverse=True):
        if len(secret) >= 6:
            text = text.replace(secret, "***")
    text = redact(text)
    return text if len(text) <= EXCERPT else text[: EXCERPT - 1] + "…"


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(json_safe(payload), ensure_ascii=False, allow_nan=False).encode("utf-8")


def post_json(
    url: str,
    payload: Any,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    user_agent: str = USER_AGENT,
    service: str = "",
    fixes: Mapping[int, str] | None = None,
) -> Response:
    """POST ``payload`` as JSON to ``url``; return the 2xx answer or raise DeliveryError.

    ``timeout`` bounds the connection and each wait for data, in seconds.
    ``service`` names the receiver in error messages ("Discord"); without it, the host.
    ``fixes`` maps 401/403/404 to what the user should do (these disable the backend).
    Non-finite floats in ``payload`` are sent as strings (strict JSON).
    """
    return request(
        "POST",
        url,
        _json_bytes(payload),
        headers=headers,
        timeout=timeout,
        user_agent=user_agent,
        service=service,
        fixes=fixes,
    )


class FormFile(NamedTuple):
    """One file of a multipart/form-data body: its form field, file name, type and bytes."""

    field: str
    filename: str
    mime: str
    data: bytes


#: Characters kept in a multipart file name; others become "_" (Discord's
#: ``attachment://name`` references only work for names made of these).
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str) -> str:
    """``name`` with every character but ASCII letters, digits, ``.``, ``_`` and ``-`` as "_"."""
    return _UNSAFE_NAME.sub("_", name) or "file"


def multipart_form(
    fields: Mapping[str, tuple[str, bytes]], files: Sequence[FormFile]
) -> tuple[str, bytes]:
    """A multipart/form-data body (RFC 7578): its Content-Type (with the boundary) and bytes.

    ``fields`` maps a field name to (content type, bytes); each file's name is passed
    through ``safe_filename``. Written by hand rather than with ``email.generator``:
    that generator base64-encodes binary parts under a Content-Transfer-Encoding
    header, which RFC 7578 (section 4.7) deprecates for form data and HTTP receivers
    need not decode, and adds a MIME-Version header and header folding HTTP has no
    use for; the format itself is a dozen lines. Field names are ours (nothing to
    quote); the boundary is random and checked against every part.
    """
    parts: list[tuple[str, bytes]] = []
    for name, (mime, data) in fields.items():
        parts.append((f'form-data; name="{name}"\r\nContent-Type: {mime}', data))
    for file in files:
        disposition = f'form-data; name="{file.field}"; filename="{safe_filename(file.filename)}"'
        parts.append((f"{disposition}\r\nContent-Type: {file.mime}", file.data))
    boundary = os.urandom(16).hex()
    while any(boundary.encode() in data for _, data in parts):
        boundary = os.urandom(16).hex()
    body = bytearray()
    for head, data in parts:
        body += f"--{boundary}\r\nContent-Disposition: {head}\r\n\r\n".encode()
        body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(body)


def post_multipart(
    url: str,
    payload: Any,
    files: Sequence[FormFile],
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    user_agent: str = USER_AGENT,
    service: str = "",
    fixes: Mapping[int, str] | None = None,
) -> Response:
    """POST ``payload`` as the JSON field ``payload_json`` with ``files`` as
    multipart/form-data (Discord's way of sending files); errors as for ``post_json``."""
    content_type, data = multipart_form({"payload_json": (JSON_TYPE, _json_bytes(payload))}, files)
    return request(
        "POST",
        url,
        data,
        headers=headers,
        timeout=timeout,
        user_agent=user_agent,
        service=service,
        fixes=fixes,
        content_type=content_type,
    )


def get_json(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    user_agent: str = USER_AGENT,
    service: str = "",
    fixes: Mapping[int, str] | None = None,
) -> Response:
    """GET ``url`` (e.g. to check a Discord webhook exists); errors as for ``post_json``."""
    return request(
        "GET",
        url,
        None,
        headers=headers,
        timeout=timeout,
        user_agent=user_agent,
        service=service,
        fixes=fixes,
    )


def request(
    method: str,
    url: str,
    data: bytes | None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    user_agent: str = USER_AGENT,
    service: str = "",
    fixes: Mapping[int, str] | None = None,
    content_type: str = JSON_TYPE,
) -> Response:
    """One HTTP request with a body of ``content_type`` (JSON unless said) or none; the 2xx
    answer, or HTTPDeliveryError."""
    where = service or host_of(url)
    target, basic = _split_userinfo(url)
    sent: dict[str, str] = {"Accept": "application/json", "User-Agent": user_agent}
    if data is not None:
        sent["Content-Type"] = content_type
    if basic:
        sent["Authorization"] = basic
    for key, value in (headers or {}).items():
        # Replace ours whatever the case the caller wrote the name in.
        for ours in [k for k in sent if k.lower() == key.lower()]:
            del sent[ours]
        sent[key] = value
    try:
        prepared = urllib.request.Request(target, data=data, headers=sent, method=method)
        with _OPENER.open(prepared, timeout=timeout) as answer:
            body = answer.read(MAX_BODY)
            return Response(answer.status, dict(answer.headers.items()), body)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read(MAX_BODY)
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            exc.close()
        answer_headers = dict(exc.headers.items()) if exc.headers else {}
        hidden = header_secrets(headers or {})  # an echoed Authorization stays hidden
        raise _http_error(exc.code, answer_headers, body, url, hidden, where, fixes) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        raise _transport_error(exc, where, timeout) from None


def _http_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    url: str,
    hidden: list[str],
    where: str,
    fixes: Mapping[int, str] | None,
) -> HTTPDeliveryError:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    titled = {k.title(): v for k, v in headers.items()}
    excerpt = _excerpt(body, content_type, url, hidden)
    said = f": {excerpt}" if excerpt else ""
    parsed: Any = None
    if "json" in content_type:
        try:
            parsed = json.loads(body or b"null")
        except ValueError:
            parsed = None
    code = parsed.get("code") if isinstance(parsed, Mapping) else None
    code_text = str(code) if code is not None else str(status)
    if status == 429:
        wait = retry_after(titled, parsed)
        asked = f", retry after {wait:g}s" if wait is not None else ""
        return HTTPDeliveryError(
            f"{where} rate limited the request (HTTP 429{asked})",
            status=status,
            retryable=True,
            retry_after=wait,
            code=code_text,
        )
    if status >= 500 or status == 408:
        wait = retry_after(titled, parsed) if status == 503 else None
        return HTTPDeliveryError(
            f"{where} answered HTTP {status}{said}",
            status=status,
            retryable=True,
            retry_after=wait,
            code=code_text,
        )
    if status in (401, 403, 404):
        fix = (fixes or {}).get(status) or DEFAULT_FIXES[status]
        return HTTPDeliveryError(
            f"{fix} [HTTP {status}{said}]", status=status, disable=True, code=code_text
        )
    if 300 <= status < 400:
        return HTTPDeliveryError(
            f"{where} redirected the POST (HTTP {status}); redirects are not followed, as they "
            "would drop the message: use the final URL",
            status=status,
            code=code_text,
        )
    return HTTPDeliveryError(
        f"{where} refused the message (HTTP {status}){said}", status=status, code=code_text
    )


_ERRNO_TEXT = re.compile(r"\[Errno -?\d+\]\s*")


def _transport_error(exc: BaseException, where: str, timeout: float) -> HTTPDeliveryError:
    """A failure before any HTTP answer: retryable, except a TLS certificate failure."""
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ssl.SSLCertVerificationError):
        return HTTPDeliveryError(
            f"{where}: the TLS certificate could not be verified "
            f"({getattr(reason, 'verify_message', '') or 'verification failed'})",
        )
    if isinstance(reason, TimeoutError):
        return HTTPDeliveryError(f"{where} did not answer within {timeout:g}s", retryable=True)
    name = type(reason).__name__
    if isinstance(reason, ValueError) and not isinstance(reason, OSError):
        # An invalid header value and the like: a bad option, which no retry fixes. The
        # text of these errors may quote the URL, so only the type is named.
        return HTTPDeliveryError(f"{where}: the request could not be sent: {name}")
    # Only an OSError's text is quoted (errno text such as "Connection refused"): the text
    # of http.client's own exceptions (InvalidURL and the like) may quote the URL.
    detail = ""
    if isinstance(reason, OSError):
        detail = _ERRNO_TEXT.sub("", str(reason.strerror or reason or ""))
        detail = redact(detail)[:EXCERPT]
    return HTTPDeliveryError(
        f"{where} unreachable: {name}" + (f": {detail}" if detail and detail != name else ""),
        retryable=True,
    )
