"""Run ends that depend on the process around the run: a collected callback, a notebook,
another run on another thread."""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TOKEN, RecordingBackend
from notifier import NotifierCallback, guard
from scripts import runner
from scripts.lifecycle import EVENTS, Gate
from slack_server import Behaviour, SlackServer
from tiny import TinyRegressor, make_trainer

SCRIPT = Path(__file__).parent / "scripts" / "lifecycle.py"


def _lifecycle(scenario: str, tmp_path: Path, *extra: str) -> tuple[runner.Run, dict[str, Any]]:
    args = [sys.executable, str(SCRIPT), scenario, "--output-dir", str(tmp_path / "out"), *extra]
    run = runner.run(args, runner.script_env(TOKEN))
    assert run.returncode == 0, run.stderr
    return run, json.loads(run.stdout.strip().splitlines()[-1])


def test_messages_of_a_collected_callback_are_delivered_at_exit(
    slack_server: SlackServer, tmp_path: Path
) -> None:
    # Slow answers: most of the run's messages are still queued when the script ends.
    slack_server.default = Behaviour(delay=0.3)
    run, result = _lifecycle("collected", tmp_path, "--base-url", slack_server.base_url)

    assert result == {"collected": True}
    headlines = [t.split("\n")[0] for t in slack_server.texts()]
    assert headlines == [
        "🚀 Training started: out",
        "📈 out: epoch 1/2",
        "📈 out: epoch 2/2",
        "✅ Training finished: out",
    ]
    assert run.warnings() == []


def test_a_notebook_cell_reports_only_the_run_it_ran(tmp_path: Path) -> None:
    _, result = _lifecycle("notebook", tmp_path)

    assert result["raised"] == {
        "background": None,
        "background, later": None,
        "crash": "RuntimeError",
        "caught": None,
    }
    # Training on a thread the cell started goes on after the cell and ends normally.
    assert result["background"] == ["train_begin", "train_end"]
    # A train() of the cell's own: the cell's error, or an end that was never reached.
    assert result["crash"] == ["train_begin", "train_error:crash"]
    assert result["caught"] == ["train_begin", "train_error:unfinished"]


@pytest.fixture
def process_hooks() -> Iterator[None]:
    """Put back every process-wide hook a crash guard may have left installed."""
    saved = sys.excepthook, threading.excepthook, signal.getsignal(signal.SIGTERM)
    yield
    sys.excepthook, threading.excepthook = saved[0], saved[1]
    signal.signal(signal.SIGTERM, saved[2])


def test_a_run_training_on_another_thread_is_not_taken_for_abandoned(
    tmp_path: Path, process_hooks: None
) -> None:
    # A new run retires an unfinished earlier run of its own thread, not one still training.
    first, second = RecordingBackend(), RecordingBackend()
    gate = Gate()
    background = NotifierCallback([first], events=EVENTS)
    thread = threading.Thread(target=make_trainer(tmp_path / "a", [background, gate]).train)
    thread.start()
    assert gate.reached.wait(runner.TIMEOUT)
    foreground = NotifierCallback([second], events=EVENTS)
    make_trainer(tmp_path / "b", [foreground]).train()
    gate.go.set()
    thread.join(runner.TIMEOUT)

    assert background.flush(10) and foreground.flush(10)
    assert first.events == ["train_begin", "train_end"]
    assert second.events == ["train_begin", "train_end"]


class Hung(RecordingBackend):
    """Never answers until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def send(self, message: Any) -> None:
        self.release.wait(30)
        super().send(message)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_training_thread_crash_leaves_the_exit_deadline_alone(
    tmp_path: Path, notifier_logs: pytest.LogCaptureFixture
) -> None:
    # The process goes on after a thread's crash: its bounded wait must not use up the
    # wait the process is owed at exit (another run's end would be lost then).
    hung = Hung()
    callback = NotifierCallback([hung], events=["train_error"], flush_timeout=0.5, config=False)
    trainer = make_trainer(tmp_path / "run", [callback], model=TinyRegressor(crash_at=2))
    thread = threading.Thread(target=trainer.train)
    thread.start()
    thread.join()
    try:
        assert any("gave up waiting" in r.getMessage() for r in notifier_logs.records)
        assert guard._exit_deadline is None
    finally:
        hung.release.set()
        assert callback.flush(10)
    assert hung.events == ["train_error"]
