"""Configuration files (notifier.toml, [tool.notifier]) and NOTIFIER_* environment variables.

Precedence, highest first: explicit ``NotifierCallback`` arguments, environment
variables, the configuration file, built-in defaults. That holds for a backend's
options too: a ``[backends.slack] channel`` is used only while ``SLACK_CHANNEL``
is unset (``Backend.env`` names each option's variable). The file is the first of:
the ``path`` given, ``$NOTIFIER_CONFIG``, ``./notifier.toml``, the
``[tool.notifier]`` table of ``./pyproject.toml``. Secrets never come from a file.
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .alerts import AlertRules, Improvement, parse_thresholds
from .errors import ConfigurationError
from .secrets import get_logger
from .templates import PROGRESS, SELECTABLE_EVENTS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from .backend import Backend

logger = get_logger("notifier")

CONFIG_FILE = "notifier.toml"
PYPROJECT = "pyproject.toml"

#: Top-level keys of the file, with what each holds (for messages and docs).
KEYS: dict[str, str] = {
    "backends": 'a list of backend names, or a table of them: [backends.slack] channel = "#x"',
    "events": "a list of event names",
    "templates": "a directory of templates, relative to the configuration file",
    "alerts": 'alert rules: metric thresholds such as eval_accuracy = ">= 0.9", and nan, '
    "spike_factor, spike_window, spike_min_samples, spike_metrics, recoveries",
    "throttle": "per event: every_n_epochs (epoch_end only) and min_interval (seconds)",
    "routes": 'per backend, the events it receives: email = ["train_error", "train_end"]',
    "flush_timeout": "seconds to wait for pending messages at exit",
    "max_backlog": "progress messages kept per backend while it is behind",
    "stall_after": "seconds without a training step before a stall alert",
    "only_improvements": 'the eval metric whose improvements alone are reported: "eval_loss", '
    'or a table: {metric = "eval_wer", greater_is_better = false}',
    "plots": "attach a PNG of the training curves where the backend supports it (true/false)",
}

#: The environment variables read, and the setting each overrides.
ENV_VARS: dict[str, str] = {
    "NOTIFIER_CONFIG": "the configuration file to read",
    "NOTIFIER_BACKENDS": "backends, comma-separated: slack,email",
    "NOTIFIER_EVENTS": "events, comma-separated: train_begin,train_end,train_error",
    "NOTIFIER_TEMPLATES": "the templates directory (relative to the working directory)",
    "NOTIFIER_FLUSH_TIMEOUT": "flush_timeout in seconds",
}

#: Option names that hold secrets, which a file must not (it tends to get committed).
SECRET_KEYS = frozenset(
    {"token", "password", "secret", "webhook_url", "url", "urls", "headers", "api_key"}
)
SECRET_SUFFIXES = ("_token", "_password", "_secret")

ALERT_OPTIONS = (
    "nan",
    "spike_factor",
    "spike_window",
    "spike_min_samples",
    "spike_metrics",
    "recoveries",
)
THROTTLE_OPTIONS = ("every_n_epochs", "min_interval")
#: Events that always go out: throttling them would hide the start, end or a crash.
UNTHROTTLED = ("train_begin", "train_end", "train_error")


@dataclass(frozen=True)
class Config:
    """Validated settings from a file and the environment; None (or empty) where unset.

    ``origins`` maps each setting that is set to where it came from (the file's
    path, or the environment variable).
    """

    source: Path | None = None
    backends: tuple[str, ...] | None = None
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: tuple[str, ...] | None = None
    templates: Path | None = None
    #: Keyword arguments for ``AlertRules`` (``thresholds`` and the rule options).
    alerts: dict[str, Any] | None = None
    throttle: dict[str, dict[str, float]] = field(default_factory=dict)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flush_timeout: float | None = None
    max_backlog: int | None = None
    stall_after: float | None = None
    #: ``Improvement`` keyword arguments (``metric``, optionally ``greater_is_better``).
    only_improvements: dict[str, Any] | None = None
    plots: bool | None = None
    origins: dict[str, str] = field(default_factory=dict)

    def callback_kwargs(self) -> dict[str, Any]:
        """The settings that are set, as ``NotifierCallback`` keyword arguments.

        Keys: backends (list of names), events (list), templates (Path),
        flush_timeout, max_backlog, alerts (a new ``AlertRules``), throttle
        ({event: {option: value}}), routes ({backend: [events]}), stall_after, plots,
        only_improvements (a new ``Improvement``).
        Explicit arguments go on top: ``{**config.callback_kwargs(), **explicit}``.
        """
        kwargs: dict[str, Any] = {}
        if self.backends is not None:
            kwargs["backends"] = list(self.backends)
        if self.events is not None:
            kwargs["events"] = list(self.events)
        if self.templates is not None:
            kwargs["templates"] = self.templates
        if self.flush_timeout is not None:
            kwargs["flush_timeout"] = self.flush_timeout
        if self.max_backlog is not None:
            kwargs["max_backlog"] = self.max_backlog
        if self.alerts is not None:
            kwargs["alerts"] = AlertRules(**self.alerts)
        if self.throttle:
            kwargs["throttle"] = {event: dict(opts) for event, opts in self.throttle.items()}
        if self.routes:
            kwargs["routes"] = {name: list(events) for name, events in self.routes.items()}
        if self.stall_after is not None:
            kwargs["stall_after"] = self.stall_after
        if self.plots is not None:
            kwargs["plots"] = self.plots
        if self.only_improvements is not None:
            kwargs["only_improvements"] = Improvement(**self.only_improvements)
        return kwargs

    def build_backends(
        self,
        backends: Sequence[Backend | str] | Backend | str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> list[Backend] | None:
        """Build backends from names (default: this config's), with the file's options for each.

        Instances pass through unchanged; None when no backend is chosen anywhere
        (the callback's console default). See ``build_backend``.
        """
        from .backend import Backend

        chosen: Sequence[Backend | str] | Backend | str | None = (
            self.backends if backends is None else backends
        )
        if chosen is None:
            return None
        if isinstance(chosen, (str, Backend)):
            chosen = [chosen]
        return [
            item if not isinstance(item, str) else self.build_backend(item, environ=environ)
            for item in chosen
        ]

    def build_backend(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> Backend:
        """The backend ``name`` built with ``options`` (given: the command line's), then the
        environment (read by the backend), then the file's options (``file_options``).

        An option the backend does not take is reported with the options it does and
        the closest of them, naming the file and the key when it came from the file.
        """
        from .backend import UnknownOptionError, option_names
        from .plugins import default_registry, get_backend

        given = dict(options or {})
        from_file = self.file_options(name, environ=environ)
        try:
            return get_backend(name, **{**from_file, **given})
        except UnknownOptionError as exc:
            # The backend decided; its class's signature lists what it takes (a backend
            # still calling check_options(name, options, set()) lists nothing itself).
            accepted = (*option_names(default_registry().get(name)), *exc.accepted)
            fuller = UnknownOptionError(exc.backend, exc.unknown, accepted)
            in_file = [key for key in exc.unknown if key in from_file and key not in given]
            if not in_file:
                raise fuller from None
            key = in_file[0]
            takes = (
                f" Options: {', '.join(fuller.accepted)}."
                if fuller.accepted
                else " It takes no options."
            )
            raise ConfigurationError(
                f"{self.where}: backends.{name}.{key} is not an option of the {name} "
                f"backend.{_suggest(key, fuller.accepted)}{takes}"
            ) from None
        except TypeError as exc:
            # A plugin whose __init__ takes no **options: Python's own complaint, placed.
            if not from_file or self.source is None:
                raise ConfigurationError(f"{name} backend: {exc}") from None
            keys = ", ".join(f"backends.{name}.{key}" for key in from_file)
            raise ConfigurationError(
                f"{self.where}: the {name} backend refused its options ({keys}): {exc}"
            ) from None
        except ConfigurationError as exc:
            if not from_file or self.source is None:
                raise
            raise ConfigurationError(
                f"{exc} (with options {', '.join(sorted(from_file))} from {self.source})"
            ) from None

    def file_options(
        self, name: str, *, environ: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The file's options for backend ``name``, without those whose environment variable
        (``Backend.env``) is set in ``environ`` (default ``os.environ``, which the backend
        itself reads): the environment beats the file."""
        options = self.backend_options.get(name)
        if not options:
            return {}
        environ = os.environ if environ is None else environ
        env = backend_env(name)
        kept: dict[str, Any] = {}
        for key, value in options.items():
            found = next((v for v in env.get(key, ()) if environ.get(v)), None)
            if found is None:
                kept[key] = value
            else:
                logger.info(
                    "notifier: %s is set: it overrides backends.%s.%s in %s",
                    found,
                    name,
                    key,
                    self.where,
                )
        return kept

    @property
    def where(self) -> str:
        """The file, as messages name it (with the table for pyproject.toml)."""
        if self.source is None:
            return "the configuration"
        table = " [tool.notifier]" if self.source.name == PYPROJECT else ""
        return f"{self.source}{table}"


def backend_env(name: str, cls: type[Backend] | None = None) -> dict[str, tuple[str, ...]]:
    """Option -> the environment variables it falls back to, for backend ``name``.

    The class's ``env`` (looked up by name when ``cls`` is not given); empty for an
    unknown backend or one that declares none.
    """
    if cls is None:
        from .plugins import default_registry

        try:
            cls = default_registry().get(name)
        except ConfigurationError:
            cls = None
    declared = getattr(cls, "env", None) or {}
    return {
        key: (variables,) if isinstance(variables, str) else tuple(variables)
        for key, variables in declared.items()
    }


# -- loading --------------------------------------------------------------------------------
def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    cwd: str | os.PathLike[str] | None = None,
) -> Config:
    """Find, read and validate the configuration file, then apply the environment on top.

    Raises ConfigurationError, naming the file and key, for anything invalid.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    _warn_unknown_env(environ)
    source, table, where = _find(path, environ, base)
    settings: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if table is not None:
        assert source is not None
        settings = _validate_file(table, where, source.parent)
        origins = dict.fromkeys(settings, str(source))
    for name, (key, value) in _from_env(environ, base).items():
        settings[key] = value
        origins[key] = name
    origins.pop("backend_options", None)
    return Config(source=source, origins=origins, **settings)


def _find(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str], base: Path
) -> tuple[Path | None, dict[str, Any] | None, str]:
    """The config file, its notifier table (None if there is none) and how to name it."""
    if path is None and environ.get("NOTIFIER_CONFIG", "").strip():
        path = environ["NOTIFIER_CONFIG"].strip()
        given = "NOTIFIER_CONFIG"
    else:
        given = "the config path"
    if path is not None:
        source = base / Path(path).expanduser()
        if not source.is_file():
            raise ConfigurationError(
                f"{given} {str(path)!r} does not exist (looked for {source}); "
                f"give the path of a {CONFIG_FILE} or {PYPROJECT}"
            )
        data = _read(source)
        if source.name != PYPROJECT:
            return source, data, str(source)
        table = _tool_table(data, source)
        if table is None:
            raise ConfigurationError(f"{source} has no [tool.notifier] table")
        return source, table, f"{source} [tool.notifier]"
    own, pyproject = base / CONFIG_FILE, base / PYPROJECT
    if own.is_file():
        if pyproject.is_file() and _tool_table(_read(pyproject), pyproject) is not None:
            logger.warning(
                "notifier: using %s; the [tool.notifier] table in %s is ignored (keep one of them)",
                own,
                pyproject,
            )
        return own, _read(own), str(own)
    if pyproject.is_file():
        table = _tool_table(_read(pyproject), pyproject)
        if table is not None:
            return pyproject, table, f"{pyproject} [tool.notifier]"
    return None, None, ""


def _read(source: Path) -> dict[str, Any]:
    try:
        with source.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{source} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {source}: {exc.strerror}") from None


def _tool_table(data: dict[str, Any], source: Path) -> dict[str, Any] | None:
    tool = data.get("tool")
    table = tool.get("notifier") if isinstance(tool, dict) else None
    if table is not None and not isinstance(table, dict):
        raise ConfigurationError(f"{source}: tool.notifier must be a table ([tool.notifier])")
    return table


# -- validation -----------------------------------------------------------------------------
def _fail(where: str, key: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {key} {problem}")


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _is_secret(key: str) -> bool:
    return key.lower() in SECRET_KEYS or key.lower().endswith(SECRET_SUFFIXES)


def _secret_error(where: str, dotted: str, backend: str | None, key: str) -> ConfigurationError:
    env = backend_env(backend).get(key) if backend else None
    if env:
        also = f" (or {', '.join(env[1:])})" if len(env) > 1 else ""
        fix = f"set the {env[0]}{also} environment variable instead"
    elif backend:
        fix = (
            f"set it through the environment variable the {backend} backend documents for "
            f"{key!r} instead"
        )
    else:
        fix = "set it through the environment variable of the backend that needs it instead"
    return ConfigurationError(
        f"{where}: {dotted} is a secret, and secrets cannot be kept in a configuration file "
        f"(it tends to get committed). Remove it and {fix}."
    )


def _check_secrets(value: Any, where: str, dotted: str, backend: str | None) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            path = f"{dotted}.{key}" if dotted else str(key)
            if _is_secret(str(key)):
                raise _secret_error(where, path, backend, str(key))
            _check_secrets(inner, where, path, backend)
    elif isinstance(value, list):
        for inner in value:
            _check_secrets(inner, where, dotted, backend)


def _names(value: Any, where: str, key: str, known: Sequence[str] | None = None) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list):
        raise _fail(where, key, f'must be a list of names, e.g. {key} = ["..."]')
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise _fail(where, key, f"must be a list of names; {name!r} is not one")
    names = tuple(dict.fromkeys(value))
    for name in names:
        if known is not None and name not in known:
            raise _fail(where, key, _unknown_event(name, known))
    return names


def _unknown_event(name: str, known: Sequence[str]) -> str:
    """Why ``name`` is not an event that can be chosen, with the fix (after "<key> ")."""
    if name == PROGRESS:
        return (
            f"names {PROGRESS!r}, which cannot be chosen: it goes to the backends that ask for "
            "it (Backend.progress_interval, such as a Slack live card) whatever events say. "
            f"Remove it. Events: {', '.join(known)}."
        )
    return f"names an unknown event {name!r}.{_suggest(name, known)} Events: {', '.join(known)}."


def _seconds(value: Any, where: str, key: str, *, positive: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and math.isfinite(value) and (value > 0 if positive else value >= 0):
        return float(value)
    bound = "> 0" if positive else ">= 0"
    raise _fail(where, key, f"must be a number of seconds {bound}, got {value!r}")


def _validate_file(table: dict[str, Any], where: str, directory: Path) -> dict[str, Any]:
    """Check every key of the file's notifier table; return Config field values."""
    for key in table:
        if _is_secret(key):
            raise _secret_error(where, key, None, key)
    unknown = [key for key in table if key not in KEYS]
    if unknown:
        key = unknown[0]
        raise _fail(
            where,
            key,
            f"is not a setting.{_suggest(key, list(KEYS))} Settings: {', '.join(KEYS)}.",
        )
    out: dict[str, Any] = {}
    if "backends" in table:
        out["backends"], out["backend_options"] = _backends(table["backends"], where)
    if "events" in table:
        out["events"] = _names(table["events"], where, "events", SELECTABLE_EVENTS)
    if "templates" in table:
        value = table["templates"]
        if not isinstance(value, str) or not value:
            raise _fail(where, "templates", f"must be a directory path, got {value!r}")
        directory_path = directory / Path(value).expanduser()
        if not directory_path.is_dir():
            raise _fail(
                where,
                "templates",
                f"= {value!r}: {directory_path} is not a directory (paths are relative to the "
                "configuration file)",
            )
        out["templates"] = directory_path
    if "alerts" in table:
        out["alerts"] = _alerts(table["alerts"], where)
    if "throttle" in table:
        out["throttle"] = _throttle(table["throttle"], where)
    if "routes" in table:
        out["routes"] = _routes(table["routes"], where, out.get("backends"))
    if "flush_timeout" in table:
        out["flush_timeout"] = _seconds(
            table["flush_timeout"], where, "flush_timeout", positive=False
        )
    if "stall_after" in table:
        out["stall_after"] = _seconds(table["stall_after"], where, "stall_after", positive=True)
    if "only_improvements" in table:
        out["only_improvements"] = _improvement(table["only_improvements"], where)
    if "max_backlog" in table:
        value = table["max_backlog"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(where, "max_backlog", f"must be an integer >= 1, got {value!r}")
        out["max_backlog"] = value
    if "plots" in table:
        if not isinstance(table["plots"], bool):
            raise _fail(where, "plots", f"must be true or false, got {table['plots']!r}")
        out["plots"] = table["plots"]
    return out


def _backends(value: Any, where: str) -> tuple[tuple[str, ...], dict[str, dict[str, Any]]]:
    if isinstance(value, dict):
        options: dict[str, dict[str, Any]] = {}
        for name, opts in value.items():
            if not isinstance(opts, dict):
                raise _fail(
                    where,
                    f"backends.{name}",
                    "must be a table of options ([backends."
                    f'{name}]); list backends without options as backends = ["{name}"]',
                )
            _check_secrets(opts, where, f"backends.{name}", name)
            options[name] = dict(opts)
        return tuple(options), options
    return _names(value, where, "backends"), {}


def _improvement(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str) and value:
        return {"metric": value}
    if isinstance(value, dict) and isinstance(value.get("metric"), str) and value["metric"]:
        unknown = sorted(set(value) - {"metric", "greater_is_better"})
        better = value.get("greater_is_better")
        if not unknown and (better is None or isinstance(better, bool)):
            return dict(value)
    raise _fail(
        where,
        "only_improvements",
        f'must be an eval metric name ("eval_loss") or a table {{metric = "eval_wer", '
        f"greater_is_better = false}}, got {value!r}",
    )


def _alerts(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "alerts", 'must be a table: [alerts] loss = "> 10"')
    kwargs: dict[str, Any] = {}
    thresholds: dict[str, Any] = {}
    for key, item in value.items():
        dotted = f"alerts.{key}"
        if key in ALERT_OPTIONS:
            kwargs[key] = item
        elif isinstance(item, (str, list)):
            thresholds[key] = item
        else:
            raise _fail(
                where,
                dotted,
                f'= {item!r} is neither a threshold (a string such as "> 10") nor an alert '
                f"option.{_suggest(key, ALERT_OPTIONS)} Options: {', '.join(ALERT_OPTIONS)}.",
            )
    for key in ("nan", "recoveries"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise _fail(where, f"alerts.{key}", f"must be true or false, got {kwargs[key]!r}")
    if "spike_metrics" in kwargs:
        kwargs["spike_metrics"] = _names(kwargs["spike_metrics"], where, "alerts.spike_metrics")
    if thresholds:
        kwargs["thresholds"] = thresholds
    try:
        parse_thresholds(thresholds)
        AlertRules(**kwargs)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: [alerts] {exc}") from None
    return kwargs


def _throttle(value: Any, where: str) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise _fail(where, "throttle", "must be a table: [throttle.epoch_end] every_n_epochs = 2")
    out: dict[str, dict[str, float]] = {}
    for event, options in value.items():
        dotted = f"throttle.{event}"
        if event == PROGRESS:
            raise _fail(
                where,
                dotted,
                "cannot be throttled here: progress messages are paced by each backend's "
                "progress_interval (e.g. the Slack card_interval option)",
            )
        if event not in SELECTABLE_EVENTS:
            raise _fail(
                where,
                dotted,
                f"names no event that can be throttled.{_suggest(event, SELECTABLE_EVENTS)} "
                f"Events: {', '.join(e for e in SELECTABLE_EVENTS if e not in UNTHROTTLED)}.",
            )
        if event in UNTHROTTLED:
            raise _fail(where, dotted, f"cannot be throttled: {event} messages always go out")
        if not isinstance(options, dict):
            raise _fail(where, dotted, "must be a table of every_n_epochs and/or min_interval")
        checked: dict[str, float] = {}
        for key, item in options.items():
            if key not in THROTTLE_OPTIONS:
                raise _fail(
                    where,
                    f"{dotted}.{key}",
                    f"is not a throttle option.{_suggest(key, THROTTLE_OPTIONS)} "
                    f"Options: {', '.join(THROTTLE_OPTIONS)}.",
                )
            if key == "min_interval":
                checked[key] = _seconds(item, where, f"{dotted}.{key}", positive=True)
            else:
                if event != "epoch_end":
                    raise _fail(
                        where, f"{dotted}.{key}", "applies to epoch_end only (use min_interval)"
                    )
                if isinstance(item, bool) or not isinstance(item, int) or item < 1:
                    raise _fail(where, f"{dotted}.{key}", f"must be an integer >= 1, got {item!r}")
                checked[key] = item
        out[event] = checked
    return out


def _routes(value: Any, where: str, backends: tuple[str, ...] | None) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise _fail(where, "routes", 'must be a table: [routes] email = ["train_error"]')
    out: dict[str, tuple[str, ...]] = {}
    for name, events in value.items():
        if backends is not None and name not in backends:
            raise _fail(
                where,
                f"routes.{name}",
                f"names a backend not in backends ({', '.join(backends)})."
                f"{_suggest(name, backends)}",
            )
        out[name] = _names(events, where, f"routes.{name}", SELECTABLE_EVENTS)
    return out


# -- environment ----------------------------------------------------------------------------
def _warn_unknown_env(environ: Mapping[str, str]) -> None:
    for name in environ:
        if name.startswith("NOTIFIER_") and name not in ENV_VARS:
            close = difflib.get_close_matches(name, ENV_VARS, n=1, cutoff=0.8)
            if close:
                logger.warning(
                    "notifier: ignoring environment variable %s; did you mean %s?", name, close[0]
                )


def _env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...] | None:
    raw = environ.get(name, "")
    if not raw.strip():
        return None
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not names:
        raise ConfigurationError(f"{name}={raw!r} names nothing; e.g. {name}=slack,email")
    return names


def _from_env(environ: Mapping[str, str], base: Path) -> dict[str, tuple[str, Any]]:
    """Settings from NOTIFIER_* variables: {variable: (Config field, value)}."""
    found: dict[str, tuple[str, Any]] = {}
    backends = _env_list(environ, "NOTIFIER_BACKENDS")
    if backends is not None:
        found["NOTIFIER_BACKENDS"] = ("backends", backends)
    events = _env_list(environ, "NOTIFIER_EVENTS")
    if events is not None:
        unknown = [e for e in events if e not in SELECTABLE_EVENTS]
        if unknown:
            raise ConfigurationError(
                f"NOTIFIER_EVENTS {_unknown_event(unknown[0], SELECTABLE_EVENTS)}"
            )
        found["NOTIFIER_EVENTS"] = ("events", events)
    templates = environ.get("NOTIFIER_TEMPLATES", "").strip()
    if templates:
        directory = base / Path(templates).expanduser()
        if not directory.is_dir():
            raise ConfigurationError(
                f"NOTIFIER_TEMPLATES={templates!r}: {directory} is not a directory"
            )
        found["NOTIFIER_TEMPLATES"] = ("templates", directory)
    timeout = environ.get("NOTIFIER_FLUSH_TIMEOUT", "").strip()
    if timeout:
        try:
            seconds = float(timeout)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ConfigurationError(
                f"NOTIFIER_FLUSH_TIMEOUT={timeout!r} must be a number of seconds >= 0"
            )
        found["NOTIFIER_FLUSH_TIMEOUT"] = ("flush_timeout", seconds)
    return found
