"""The webhook backend: each message POSTed as JSON to any URL, with optional headers.

The body is the optional template part ``json`` (``<event>.json.j2``, looked up like
every template: yours first, then ``templates/webhook/``; none ships), checked to be
JSON; without one, or when it does not render valid JSON (one warning per event), it
is the default document: ``event``, ``title``, ``text`` and every context value.

In a ``json`` template each ``{{ value }}`` is JSON-escaped (``json.dumps(value)[1:-1]``),
so it belongs inside a JSON string: ``"run": "{{ run_name }}"`` is valid JSON for any run
name. For a number, an object or ``null``, write ``{{ value|tojson }}``, which is not
escaped again. The escaping is done by the template engine for ``json`` parts (as HTML
is autoescaped for ``html`` parts) rather than by this backend's ``escape``: ``escape``
applies to every plain-text part, and the ``text`` part here is sent as a JSON value
(``json.dumps`` quotes it), so it needs none.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import notifier
from notifier.backend import check_options, option
from notifier.errors import ConfigurationError
from notifier.http import check_url, header_secrets, host_of, post_json, url_secrets
from notifier.secrets import get_logger

logger = get_logger("notifier.webhook")

#: What to do about the answers that switch the backend off.
FIXES: dict[int, str] = {
    401: "the server refused the credentials: check the Authorization header (headers or "
    "NOTIFIER_WEBHOOK_HEADERS) or the token in NOTIFIER_WEBHOOK_URL",
    403: "the server forbids this request: check NOTIFIER_WEBHOOK_URL and the headers",
    404: "nothing is at this URL: check NOTIFIER_WEBHOOK_URL (was the webhook deleted?)",
}

#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


def parse_headers(value: Any, *, source: str) -> dict[str, str]:
    """Headers from a mapping or a JSON object string; errors never quote a value."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"webhook backend: {source} is not valid JSON ({exc.msg}, column {exc.colno}); "
                'it should be an object such as {"Authorization": "Bearer …"}'
            ) from None
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"webhook backend: {source} must be a JSON object (a dict) of header names to "
            f"values, not {type(value).__name__}"
        )
    headers: dict[str, str] = {}
    for name, header in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ConfigurationError(f"webhook backend: {source} has an invalid header name")
        if isinstance(header, bool) or not isinstance(header, (str, int, float)):
            raise ConfigurationError(
                f"webhook backend: {source}: the value of header {name!r} must be a string"
            )
        text = str(header)
        if any(ch in text for ch in "\r\n\0"):
            raise ConfigurationError(
                f"webhook backend: {source}: the value of header {name!r} contains a line break"
            )
        headers[name] = text
    return headers


def default_body(message: notifier.Message) -> dict[str, Any]:
    """``event``, ``title`` and ``text``, then every (plain) context value."""
    body: dict[str, Any] = {"event": message.event, "title": message.title, "text": message.text}
    body.update({k: v for k, v in message.context.items() if k not in body})
    return body


class WebhookBackend(notifier.Backend):
    """POSTs each message as JSON to a URL of your choice."""

    name = "webhook"
    env = {"url": "NOTIFIER_WEBHOOK_URL", "headers": "NOTIFIER_WEBHOOK_HEADERS"}
    description = "any URL: a JSON POST (the default document, or your json template)"
    optional_parts = ("json",)
    max_length = 16_000
    # Unknown receivers: up to 5 at once, then one a second (Google Chat's per-space rate).
    interval = 1.0
    burst = 5

    def __init__(
        self,
        url: str | None = None,
        *,
        headers: Mapping[str, Any] | str | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> None:
        check_options(self, options)
        raw = option(url, "NOTIFIER_WEBHOOK_URL", backend=self.name, what="url")
        self._url = check_url(raw, backend=self.name, what="url (NOTIFIER_WEBHOOK_URL)")
        if headers is None:
            self._headers = parse_headers(
                option(
                    None, "NOTIFIER_WEBHOOK_HEADERS", backend=self.name, what="", required=False
                ),
                source="NOTIFIER_WEBHOOK_HEADERS",
            )
        else:
            self._headers = parse_headers(headers, source="headers")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(
                f"webhook backend: timeout must be > 0 seconds, got {timeout!r}"
            )
        self.timeout = float(timeout)
        self._bad_templates: set[str] = set()

    def secrets(self) -> list[str]:
        return [*url_secrets(self._url), *header_secrets(self._headers)]

    def describe(self) -> str:
        return f"webhook ({host_of(self._url)})"

    def body(self, message: notifier.Message) -> Any:
        """The rendered ``json`` part parsed, or the default document."""
        rendered = message.parts.get("json")
        if rendered is None:
            return default_body(message)
        try:
            return json.loads(rendered)
        except ValueError as exc:
            if message.event not in self._bad_templates:
                self._bad_templates.add(message.event)
                where = getattr(exc, "msg", str(exc))
                line, column = getattr(exc, "lineno", "?"), getattr(exc, "colno", "?")
                logger.warning(
                    "%s: the %s json template did not render valid JSON (%s at line %s, "
                    "column %s); sending the default body instead. Put values inside strings "
                    '("{{ run_name }}") or use {{ value|tojson }}.',
                    self.describe(),
                    message.event,
                    where,
                    line,
                    column,
                )
            return default_body(message)

    def send(self, message: notifier.Message) -> None:
        post_json(
            self._url,
            self.body(message),
            headers=self._headers,
            timeout=self.timeout,
            service="the server",
            fixes=FIXES,
        )


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(WebhookBackend)
