"""Running tests/scripts/train_tiny.py in a fresh process and reading what it printed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("train_tiny.py")
#: Every process of a test is killed after this many seconds, so a hang fails, not stalls.
TIMEOUT = 120.0


def script_env(token: str, **extra: str) -> dict[str, str]:
    """The environment for a run: the Slack token and channel, one thread, nothing inherited
    that would point the backend elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "NOTIFIER_"))}
    env.update(
        SLACK_BOT_TOKEN=token,
        SLACK_CHANNEL="#train",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


@dataclass
class Run:
    """A finished process: exit status, output and when it ended (wall clock)."""

    returncode: int
    stdout: str
    stderr: str
    ended_at: float

    @property
    def result(self) -> dict[str, Any]:
        """The JSON the script prints last (train()'s loss, the weights, ...)."""
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{") and '"returned_at"' in line:
                return dict(json.loads(line))
        raise AssertionError(f"no result line in stdout:\n{self.stdout}\n{self.stderr}")

    @property
    def exit_seconds(self) -> float:
        """Seconds from train() returning to the process having ended."""
        return self.ended_at - float(self.result["returned_at"])

    @property
    def atexit_seconds(self) -> float:
        """Seconds from train() returning to the atexit handlers being done: the time the
        notifier held the exit up, without the interpreter's own teardown."""
        for line in self.stdout.splitlines():
            if line.startswith("atexit done at "):
                return float(line.rsplit(" ", 1)[1]) - float(self.result["returned_at"])
        raise AssertionError(f"atexit handlers never finished:\n{self.stdout}\n{self.stderr}")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def warnings(self, logger: str = "notifier") -> list[str]:
        """The WARNING lines the notifier loggers wrote (logging.basicConfig's format)."""
        return [
            line
            for line in self.stderr.splitlines()
            if line.startswith((f"WARNING:{logger}:", f"WARNING:{logger}."))
        ]


class Live:
    """A running process whose output is read as it comes, to wait for a line."""

    def __init__(self, args: list[str], env: dict[str, str], *, session: bool = False) -> None:
        self.process = start(args, env, session=session)
        self._lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True) for name in self._lines
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        stream = getattr(self.process, name)
        for line in stream:
            with self._changed:
                self._lines[name].append(line)
                self._changed.notify_all()
        stream.close()

    def wait_for_line(self, prefix: str, timeout: float = TIMEOUT, stream: str = "stdout") -> str:
        """Block until ``stream`` (stdout or stderr) has a line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines[stream]:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.process.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(
                        f"no {prefix!r} line: {''.join(self._lines['stdout'])}"
                        f"{''.join(self._lines['stderr'])}"
                    )
                self._changed.wait(min(left, 1.0))

    def finish(self, timeout: float = TIMEOUT) -> Run:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"{self.process.args!r} still running after {timeout}s") from None
        ended = time.time()
        for reader in self._readers:
            reader.join(timeout)
        return Run(
            self.process.returncode,
            "".join(self._lines["stdout"]),
            "".join(self._lines["stderr"]),
            ended,
        )


def command(*args: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *args]


def start(args: list[str], env: dict[str, str], *, session: bool = False) -> subprocess.Popen[str]:
    """Start ``args``; with ``session``, as the leader of a new process group (for killpg)."""
    return subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )


def finish(process: subprocess.Popen[str], timeout: float = TIMEOUT) -> Run:
    """Wait for ``process`` (killing it after ``timeout``) and collect what it wrote."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"{process.args!r} still running after {timeout}s\n{stdout}\n{stderr}"
        ) from None
    return Run(process.returncode, stdout, stderr, time.time())


def run(args: list[str], env: dict[str, str], timeout: float = TIMEOUT) -> Run:
    return finish(start(args, env), timeout)


Job = tuple[list[str], dict[str, str]]  # (command, environment)


def run_all(jobs: dict[str, Job], workers: int = 4) -> dict[str, Future[Run]]:
    """Start every job, ``workers`` at a time; each Run's end time is taken as it ends.

    Most of a faulty run is spent waiting (retries, flush), so running them side by
    side keeps a table of them from adding up.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="script")
    futures = {name: pool.submit(run, args, env) for name, (args, env) in jobs.items()}
    pool.shutdown(wait=False)
    return futures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
