"""The `notifier` command, run as a real console script in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TOKEN
from notifier.cli import main
from slack_server import Behaviour, SlackServer

SCRIPT = Path(sys.executable).parent / "notifier"
COMMANDS = {"script": [str(SCRIPT)], "module": [sys.executable, "-m", "notifier"]}


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any notifier configuration, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SLACK_") and k not in ("ECHO_FILE", "PYTHONWARNINGS")
    }
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], cwd: Path, how: str = "script"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMANDS[how], *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("how", list(COMMANDS))
def test_backends_lists_names_and_providers(how: str, tmp_path: Path) -> None:
    result = run(["backends"], clean_env(), tmp_path, how)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "PROVIDED", "BY"]
    providers = {row.split()[0]: row.split()[1] for row in rows}
    assert providers["console"] == "notifier"
    assert providers["slack"] == "notifier"
    assert providers["echo"] == "notifier-echo"
    assert "JSON lines" in next(row for row in rows if row.startswith("echo "))
    assert list(providers) == sorted(providers)


def test_demo_runs_to_the_console(tmp_path: Path) -> None:
    result = run(["demo", "--epochs", "2"], clean_env(), tmp_path)
    assert result.returncode == 0, result.stderr
    headlines = [line for line in result.stderr.splitlines() if line.startswith("[notifier ")]
    expected = [
        "🚀 Training started: notifier-demo",
        "📈 notifier-demo: epoch 1/2",
        "📈 notifier-demo: epoch 2/2",
        "✅ Training finished: notifier-demo",
    ]
    assert [line.split("] ", 1)[1] for line in headlines] == expected
    assert "SLACK_BOT_TOKEN and SLACK_CHANNEL" in result.stderr  # the hint says how to use Slack
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_demo_posts_to_slack_when_configured(slack_server: SlackServer, tmp_path: Path) -> None:
    env = clean_env(
        SLACK_BOT_TOKEN=TOKEN, SLACK_CHANNEL="#demo", SLACK_BASE_URL=slack_server.base_url
    )
    result = run(["demo", "--epochs", "1"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    requests = slack_server.wait_for(3)
    assert len(requests) == 3
    texts = [r.body["text"] for r in requests]
    assert texts[0].startswith("🚀 Training started: notifier-demo")
    assert texts[1].startswith("📈 notifier-demo: epoch 1/1")
    assert texts[2].startswith("✅ Training finished: notifier-demo")
    for request in requests:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.body["channel"] == "#demo"
        assert request.body["blocks"][0]["type"] == "header"
    assert "[notifier " not in result.stderr  # Slack replaced the console default
    assert TOKEN not in result.stderr + result.stdout


def test_demo_with_rejected_token_exits_1_with_the_fix(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    slack_server.default = Behaviour("error", error="invalid_auth")
    env = clean_env(
        SLACK_BOT_TOKEN=TOKEN, SLACK_CHANNEL="#demo", SLACK_BASE_URL=slack_server.base_url
    )
    result = run(["demo", "--epochs", "1", "--backend", "slack"], env, tmp_path)
    assert result.returncode == 1, result.stderr
    assert "invalid_auth" in result.stderr and "SLACK_BOT_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert TOKEN not in result.stderr + result.stdout
    assert len(slack_server.posted()) == 1  # switched off after the first refusal


def test_demo_with_a_plugin_backend(tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl"
    result = run(
        ["demo", "--epochs", "1", "--backend", "echo"], clean_env(ECHO_FILE=str(out)), tmp_path
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line)["event"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert events == ["train_begin", "epoch_end", "train_end"]


def test_unknown_backend_exits_2_with_a_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (the same main() the script runs) to keep the suite fast.
    assert main(["demo", "--backend", "slak"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("notifier: unknown backend 'slak'. Did you mean 'slack'?")
    available = err.split("Available: ", 1)[1].split(".", 1)[0].split(", ")
    assert {"console", "echo", "slack"} <= set(available) and available == sorted(available)
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLACK_BOT_TOKEN": TOKEN}, "SLACK_CHANNEL"),
        ({"SLACK_CHANNEL": "#c"}, "SLACK_BOT_TOKEN"),
        (
            {"SLACK_CHANNEL": "#c", "SLACK_BOT_TOKEN": "https://hooks.slack.com/x"},
            "SLACK_BOT_TOKEN",
        ),
        (
            {"SLACK_CHANNEL": "#c", "SLACK_BOT_TOKEN": TOKEN, "SLACK_BASE_URL": "x"},
            "SLACK_BASE_URL",
        ),
    ],
    ids=["no-channel", "no-token", "url-token", "bad-base-url"],
)
def test_configuration_errors_exit_2_with_the_fix(
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In-process (the same main() the script runs) to keep the suite fast.
    for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "SLACK_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["demo", "--backend", "slack"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("notifier: slack backend: ") and expected in err
    assert TOKEN not in err and "hooks.slack.com" not in err


@pytest.mark.parametrize(
    ("args", "usage", "expected"),
    [
        ([], "usage: notifier [", "required"),
        (["nonsense"], "usage: notifier [", "invalid choice"),
        (["--bogus", "send"], "usage: notifier [", "unrecognized arguments: --bogus"),
        # "x" is taken as TEXT and "hi" left over: the mistake is --bogus, said by `send`.
        (
            ["send", "--bogus", "x", "hi"],
            "usage: notifier send ",
            "error: unknown option(s) --bogus;",
        ),
        (
            ["send", "--backnd", "slack", "hi"],
            "usage: notifier send ",
            "unknown option(s) --backnd (did you mean --backend?); see notifier send --help",
        ),
        (["send", "two", "words"], "usage: notifier send ", "unexpected argument(s): words"),
        (
            ["render", "train_end", "--parts=subject"],
            "usage: notifier render ",
            "unknown option(s) --parts (did you mean --part?)",
        ),
        (["check", "--bogus"], "usage: notifier check ", "unknown option(s) --bogus"),
        (["run", "--bogus", "--", "true"], "usage: notifier run ", "unknown option(s) --bogus"),
    ],
)
def test_usage_errors_exit_2_with_the_commands_usage(
    args: list[str], usage: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and expected in err, err
    assert "unrecognized arguments: --bogus hi" not in err
