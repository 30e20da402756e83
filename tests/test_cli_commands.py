"""The send, render, run and check commands, against the loopback Slack and SMTP servers."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

import notifier
from conftest import TOKEN
from http_server import HTTPServer
from notifier.cli import escape_of, main, parse_options
from notifier.run import tail_text
from slack_server import Behaviour, SlackServer

SCRIPT = Path(sys.executable).parent / "notifier"
PY = sys.executable
HOST = socket.gethostname()


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No configuration file, no NOTIFIER_*, SLACK_* or SMTP_* settings from the outside."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("NOTIFIER_", "SLACK_", "SMTP_", "DISCORD_")):
            monkeypatch.delenv(name)


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch, slack_server: SlackServer) -> SlackServer:
    """The three variables `notifier --backend slack` reads, pointing at the loopback server."""
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("SLACK_CHANNEL", "#jobs")
    monkeypatch.setenv("SLACK_BASE_URL", slack_server.base_url)
    return slack_server


def script(args: list[str], cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    """The real console script, as users run it."""
    return subprocess.Popen([str(SCRIPT), *args], cwd=cwd, env=dict(os.environ), text=True, **popen)


# -- render ---------------------------------------------------------------------------------
def test_render_train_end_prints_a_realistic_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "train_end"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "✅ Training finished: bert-base-sst2",
        "2100 steps, 3 epochs in 31m 37s on gpu-node-07",
        "Final: train_loss 0.2512",
        "Eval: eval_loss 0.2874 · eval_accuracy 0.9128",
        "Best: eval_loss 0.2874 at runs/bert-base-sst2/checkpoint-1400",  # names the metric
        "Output: runs/bert-base-sst2",
    ]


def test_render_alert_sample_shows_the_value_it_alerts_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "alert"]) == 0
    headline, rule, _, train, *_ = capsys.readouterr().out.splitlines()
    assert headline.startswith("⚠️ bert-base-sst2: NaN in grad_norm at step 1400")
    assert rule == "Rule: grad_norm is NaN"
    assert "grad_norm NaN" in train  # not a finite grad_norm beside a NaN alert about it


def test_the_sample_has_the_names_a_real_run_has(tmp_path: Path) -> None:
    from transformers import TrainerState, TrainingArguments

    from notifier.context import CONTEXT_NAMES, RunTracker, sample_context

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,  # metric_for_best_model: "loss"
        use_cpu=True,
        report_to=[],
    )
    tracker = RunTracker()
    tracker.begin(args, TrainerState())
    real = tracker.context("train_end")
    assert real["metric_for_best_model"] == "eval_loss"  # as the Trainer compares it
    assert set(real) == set(sample_context("train_end")) == set(CONTEXT_NAMES)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[])
    tracker.begin(args, TrainerState())
    assert tracker.context("train_end")["metric_for_best_model"] is None


@pytest.mark.parametrize(
    ("args", "labels", "first_line"),
    [
        (["--backend", "email"], ["subject", "text", "html"], "==> subject <=="),
        (
            ["--backend", "email", "--part", "subject"],
            [],
            "❌ Training failed: bert-base-sst2 (torch.OutOfMemoryError)",
        ),
        (["--backend", "email", "--part", "html"], [], "<!DOCTYPE html>"),
        (["--backend", "discord"], [], "❌ Training failed: bert-base-sst2"),
        (["--backend", "slack", "--part", "text"], [], "❌ Training failed: bert-base-sst2"),
    ],
    ids=["email-all-parts", "email-subject", "email-html", "discord", "slack-text"],
)
def test_render_prints_each_part_labelled_or_the_one_chosen(
    args: list[str], labels: list[str], first_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No backend is configured: previews need no credentials.
    assert main(["render", "train_error", *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == first_line
    assert [line[4:-4] for line in out.splitlines() if line.startswith("==> ")] == labels
    assert "torch.OutOfMemoryError" in out


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ([], "Alert: <!channel> & *all*"),
        (["--backend", "slack"], "Alert: &lt;!channel&gt; &amp; *all*"),
        (["--backend", "discord"], r"Alert: \<!channel> & \*all\*"),
        (["--backend", "email", "--part", "text"], "Alert: <!channel> & *all*"),
    ],
    ids=["plain", "slack", "discord", "email"],
)
def test_render_escapes_values_as_the_backend_would(
    backend: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "alert.j2").write_text("Alert: {{ '<!channel> & *all*' }}\n", encoding="utf-8")
    assert main(["render", "alert", "--templates", str(templates), *backend]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected + "\n"
    assert captured.err == ""


class NeedsSettings(notifier.Backend):
    """A backend whose escaping depends on its options: no preview without building it."""

    name = "needs-settings"

    def __init__(self, marker: str = "!") -> None:
        self.marker = marker

    def escape(self, value: str) -> str:
        return value.replace("*", self.marker)


def test_escape_of_uses_a_bare_instance_only_when_it_can() -> None:
    from notifier_backends.slack import SlackBackend

    slack = escape_of(SlackBackend)  # no token, no channel: __init__ never runs
    assert slack is not None and slack("a<b>&c") == "a&lt;b&gt;&amp;c"
    assert escape_of(NeedsSettings) is None


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trian_end"], "unknown event 'trian_end'. Did you mean 'train_end'? Events: train_begin"),
        (["train_end", "--backend", "slak"], "unknown backend 'slak'. Did you mean 'slack'?"),
        (["train_end", "--backend", "email", "--part", "body"], "parts: subject, text, html"),
        (["train_end", "--templates", "missing"], "templates directory 'missing' does not exist"),
    ],
    ids=["event", "backend", "part", "templates"],
)
def test_render_errors_exit_2_with_the_fix(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("notifier: ") and expected in captured.err
    assert captured.out == ""


def test_render_uses_the_configured_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "save.j2").write_text("Saved {{ checkpoint }}\n", encoding="utf-8")
    (tmp_path / "notifier.toml").write_text('templates = "mine"\n', encoding="utf-8")
    assert main(["render", "save"]) == 0
    assert capsys.readouterr().out == "Saved runs/bert-base-sst2/checkpoint-1400\n"


# -- send -----------------------------------------------------------------------------------
def test_send_delivers_through_the_console_script(slack: SlackServer, tmp_path: Path) -> None:
    process = script(
        ["send", "--backend", "slack", "Disk <b>90%</b> & rising"],
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert out == "sent to slack #jobs\n"
    (request,) = slack.posted()
    assert request.body["channel"] == "#jobs"
    assert request.body["text"] == "Disk <b>90%</b> & rising"  # sent as written
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in out + err


def test_send_default_text_names_the_host(
    slack: SlackServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", "--backend", "slack"]) == 0
    assert slack.texts() == [f"🔔 Test message from notifier on {HOST}"]


@pytest.mark.parametrize(
    ("behaviour", "options", "expected"),
    [
        (
            Behaviour("error", error="invalid_auth"),
            [],
            "could not send the test message to slack #jobs: invalid_auth: Slack rejected the "
            "token: check SLACK_BOT_TOKEN",
        ),
        (
            Behaviour("error", error="channel_not_found"),
            [],
            "channel #jobs not found: check SLACK_CHANNEL",
        ),
        (
            Behaviour("status", status=502),
            ["--option", "max_attempts=1"],  # JSON: an int, as the backend requires
            "Slack answered HTTP 502",
        ),
    ],
    ids=["invalid-auth", "channel-not-found", "server-error"],
)
def test_send_failures_exit_1_with_the_reason(
    behaviour: Behaviour,
    options: list[str],
    expected: str,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slack.default = behaviour
    assert main(["send", "--backend", "slack", *options, "hello"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("notifier: ") and expected in captured.err
    assert captured.out == ""
    assert len(slack.posted()) == 1
    assert TOKEN not in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("args", "unset", "expected"),
    [
        (["--backend", "slack"], "SLACK_CHANNEL", "no channel given"),
        (
            ["--backend", "slack", "--option", "colour=blue"],
            "",
            "slack backend: unknown option(s) colour; accepted: channel, token, base_url,",
        ),
        (
            ["--backend", "slack", "--option", "chanel=#x"],
            "",
            "unknown option(s) chanel (did you mean channel?); accepted: channel, token,",
        ),
        (
            ["--backend", "console", "--option", "colour=blue"],
            "",
            "console backend: unknown option(s) colour; accepted: stream.",
        ),
        (["--backend", "slack", "--option", TOKEN], "", "--option takes KEY=VALUE"),
        (["--backend", "slack", "--option", "timeout=fast"], "", "timeout must be a number"),
        (["--backend", "slak"], "", "unknown backend 'slak'. Did you mean 'slack'?"),
        (
            ["--backend", "slack", "--backend", "console", "--option", "channel=#x"],
            "",
            "say which one it is for: --option slack.channel=…",
        ),
    ],
    ids=[
        "no-channel",
        "unknown-option",
        "misspelt-option",
        "console-option",
        "no-equals",
        "bad-type",
        "unknown-backend",
        "ambiguous",
    ],
)
def test_send_configuration_errors_exit_2_with_the_fix(
    args: list[str],
    unset: str,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if unset:
        monkeypatch.delenv(unset)
    assert main(["send", *args, "hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("notifier: ") and expected in err, err
    assert TOKEN not in err
    assert slack.requests == []


def test_a_secret_option_is_masked_and_warned_about(
    slack_server: SlackServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLACK_BASE_URL", slack_server.base_url)
    slack_server.default = Behaviour("error", error="invalid_auth")
    args = ["send", "--backend", "slack", "--option", f"token={TOKEN}", "--option", "channel=#c"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "puts a secret on the command line" in err and "SLACK_BOT_TOKEN" in err
    assert slack_server.posted()[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in err


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("channel=#alerts", "#alerts"),
        ("timeout=2.5", 2.5),
        ("max_attempts=1", 1),
        ("blocks=false", False),
        ('to=["a@x.org", "b@x.org"]', ["a@x.org", "b@x.org"]),
        ("to=a@x.org,b@x.org", "a@x.org,b@x.org"),
        ('tags={"team": "nlp"}', {"team": "nlp"}),
        ('name="007"', "007"),
        ("name=007", "007"),
        ("name=", ""),
        ("url=https://x.org/a=b", "https://x.org/a=b"),
        ("token=12345678", "12345678"),  # a secret stays text, even all digits
        ('headers={"A": "b"}', '{"A": "b"}'),  # the backend parses it, and never quotes it
    ],
)
def test_option_values_are_json_or_text(option: str, expected: Any) -> None:
    key = option.split("=", 1)[0]
    assert parse_options([option], ["slack"]) == {"slack": {key: expected}}


def test_prefixed_options_go_to_one_backend() -> None:
    options = ["slack.channel=#a", "email.to=a@x.org", "email.port=2525"]
    assert parse_options(options, ["slack", "email"]) == {
        "slack": {"channel": "#a"},
        "email": {"to": "a@x.org", "port": 2525},
    }


class Inbox:
    """An aiosmtpd handler keeping each message's recipients and bytes."""

    def __init__(self) -> None:
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append((list(envelope.rcpt_tos), bytes(envelope.original_content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    with socket.socket() as probe:  # aiosmtpd's Controller cannot bind port 0
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, server_hostname="localhost")
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.mark.parametrize(
    "to", ["to=ann@example.org,bob@example.net", 'to=["ann@example.org", "bob@example.net"]']
)
def test_send_email_with_a_list_of_recipients(
    to: str, smtp: tuple[Inbox, int], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, port = smtp
    options = ["host=127.0.0.1", f"port={port}", "sender=bot@example.org", to, "starttls=false"]
    args = ["send", "--backend", "email", *[x for o in options for x in ("--option", o)]]
    assert main([*args, "Quota reached\nDetails follow."]) == 0
    ((recipients, data),) = inbox.received
    assert recipients == ["ann@example.org", "bob@example.net"]
    assert b"Subject: Quota reached\r\n" in data
    assert capsys.readouterr().out == f"sent to email 127.0.0.1:{port} -> 2 recipients\n"


# -- run ------------------------------------------------------------------------------------
def _cases() -> list[Any]:
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    return [
        pytest.param(
            [PY, "-c", "print('out')"], 0, "✅ Finished: ", "Exit code 0 after", id="success"
        ),
        pytest.param(
            [PY, "-c", "import sys; sys.exit(3)"],
            3,
            "❌ Failed with exit code 3: ",
            "After ",
            id="exit-3",
        ),
        pytest.param([PY, "-c", kill], 137, "💀 Killed by SIGKILL: ", "Exit code 137", id="signal"),
        pytest.param(
            ["notifier-no-such-command", "--flag"],
            127,
            "❌ Could not start: notifier-no-such-command --flag",
            "command not found (exit code 127)",
            id="not-found",
        ),
        pytest.param(
            ["./missing.sh"],
            127,
            "❌ Could not start: ./missing.sh",
            "no such file or directory (exit code 127)",
            id="no-such-file",
        ),
        pytest.param(
            ["./not-executable.sh"],
            126,
            "❌ Could not start: ./not-executable.sh",
            "permission denied (exit code 126)",
            id="not-executable",
        ),
    ]


@pytest.mark.parametrize(("command", "status", "headline", "details"), _cases())
def test_run_reports_how_the_command_ended(
    command: list[str],
    status: int,
    headline: str,
    details: str,
    slack: SlackServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "not-executable.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    assert main(["run", "--backend", "slack", "--", *command]) == status
    *begin, end = slack.texts()
    if status in (126, 127):
        assert begin == []  # never started, so never announced
    else:
        assert begin == [f"▶️ Started: {shlex.join(command)}\nOn {HOST} in {tmp_path}"]
    assert end.startswith(headline)
    assert details in end.splitlines()[1] and f"on {HOST} in {tmp_path}" in end
    assert "stderr" not in end  # nothing was written to it
    captured = capfd.readouterr()
    assert captured.out == ("out\n" if status == 0 else "")  # stdout passes untouched
    if status in (126, 127):
        assert captured.err.startswith(f"notifier: {command[0]}: ")
    assert TOKEN not in captured.out + captured.err


def test_run_failure_quotes_the_end_of_stderr(
    slack: SlackServer, capfd: pytest.CaptureFixture[str]
) -> None:
    code = (
        "import sys\n"
        "for i in range(1, 31): print(f'line {i} <x>', file=sys.stderr)\n"
        "print(sys.argv[1], file=sys.stderr)\n"
        "print('\\x1b[31mcolour\\x1b[0m 10%\\r 50%\\r100%', file=sys.stderr)\n"
        "sys.exit(1)\n"
    )
    assert main(["run", "--backend", "slack", "--", PY, "-c", code, TOKEN]) == 1
    _, end = slack.texts()
    quoted = end.split("Last lines of stderr:\n```\n", 1)[1].removesuffix("\n```").splitlines()
    expected = [f"line {i} &lt;x&gt;" for i in range(13, 31)] + ["***", "100%"]
    assert quoted == expected  # the last 20 lines, as the terminal showed them, Slack-escaped
    assert TOKEN not in end  # masked in the command line and in the quote
    err = capfd.readouterr().err  # passed through whole and untouched, live (next test)
    assert [f"line {i} <x>" for i in range(1, 31)] == err.splitlines()[:30]
    assert "\x1b[31mcolour" in err


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", ""),
        (b"a\nb\n\n\n", "a\nb"),
        (b"\x1b[1;31merror\x1b[0m: boom\n", "error: boom"),
        (b"epoch 1:  10%\repoch 1:  90%\repoch 1: 100%\r\n", "epoch 1: 100%"),
        (b"caf\xc3\xa9 \xff\n", "café \ufffd"),
        (b"".join(b"%d\n" % i for i in range(100)), "\n".join(str(i) for i in range(80, 100))),
        (b"x" * 5000, "…" + "x" * 2999),
    ],
    ids=["empty", "blank-lines", "ansi", "progress-bar", "bad-utf8", "20-lines", "3000-chars"],
)
def test_stderr_tail_is_what_a_reader_saw(data: bytes, expected: str) -> None:
    assert tail_text(data) == expected


def test_run_passes_stderr_through_live(slack: SlackServer, tmp_path: Path) -> None:
    # The command waits on stdin after writing to stderr: "working" can only be read
    # from the wrapper's stderr while the command still runs.
    code = "import sys; print('working', file=sys.stderr, flush=True); sys.stdin.readline()"
    process = script(
        ["run", "--backend", "slack", "--", PY, "-c", code],
        tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line == "working\n":
            break
    assert seen[-1:] == ["working\n"], seen
    assert process.poll() is None  # still running: the line came live
    out, err = process.communicate("go\n", timeout=60)
    assert process.returncode == 0, err
    assert slack.texts()[1].startswith("✅ Finished: ")


@pytest.mark.parametrize(
    ("signum", "status", "headline"),
    [
        (signal.SIGTERM, 143, "🛑 Terminated (SIGTERM): "),
        (signal.SIGINT, 130, "⏹️ Interrupted (SIGINT): "),
        (signal.SIGHUP, 129, "💀 Killed by SIGHUP: "),
    ],
    ids=["SIGTERM", "SIGINT", "SIGHUP"],
)
def test_run_forwards_signals_to_the_command(
    signum: signal.Signals, status: int, headline: str, slack: SlackServer, tmp_path: Path
) -> None:
    code = "import signal; print('ready', flush=True); signal.pause()"
    process = script(
        ["run", "--backend", "slack", "--", PY, "-c", code],
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # no controlling terminal, as under a batch scheduler
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"  # the command runs, the handlers are set
    process.send_signal(signum)  # to the wrapper only, not its process group
    out, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    _, end = slack.texts()
    assert end.startswith(headline) and f"Exit code {status} after" in end
    if signum == signal.SIGINT:
        assert "KeyboardInterrupt" in end and "KeyboardInterrupt" in err


def test_run_exit_code_3_through_the_console_script(slack: SlackServer, tmp_path: Path) -> None:
    process = script(
        ["run", "--backend", "slack", "--", PY, "-c", "import sys; sys.exit(3)"],
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 3, err
    assert (out, err) == ("", "")
    begin, end = (r.body for r in slack.wait_for(2))
    assert begin["text"].startswith(f"▶️ Started: {PY} -c 'import sys; sys.exit(3)'")
    assert end["text"].startswith("❌ Failed with exit code 3: ")
    assert end["blocks"][0]["text"]["text"].startswith("❌ Failed with exit code 3: ")


def test_run_messages_carry_plain_values_for_webhooks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = HTTPServer()
    try:
        monkeypatch.setenv("NOTIFIER_WEBHOOK_URL", server.url_for("/hook"))
        assert main(["run", "--backend", "webhook", "--", PY, "-c", "raise SystemExit(4)"]) == 4
        begin, end = server.bodies()
    finally:
        server.close()
    assert begin["event"] == "run_begin" and begin["exit_code"] is None
    assert end["event"] == "run_error"
    assert (end["exit_code"], end["signal"], end["failure"]) == (4, None, None)
    assert (end["host"], end["cwd"]) == (HOST, str(tmp_path))
    assert end["command"] == shlex.join([PY, "-c", "raise SystemExit(4)"])
    assert end["elapsed"] >= 0


def test_run_defaults_to_the_configured_backends(
    slack: SlackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notifier.toml").write_text(
        '[backends.slack]\nchannel = "#from-file"\n', encoding="utf-8"
    )
    monkeypatch.delenv("SLACK_CHANNEL")  # set, it would override the file's channel
    assert main(["run", PY, "-c", "pass"]) == 0  # no "--": allowed when unambiguous
    assert [r.body["channel"] for r in slack.posted()] == ["#from-file", "#from-file"]


@pytest.mark.parametrize(
    ("env", "args", "channel"),
    [
        ({}, [], "#from-file"),
        ({"SLACK_CHANNEL": "#from-env"}, [], "#from-env"),
        ({"SLACK_CHANNEL": "#from-env"}, ["--option", "channel=#from-cli"], "#from-cli"),
    ],
    ids=["file", "environment-beats-file", "command-line-beats-environment"],
)
def test_send_options_come_from_the_command_line_then_the_environment_then_the_file(
    env: dict[str, str],
    args: list[str],
    channel: str,
    slack: SlackServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "notifier.toml").write_text(
        '[backends.slack]\nchannel = "#from-file"\n', encoding="utf-8"
    )
    monkeypatch.delenv("SLACK_CHANNEL")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["send", *args, "hi"]) == 0
    assert capsys.readouterr().out == f"sent to slack {channel}\n"
    assert [r.body["channel"] for r in slack.posted()] == [channel]


def test_send_names_the_file_and_key_of_an_unknown_option(
    slack: SlackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notifier.toml"
    config.write_text('[backends.slack]\nchanel = "#x"\n', encoding="utf-8")
    assert main(["send", "hi"]) == 2
    assert capsys.readouterr().err.startswith(
        f"notifier: {config}: backends.slack.chanel is not an option of the slack backend. "
        "Did you mean 'channel'? Options: channel, token,"
    )
    assert slack.requests == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backend", "slack", "--"], "notifier run needs a command"),
        (["--backend", "slack", "--", PY, "-c", "open('ran', 'w')"], "no channel given"),
    ],
    ids=["no-command", "misconfigured"],
)
def test_run_configuration_errors_exit_2_before_running(
    args: list[str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
    assert main(["run", *args]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()


def test_run_keeps_the_exit_status_when_slack_refuses(
    slack: SlackServer, capfd: pytest.CaptureFixture[str]
) -> None:
    slack.default = Behaviour("error", error="invalid_auth")
    assert main(["run", "--backend", "slack", "--", PY, "-c", "raise SystemExit(5)"]) == 5
    err = capfd.readouterr().err
    assert "could not send the run_begin message to slack #jobs: invalid_auth" in err
    assert len(slack.posted()) == 1  # switched off after the first refusal
    assert TOKEN not in err


# -- check ----------------------------------------------------------------------------------
CheckCase = tuple[list[str], Callable[[SlackServer], None], int, list[str]]


def _refuse(server: SlackServer) -> None:
    server.default = Behaviour("error", error="invalid_auth")


@pytest.mark.parametrize(
    ("args", "setup", "status", "lines"),
    [
        (["--backend", "slack"], lambda s: None, 0, ["slack #jobs  OK"]),
        (
            ["--backend", "slack", "--backend", "console"],
            lambda s: None,
            0,
            [
                "slack #jobs  OK",
                "console      OK      (settings only: try `notifier send --backend console` "
                "to test delivery)",
            ],
        ),
        (
            ["--backend", "slack"],
            _refuse,
            1,
            [
                "slack #jobs  FAILED  slack backend: auth.test failed: invalid_auth: Slack "
                "rejected the token: check SLACK_BOT_TOKEN (a bot token, xoxb-…)"
            ],
        ),
        (
            ["--backend", "slack", "--backend", "discord"],
            lambda s: None,
            2,
            [
                "slack #jobs  OK",
                "discord      FAILED  discord backend: no webhook_url given. Pass it as an "
                "option or set the DISCORD_WEBHOOK_URL environment variable.",
            ],
        ),
    ],
    ids=["ok", "no-credentials-to-check", "refused", "misconfigured"],
)
def test_check_prints_one_line_per_backend(
    args: list[str],
    setup: Callable[[SlackServer], None],
    status: int,
    lines: list[str],
    slack: SlackServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    setup(slack)
    assert main(["check", *args]) == status
    captured = capsys.readouterr()
    assert captured.out.splitlines() == lines
    assert len(slack.posted("auth.test")) == 1
    assert slack.posted() == []  # checking never posts
    assert TOKEN not in captured.out + captured.err


def test_check_reads_the_configuration_file_and_its_templates(
    slack: SlackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "train_end.j2").write_text("{{ run_nam }}\n", encoding="utf-8")
    config = tmp_path / "notifier.toml"
    config.write_text('backends = ["slack"]\ntemplates = "tpl"\n', encoding="utf-8")
    assert main(["check"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"config: {config}"
    assert out[1].startswith("slack  FAILED  template for event 'train_end'")
    assert "Did you mean 'run_name'?" in out[1]
    (tmp_path / "tpl" / "train_end.j2").write_text("{{ run_name }}\n", encoding="utf-8")
    assert main(["check"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "slack #jobs  OK"


def test_check_trial_renders_the_events_the_callback_sends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # save is not a default event: its render-time problem does not stop the callback either.
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "save.j2").write_text('{% include "_gone.j2" %}\n', encoding="utf-8")
    (tmp_path / "notifier.toml").write_text('templates = "tpl"\n', encoding="utf-8")
    assert main(["check", "--backend", "console"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("console  OK")
    notifier.NotifierCallback(["console"]).flush()
    (tmp_path / "notifier.toml").write_text(
        'templates = "tpl"\nevents = ["save"]\n', encoding="utf-8"
    )
    assert main(["check", "--backend", "console"]) == 2
    assert "_gone.j2" in capsys.readouterr().out
    with pytest.raises(notifier.TemplateError, match="_gone.j2"):
        notifier.NotifierCallback(["console"])


def test_check_connects_to_the_mail_server(
    smtp: tuple[Inbox, int], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, port = smtp
    options = ["host=127.0.0.1", f"port={port}", "sender=bot@example.org", "to=a@example.org"]
    args = [x for o in [*options, "starttls=false"] for x in ("--option", o)]
    assert main(["check", "--backend", "email", *args]) == 0
    assert capsys.readouterr().out == f"email 127.0.0.1:{port} -> 1 recipient  OK\n"
    assert inbox.received == []  # connected and greeted, never sent


def test_check_without_configuration_checks_the_console(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("no backend configured") and out[0].endswith("the default, console")
    assert out[1].startswith("console  OK")


PROGRESS_ROUTE = """
backends = ["console"]
events = ["train_begin", "train_end"]

[routes]
console = ["progress", "train_end"]
"""


def test_check_rejects_what_the_callback_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "notifier.toml"
    config.write_text(PROGRESS_ROUTE, encoding="utf-8")
    assert main(["check"]) == 2
    captured = capsys.readouterr()
    problem = f"{config}: routes.console names 'progress', which cannot be chosen"
    assert captured.err.startswith(f"notifier: {problem}")
    assert "OK" not in captured.out
    with pytest.raises(notifier.ConfigurationError, match=re.escape(problem)):
        notifier.NotifierCallback()
    config.write_text(PROGRESS_ROUTE.replace('"progress", ', ""), encoding="utf-8")
    assert main(["check"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("console  OK")
    notifier.NotifierCallback().flush()


def test_check_reports_what_the_callback_would_refuse_or_ignore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notifier.toml").write_text(
        'plots = true\n[routes]\nemail = ["train_error"]\n', encoding="utf-8"
    )
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["check", "--backend", "console"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "note: routes.email is ignored: email is not among the backends (console)"
    assert out[2].startswith("plots    FAILED  ") and "matplotlib" in out[2]
    assert out[3].startswith("console  OK")


def test_check_with_an_invalid_configuration_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notifier.toml").write_text("backends = [\n", encoding="utf-8")
    assert main(["check"]) == 2
    assert "notifier.toml is not valid TOML" in capsys.readouterr().err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for command in ("backends", "send", "render", "run", "check", "demo"):
        assert f"    {command} " in out


def test_threads_are_not_left_reading(slack: SlackServer) -> None:
    before = {t.name for t in threading.enumerate()}
    assert main(["run", "--backend", "slack", "--", PY, "-c", "pass"]) == 0
    assert "notifier-run-stderr" not in {t.name for t in threading.enumerate()} - before
