"""Delivery faults (Slack errors, rate limits, resets, hangs, broken backends and templates)
never change training, its exit code or exit time, and are retried or reported as specified."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import TOKEN, RecordingBackend, all_output
from notifier import NotifierCallback, get_backend
from scripts import runner
from slack_server import Behaviour, SlackServer
from tiny import make_trainer

#: The four messages of a normal two-epoch run, in order.
RUN_MESSAGES = (
    "🚀 Training started",
    "📈 out: epoch 1/2",
    "📈 out: epoch 2/2",
    "✅ Training finished",
)
#: Seconds the exit may take beyond flush_timeout: in the atexit handlers (waking up,
#: logging), and for the whole process (torch's teardown, on a loaded 2-core machine).
ATEXIT_MARGIN = 2.0
EXIT_MARGIN = 20.0
SECRET_PART = TOKEN.rsplit("-", 1)[-1]


@dataclass
class Fault:
    """One row of the fault table: what the server does and what the run must show."""

    name: str
    setup: Callable[[SlackServer], None]
    options: dict[str, Any] = field(default_factory=dict)
    flush_timeout: float = 10.0
    url: str | None = None
    #: Messages that must reach Slack (in order, duplicates from retries removed).
    delivered: tuple[str, ...] = ()
    #: A regex one notifier warning must match; None: no warning at all (nothing lost).
    warning: str | None = None
    #: Extra checks on the server's requests and the run.
    check: Callable[[SlackServer, runner.Run], None] | None = None


def _default(behaviour: Behaviour) -> Callable[[SlackServer], None]:
    def setup(server: SlackServer) -> None:
        server.default = behaviour

    return setup


def _script(*behaviours: Behaviour) -> Callable[[SlackServer], None]:
    def setup(server: SlackServer) -> None:
        server.script(*behaviours)

    return setup


def _each_message_tried_twice(server: SlackServer, run: runner.Run) -> None:
    texts = server.texts()
    # max_attempts=2: the first message went out exactly twice, no message more often (the
    # last one may have been cut short by flush_timeout).
    assert texts and texts.count(texts[0]) == 2, texts
    assert all(texts.count(t) <= 2 for t in texts), texts
    # Backoff: 0.5 s, plus up to 1 s of jitter.
    first, second = server.posted()[:2]
    assert second.at - first.at >= 0.5, second.at - first.at


def _retried(times: int) -> Callable[[SlackServer, runner.Run], None]:
    def check(server: SlackServer, run: runner.Run) -> None:
        texts = server.texts()
        assert len(texts) == len(RUN_MESSAGES) + times, texts
        assert texts[: times + 1] == [texts[0]] * (times + 1)  # the same message again

    return check


def _retry_after_honoured(server: SlackServer, run: runner.Run) -> None:
    _retried(1)(server, run)
    first, second = server.posted()[:2]
    assert first.body["text"] == second.body["text"]
    gap = second.at - first.at
    # Retry-After: 1, plus slack_sdk-style jitter of up to 1 s.
    assert 1.0 <= gap < 3.0, f"retried after {gap:.2f}s"


def _not_retried(server: SlackServer, run: runner.Run) -> None:
    # Not retried, and nothing more sent once the backend was switched off.
    assert len(server.posted()) == 1, server.texts()
    assert sum("invalid_auth" in line for line in run.warnings()) == 1, run.stderr


def _bounded_by_flush_timeout(server: SlackServer, run: runner.Run) -> None:
    # The first request hangs for the whole run (timeout=30): only flush_timeout ends it.
    assert len(server.posted()) == 1
    assert run.atexit_seconds >= 2.0, run.atexit_seconds


FAULTS = [
    Fault(
        "500-always",
        _default(Behaviour("status", status=500)),
        options={"max_attempts": 2},
        flush_timeout=5,
        warning=r"could not deliver the train_begin message: Slack answered HTTP 500$",
        check=_each_message_tried_twice,
    ),
    Fault(
        "500-twice-then-ok",
        _script(Behaviour("status", status=500), Behaviour("status", status=500)),
        delivered=RUN_MESSAGES,
        warning=r"chat\.postMessage was delivered after 2 retries \(HTTP 500, HTTP 500\)$",
        check=_retried(2),
    ),
    Fault(
        "429-retry-after-1",
        _script(Behaviour("ratelimited", retry_after=1)),
        delivered=RUN_MESSAGES,
        warning=r"chat\.postMessage was delivered after 1 retry \(rate limited, Retry-After 1s\)$",
        check=_retry_after_honoured,
    ),
    Fault(
        "invalid_auth",
        _default(Behaviour("error", error="invalid_auth")),
        warning=r"invalid_auth: Slack rejected the token: check SLACK_BOT_TOKEN .*switched off",
        check=_not_retried,
    ),
    Fault(
        "connection-reset",
        _default(Behaviour("reset")),
        options={"max_attempts": 2},
        flush_timeout=5,
        warning=r"could not deliver the train_begin message: Slack unreachable: "
        r"ConnectionResetError",
        check=_each_message_tried_twice,
    ),
    Fault(
        "latency-500ms",
        _default(Behaviour(delay=0.5)),
        delivered=RUN_MESSAGES,
    ),
    Fault(
        "hung-server",
        _default(Behaviour("hang")),
        options={"timeout": 30},
        flush_timeout=2,
        warning=r"gave up waiting for 4 message\(s\) to slack #train after 2\.0s \(flush_timeout\)",
        check=_bounded_by_flush_timeout,
    ),
    Fault(
        "unresolvable-host",
        lambda server: None,
        url="http://nonexistent.invalid/api/",
        options={"max_attempts": 2},
        flush_timeout=5,
        warning=r"could not deliver the train_begin message: Slack unreachable: URLError: ",
    ),
]


BASELINE = "no-callback"


@dataclass
class Runs:
    """The table's processes (and the baseline's), each with its row's server."""

    futures: dict[str, Future[runner.Run]]
    servers: dict[str, SlackServer]


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """Every row's run, and the baseline without the callback, started side by side."""
    servers = {fault.name: SlackServer() for fault in FAULTS}
    jobs: dict[str, runner.Job] = {}
    out = tmp_path_factory.mktemp("faults")
    env = runner.script_env(TOKEN)
    # Steps that take a while, so that retries happen while training runs.
    slow = ["--slow", "0.05"]
    jobs[BASELINE] = (runner.command("--output-dir", str(out / BASELINE / "out"), *slow), env)
    for fault in FAULTS:
        server = servers[fault.name]
        fault.setup(server)
        args = [
            *slow,
            "--output-dir",
            str(out / fault.name / "out"),
            "--base-url",
            fault.url or server.base_url,
            "--flush-timeout",
            str(fault.flush_timeout),
        ]
        for key, value in fault.options.items():
            args += ["--option", f"{key}={json.dumps(value)}"]
        jobs[fault.name] = (runner.command(*args), env)
    futures = runner.run_all(jobs)
    try:
        yield Runs(futures, servers)
    finally:
        for future in futures.values():
            future.result()  # never leave a process behind
        for server in servers.values():
            server.close()


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_slack_fault_never_changes_the_run(fault: Fault, fault_runs: Runs) -> None:
    baseline = fault_runs.futures[BASELINE].result()
    assert baseline.returncode == 0, baseline.stderr
    run = fault_runs.futures[fault.name].result()
    slack_server = fault_runs.servers[fault.name]

    assert run.returncode == baseline.returncode, run.stderr
    for key in ("loss", "weights"):
        assert run.result[key] == baseline.result[key], key
    assert run.atexit_seconds <= fault.flush_timeout + ATEXIT_MARGIN, run.atexit_seconds
    assert run.exit_seconds <= fault.flush_timeout + EXIT_MARGIN, run.exit_seconds
    assert TOKEN not in run.output and SECRET_PART not in run.output

    sent = list(dict.fromkeys(slack_server.texts()))
    for text, prefix in zip(sent, fault.delivered, strict=False):
        assert text.startswith(prefix), (text, prefix)
    if fault.delivered:
        assert len(sent) == len(fault.delivered), sent
    warnings = run.warnings()
    if fault.warning is None:
        assert warnings == [], warnings
    else:
        assert any(re.search(fault.warning, line) for line in warnings), run.stderr
    if fault.check is not None:
        fault.check(slack_server, run)


# -- isolation: a backend or template that raises never reaches training ----------------


class Explodes(RecordingBackend):
    name = "explodes"


@pytest.fixture(scope="module")
def in_process_baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[float, list[Any]]:
    trainer = make_trainer(tmp_path_factory.mktemp("plain") / "out", [])
    loss = trainer.train().training_loss
    assert trainer.model is not None
    return loss, [p.detach().clone() for p in trainer.model.parameters()]


def _same_training(trainer: Any, loss: float, baseline: tuple[float, list[Any]]) -> bool:
    weights = list(trainer.model.parameters())
    return loss == baseline[0] and all(
        bool((a == b).all()) for a, b in zip(weights, baseline[1], strict=True)
    )


@pytest.mark.parametrize(
    "error",
    [ZeroDivisionError("division by zero"), KeyError("missing"), SystemExit(3), RecursionError()],
    ids=lambda e: type(e).__name__,
)
def test_a_backend_that_raises_never_affects_training(
    error: BaseException,
    in_process_baseline: tuple[float, list[Any]],
    notifier_logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    backend = Explodes(fail=error)  # type: ignore[arg-type]
    callback = NotifierCallback([backend])
    trainer = make_trainer(tmp_path / "out", [callback])
    loss = trainer.train().training_loss
    assert callback.flush(10)
    assert _same_training(trainer, loss, in_process_baseline)
    assert callback.stats["explodes"]["sent"] == 0
    text = all_output(notifier_logs)
    assert type(error).__name__ in text and "explodes" in text, text


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 // (global_step - global_step) }}",
        "{{ metrics.loss.nope() }}",
        "{{ run_name | number(1 / 0) }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    ],
    ids=["zero-division", "call-undefined", "bad-filter-argument", "sandbox-escape"],
)
def test_a_template_that_raises_never_affects_training(
    template: str,
    in_process_baseline: tuple[float, list[Any]],
    recording: RecordingBackend,
    notifier_logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    callback = NotifierCallback([recording], templates={"epoch_end.j2": template})
    trainer = make_trainer(tmp_path / "out", [callback])
    loss = trainer.train().training_loss
    assert callback.flush(10)
    assert _same_training(trainer, loss, in_process_baseline)
    # The epochs still get a (plain) message; the other events are untouched.
    assert recording.events == ["train_begin", "epoch_end", "epoch_end", "train_end"]
    assert recording.messages[1].text == "epoch end: out (step 4)"
    assert recording.messages[2].text == "epoch end: out (step 8)"
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "the epoch_end template for recording failed" in warnings[0]


# -- Slack answers no retry can fix; a Slack that is slower than training ---------------


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        ("invalid_auth", "check SLACK_BOT_TOKEN"),
        ("channel_not_found", "check SLACK_CHANNEL"),
        ("not_in_channel", "run /invite @your-app there"),
    ],
)
def test_a_fatal_slack_error_is_reported_once_and_switches_slack_off(
    code: str,
    fix: str,
    slack_env: SlackServer,
    notifier_logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    slack_env.default = Behaviour("error", error=code)
    callback = NotifierCallback([get_backend("slack", base_url=slack_env.base_url)])
    make_trainer(tmp_path / "out", [callback]).train()
    assert callback.flush(10)

    assert len(slack_env.posted()) == 1  # not retried, and nothing sent after it
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert code in warnings[0] and fix in warnings[0] and "switched off" in warnings[0]
    assert callback.stats["slack"] == {"sent": 0, "dropped": 0, "failed": 1}
    assert TOKEN not in all_output(notifier_logs)


def test_a_slow_slack_gets_paced_messages_and_the_newest_progress(
    slack_env: SlackServer, tmp_path: Path
) -> None:
    callback = NotifierCallback([get_backend("slack", base_url=slack_env.base_url)], max_backlog=2)
    make_trainer(tmp_path / "out", [callback], epochs=12, logging_steps=100).train()
    assert callback.flush(30)

    requests = slack_env.posted()
    headlines = [r.body["text"].split("\n")[0] for r in requests]
    epochs = [int(re.findall(r"epoch (\d+)/12", h)[0]) for h in headlines[1:-1]]
    # Critical messages are never dropped; progress keeps its order and the newest epoch.
    assert headlines[0] == "🚀 Training started: out"
    assert headlines[-1] == "✅ Training finished: out"
    assert epochs == sorted(epochs) and epochs[-1] == 12 and len(epochs) < 12, headlines
    assert callback.stats["slack"]["dropped"] == 12 - len(epochs)
    # A token bucket of 3 refilled at 1 per second: any n messages span >= n - 3 seconds.
    times = [r.at for r in requests]
    for i, start in enumerate(times):
        for j in range(i + 3, len(times)):
            assert times[j] - start >= (j - i + 1 - 3) * 1.0 - 0.05, (i, j, times)
