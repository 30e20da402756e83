"""The ``notifier`` command: send, render, run, check, backends and demo.

Exit statuses: 0 success, 1 a delivery or credentials failure, 2 a configuration
or usage error (with the fix on stderr). ``notifier run`` exits with the status
of the command it ran.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .backend import Backend, Message
from .config import (
    SECRET_KEYS,
    SECRET_SUFFIXES,
    Config,
    backend_env,
    load_config,
)
from .context import sample_context
from .errors import ConfigurationError
from .plugins import default_registry
from .secrets import redact
from .templates import DEFAULT_EVENTS, EVENTS, Templates, backend_events

DEFAULT_BACKEND = "console"
DEFAULT_TIMEOUT = 60.0

OPTION_HELP = (
    "a backend option (repeatable). VALUE is JSON when it parses as JSON (5, true, "
    '["a", "b"], {"k": "v"}, "quoted text"), else the text as written; with several '
    "backends, prefix the backend: slack.channel=#alerts. Keep secrets in environment "
    "variables: the command line is visible to other users (ps) and in shell history"
)


# -- backends from the command line and the configuration file ------------------------------
def _is_secret(key: str) -> bool:
    return key.lower() in SECRET_KEYS or key.lower().endswith(SECRET_SUFFIXES)


def _value(key: str, raw: str) -> Any:
    """JSON when ``raw`` parses as JSON, else the text; a secret always stays the text."""
    if _is_secret(key):
        return raw  # an all-digit password must not turn into a number
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_options(items: list[str] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """``--option`` arguments as keyword arguments for each named backend.

    Values are never quoted in errors: an option may hold a secret.
    """
    per: dict[str, dict[str, Any]] = {name: {} for name in names}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigurationError(
                "--option takes KEY=VALUE (e.g. --option channel=#alerts); one argument had "
                "no '=' or no key"
            )
        prefix, dot, rest = key.partition(".")
        if dot and prefix in per:
            targets, key = [prefix], rest
        elif len(names) == 1:
            targets = names
        else:
            raise ConfigurationError(
                f"--option {key}=…: with several backends ({', '.join(names)}), say which one "
                f"it is for: --option {names[0]}.{key}=…"
            )
        if not key.isidentifier():
            raise ConfigurationError(
                f"--option {key}=…: {key!r} is not an option name"
                + (f" (no backend {prefix!r} is chosen)" if dot else "")
            )
        if _is_secret(key):
            redact.add(raw)
            env = backend_env(targets[0]).get(key)
            instead = f"the {env[0]} environment variable" if env else "its environment variable"
            sys.stderr.write(
                f"notifier: warning: --option {key}=… puts a secret on the command line, where "
                f"other users (ps) and your shell history can read it; prefer {instead}\n"
            )
        for target in targets:
            per[target][key] = _value(key, raw)
    return per


def _backend_names(options: argparse.Namespace, config: Config) -> list[str]:
    chosen = options.backend or (list(config.backends) if config.backends else [DEFAULT_BACKEND])
    return list(dict.fromkeys(chosen))


def _build(name: str, cli_options: dict[str, Any], config: Config) -> Backend:
    """The backend ``name``: the command line's options, then the environment, then the
    file's (``Config.build_backend``)."""
    return config.build_backend(name, cli_options)


def _backends(options: argparse.Namespace) -> tuple[Config, list[Backend]]:
    config = load_config(options.config)
    names = _backend_names(options, config)
    per = parse_options(options.option, names)
    return config, [_build(name, per[name], config) for name in names]


# -- notifier backends ----------------------------------------------------------------------
def _list_backends(_: argparse.Namespace) -> int:
    rows = [(info.name, info.provider, info.cls.description) for info in default_registry().info()]
    width = max((len(name) for name, _, _ in rows), default=4)
    pwidth = max((len(provider) for _, provider, _ in rows), default=8)
    out = sys.stdout
    out.write(f"{'NAME':<{width}}  {'PROVIDED BY':<{pwidth}}  DESCRIPTION\n")
    for name, provider, description in rows:
        out.write(f"{name:<{width}}  {provider:<{pwidth}}  {description}\n")
    return 0


# -- notifier demo --------------------------------------------------------------------------
def _demo(options: argparse.Namespace) -> int:
    from .demo import run_demo

    stats = run_demo(options.backend or None, epochs=options.epochs)
    failed = sum(s["failed"] for s in stats.values())
    return 1 if failed else 0


# -- notifier send --------------------------------------------------------------------------
def _send(options: argparse.Namespace) -> int:
    from .run import Delivery, message_parts

    _, backends = _backends(options)
    host = socket.gethostname()
    text = options.text or f"🔔 Test message from notifier on {host}"
    title = text.strip().split("\n", 1)[0]

    def build(backend: Backend) -> Message:
        return Message(
            event="test",
            text=text,
            parts=message_parts(backend, title, text),
            context={"event": "test", "host": host},
            critical=True,
        )

    delivery = Delivery(backends)
    delivery.put(build)
    failed = False
    for backend, problems in delivery.finish(options.timeout):
        if problems:
            failed = True
            for problem in problems:
                sys.stderr.write(f"notifier: {problem}\n")
        else:
            sys.stdout.write(f"sent to {backend.describe()}\n")
    return 1 if failed else 0


# -- notifier render ------------------------------------------------------------------------
def escape_of(cls: type[Backend]) -> Callable[[str], str] | None:
    """``cls``'s escape without building it (no credentials needed); None if it cannot.

    ``escape`` is an instance method; the built-in ones use no instance state, so it
    is called on a bare instance (``__init__`` not run). One that needs its
    configuration fails on a probe, and the preview then shows values unescaped.
    """
    try:
        escape = functools.partial(cls.escape, cls.__new__(cls))
        probe = escape("<&>*_`")
    except Exception:  # noqa: BLE001 - any failure means it needs a configured instance
        return None
    return escape if isinstance(probe, str) else None


def _render(options: argparse.Namespace) -> int:
    event = options.event
    if event not in EVENTS:
        close = difflib.get_close_matches(event, EVENTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"unknown event {event!r}.{hint} Events: {', '.join(EVENTS)}.")
    source: Path | None = options.templates
    if source is None:
        source = load_config(options.config).templates
    name: str = ""
    parts: tuple[str, ...] = ("text",)
    optional: tuple[str, ...] = ()
    escape: Callable[[str], str] = lambda value: value  # noqa: E731 - the plain default
    if options.backend:
        cls = default_registry().get(options.backend)
        name, parts, optional = cls.name, cls.parts, cls.optional_parts
        found = escape_of(cls)
        if found is not None:
            escape = found
        else:
            sys.stderr.write(
                f"notifier: note: values are shown without the {name} backend's escaping, "
                "which needs a configured backend\n"
            )
    known = (*parts, *optional)
    if options.part is not None and options.part not in known:
        raise ConfigurationError(
            f"no part {options.part!r} for {name or 'the default templates'}; "
            f"parts: {', '.join(known)}"
        )
    templates = Templates(
        source, backend=name, parts=parts, optional_parts=optional, events=(event,), escape=escape
    )
    try:
        rendered = templates.render(event, sample_context(event))
    except Exception as exc:  # noqa: BLE001 - a template bug is reported, not a traceback
        sys.stderr.write(
            f"notifier: the {event} template failed to render: {type(exc).__name__}: {exc}. "
            "A training run would send a plain fallback message instead.\n"
        )
        return 1
    if options.part is not None:
        if options.part not in rendered:
            raise ConfigurationError(
                f"no {event}.{options.part}.j2 template exists; the part is optional and "
                "would not be sent"
            )
        sys.stdout.write(rendered[options.part] + "\n")
    elif len(rendered) == 1:
        sys.stdout.write(next(iter(rendered.values())) + "\n")
    else:
        sys.stdout.write(
            "\n\n".join(f"==> {part} <==\n{text}" for part, text in rendered.items()) + "\n"
        )
    return 0


# -- notifier run ---------------------------------------------------------------------------
def _run(options: argparse.Namespace) -> int:
    from .run import run_command

    command = list(options.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigurationError(
            "notifier run needs a command: notifier run [--backend NAME] -- COMMAND [ARGS...]"
        )
    _, backends = _backends(options)
    return run_command(command, backends, timeout=options.timeout)


# -- notifier check -------------------------------------------------------------------------
def _check(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    names = _backend_names(options, config)
    per = parse_options(options.option, names)
    if config.source is not None:
        sys.stdout.write(f"config: {config.source}\n")
    if not options.backend and not config.backends:
        sys.stdout.write(
            "no backend configured (--backend, NOTIFIER_BACKENDS, notifier.toml): checking "
            f"the default, {DEFAULT_BACKEND}\n"
        )
    rows: list[tuple[str, str, str]] = []
    status = 0
    for route in config.routes:
        if route not in names:
            sys.stdout.write(
                f"note: routes.{route} is ignored: {route} is not among the backends "
                f"({', '.join(names)})\n"
            )
    if config.plots:
        from .plots import require_matplotlib

        try:
            require_matplotlib()
        except ConfigurationError as exc:
            rows.append(("plots", "FAILED", str(exc)))
            status = 2
    for name in names:
        try:
            backend = _build(name, per[name], config)
            redact.add(*backend.secrets())
            Templates(
                config.templates,
                backend=backend.name,
                parts=backend.parts,
                optional_parts=backend.optional_parts,
                events=_events_for(backend, config),
                escape=backend.escape,
            )
        except ConfigurationError as exc:
            rows.append((name, "FAILED", redact(str(exc))))
            status = 2
            continue
        try:
            backend.check()
        except ConfigurationError as exc:
            rows.append((backend.describe(), "FAILED", redact(str(exc))))
            status = max(status, 1)
        except Exception as exc:  # noqa: BLE001 - a broken backend is reported like the others
            rows.append((backend.describe(), "FAILED", f"{type(exc).__name__}: {redact(str(exc))}"))
            status = max(status, 1)
        else:
            verified = type(backend).check is not Backend.check
            note = (
                ""
                if verified
                else f"(settings only: try `notifier send --backend {name}` to test delivery)"
            )
            rows.append((backend.describe(), "OK", note))
        finally:
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    width = max(len(label) for label, _, _ in rows)
    for label, result, detail in rows:
        sys.stdout.write(f"{label:<{width}}  {result:<6}  {detail}".rstrip() + "\n")
    return status


def _events_for(backend: Backend, config: Config) -> tuple[str, ...]:
    """The events whose templates ``backend`` would load, as the callback chooses them: its
    route's, else the configured ones (else the default ones), and ``progress`` only for backends
    that ask for it. ``load_config`` has rejected any event the callback would."""
    if backend.name in config.routes:
        wanted = config.routes[backend.name]
    else:
        wanted = DEFAULT_EVENTS if config.events is None else config.events
    return backend_events(wanted, backend.progress_interval)


# -- the parser -----------------------------------------------------------------------------
class _CommandParser(argparse.ArgumentParser):
    """A command's parser: arguments it does not know are reported with its own usage.

    By default argparse hands them up to ``notifier``'s parser, whose usage and
    "unrecognized arguments" then name the wrong command, and mention the words an
    unknown option left behind as if they were the mistake.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            unknown = [arg for arg in extras if arg.startswith("-") and arg != "-"]
            if not unknown:
                self.error(
                    f"unexpected argument(s): {' '.join(extras)} (quote a value with spaces)"
                )
            known = [s for action in self._actions for s in action.option_strings]
            named = []
            for arg in unknown:
                flag = arg.split("=", 1)[0]
                close = difflib.get_close_matches(flag, known, n=1)
                named.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
            self.error(f"unknown option(s) {', '.join(named)}; see {self.prog} --help")
        return parsed, extras


def _add_backend_arguments(parser: argparse.ArgumentParser, *, options: bool = True) -> None:
    parser.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="backend name (repeatable); default: the configuration file's backends "
        "(NOTIFIER_BACKENDS, notifier.toml, [tool.notifier]), else the console",
    )
    if options:
        parser.add_argument("--option", action="append", metavar="KEY=VALUE", help=OPTION_HELP)
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the configuration file (default: NOTIFIER_CONFIG, "
        "./notifier.toml, ./pyproject.toml [tool.notifier])",
    )


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for delivery, retries included (default {DEFAULT_TIMEOUT:g})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notifier",
        description="Notifications about transformers training runs, and any command.",
        epilog="Exit status: 0 success, 1 delivery or credentials failed, 2 configuration "
        "or usage error; `notifier run` exits with its command's status.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )

    listing = commands.add_parser("backends", help="list installed backends and their providers")
    listing.set_defaults(run=_list_backends)

    send = commands.add_parser(
        "send",
        help="send a test message",
        description="Send a test message through backends, waiting for delivery.",
    )
    _add_backend_arguments(send)
    _add_timeout(send)
    send.add_argument(
        "text",
        nargs="?",
        metavar="TEXT",
        help="the message, sent as written in the service's markup (default: a test line)",
    )
    send.set_defaults(run=_send)

    render = commands.add_parser(
        "render",
        help="preview a template against a realistic sample run",
        description="Print what a template renders for a sample run (context.sample_context).",
    )
    render.add_argument("event", metavar="EVENT", help=f"one of: {', '.join(EVENTS)}")
    render.add_argument(
        "--backend",
        metavar="NAME",
        help="render that backend's templates, parts and escaping (no credentials needed)",
    )
    render.add_argument(
        "--templates",
        type=Path,
        metavar="DIR",
        help="your templates directory (default: the configuration file's)",
    )
    render.add_argument("--part", metavar="PART", help="print one part only (email: subject)")
    render.add_argument("--config", metavar="PATH", help="the configuration file")
    render.set_defaults(run=_render)

    run = commands.add_parser(
        "run",
        help="run a command and notify when it starts, ends or fails",
        description="Run COMMAND; notify its start, then its end: exit status or signal, "
        "duration and, on failure, the last lines of its stderr. Its output is passed "
        "through and its exit status returned. SIGTERM and SIGHUP are passed on to it, "
        "and SIGINT unless it came from the terminal (which sends it to COMMAND already).",
        usage="notifier run [--backend NAME] [--option KEY=VALUE] [--config PATH] "
        "[--timeout SECONDS] -- COMMAND [ARGS...]",
    )
    _add_backend_arguments(run)
    _add_timeout(run)
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    run.set_defaults(run=_run)

    check = commands.add_parser(
        "check",
        help="validate the configuration and credentials",
        description="Build every configured backend, load its templates and verify its "
        "credentials (Slack: auth.test). Exit 0 all OK, 1 a check failed, 2 configuration "
        "error.",
    )
    _add_backend_arguments(check)
    check.set_defaults(run=_check)

    demo = commands.add_parser("demo", help="train a tiny model on CPU and notify")
    demo.add_argument(
        "--backend",
        action="append",
        help="backend name (repeatable); default: Slack if "
        "SLACK_BOT_TOKEN and SLACK_CHANNEL are set, else the console",
    )
    demo.add_argument("--epochs", type=int, default=3)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # transformers is chatty at INFO; the demo is about our messages.
    logging.getLogger("transformers").setLevel(logging.WARNING)
    try:
        return int(options.run(options))
    except ConfigurationError as exc:
        sys.stderr.write(f"notifier: {redact(str(exc))}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("notifier: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
