"""The Backend base class every sender subclasses, and the Message it is given."""

from __future__ import annotations

import difflib
import inspect
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import ConfigurationError
from .secrets import get_logger, redact

_logger = get_logger("notifier")


class Attachment:
    """A file sent with a message (the training-curves PNG), produced lazily and once.

    ``produce`` runs on the first worker thread that reads ``data``, never on the
    training thread; every backend sharing the attachment gets the same bytes. A
    ``produce`` that raises is not run again: ``data`` raises that error each time.
    """

    def __init__(self, filename: str, mime: str, produce: Callable[[], bytes], *, title: str = ""):
        self.filename = filename
        self.mime = mime
        self.title = title or filename
        self._produce: Callable[[], bytes] | None = produce
        self._data: bytes | None = None
        self._error: Exception | None = None
        self._lock = threading.Lock()

    @property
    def data(self) -> bytes:
        with self._lock:
            if self._produce is not None:
                produce, self._produce = self._produce, None
                try:
                    self._data = produce()
                except Exception as exc:
                    self._error = exc
                    _logger.warning(
                        "notifier: could not produce %s (%s: %s); messages go without it",
                        self.filename,
                        type(exc).__name__,
                        redact(str(exc)),
                    )
            if self._data is None:
                raise self._error or RuntimeError(f"{self.filename} could not be produced")
            return self._data

    def read(self) -> bytes | None:
        """``data``, or None when producing it failed (logged once, as a warning)."""
        try:
            return self.data
        except Exception:  # noqa: BLE001 - a missing image must never lose the message
            return None

    def __repr__(self) -> str:
        return f"<Attachment {self.filename} {self.mime}>"


@dataclass(frozen=True)
class Message:
    """One notification, rendered for one backend.

    ``text`` is the rendered ``<event>.j2`` template; ``parts`` holds every part
    the backend asked for (``text`` included, e.g. ``subject`` and ``html`` for
    e-mail); ``context`` is the plain-value context the templates saw, for
    backends that build structured layouts (Slack blocks, Discord embeds).
    """

    event: str
    text: str
    parts: Mapping[str, str] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    critical: bool = False
    attachments: tuple[Attachment, ...] = ()
    #: Only the newest state matters (a live card, a heartbeat): a newer one replaces it
    #: while it waits, and it is not paced with the messages people read.
    transient: bool = False
    #: Goes ahead of queued messages that are not critical, unpaced (a crash report must
    #: not wait behind a backlog of epoch messages while the process is ending).
    urgent: bool = False

    @property
    def title(self) -> str:
        """The first line of the text: the headline of the message."""
        return self.text.strip().split("\n", 1)[0]

    @property
    def body(self) -> str:
        """The text after the first line."""
        parts = self.text.strip().split("\n", 1)
        return parts[1].strip() if len(parts) > 1 else ""


class Backend:
    """A place notifications go: Slack, a console, an inbox.

    A subclass sets ``name``, validates its options in ``__init__`` (raising
    ``ConfigurationError`` with the fix) and implements ``send``. ``send`` runs on
    a worker thread, never the training thread, and reports failure by raising
    ``DeliveryError``; anything else it raises is logged as a bug in the backend.
    """

    #: The name users select the backend by, e.g. ``"slack"``.
    name: ClassVar[str] = ""
    #: One line for ``notifier backends``.
    description: ClassVar[str] = ""
    #: Template parts rendered for each message: "text" is ``<event>.j2``, any
    #: other part ``p`` is ``<event>.<p>.j2`` (e.g. "html" -> ``<event>.html.j2``).
    parts: ClassVar[tuple[str, ...]] = ("text",)
    #: Parts rendered only when a template exists for them (none ships by default);
    #: e.g. the webhook backend's ``json`` body, which otherwise is the context itself.
    optional_parts: ClassVar[tuple[str, ...]] = ()
    #: The longest text the service accepts; tracebacks are trimmed to fit.
    max_length: ClassVar[int] = 4000
    #: Pacing: at most ``burst`` messages at once, then one every ``interval`` seconds.
    interval: ClassVar[float] = 0.0
    burst: ClassVar[int] = 1
    #: Seconds between ``progress`` messages (live cards, heartbeats), or None for none.
    #: Only backends that set it get them, whatever ``events`` says; while training runs,
    #: at most one per interval, the newest replacing any still queued.
    progress_interval: float | None = None
    #: The environment variable each option falls back to, e.g. ``{"channel": "SLACK_CHANNEL"}``
    #: (a tuple when several are read, first found wins). A configuration file's option is
    #: used only while its variable is unset (the environment beats the file), and a secret
    #: found in the file is refused with the variable to set instead.
    env: ClassVar[Mapping[str, str | tuple[str, ...]]] = {}

    def send(self, message: Message) -> None:
        """Deliver ``message``, or raise ``DeliveryError``."""
        raise NotImplementedError

    def check(self) -> None:
        """Verify credentials and reachability now; raise ``ConfigurationError`` if not."""

    def close(self) -> None:
        """Release resources (connections) once no more messages will come."""

    def escape(self, value: str) -> str:
        """Escape one value substituted into a template (not the template's own text)."""
        return value

    def escape_code(self, value: str) -> str:
        """Escape text shown inside a code block (a command's stderr); ``escape`` by default.

        A service whose code blocks show text literally (Discord) returns it unchanged:
        its markdown escapes would show there as stray backslashes.
        """
        return self.escape(value)

    def secrets(self) -> list[str]:
        """The secret strings this backend holds, to be scrubbed from every log line."""
        return []

    def describe(self) -> str:
        """A short, secret-free description of where messages go, for logs."""
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def option(value: Any, env: str, *, backend: str, what: str, required: bool = True) -> Any:
    """Return ``value``, else the environment variable ``env``; else raise with the fix."""
    if value is not None and value != "":
        return value
    found = os.environ.get(env)
    if found:
        return found
    if required:
        raise ConfigurationError(
            f"{backend} backend: no {what} given. Pass it as an option or set the {env} "
            "environment variable."
        )
    return None


def option_names(backend: Backend | type[Backend]) -> tuple[str, ...]:
    """The keyword options ``backend``'s class takes, read from its ``__init__`` signature.

    Named parameters only (not ``self``, ``*args`` or ``**options``). A subclass whose
    ``__init__`` passes ``**options`` on also takes its parents' options.
    """
    cls = backend if isinstance(backend, type) else type(backend)
    names: dict[str, None] = {}
    for klass in cls.__mro__:
        if klass in (Backend, object) or "__init__" not in vars(klass):
            continue
        try:
            parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        except (TypeError, ValueError):  # a C or wrapped __init__ without a signature
            break
        named = [p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if named and named[0].kind is named[0].POSITIONAL_OR_KEYWORD:
            named = named[1:]  # self
        names.update((p.name, None) for p in named)
        if all(p.kind is not p.VAR_KEYWORD for p in parameters):
            break
    return tuple(names)


class UnknownOptionError(ConfigurationError):
    """``check_options`` found options the backend does not take.

    ``unknown`` and ``accepted`` are option names, never values, so that a caller
    knowing where each option came from (a configuration file, ``--option``) can
    name that place, and one knowing the backend's class can list all it takes.
    """

    def __init__(self, backend: str, unknown: Iterable[str], accepted: Iterable[str]) -> None:
        self.backend = backend
        self.unknown = tuple(unknown)
        self.accepted = tuple(dict.fromkeys(accepted))
        described = []
        for key in self.unknown:
            close = difflib.get_close_matches(key, self.accepted, n=1)
            described.append(f"{key} (did you mean {close[0]}?)" if close else key)
        accepts = f"; accepted: {', '.join(self.accepted)}." if self.accepted else "."
        super().__init__(f"{backend} backend: unknown option(s) {', '.join(described)}{accepts}")


def check_options(
    backend: str | Backend | type[Backend],
    options: Mapping[str, Any],
    accepted: Iterable[str] | None = None,
) -> None:
    """Raise ``UnknownOptionError`` (a ``ConfigurationError``) naming any option the backend
    does not know, with the closest it does, and the options it does.

    Call it first in ``__init__`` with whatever ``**options`` caught:
    ``check_options(self, options)``. Given the backend (an instance or class), the
    options it accepts are read from its ``__init__`` signature (``option_names``);
    ``accepted`` adds any it takes through ``**options``. The older form, the
    backend's name and the names it accepts, ``check_options(self.name, options,
    {"path"})``, still works; its error lists ``accepted`` only (the configuration
    file and the command line add the signature's names to it).
    """
    if isinstance(backend, str):
        name, known = backend, sorted(accepted or ())
    else:
        cls = backend if isinstance(backend, type) else type(backend)
        name, known = cls.name or cls.__name__, [*option_names(cls), *(accepted or ())]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UnknownOptionError(name, unknown, known)
