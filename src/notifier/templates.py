"""Loading, checking and rendering message templates with a sandboxed Jinja environment.

Template names are looked up in this order, for backend ``B``, event ``E`` and
file name ``f`` (``E.j2``, or ``E.<part>.j2`` for a backend's extra parts):
``user:B/f``, ``user:f``, ``default:B/f``, ``default:f``. A user template can
``{% extends "default:epoch_end.j2" %}`` and replace one block.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .context import CONTEXT_NAMES
from .errors import TemplateError
from .filters import FILTERS, MISSING

#: Every event a template can exist for.
EVENTS: tuple[str, ...] = (
    "train_begin",
    "epoch_end",
    "evaluate",
    "save",
    "train_end",
    "train_error",
    "alert",
    "progress",
)

TemplateSource = str | Path | Mapping[str, str] | None


def default_templates_dir() -> Path:
    """The directory of the default templates shipped in the wheel."""
    return Path(str(resources.files("notifier_templates")))


def file_name(event: str, part: str) -> str:
    return f"{event}.j2" if part == "text" else f"{event}.{part}.j2"


def _user_loader(source: TemplateSource) -> jinja2.BaseLoader | None:
    """A loader for the user's overrides, after checking every name in them is known."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        files: dict[str, str] = {}
        for key, text in source.items():
            event = key[:-3] if key.endswith(".j2") else key
            base = event.split("/")[-1].split(".")[0]
            if base not in EVENTS:
                raise TemplateError(_unknown_event(base, f"templates dict key {key!r}"))
            if not isinstance(text, str):
                raise TemplateError(
                    f"template for {key!r} must be a string, not {type(text).__name__}"
                )
            files[key if key.endswith(".j2") else f"{key}.j2"] = text
        return jinja2.DictLoader(files)
    directory = Path(source)
    if not directory.is_dir():
        raise TemplateError(f"templates directory {str(directory)!r} does not exist")
    for path in directory.rglob("*.j2"):
        base = path.name.split(".")[0]
        if base not in EVENTS and not base.startswith("_"):
            raise TemplateError(
                _unknown_event(base, f"template file {str(path)!r}")
                + " Name shared snippets with a leading underscore (_macros.j2)."
            )
    return jinja2.FileSystemLoader(str(directory))


def _unknown_event(name: str, where: str) -> str:
    close = difflib.get_close_matches(name, EVENTS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{where} names no event ({name!r}).{hint} Events: {', '.join(EVENTS)}."


class _Undefined(jinja2.ChainableUndefined):
    """A missing value renders empty, but an attribute the sandbox refused fails loudly."""

    __slots__ = ()

    def _refuse(self) -> None:
        # ``''.__class__`` is an Undefined carrying SecurityError: rendering it as ""
        # would hide the attempt, so raise it (the callback then sends its fallback).
        if issubclass(self._undefined_exception, SecurityError):
            self._fail_with_undefined_error()

    def __str__(self) -> str:
        self._refuse()
        return ""

    def __iter__(self) -> Iterator[Any]:
        self._refuse()
        return iter(())

    def __bool__(self) -> bool:
        self._refuse()
        return False

    def __len__(self) -> int:
        self._refuse()
        return 0


def _finalizer(escape: Callable[[str], str]) -> Callable[[Any], Any]:
    def finalize(value: Any) -> Any:
        if value is None:
            return MISSING
        if isinstance(value, jinja2.Undefined):
            return str(value)
        return escape(value if isinstance(value, str) else str(value))

    return finalize


def _json_finalizer() -> Callable[[Any], Any]:
    """Values JSON-escaped, to sit inside a JSON string; ``|tojson`` (Markup) is already JSON."""
    escaped = _finalizer(lambda value: json.dumps(value, ensure_ascii=False)[1:-1])

    def finalize(value: Any) -> Any:
        return str(value) if isinstance(value, markupsafe.Markup) else escaped(value)

    return finalize


class _NotFound(TemplateError):
    """No template exists for an event and part."""


class Templates:
    """The compiled templates of one backend, for every event it sends."""

    def __init__(
        self,
        source: TemplateSource = None,
        *,
        backend: str = "",
        parts: tuple[str, ...] = ("text",),
        optional_parts: tuple[str, ...] = (),
        events: tuple[str, ...] = EVENTS,
        escape: Callable[[str], str] = lambda value: value,
    ) -> None:
        user = _user_loader(source)
        self._user_dict = isinstance(source, Mapping)
        defaults = jinja2.FileSystemLoader(str(default_templates_dir()))
        prefixed: dict[str, jinja2.BaseLoader] = {"default": defaults}
        if user is not None:
            prefixed["user"] = user
        loader = jinja2.ChoiceLoader(
            [jinja2.PrefixLoader(prefixed, delimiter=":"), *([user] if user else []), defaults]
        )
        options: dict[str, Any] = {
            "loader": loader,
            "undefined": _Undefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
        }
        # Plain-text parts escape each substituted value for the service (Slack's
        # &, <, >); HTML parts are autoescaped instead, JSON parts JSON-escaped.
        self._text_env = ImmutableSandboxedEnvironment(**options, finalize=_finalizer(escape))
        self._html_env = ImmutableSandboxedEnvironment(
            **options, autoescape=True, finalize=_finalizer(lambda value: value)
        )
        # JSON parts JSON-escape each value (for use inside "…"); |tojson output passes as is.
        self._json_env = ImmutableSandboxedEnvironment(**options, finalize=_json_finalizer())
        for env in (self._text_env, self._html_env, self._json_env):
            env.filters.update(FILTERS)
        self._templates: dict[str, dict[str, jinja2.Template]] = {}
        for event in events:
            loaded = {part: self._load(event, part, backend, user is not None) for part in parts}
            for part in optional_parts:
                try:
                    loaded[part] = self._load(event, part, backend, user is not None)
                except _NotFound:
                    pass
            self._templates[event] = loaded

    def _load(self, event: str, part: str, backend: str, has_user: bool) -> jinja2.Template:
        env = {"html": self._html_env, "json": self._json_env}.get(part, self._text_env)
        name = file_name(event, part)
        candidates = [f"default:{backend}/{name}", f"default:{name}"]
        if has_user:
            candidates[:0] = [f"user:{backend}/{name}", f"user:{name}"]
        if not backend:
            candidates = [c for c in candidates if "/" not in c]
        # Candidates are tried one by one (not select_template) to know which one was
        # found: PrefixLoader compiles templates under their unprefixed name.
        for candidate in candidates:
            try:
                template = env.get_template(candidate)
            except jinja2.TemplateSyntaxError as exc:
                raise TemplateError(
                    f"template for event {event!r} ({self._where(candidate, exc.filename)}, "
                    f"line {exc.lineno}): {exc.message}"
                ) from None
            except jinja2.TemplateNotFound as exc:
                if exc.name != candidate:
                    raise
                continue
            if candidate.startswith("user:"):
                self._check_names(env, candidate, event)
            return template
        raise _NotFound(
            f"no template for event {event!r} (part {part!r}): looked for {', '.join(candidates)}"
        )

    def _where(self, name: str, filename: str | None) -> str:
        """Where a template comes from, for error messages: its file, or its templates key."""
        if filename:
            return filename
        if name.startswith("user:") and self._user_dict:
            return f"templates[{name.removeprefix('user:').removesuffix('.j2')!r}]"
        return name

    def _check_names(self, env: jinja2.Environment, name: str, event: str) -> None:
        """Reject a user template that uses a name the context does not have (a typo)."""
        assert env.loader is not None
        source, filename, _ = env.loader.get_source(env, name)
        unknown = meta.find_undeclared_variables(env.parse(source)) - set(CONTEXT_NAMES)
        unknown -= set(env.globals)
        if unknown:
            bad = sorted(unknown)[0]
            close = difflib.get_close_matches(bad, CONTEXT_NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TemplateError(
                f"template for event {event!r} ({self._where(name, filename)}) uses {bad!r}, "
                f"which is not in the context.{hint} Available: {', '.join(CONTEXT_NAMES)}."
            )

    def render(self, event: str, context: Mapping[str, Any]) -> dict[str, str]:
        """Render every part for ``event``; raises whatever Jinja raises."""
        return {part: t.render(context).strip() for part, t in self._templates[event].items()}
