"""The README documents what the code offers: context names, events and every built-in backend."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from notifier.context import CONTEXT_NAMES
from notifier.templates import EVENTS

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", list(CONTEXT_NAMES))
def test_context_name_is_in_the_readme_table(name: str) -> None:
    assert re.search(rf"^\| `{name}` \| {re.escape(CONTEXT_NAMES[name])} \|$", README, re.M)


@pytest.mark.parametrize("event", EVENTS)
def test_event_is_in_the_readme_events_table(event: str) -> None:
    assert re.search(rf"^\| `{event}` \|", README, re.M)


BUILTINS = [
    ep.name
    for ep in metadata.entry_points(group="notifier")
    if ep.dist is not None and ep.dist.name == "notifier"
]


@pytest.mark.parametrize("backend", BUILTINS)
def test_builtin_backend_has_a_readme_section(backend: str) -> None:
    assert f"\n### {backend}\n" in README


def test_readme_names_exactly_two_setup_commands() -> None:
    for marker in ("<!-- demo-command -->", "<!-- test-command -->"):
        assert README.count(marker) == 1
    assert "notifier demo" in README.split("<!-- demo-command -->")[1].split("```")[1]


def test_ci_runs_the_readme_test_command() -> None:
    readme = README.split("<!-- test-command -->")[1].split("```")[1].strip().splitlines()[-1]
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text(encoding="utf-8")
    assert readme in ci.splitlines()
