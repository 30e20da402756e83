"""Loading, checking and rendering message templates with a sandboxed Jinja environment.

Template names are looked up in this order, for backend ``B``, event ``E`` and
file name ``f`` (``E.j2``, or ``E.<part>.j2`` for a backend's extra parts):
``user:B/f``, ``user:f``, ``default:B/f``, ``default:f``. A user template can
``{% extends "default:epoch_end.j2" %}`` and replace one block.
"""

from __future__ import annotations

import difflib
import json
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .context import CONTEXT_NAMES, sample_context
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
#: Sent only to backends that ask for it (``Backend.progress_interval``): never chosen.
PROGRESS = "progress"
#: The events ``events``, ``routes`` and ``throttle`` may name.
SELECTABLE_EVENTS: tuple[str, ...] = tuple(e for e in EVENTS if e != PROGRESS)
#: What ``NotifierCallback`` sends when ``events`` is not given.
DEFAULT_EVENTS: tuple[str, ...] = ("train_begin", "epoch_end", "train_end", "train_error", "alert")


def backend_events(chosen: Iterable[str], progress_interval: float | None) -> tuple[str, ...]:
    """The events a backend gets: those chosen for it, and ``progress`` if it asks for it."""
    return tuple(chosen) + ((PROGRESS,) if progress_interval else ())


TemplateSource = str | Path | Mapping[str, str] | None


def default_templates_dir() -> Path:
    """The directory of the default templates shipped in the wheel."""
    return Path(str(resources.files("notifier_templates")))


def file_name(event: str, part: str) -> str:
    return f"{event}.j2" if part == "text" else f"{event}.{part}.j2"


def _event_of(name: str) -> str:
    """The event a template file name is for: ``slack/epoch_end.html.j2`` -> epoch_end."""
    return name.split("/")[-1].split(".")[0]


def _snippet(name: str) -> bool:
    """A shared snippet for include/import: a file or a folder named with a leading ``_``."""
    return any(part.startswith("_") for part in name.split("/"))


def _template_files(directory: Path) -> Iterator[Path]:
    """The ``*.j2`` files under ``directory``, leaving out hidden ones and hidden folders
    (``.ipynb_checkpoints/``, ``.git/``, an editor's ``.#epoch_end.j2`` lock file)."""
    for path in directory.rglob("*.j2"):
        relative = path.relative_to(directory).parts
        if path.is_file() and not any(part.startswith(".") for part in relative):
            yield path


def _user_files(source: TemplateSource) -> dict[str, str] | Path | None:
    """The user's overrides ({file name: text}, or a directory), after checking every
    file is named for an event (or ``_`` for a shared snippet)."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        files: dict[str, str] = {}
        for key, text in source.items():
            event = key[:-3] if key.endswith(".j2") else key
            base = _event_of(event)
            if base not in EVENTS and not _snippet(event):
                raise TemplateError(_unknown_event(base, f"templates dict key {key!r}"))
            if not isinstance(text, str):
                raise TemplateError(
                    f"template for {key!r} must be a string, not {type(text).__name__}"
                )
            files[key if key.endswith(".j2") else f"{key}.j2"] = text
        return files
    directory = Path(source)
    if not directory.is_dir():
        raise TemplateError(f"templates directory {str(directory)!r} does not exist")
    for path in _template_files(directory):
        base = _event_of(path.name)
        if base not in EVENTS and not _snippet(path.relative_to(directory).as_posix()):
            raise TemplateError(
                _unknown_event(base, f"template file {str(path)!r}")
                + " Name shared snippets with a leading underscore (_macros.j2)."
            )
    return directory


def _template_names(files: dict[str, str] | Path) -> list[str]:
    """Every user template, by its name for the loader (``slack/epoch_end.j2``)."""
    if isinstance(files, dict):
        return sorted(files)
    return sorted(p.relative_to(files).as_posix() for p in _template_files(files))


def known_backend_names(extra: Iterable[str] = ()) -> tuple[set[str], list[str]]:
    """Backend names a template folder may be named after, and the installed ones.

    Known: every installed backend, every ``notifier.Backend`` subclass defined in
    this process (a backend class passed as an instance), and ``extra``.
    """
    from .backend import Backend
    from .plugins import available_backends

    installed = available_backends()
    names = set(installed) | {name for name in extra if name}
    stack: list[type[Backend]] = [Backend]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if isinstance(getattr(cls, "name", None), str) and cls.name:
            names.add(cls.name)
    return names, installed


def _check_folders(
    files: dict[str, str] | Path, names: list[str], known: Callable[[], tuple[set[str], list[str]]]
) -> None:
    """A backend folder must be named after a backend: ``slak/`` would be silently unused."""
    folders = sorted({n.split("/")[0] for n in names if "/" in n and not n.startswith("_")})
    if not folders:
        return
    backends, installed = known()
    for folder in folders:
        if folder in backends:
            continue
        close = difflib.get_close_matches(folder, sorted(backends), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = (
            f"templates dict key {folder + '/…'!r}"
            if isinstance(files, dict)
            else f"templates folder {str(files / folder)!r}"
        )
        raise TemplateError(
            f"{where} names no backend ({folder!r}), so its templates would never be used."
            f"{hint} Installed backends: {', '.join(installed) or 'none'}. A backend's own "
            "templates go in a folder named after it (slack/epoch_end.j2); shared snippets may "
            "go in a folder whose name starts with _."
        )


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


#: Surrounding whitespace and characters that show nothing (zero-width, BOM): stripped.
_BLANK_ENDS = re.compile(
    r"^[\s\u200b\u200c\u200d\u2060\ufeff]+|[\s\u200b\u200c\u200d\u2060\ufeff]+$"
)


def _clean(text: str) -> str:
    """``text`` without surrounding blanks: "" when nothing visible is left."""
    return _BLANK_ENDS.sub("", text)


def _part_of(name: str) -> str:
    """The part a template file is for: ``epoch_end.html.j2`` -> html, ``save.j2`` -> text."""
    pieces = name.split("/")[-1].split(".")
    return pieces[-2] if len(pieces) > 2 else "text"


def _top_blocks(node: nodes.Node) -> Iterator[nodes.Block]:
    """The blocks of a template that are not inside another block."""
    for child in node.iter_child_nodes():
        if isinstance(child, nodes.Block):
            yield child
        else:
            yield from _top_blocks(child)


def _identity(template: jinja2.Template) -> str:
    """Which file a template is: its path, or its name in the templates dict."""
    if template.filename and template.filename != "<template>":
        return template.filename
    return f"templates[{template.name!r}]"


def _parent_name(ast: nodes.Template) -> str | None:
    """The template ``{% extends "…" %}`` names, when it is a constant string."""
    for extends in ast.find_all(nodes.Extends):
        if isinstance(extends.template, nodes.Const) and isinstance(extends.template.value, str):
            return extends.template.value
    return None


class Templates:
    """The compiled templates of one backend, for every event it sends.

    Construction checks everything before a run starts, raising TemplateError naming the
    event and file: every user template compiles, uses only context names, overrides
    only blocks its parent has, sits in a backend's folder that exists; and every
    selected template renders once with ``sample_context`` (a missing include, a
    template extending itself). ``known_backends`` adds backend names a templates folder
    may be named after (installed backends and defined Backend classes are known).
    """

    def __init__(
        self,
        source: TemplateSource = None,
        *,
        backend: str = "",
        parts: tuple[str, ...] = ("text",),
        optional_parts: tuple[str, ...] = (),
        events: tuple[str, ...] = EVENTS,
        escape: Callable[[str], str] = lambda value: value,
        known_backends: Iterable[str] = (),
    ) -> None:
        files = _user_files(source)
        self._user_dict = isinstance(files, dict)
        user: jinja2.BaseLoader | None = None
        names: list[str] = []
        if files is not None:
            names = _template_names(files)
            extra = (backend, *known_backends)
            _check_folders(files, names, lambda: known_backend_names(extra))
            if isinstance(files, dict):
                user = jinja2.DictLoader(files)
            else:
                user = jinja2.FileSystemLoader(str(files))
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
        # Every user file, used by this backend's events or not: a broken one fails now.
        for name in names:
            self._check_user_file(name)
        self._templates: dict[str, dict[str, jinja2.Template]] = {}
        for event in events:
            loaded = {part: self._load(event, part, backend, user is not None) for part in parts}
            for part in optional_parts:
                try:
                    loaded[part] = self._load(event, part, backend, user is not None)
                except _NotFound:
                    pass
            self._templates[event] = {part: template for part, (template, _) in loaded.items()}
            for template, where in loaded.values():
                self._try(event, template, where)

    def _env(self, part: str) -> jinja2.Environment:
        return {"html": self._html_env, "json": self._json_env}.get(part, self._text_env)

    @staticmethod
    def _label(name: str) -> str:
        base = _event_of(name)
        return f"template for event {base!r}" if base in EVENTS else f"template {name!r}"

    def _syntax_error(
        self, label: str, name: str, exc: jinja2.TemplateSyntaxError
    ) -> TemplateError:
        return TemplateError(
            f"{label} ({self._where(name, exc.filename)}, line {exc.lineno}): {exc.message}"
        )

    def _check_user_file(self, name: str) -> None:
        """Compile one user file, check its context names and the blocks it overrides."""
        env = self._env(_part_of(name))
        full = f"user:{name}"
        label = self._label(name)
        try:
            template = env.get_template(full)
        except jinja2.TemplateSyntaxError as exc:
            raise self._syntax_error(label, full, exc) from None
        base = _event_of(name)
        if base in EVENTS:
            self._check_names(env, full, base)
        self._check_blocks(env, full, label, template)

    def _check_blocks(
        self, env: jinja2.Environment, name: str, label: str, template: jinja2.Template
    ) -> None:
        """A template that extends another may only fill blocks that one has: a misspelt
        ``{% block headlin %}`` would be silently never shown."""
        assert env.loader is not None
        source = env.loader.get_source(env, name)[0]
        ast = env.parse(source)
        parent = _parent_name(ast)
        if parent is None:
            return
        where = self._where(name, template.filename)
        available: set[str] = set()
        seen = {_identity(template)}
        current: str | None = parent
        while current is not None:
            try:
                found = env.get_template(current)
            except jinja2.TemplateNotFound as exc:
                raise TemplateError(
                    f"{label} ({where}) extends {exc.name!r}, which does not exist. "
                    'Extend a default with its prefix: {% extends "default:epoch_end.j2" %}.'
                ) from None
            except jinja2.TemplateSyntaxError as exc:
                raise self._syntax_error(label, current, exc) from None
            key = _identity(found)
            if key in seen:
                raise TemplateError(_recursion(label, where))
            seen.add(key)
            available |= set(found.blocks)
            found_source = env.loader.get_source(env, current)[0]
            current = _parent_name(env.parse(found_source))
        for block in _top_blocks(ast):
            if block.name in available:
                continue
            close = difflib.get_close_matches(block.name, sorted(available), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TemplateError(
                f"{label} ({where}, line {block.lineno}) fills block {block.name!r}, which "
                f"{parent!r} does not have, so it would never be shown.{hint} Blocks of "
                f"{parent!r}: {', '.join(sorted(available)) or 'none'}."
            )

    def _load(
        self, event: str, part: str, backend: str, has_user: bool
    ) -> tuple[jinja2.Template, str]:
        env = self._env(part)
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
                raise self._syntax_error(f"template for event {event!r}", candidate, exc) from None
            except jinja2.TemplateNotFound as exc:
                if exc.name != candidate:
                    raise
                continue
            if candidate.startswith("user:"):
                self._check_names(env, candidate, event)
            return template, self._where(candidate, template.filename)
        raise _NotFound(
            f"no template for event {event!r} (part {part!r}): looked for {', '.join(candidates)}"
        )

    def _try(self, event: str, template: jinja2.Template, where: str) -> None:
        """Render once with a realistic context: what no data can fix fails now.

        Errors that depend on the values (arithmetic on a metric the sample lacks, a
        sandbox refusal) are left to run time, where the callback sends a plain message.
        """
        label = f"template for event {event!r}"
        try:
            template.render(sample_context(event))
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"{label} ({where}{_line(exc, template.filename)}) includes, imports or extends "
                f"{exc.name!r}, which does not exist among your templates or the defaults"
            ) from None
        except jinja2.TemplateSyntaxError as exc:
            raise self._syntax_error(label, exc.name or where, exc) from None
        except RecursionError:
            raise TemplateError(_recursion(label, where)) from None
        except Exception:  # noqa: BLE001, S110 - data-dependent: handled when sent
            pass

    def _where(self, name: str, filename: str | None) -> str:
        """Where a template comes from, for error messages: its file, or its templates key."""
        if filename and filename != "<template>":  # Jinja's name for a template from a string
            return filename
        if name.startswith("user:") and self._user_dict:
            return f"templates[{name.removeprefix('user:').removesuffix('.j2')!r}]"
        return name

    def _check_names(self, env: jinja2.Environment, name: str, event: str) -> None:
        """Reject a user template that uses a name the context does not have (a typo)."""
        assert env.loader is not None
        source, filename, _ = env.loader.get_source(env, name)
        tree = env.parse(source)
        unknown = meta.find_undeclared_variables(tree) - set(CONTEXT_NAMES)
        unknown -= set(env.globals) | _inherited_names(env, tree)
        if unknown:
            bad = sorted(unknown)[0]
            close = difflib.get_close_matches(bad, CONTEXT_NAMES, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TemplateError(
                f"template for event {event!r} ({self._where(name, filename)}) uses {bad!r}, "
                f"which is not in the context.{hint} Available: {', '.join(CONTEXT_NAMES)}."
            )

    def render(self, event: str, context: Mapping[str, Any]) -> dict[str, str]:
        """Render every part for ``event``; raises whatever Jinja raises.

        Each part is stripped, and a part showing nothing (only whitespace or zero-width
        characters) is exactly "": the caller skips a message whose text is "".
        """
        return {part: _clean(t.render(context)) for part, t in self._templates[event].items()}


def _inherited_names(env: jinja2.Environment, tree: nodes.Template) -> set[str]:
    """Names a template's parents define for it: their macros, top-level ``{% set %}``s and
    imports (``{% extends "default:email/_layout.html.j2" %}`` gives ``table``)."""
    found: set[str] = set()
    seen: set[str] = set()
    parent = _parent_name(tree)
    while parent is not None and parent not in seen and env.loader is not None:
        seen.add(parent)
        try:
            ast = env.parse(env.loader.get_source(env, parent)[0])
        except jinja2.TemplateError:
            break  # a missing or broken parent is reported by _check_blocks
        for node in ast.body:
            if isinstance(node, nodes.Macro):
                found.add(node.name)
            elif isinstance(node, nodes.Assign | nodes.AssignBlock):
                found |= {n.name for n in node.target.find_all(nodes.Name)}
                if isinstance(node.target, nodes.Name):
                    found.add(node.target.name)
            elif isinstance(node, nodes.Import):
                found.add(node.target)
            elif isinstance(node, nodes.FromImport):
                found |= {n if isinstance(n, str) else n[1] for n in node.names}
        parent = _parent_name(ast)
    return found


def _line(exc: BaseException, filename: str | None) -> str:
    """ ", line N": where in ``filename`` the error was raised (Jinja maps its frames)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == (filename or "<template>"):
            line = frame.lineno
    return f", line {line}" if line else ""


def _recursion(label: str, where: str) -> str:
    return (
        f"{label} ({where}) extends or includes itself: a user template named like a "
        "default hides it, so extend the default with its prefix instead: "
        '{% extends "default:epoch_end.j2" %}'
    )
