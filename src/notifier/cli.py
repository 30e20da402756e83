"""The ``notifier`` command: list backends and run the demo."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import ConfigurationError
from .plugins import default_registry


def _backends(_: argparse.Namespace) -> int:
    rows = [(info.name, info.provider, info.cls.description) for info in default_registry().info()]
    width = max((len(name) for name, _, _ in rows), default=4)
    pwidth = max((len(provider) for _, provider, _ in rows), default=8)
    out = sys.stdout
    out.write(f"{'NAME':<{width}}  {'PROVIDED BY':<{pwidth}}  DESCRIPTION\n")
    for name, provider, description in rows:
        out.write(f"{name:<{width}}  {provider:<{pwidth}}  {description}\n")
    return 0


def _demo(options: argparse.Namespace) -> int:
    from .demo import run_demo

    stats = run_demo(options.backend or None, epochs=options.epochs)
    failed = sum(s["failed"] for s in stats.values())
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="notifier", description="Notifications about transformers training runs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("backends", help="list installed backends and their providers")
    listing.set_defaults(run=_backends)
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
        sys.stderr.write(f"notifier: {exc}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
