"""The outbox's queue discipline while a backend is busy: what is skipped, what goes first."""

from __future__ import annotations

import logging
import threading

import pytest

import notifier.outbox
from notifier.backend import Backend, Message
from notifier.outbox import Outbox


class GatedBackend(Backend):
    """Holds its first message until ``gate`` is set, so the rest queue up behind it."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.sent: list[str] = []

    def send(self, message: Message) -> None:
        self.started.set()
        self.gate.wait(10)
        self.sent.append(message.text)


def msg(text: str, event: str = "epoch_end", **flags: bool) -> Message:
    return Message(event=event, text=text, **flags)


@pytest.fixture
def gated() -> GatedBackend:
    return GatedBackend()


def busy_outbox(backend: GatedBackend, **options: int) -> Outbox:
    """An outbox whose worker is stuck sending "first", so everything else waits in the queue."""
    outbox = Outbox(backend, **options)
    outbox.put(msg("first", "train_begin", critical=True))
    assert backend.started.wait(10)
    return outbox


def test_a_crash_report_goes_ahead_of_the_backlog_but_after_the_start(
    gated: GatedBackend,
) -> None:
    outbox = busy_outbox(gated)
    outbox.put(msg("begin again", "train_begin", critical=True))
    for n in range(3):
        outbox.put(msg(f"epoch {n}"))
    outbox.put(msg("crash", "train_error", critical=True, urgent=True))
    gated.gate.set()
    assert outbox.flush(10)
    assert gated.sent == ["first", "begin again", "crash", "epoch 0", "epoch 1", "epoch 2"]


def test_when_behind_the_oldest_ordinary_message_makes_way(
    gated: GatedBackend, notifier_logs: pytest.LogCaptureFixture
) -> None:
    outbox = busy_outbox(gated, max_backlog=2)
    for n in range(4):
        outbox.put(msg(f"epoch {n}"))
    outbox.put(msg("card 1", "progress", transient=True))
    outbox.put(msg("card 2", "progress", transient=True))
    outbox.put(msg("end", "train_end", critical=True))
    gated.gate.set()
    assert outbox.flush(10)
    assert gated.sent == ["first", "epoch 2", "epoch 3", "card 2", "end"]
    assert outbox.dropped == 2  # the replaced card is not a loss: it was only ever a state
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    assert warnings == ["gated is behind: skipped an older epoch_end message (1 dropped so far)"]


def test_a_full_queue_drops_ordinary_messages_before_critical_ones(
    gated: GatedBackend, notifier_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notifier.outbox, "MAX_QUEUE", 3)
    outbox = busy_outbox(gated, max_backlog=10)
    outbox.put(msg("begin", "train_begin", critical=True))
    outbox.put(msg("alert", "alert"))
    outbox.put(msg("epoch"))
    outbox.put(msg("end", "train_end", critical=True))  # full: the alert makes way
    outbox.put(msg("crash", "train_error", critical=True, urgent=True))  # the epoch does
    outbox.put(msg("late", "train_end", critical=True))  # only critical ones left
    gated.gate.set()
    assert outbox.flush(10)
    assert gated.sent == ["first", "end", "crash", "late"]
    warnings = [r.getMessage() for r in notifier_logs.records if r.levelno == logging.WARNING]
    # Every lost critical message is named; ordinary ones only at the 1st and each 100th.
    assert warnings == [
        "gated queue is full: skipped an older alert message (1 dropped so far)",
        "gated queue is full: skipped an older train_begin message (3 dropped so far)",
    ]
