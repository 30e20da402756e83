"""The error trap: a crash the calling code catches is reported with its cause, and the
trap leaves the Trainer, the exception and its traceback as they would be without it."""

from __future__ import annotations

import gc
import traceback
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import RecordingBackend
from notifier import NotifierCallback
from tiny import TinyRegressor, make_trainer


def test_a_caught_crash_is_reported_with_its_cause_when_the_next_run_begins(
    tmp_path: Path,
) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], events=["train_error"], config=False)
    trainer = make_trainer(tmp_path / "run", [callback], model=TinyRegressor(crash_at=3))
    with pytest.raises(RuntimeError, match="boom at forward call 3") as caught:
        trainer.train()
    assert backend.messages == []  # caught: nothing is known to have ended yet
    # A traceback the caller sees has no frame of ours.
    printed = "".join(traceback.format_exception(caught.value))
    assert "notifier" not in printed.replace(str(tmp_path), "")

    trainer.model.crash_at = None
    trainer.train()  # the retry: the first run is reported as unfinished, with its cause
    assert callback.flush(10)
    (report,) = backend.messages
    error = report.context["error"]
    assert error["kind"] == "unfinished" and error["type"] == "RuntimeError"
    assert error["message"] == (
        "boom at forward call 3 (caught by the calling code; train() never ended)"
    )
    assert error["traceback"].endswith("RuntimeError: boom at forward call 3")
    assert "_run_epoch" not in trainer.__dict__  # the wrappers are gone after a normal end


class Activations:
    """Stands for the tensors a failed step's frames hold (a CUDA OOM's, say)."""


class HoldsAndCrashes(TinyRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[weakref.ref[Activations]] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        activations = Activations()  # a local of the failing frame
        self.held.append(weakref.ref(activations))
        raise RuntimeError("out of memory")


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Only reference counting: what a cycle would keep alive stays alive."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_the_trap_keeps_neither_the_exception_nor_its_frames(tmp_path: Path, no_gc: None) -> None:
    callback = NotifierCallback([RecordingBackend()], config=False)
    model = HoldsAndCrashes()
    trainer = make_trainer(tmp_path / "run", [callback], model=model)
    try:
        trainer.train()
    except RuntimeError:
        pass  # a retry loop would try again here: the memory must be free, at once
    assert model.held and model.held[0]() is None
    # Nor does the Trainer keep itself alive through the wrappers: `del trainer` frees it.
    alive = weakref.ref(trainer)
    del trainer
    assert alive() is None


def test_two_callbacks_on_one_trainer_both_report_a_caught_crash(tmp_path: Path) -> None:
    first, second = RecordingBackend(), RecordingBackend()
    callbacks = [NotifierCallback([b], config=False) for b in (first, second)]
    trainer = make_trainer(tmp_path / "run", callbacks, model=TinyRegressor(crash_at=3))
    with pytest.raises(RuntimeError):
        trainer.train()
    trainer.model.crash_at = None
    trainer.train()
    for callback, backend in zip(callbacks, (first, second), strict=True):
        assert callback.flush(10)
        # Neither takes the other's start for an abandoned run.
        assert backend.events == [
            "train_begin",
            "train_error",
            "train_begin",
            "epoch_end",
            "epoch_end",
            "train_end",
        ]
        assert backend.messages[1].context["error"]["message"].startswith("boom at forward call 3")


def test_a_method_patched_onto_the_trainer_is_watched_and_put_back(tmp_path: Path) -> None:
    callback = NotifierCallback([RecordingBackend()], config=False)
    trainer = make_trainer(tmp_path / "run", [callback])
    calls: list[int] = []

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return type(trainer)._run_epoch(trainer, *args, **kwargs)

    trainer._run_epoch = patched  # type: ignore[method-assign]
    trainer.train()
    trainer.train()
    assert len(calls) == 4  # 2 epochs, twice: the patch ran inside the wrapper each time
    assert trainer.__dict__["_run_epoch"] is patched


def test_a_caught_ctrl_c_is_reported_as_interrupted(tmp_path: Path) -> None:
    backend = RecordingBackend()
    callback = NotifierCallback([backend], events=["train_error"], config=False)
    trainer = make_trainer(tmp_path / "run", [callback], model=InterruptedAt(3))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()  # a notebook user pressed Ctrl-C; the calling code saves and goes on
    trainer.model.at = None
    trainer.train()
    assert callback.flush(10)
    (report,) = backend.messages
    assert report.context["error"]["kind"] == "interrupted"
    assert report.title == "⏹️ Training interrupted: run"
    assert report.context["error"]["message"] == (
        "KeyboardInterrupt (caught by the calling code; train() never ended)"
    )


class InterruptedAt(TinyRegressor):
    def __init__(self, at: int | None) -> None:
        super().__init__()
        self.at = at

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.at is not None and self.training and self.calls + 1 >= self.at:
            raise KeyboardInterrupt
        return super().forward(x, labels)
