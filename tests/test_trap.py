"""The error trap: a crash the calling code catches is reported with its cause, and the
trap leaves the Trainer, the exception and its traceback as they would be without it."""

from __future__ import annotations

import gc
import traceback
import weakref
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


def test_the_trap_keeps_neither_the_exception_nor_its_frames(tmp_path: Path) -> None:
    callback = NotifierCallback([RecordingBackend()], config=False)
    model = HoldsAndCrashes()
    trainer = make_trainer(tmp_path / "run", [callback], model=model)
    try:
        trainer.train()
    except RuntimeError:
        pass  # a retry loop would try again here: the memory must be free
    gc.collect()
    assert model.held and model.held[0]() is None
