"""The Discord backend: a channel webhook, messages as embeds, plain text when Discord refuses one.

Each message is one embed: the headline as its title, the rest as its description,
metrics as inline fields, a colour per event. Every Discord limit is enforced here
(and trimmed with a visible "…"), counting UTF-16 code units, which is never fewer
than Python's characters. Should Discord still answer 400 to an embed, the message
is sent again as plain ``content``: a layout problem never loses a notification.

Attachments (the training-curves PNG) go in the same request as multipart/form-data:
the JSON as ``payload_json``, each file as ``files[n]``, and the embed shows the first
image through ``attachment://<name>``. Files past MAX_UPLOAD bytes are left out with a
warning, as is one that could not be produced; a 400 falls back to the text with the
files, a 413 (too large) or a second refusal to the text alone.

Escaping: values substituted into templates are Discord-markdown escaped (a backslash
before ``\\ * ~ ` | [ ] <``, before ``_`` unless inside a word, and before ``#``, ``>``
and ``- `` at the start of a line), so a run name, path, metric name or error message
is shown as written: ``__init__`` does not become underlined "init", an error quoting a
lone backtick does not open a code span that swallows the rest, ``[x](url)`` is not a
masked link and ``<@123>`` or ``<t:…>`` are not rendered as a mention or a timestamp.
URLs are left as they are so that they stay clickable; ``learning_rate`` stays as it is
(Discord's ``_`` emphasis needs a word boundary). Mentions (``@everyone``, ``@here``,
roles, users) are neutralised by ``allowed_mentions: {"parse": []}`` on every request,
which makes them inert however they got into the text (the template's own words
included), so escape need not touch ``@``. Code blocks show backslashes literally, so
the traceback of a ``train_error`` is not part of the template
(``templates/discord/train_error.j2`` leaves it out) but appended here, unescaped, in a
code block.
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import notifier
from notifier.backend import Attachment, check_options, option
from notifier.errors import ConfigurationError, DeliveryError
from notifier.filters import MISSING, NOISE, NOISE_SUFFIXES, number
from notifier.http import (
    FormFile,
    HTTPDeliveryError,
    check_url,
    get_json,
    host_of,
    post_json,
    post_multipart,
    safe_filename,
    url_secrets,
)
from notifier.secrets import get_logger, redact

logger = get_logger("notifier.discord")

CONTENT_LIMIT = 2000
MAX_EMBEDS = 10
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
MAX_FIELDS = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
TOTAL_LIMIT = 6000  # title, description, field names and values, footer, author: all embeds
USERNAME_LIMIT = 80
ATTACHMENT_DESCRIPTION_LIMIT = 1024
MAX_FILES = 10
#: Bytes of files per message at most. Discord's limit for a server without boosts has
#: moved (8 MB, 25 MB, now 10 MiB) and webhooks were seen to answer 413 above 8 MB while
#: the app said 25 (discord/discord-api-docs#6058): 8 MB goes through everywhere.
MAX_UPLOAD = 8_000_000
#: Room of the 6,000 total kept for metric fields when the description is long.
FIELDS_RESERVE = 1024
#: Room kept for the traceback when the text before it is long.
MIN_TRACEBACK = 600

#: Embed colours: start blue, progress neutral grey, end green, error red, alert orange
#: (a ``recovered`` alert green); an event not listed is grey.
COLOURS: dict[str, int] = {
    "train_begin": 0x3498DB,
    "epoch_end": 0x99AAB5,
    "evaluate": 0x99AAB5,
    "save": 0x99AAB5,
    "train_end": 0x2ECC71,
    "train_error": 0xE74C3C,
    "alert": 0xE67E22,
}


def colour(message: notifier.Message) -> int:
    alert = message.context.get("alert")
    if message.event == "alert" and isinstance(alert, Mapping) and alert.get("kind") == "recovered":
        return COLOURS["train_end"]
    return COLOURS.get(message.event, COLOURS["epoch_end"])


#: What to do about the answers that switch the backend off.
FIXES: dict[int, str] = {
    401: "Discord rejected the webhook's token: copy the webhook URL again (Server Settings "
    "→ Integrations → Webhooks → Copy Webhook URL) into DISCORD_WEBHOOK_URL",
    403: "Discord refused the request: check DISCORD_WEBHOOK_URL (a proxy or firewall that "
    "Discord's Cloudflare blocks gives this too)",
    404: "the Discord webhook does not exist (deleted, or a wrong URL): create one in Server "
    "Settings → Integrations → Webhooks and put its URL in DISCORD_WEBHOOK_URL",
}

_URL = re.compile(r"https?://[^\s<>]+")
_INLINE = re.compile(r"([\\*~`|\[\]<])")
# An underscore only emphasises at a word boundary or doubled (__underline__): one
# inside a word (learning_rate, my_run) is left alone, so names read as they are.
_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_LINE_START = re.compile(r"(?m)^([ \t]*)(#|>|-(?=[ \t#]))")


def _escape_text(text: str) -> str:
    text = _UNDERSCORE.sub(r"\\_", _INLINE.sub(r"\\\1", text))
    return _LINE_START.sub(r"\1\\\2", text)


def escape(value: str) -> str:
    """Discord markdown escaping for a substituted value; URLs are kept as they are."""
    pieces: list[str] = []
    last = 0
    for match in _URL.finditer(value):
        pieces.append(_escape_text(value[last : match.start()]))
        pieces.append(match.group())
        last = match.end()
    pieces.append(_escape_text(value[last:]))
    return "".join(pieces)


def units(text: str) -> int:
    """The length Discord's limits count: UTF-16 code units (an emoji outside the BMP is 2)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def trim(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` units, ending in "…" when cut."""
    if units(text) <= limit:
        return text
    if limit <= 0:
        return ""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit - 1:
            return text[:index] + "…"
    return text  # unreachable: units(text) > limit


def trim_head(text: str, limit: int) -> str:
    """``text`` cut to its last ``limit`` units, starting with "…" when cut."""
    if units(text) <= limit:
        return text
    if limit <= 0:
        return ""
    used = 0
    for index in range(len(text) - 1, -1, -1):
        used += 2 if ord(text[index]) > 0xFFFF else 1
        if used > limit - 1:
            return "…" + text[index + 1 :]
    return text  # unreachable: units(text) > limit


def _traceback(message: notifier.Message) -> str:
    """The traceback to show in a code block, or "" (already in the text, or none)."""
    error = message.context.get("error")
    if message.event != "train_error" or not isinstance(error, Mapping):
        return ""
    traceback = error.get("traceback")
    if not traceback or "```" in message.text:
        return ""  # a user template that shows it itself
    return str(traceback).replace("```", "`\u200b``")


def with_traceback(text: str, traceback: str, limit: int) -> str:
    """``text``, then ``traceback`` in a code block, together within ``limit`` units; the
    text gives up room first down to MIN_TRACEBACK, the traceback keeps its tail."""
    if not traceback:
        return trim(text, limit)
    opening, closing = "\n```py\n", "\n```"
    overhead = units(opening) + units(closing)
    text = trim(text, max(limit - overhead - min(units(traceback), MIN_TRACEBACK), 0))
    room = limit - units(text) - overhead
    if room <= 0:
        return trim(text, limit)
    return f"{text}{opening}{trim_head(traceback, room)}{closing}"


def _value(value: Any) -> str:
    """A field's value; None and blank text (Discord answers 400 to a blank field) show MISSING."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING if value is None or not str(value).strip() else escape(str(value))
    return escape(number(value))


def fields(message: notifier.Message) -> list[dict[str, Any]]:
    """Inline fields for every metric and eval metric in the message's context (uncapped)."""
    values: dict[str, Any] = {}
    if message.event != "train_begin":
        for group in ("metrics", "eval_metrics"):
            source = message.context.get(group) or {}
            if isinstance(source, Mapping):
                values.update(
                    {
                        str(k): v
                        for k, v in source.items()
                        if k not in NOISE and not str(k).endswith(NOISE_SUFFIXES)
                    }
                )
    return [
        {
            "name": trim(escape(name) if name.strip() else MISSING, FIELD_NAME_LIMIT),
            "value": trim(_value(value), FIELD_VALUE_LIMIT),
            "inline": True,
        }
        for name, value in values.items()
    ]


def _cost(field: Mapping[str, Any]) -> int:
    return units(field["name"]) + units(field["value"])


def fit_fields(candidates: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """The leading fields that fit ``budget`` units and MAX_FIELDS, then an "… N more"
    field when any were left out."""
    kept: list[dict[str, Any]] = []
    for field in candidates:
        if len(kept) == MAX_FIELDS or _cost(field) > budget:
            break
        kept.append(field)
        budget -= _cost(field)
    if len(kept) == len(candidates):
        return kept

    def marker() -> dict[str, Any]:
        return {"name": "…", "value": f"{len(candidates) - len(kept)} more", "inline": True}

    while kept and (len(kept) >= MAX_FIELDS or _cost(marker()) > budget):
        budget += _cost(kept.pop())
    if _cost(marker()) <= budget:
        kept.append(marker())
    return kept


def embed(message: notifier.Message, *, footer: str = "") -> dict[str, Any]:
    """The message as one embed within every Discord limit (6,000 in total included)."""
    title = trim(message.title or message.event.replace("_", " "), TITLE_LIMIT)
    footer = trim(footer, FOOTER_LIMIT)
    candidates = fields(message)
    budget = TOTAL_LIMIT - units(title) - units(footer)
    # The description comes first, but leaves the fields up to FIELDS_RESERVE of the total.
    reserve = min(sum(_cost(f) for f in candidates), FIELDS_RESERVE)
    description = with_traceback(
        message.body, _traceback(message), min(DESCRIPTION_LIMIT, max(budget - reserve, 0))
    )
    kept = fit_fields(candidates, budget - units(description))
    result: dict[str, Any] = {
        "title": title,
        "color": colour(message),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if description:
        result["description"] = description
    if kept:
        result["fields"] = kept
    if footer:
        result["footer"] = {"text": footer}
    return result


def content(message: notifier.Message) -> str:
    """The message as plain text within the 2,000-character ``content`` limit."""
    return with_traceback(message.text, _traceback(message), CONTENT_LIMIT) or MISSING


def webhook_url_with_wait(url: str) -> str:
    """``url`` with ``wait=true`` in its query (kept: ``thread_id`` and anything else)."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != "wait"] + [("wait", "true")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class DiscordBackend(notifier.Backend):
    """Posts to a Discord channel through a webhook: embeds, or plain text as a fallback."""

    name = "discord"
    env = {"webhook_url": "DISCORD_WEBHOOK_URL"}
    description = "Discord: a channel webhook (embeds with metric fields)"
    max_length = DESCRIPTION_LIMIT
    # Discord allows 5 requests per 2 s per webhook and 30 messages a minute per channel:
    # 4 at once, then one every 2.5 s (24 a minute) stays under both.
    interval = 2.5
    burst = 4

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        timeout: float = 10.0,
        embeds: bool = True,
        username: str | None = None,
        avatar_url: str | None = None,
        **options: Any,
    ) -> None:
        check_options(self, options)
        url = option(webhook_url, "DISCORD_WEBHOOK_URL", backend=self.name, what="webhook_url")
        self._url = check_url(url, backend=self.name, what="webhook_url (DISCORD_WEBHOOK_URL)")
        path = urllib.parse.urlsplit(self._url).path
        if "/webhooks/" not in path:
            raise ConfigurationError(
                "discord backend: webhook_url (DISCORD_WEBHOOK_URL) is not a webhook URL: it "
                "should look like https://discord.com/api/webhooks/<id>/<token> (Server "
                "Settings → Integrations → Webhooks → Copy Webhook URL), not a channel link"
            )
        self._token = path.rstrip("/").rsplit("/", 1)[-1]
        self._post_url = webhook_url_with_wait(self._url)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(
                f"discord backend: timeout must be > 0 seconds, got {timeout!r}"
            )
        self.timeout = float(timeout)
        self.use_embeds = bool(embeds)
        if username is not None:
            if not 1 <= len(username) <= USERNAME_LIMIT:
                raise ConfigurationError(
                    f"discord backend: username must be 1–{USERNAME_LIMIT} characters"
                )
            if "discord" in username.lower() or "clyde" in username.lower():
                raise ConfigurationError(
                    "discord backend: Discord refuses webhook usernames containing 'discord' "
                    "or 'clyde': choose another username"
                )
        self.username = username
        self.avatar_url = (
            check_url(avatar_url, backend=self.name, what="avatar_url") if avatar_url else None
        )
        self._warned: set[str] = set()

    # -- Backend -----------------------------------------------------------------------
    def escape(self, value: str) -> str:
        return escape(value)

    def escape_code(self, value: str) -> str:
        # Code blocks show text as written; only a fence inside could close the block.
        return value.replace("```", "`\u200b``")

    def secrets(self) -> list[str]:
        return [*url_secrets(self._url), self._token]

    def describe(self) -> str:
        return f"discord ({host_of(self._url)})"

    def uploads(self, message: notifier.Message) -> list[Attachment]:
        """The attachments to send with ``message``: those that could be produced, up to
        MAX_FILES and MAX_UPLOAD bytes; any other is left out with a warning."""
        kept: list[Attachment] = []
        size = 0
        for attachment in message.attachments:
            data = attachment.read()  # None: its failure is logged once, by the core
            if data is None:
                continue
            if len(kept) == MAX_FILES or size + len(data) > MAX_UPLOAD:
                logger.warning(
                    "%s: %s (%.1f MB) does not fit Discord's upload limit (%d files, %g MB a "
                    "message); sending the %s message without it",
                    self.describe(),
                    attachment.filename,
                    len(data) / 1e6,
                    MAX_FILES,
                    MAX_UPLOAD / 1e6,
                    message.event,
                )
                continue
            kept.append(attachment)
            size += len(data)
        return kept

    def payload(
        self, message: notifier.Message, uploads: Sequence[Attachment] = ()
    ) -> dict[str, Any]:
        """The JSON sent for ``message``: one embed (showing the first image of ``uploads``),
        or ``content`` with ``embeds=False``."""
        if not self.use_embeds:
            return self._plain(message, uploads)
        host = message.context.get("host")
        item = embed(message, footer=f"notifier · {host}" if host else "notifier")
        image = next((a for a in uploads if a.mime.startswith("image/")), None)
        if image is not None:
            item["image"] = {"url": f"attachment://{safe_filename(image.filename)}"}
        return _with_attachments({**self._identity(), "embeds": [item]}, uploads)

    def send(self, message: notifier.Message) -> None:
        uploads = self.uploads(message)
        payload = self.payload(message, uploads)
        try:
            self._post(payload, uploads)
            return
        except HTTPDeliveryError as error:
            if error.status not in (400, 413) or ("embeds" not in payload and not uploads):
                raise
            refused = error
        # Never lose a message to a layout or a file Discord refuses: the text with the
        # files (unless the answer was 413, too large), then the text alone.
        fallbacks: list[Sequence[Attachment]] = []
        if "embeds" in payload and not (uploads and refused.status == 413):
            fallbacks.append(uploads)
        if uploads:
            fallbacks.append([])
        for kept in fallbacks:
            self._log_fallback(refused, message, kept, dropped=kept != uploads)
            try:
                self._post(self._plain(message, kept), kept)
                return
            except HTTPDeliveryError as error:
                if error.status not in (400, 413) or not kept:
                    raise
                refused = error

    def check(self) -> None:
        """GET the webhook (Discord answers with its name and channel, posting nothing)."""
        try:
            get_json(self._url, timeout=self.timeout, service="Discord", fixes=FIXES)
        except DeliveryError as error:
            raise ConfigurationError(f"discord backend: {redact(str(error))}") from None

    # -- internals ---------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        body: dict[str, Any] = {"allowed_mentions": {"parse": []}}
        if self.username:
            body["username"] = self.username
        if self.avatar_url:
            body["avatar_url"] = self.avatar_url
        return body

    def _plain(self, message: notifier.Message, uploads: Sequence[Attachment]) -> dict[str, Any]:
        return _with_attachments({**self._identity(), "content": content(message)}, uploads)

    def _log_fallback(
        self,
        error: HTTPDeliveryError,
        message: notifier.Message,
        kept: Sequence[Attachment],
        *,
        dropped: bool,
    ) -> None:
        """Warn the first time Discord refuses an embed (or files), then log at debug."""
        kind = "files" if dropped else "embed"
        log = logger.debug if kind in self._warned else logger.warning
        self._warned.add(kind)
        log(
            "%s refused %s (%s); sending the %s message as plain text%s",
            self.describe(),
            "the message with its files" if dropped else "the embed",
            redact(str(error)),
            message.event,
            " without its files" if dropped else " with its files" if kept else "",
        )

    def _post(self, payload: dict[str, Any], uploads: Sequence[Attachment]) -> None:
        if not uploads:
            post_json(self._post_url, payload, timeout=self.timeout, service="Discord", fixes=FIXES)
            return
        files = [
            FormFile(f"files[{index}]", attachment.filename, attachment.mime, attachment.data)
            for index, attachment in enumerate(uploads)
        ]
        post_multipart(
            self._post_url, payload, files, timeout=self.timeout, service="Discord", fixes=FIXES
        )


def _with_attachments(body: dict[str, Any], uploads: Sequence[Attachment]) -> dict[str, Any]:
    """``body`` with Discord's ``attachments`` list, naming each file ``files[n]`` sends
    (with its title as the description, the alt text, when it has one of its own)."""
    listed: list[dict[str, Any]] = []
    for index, attachment in enumerate(uploads):
        item: dict[str, Any] = {"id": index, "filename": safe_filename(attachment.filename)}
        if attachment.title != attachment.filename:
            item["description"] = trim(attachment.title, ATTACHMENT_DESCRIPTION_LIMIT)
        listed.append(item)
    if listed:
        body["attachments"] = listed
    return body


@notifier.hookimpl
def register_backends(register: Any) -> None:
    register(DiscordBackend)
