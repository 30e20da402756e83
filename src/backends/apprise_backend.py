"""The Apprise backend: one notification to every Apprise URL (ntfy, Telegram, Teams, …).

Apprise is an optional extra (``pip install 'notifier[apprise]'``) imported only when
the backend is built. Apprise URLs carry their secrets anywhere in the URL (host,
path, user, query), so every piece of them is registered for scrubbing, Apprise's
own log records made during our calls are scrubbed and shown only when notifier
logs at DEBUG, and errors name a URL by its scheme alone.

Apprise reports only whether a notification went out, never the service's answer:
every failure is retried the same way (a 429's Retry-After cannot be honoured, a
404 cannot be told from a 500). ``timeout`` sets Apprise's per-URL ``cto``/``rto``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import notifier
from notifier.backend import check_options, option
from notifier.errors import ConfigurationError, DeliveryError
from notifier.http import url_secrets
from notifier.secrets import redact

INSTALL_HINT = "pip install 'notifier[apprise]'"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_ANY_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
# Whitespace always separates URLs; a comma only when a new scheme follows it, so
# a comma inside a URL's query (mailto://…?to=a@x.org,b@x.org) is kept.
_SEPARATOR = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_HAS_PARAM = {key: re.compile(rf"[?&]{key}=", re.IGNORECASE) for key in ("cto", "rto")}

#: Set while this backend is inside Apprise (Apprise copies context into its threads).
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("notifier_apprise", default=False)


@contextlib.contextmanager
def _calling_apprise() -> Iterator[None]:
    token = _IN_CALL.set(True)
    try:
        yield
    finally:
        _IN_CALL.reset(token)


def scrub(text: str) -> str:
    """``text`` with registered secrets and any ``scheme://…`` URL masked."""
    return _ANY_URL.sub("<url>", redact(text))


class _ScrubFilter(logging.Filter):
    """On Apprise's and urllib3's loggers: records made during our calls are scrubbed;
    Apprise's own are also demoted to DEBUG and shown only when notifier debugs (the
    outbox reports the failure itself, once). Other records only lose our secrets."""

    def __init__(self, demote: bool) -> None:
        super().__init__()
        self.demote = demote

    def filter(self, record: logging.LogRecord) -> bool:
        ours = _IN_CALL.get()
        if ours and self.demote and not logging.getLogger("notifier").isEnabledFor(logging.DEBUG):
            return False
        message = record.getMessage()
        cleaned = scrub(message) if ours else redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if ours and record.exc_info:
            record.exc_info, record.exc_text = None, None
        if ours and self.demote:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _install_log_filters() -> None:
    for name, demote in (("apprise", True), ("urllib3.connectionpool", False)):
        target = logging.getLogger(name)
        if not any(isinstance(f, _ScrubFilter) for f in target.filters):
            target.addFilter(_ScrubFilter(demote))


def split_urls(value: str) -> list[str]:
    """Apprise URLs from one string separated by whitespace or commas."""
    return [url for url in _SEPARATOR.split(value.strip()) if url]


def with_timeout(url: str, timeout: float | None) -> str:
    """``url`` with Apprise's ``cto`` (connect) and ``rto`` (read) timeouts set to ``timeout``
    seconds, unless it is None or the URL sets them itself."""
    if timeout is None:
        return url
    added = [f"{key}={timeout!r}" for key in ("cto", "rto") if not _HAS_PARAM[key].search(url)]
    if not added:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(added)


def _timeout(value: float | str | None) -> float | None:
    """The ``timeout`` option (or APPRISE_TIMEOUT): None keeps Apprise's own defaults."""
    raw = value if value not in (None, "") else os.environ.get("APPRISE_TIMEOUT", "")
    if raw in (None, ""):
        return None
    try:
        seconds = -1.0 if isinstance(raw, bool) else float(raw)
    except (TypeError, ValueError):
        seconds = -1.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigurationError(
            f"apprise backend: timeout {raw!r} must be a positive number of seconds "
            "(APPRISE_TIMEOUT)."
        )
    return seconds


def scheme(url: str) -> str:
    """The scheme of ``url`` (the only part of it safe to show), or ``?``."""
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else "?"


class AppriseBackend(notifier.Backend):
    """Sends each notification to one or more Apprise URLs (title and body)."""

    name = "apprise"
    description = "any service Apprise supports, by URL (ntfy, Telegram, Teams, …); extra"
    interval = 1.0
    burst = 5
    env = {"urls": "APPRISE_URLS", "timeout": "APPRISE_TIMEOUT"}

    def __init__(
        self,
        urls: str | Sequence[str] | None = None,
        *,
        timeout: float | str | None = None,
        **options: Any,
    ) -> None:
        check_options(self, options)
        self.timeout = _timeout(timeout)
        if isinstance(urls, str):
            urls = split_urls(urls)
        if not urls:
            found = option(None, "APPRISE_URLS", backend=self.name, what="Apprise URLs")
            urls = split_urls(str(found))
        self.urls = [str(url).strip() for url in urls if str(url).strip()]
        if not self.urls:
            raise ConfigurationError(
                "apprise backend: no URLs. Pass urls=['ntfy://topic'] or set APPRISE_URLS "
                "(separated by spaces or commas)."
            )
        # Registered now, so that Apprise's records while it parses them are scrubbed too.
        self._secrets = sorted(set().union(*(url_secrets(url) for url in self.urls)))
        redact.add(*self._secrets)
        try:
            import apprise
        except ImportError:
            raise ConfigurationError(
                f"apprise backend: Apprise is not installed: {INSTALL_HINT}"
            ) from None
        _install_log_filters()
        self._apprise = apprise
        self._targets: list[Any] = []
        for number, url in enumerate(self.urls, 1):
            target = apprise.Apprise()
            with _calling_apprise():
                # A list: Apprise must not split the URL itself.
                accepted = target.add([with_timeout(url, self.timeout)])
            if not accepted:
                raise ConfigurationError(
                    f"apprise backend: URL #{number} (scheme {scheme(url)}://) is not understood "
                    "by Apprise: an unknown scheme, a missing part, or a service whose "
                    "dependency is not installed. See https://github.com/caronc/apprise/wiki"
                )
            self._targets.append(target)
        # The message being delivered and the URLs that already have it, so that a
        # retry after a partial failure does not notify the others twice.
        self._partial: tuple[notifier.Message, set[int]] | None = None

    def secrets(self) -> list[str]:
        return list(self._secrets)

    def describe(self) -> str:
        return f"apprise ({', '.join(scheme(url) for url in self.urls)})"

    def _notify_type(self, event: str) -> Any:
        types = self._apprise.NotifyType
        if event == "train_error":
            return types.FAILURE
        if event == "train_end":
            return types.SUCCESS
        return types.INFO

    def send(self, message: notifier.Message) -> None:
        if self._partial is not None and self._partial[0] is message:
            done = self._partial[1]
        else:
            done = set()
            self._partial = (message, done)
        failed: list[str] = []
        for index, target in enumerate(self._targets):
            if index in done:
                continue
            try:
                with _calling_apprise():
                    ok = bool(
                        target.notify(
                            title=message.title,
                            body=message.body or message.text,
                            body_format=self._apprise.NotifyFormat.TEXT,
                            notify_type=self._notify_type(message.event),
                        )
                    )
            except Exception as exc:  # noqa: BLE001 - a failure inside Apprise or a plugin
                self._partial = None
                raise DeliveryError(
                    f"Apprise raised {type(exc).__name__} for {scheme(self.urls[index])}://: "
                    f"{scrub(str(exc))}"
                ) from None
            if ok:
                done.add(index)
            else:
                failed.append(scheme(self.urls[index]))
        if not failed:
            self._partial = None
            return
        # Apprise reports only success or failure, not the status: a failure may be
        # temporary, and neither a 429's Retry-After nor a 404 can be seen here.
        raise DeliveryError(
            f"Apprise could not deliver to {len(failed)} of {len(self.urls)} URL(s) "
            f"({', '.join(failed)}); log notifier at DEBUG to see Apprise's report",
            retryable=True,
        )


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(AppriseBackend)
