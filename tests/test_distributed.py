"""Under torchrun (2 CPU processes, gloo) Slack hears each event once, a crash on one rank
is reported by that rank with its real exception, and a SIGTERM to the job once."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

from conftest import TOKEN
from scripts import runner
from slack_server import SlackServer

#: torchrun, two processes, and whatever they do: killed (and failed) after this long.
TIMEOUT = 180.0


def _torchrun_args(tmp_path: Path, server: SlackServer, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(runner.free_port()),
        str(runner.SCRIPT),
        "--output-dir",
        str(tmp_path / "out"),
        "--base-url",
        server.base_url,
        *extra,
    ]


def _torchrun(tmp_path: Path, server: SlackServer, *extra: str) -> runner.Run:
    args = _torchrun_args(tmp_path, server, *extra)
    return runner.run(args, runner.script_env(TOKEN), timeout=TIMEOUT)


def test_each_event_is_sent_once(slack_server: SlackServer, tmp_path: Path) -> None:
    run = _torchrun(tmp_path, slack_server)

    assert run.returncode == 0, run.stderr
    assert run.stdout.count('"returned_at"') == 2  # both ranks trained
    headlines = [t.split("\n")[0] for t in slack_server.texts()]
    assert headlines == [
        "🚀 Training started: out",
        "📈 out: epoch 1/2",
        "📈 out: epoch 2/2",
        "✅ Training finished: out",
    ]
    assert "(2 processes)" in slack_server.texts()[0]
    assert TOKEN not in run.output


def test_a_crash_on_one_rank_is_reported_by_that_rank(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    run = _torchrun(tmp_path, slack_server, "--crash-at", "3", "--crash-rank", "1")

    assert run.returncode == 1, run.stderr
    errors = [t for t in slack_server.texts() if not t.startswith(("🚀", "📈", "✅"))]
    by_rank_1 = [t for t in errors if "(rank 1 of 2)" in t]
    assert len(by_rank_1) == 1, errors
    report = by_rank_1[0]
    assert report.startswith("❌ Training failed: out\n")
    assert "\nRuntimeError: boom at forward call 3\n" in report
    assert f"on {socket.gethostname()} (rank 1 of 2)" in report
    assert report.rstrip("`\n").endswith("RuntimeError: boom at forward call 3")
    # Rank 0 may report its own, secondary failure (gloo's "connection closed"), once at
    # most, and never as the root cause.
    others = [t for t in errors if t not in by_rank_1]
    assert len(others) <= 1 and all("(rank 0 of 2)" in t and "boom" not in t for t in others)
    assert TOKEN not in run.output


def test_a_sigterm_to_the_job_is_reported_once_by_rank_zero(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    # As SLURM preempts: SIGTERM to the whole process group (torchrun passes it on as well,
    # so each rank gets it twice).
    args = _torchrun_args(tmp_path, slack_server, "--slow", "0.02", "--epochs", "1000", "--mark")
    job = runner.Live(args, runner.script_env(TOKEN), session=True)
    job.wait_for_line("training")  # past step 1 on one rank, so past train_begin on both
    slack_server.wait_for(1, timeout=TIMEOUT)
    os.killpg(job.process.pid, signal.SIGTERM)
    run = job.finish(TIMEOUT)

    assert run.returncode != 0
    errors = [t for t in slack_server.texts() if not t.startswith(("🚀", "📈"))]
    assert len(errors) == 1, errors
    assert errors[0].startswith("🛑 Training terminated: out\n")
    assert "(rank 0 of 2)" in errors[0]
    assert TOKEN not in run.output
