"""Runs that end abnormally (crash, caught error, Ctrl-C, SIGTERM) are reported once, and the
process ends exactly as it would without the notifier."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from conftest import TOKEN
from scripts import runner
from slack_server import Behaviour, SlackServer

CRASH = ["--crash-at", "6"]  # forward call 6: inside epoch 2, after 5 optimizer steps
SLOW = ["--slow", "0.02", "--epochs", "1000"]  # ends only when signalled


def _args(tmp_path: Path, server: SlackServer | None, *extra: str) -> list[str]:
    args = ["--output-dir", str(tmp_path / "out"), *extra]
    if server is not None:
        args += ["--base-url", server.base_url]
    return runner.command(*args)


def _traceback(stderr: str) -> str:
    """The printed traceback, from its header to the exception line."""
    match = re.search(r"^Traceback \(most recent call last\):\n.*?^\S[^\n]*", stderr, re.S | re.M)
    assert match, stderr
    return match.group(0)


def _errors(server: SlackServer) -> list[str]:
    return [t for t in server.texts() if t.split(":")[0] in ERROR_HEADLINES]


UNFINISHED = "⚠️ Training ended without finishing"
ERROR_HEADLINES = {
    "❌ Training failed",
    UNFINISHED,
    "⏹️ Training interrupted",
    "🛑 Training terminated",
}
#: Seconds the atexit handlers may take beyond flush_timeout (waking up, logging, a loaded host).
ATEXIT_MARGIN = 2.0


def test_uncaught_crash_is_reported_and_exits_as_before(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    env = runner.script_env(TOKEN)
    runs = runner.run_all(
        {
            "plain": (_args(tmp_path / "plain", None, *CRASH), env),
            "notified": (_args(tmp_path, slack_server, *CRASH), env),
        }
    )
    plain, notified = runs["plain"].result(), runs["notified"].result()

    assert plain.returncode == notified.returncode == 1
    assert _traceback(notified.stderr) == _traceback(plain.stderr)
    assert _traceback(plain.stderr).endswith("RuntimeError: boom at forward call 6")

    texts = slack_server.texts()
    # The crash report goes ahead of a progress message still queued (the outbox's rule).
    assert sorted(t.split("\n")[0] for t in texts) == [
        "❌ Training failed: out",
        "📈 out: epoch 1/2",
        "🚀 Training started: out",
    ]
    assert texts[0].startswith("🚀 Training started: out\n")
    (error,) = [t for t in texts if t.startswith("❌")]
    assert "\nRuntimeError: boom at forward call 6\n" in error
    assert re.search(r"\nAt step 5/8, epoch 1\.25, after \d+\.\ds on \S+\n", error), error
    # The traceback's tail, ending with the exception itself.
    tail = error.split("```")[1].strip()
    assert 'in forward\n    raise RuntimeError(f"boom at forward call' in tail
    assert tail.endswith("RuntimeError: boom at forward call 6")
    assert TOKEN not in notified.output


def test_caught_crash_is_reported_as_unfinished_by_exit(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    run = runner.run(_args(tmp_path, slack_server, *CRASH, "--catch"), runner.script_env(TOKEN))

    assert run.returncode == 0, run.stderr
    assert run.result["caught"] == "RuntimeError: boom at forward call 6"
    errors = _errors(slack_server)
    assert len(errors) == 1, slack_server.texts()
    # With its cause: the exception the calling code caught, and the traceback's tail.
    assert errors[0].startswith(
        "⚠️ Training ended without finishing: out\nRuntimeError: boom at forward call 6 "
        "(caught by the calling code; train() never ended)\n"
    )
    assert "At step 5/8" in errors[0]
    tail = errors[0].split("```")[1].strip()
    assert 'in forward\n    raise RuntimeError(f"boom at forward call' in tail
    assert tail.endswith("RuntimeError: boom at forward call 6")
    assert "notifier_noted_this_error" not in tail  # the trap's frame is not in the traceback
    # Sent from the atexit handler: the last message, after the script's own output.
    assert slack_server.texts()[-1] == errors[0]


@pytest.mark.parametrize(
    ("signum", "user_handler", "headline"),
    [
        (signal.SIGINT, False, "⏹️ Training interrupted: out"),
        (signal.SIGTERM, False, "🛑 Training terminated: out"),
        (signal.SIGTERM, True, "🛑 Training terminated: out"),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-user-handler"],
)
def test_signal_is_reported_and_ends_the_process_as_before(
    signum: signal.Signals,
    user_handler: bool,
    headline: str,
    slack_server: SlackServer,
    tmp_path: Path,
) -> None:
    env = runner.script_env(TOKEN)
    extra = [*SLOW, "--mark"] + (["--user-sigterm"] if user_handler else [])

    plain = runner.Live(_args(tmp_path / "plain", None, *extra), env)
    notified = runner.Live(_args(tmp_path, slack_server, *extra), env)
    plain.wait_for_line("training")
    plain.process.send_signal(signum)
    slack_server.wait_for(1, timeout=runner.TIMEOUT)  # the start message: training is on
    notified.process.send_signal(signum)
    before, after = plain.finish(), notified.finish()

    assert after.returncode == before.returncode == -signum
    if user_handler:
        for run in (before, after):
            assert "user SIGTERM handler ran" in run.stdout
    if signum == signal.SIGINT:
        assert _traceback(before.stderr).endswith("KeyboardInterrupt")
        assert _traceback(after.stderr).endswith("KeyboardInterrupt")
    errors = _errors(slack_server)
    assert len(errors) == 1, slack_server.texts()
    assert errors[0].startswith(headline + "\n")
    assert TOKEN not in after.output


def test_two_trainings_report_twice_and_restore_the_hooks(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    env = runner.script_env(TOKEN)
    runs = runner.run_all(
        {
            "plain": (_args(tmp_path / "plain", None, "--twice"), env),
            "notified": (_args(tmp_path, slack_server, "--twice"), env),
        }
    )
    plain, run = runs["plain"].result(), runs["notified"].result()

    assert run.returncode == plain.returncode == 0, run.stderr
    assert (run.result["loss"], run.result["loss2"]) == (
        plain.result["loss"],
        plain.result["loss2"],
    )
    headlines = [t.split("\n")[0].split(":")[0] for t in slack_server.texts()]
    assert headlines == 2 * ["🚀 Training started", "📈 out", "📈 out", "✅ Training finished"]
    # sys.excepthook and the SIGTERM handler are the script's own again.
    assert run.result["hooks_restored"] is True


@pytest.mark.parametrize("callback", ["same", "new"])
@pytest.mark.parametrize("second", ["crash", "sigterm"])
def test_a_run_after_a_caught_crash_is_guarded_as_the_first(
    second: str, callback: str, slack_server: SlackServer, tmp_path: Path
) -> None:
    env = runner.script_env(TOKEN)
    extra = [*CRASH, "--catch", "--then", "crash" if second == "crash" else "normal"]
    if second == "sigterm":
        extra += SLOW
    if callback == "new":
        extra.append("--new-callback")  # a second NotifierCallback: its own guard and outbox
    process = runner.Live(_args(tmp_path, slack_server, *extra), env)
    if second == "sigterm":
        slack_server.wait_for(4, timeout=runner.TIMEOUT)  # the second start message
        process.process.send_signal(signal.SIGTERM)
    run = process.finish()

    # The first run is reported as unfinished when the second begins, once; the second's
    # end is reported once too, and the process ends as it would without the notifier.
    texts = slack_server.texts()
    headlines = [t.split(":")[0] for t in texts]
    ending = "❌ Training failed" if second == "crash" else "🛑 Training terminated"
    starts_and_ends = [h for h in headlines if h != "📈 out"]  # progress may be overtaken
    if callback == "same":  # one outbox: in order
        assert starts_and_ends == ["🚀 Training started", UNFINISHED, "🚀 Training started", ending]
    else:  # two outboxes, each in order
        assert sorted(starts_and_ends) == sorted([UNFINISHED, ending] + 2 * ["🚀 Training started"])
    (unfinished,) = [t for t in texts if t.startswith(UNFINISHED)]
    assert "At step 5/" in unfinished  # the first run's
    if second == "crash":
        assert run.returncode == 1
        assert run.stderr.rstrip().endswith("\nRuntimeError: boom at forward call 7")
        (failed,) = [t for t in texts if t.startswith(ending)]
        assert "\nRuntimeError: boom at forward call 7\n" in failed
    else:
        assert run.returncode == -signal.SIGTERM
    assert "Error in sys.excepthook" not in run.stderr and "RecursionError" not in run.stderr


def test_ctrl_c_while_a_crash_is_flushed_stops_the_wait(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    # The user sees the traceback, the process lingers for a hung Slack: Ctrl-C ends the
    # wait at once, the exit flush included, and the crash's exit status stays.
    slack_server.default = Behaviour("hang")
    extra = [*CRASH, "--stamp", "--flush-timeout", "30", "--option", "timeout=60"]
    process = runner.Live(_args(tmp_path, slack_server, *extra), runner.script_env(TOKEN))
    process.wait_for_line("RuntimeError: boom at forward call 6", stream="stderr")
    interrupted = time.monotonic()
    process.process.send_signal(signal.SIGINT)
    run = process.finish()
    # Far from the 30 s flush_timeout (teardown of torch alone can take seconds under load).
    assert time.monotonic() - interrupted < 15, run.stderr
    assert run.returncode == 1
    assert "stopped waiting for pending messages" in run.stderr
    assert "Exception ignored" not in run.stderr


def test_a_crash_waits_for_a_hung_backend_once_within_flush_timeout(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    # The crash's flush and the atexit handler's share one deadline and one warning.
    slack_server.default = Behaviour("hang")
    flush_timeout = 3.0
    extra = [*CRASH, "--stamp", "--flush-timeout", str(flush_timeout), "--option", "timeout=60"]
    run = runner.run(_args(tmp_path, slack_server, *extra), runner.script_env(TOKEN))

    assert run.returncode == 1
    assert _traceback(run.stderr).endswith("RuntimeError: boom at forward call 6")
    gave_up = [w for w in run.warnings() if "gave up waiting" in w]
    assert len(gave_up) == 1, run.stderr
    assert "to slack #train after 3.0s (flush_timeout)" in gave_up[0]
    last_step = float(run.stdout.split("step 5 at ")[1].split()[0])
    atexit_done = float(run.stdout.split("atexit done at ")[1].split()[0])
    # From the last step before the crash to the atexit handlers being done.
    assert flush_timeout <= atexit_done - last_step <= flush_timeout + ATEXIT_MARGIN
    assert TOKEN not in run.output
