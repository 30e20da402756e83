"""The curated template context: plain values about a run, never raw TrainingArguments."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

#: Every name a template can use, with its meaning (the README's table is generated from this).
CONTEXT_NAMES: dict[str, str] = {
    "event": "the event's name: train_begin, epoch_end, evaluate, save, train_end, train_error, "
    "alert, progress",
    "run_name": "`args.run_name`, else the output directory's name",
    "output_dir": "`args.output_dir`",
    "hub_model_id": "`args.hub_model_id`, if pushing to the Hub",
    "host": "the machine's host name",
    "resumed": "whether this run resumed from a checkpoint",
    "rank": "this process's global rank (0 unless distributed)",
    "world_size": "the number of processes",
    "epoch": "the epoch reached (a float during an epoch)",
    "num_train_epochs": "the epochs planned",
    "global_step": "optimizer steps done",
    "max_steps": "optimizer steps planned",
    "progress": "fraction done, 0–1",
    "elapsed": "seconds since training began",
    "eta": "seconds left, estimated from the pace so far",
    "metrics": "latest logged training values (loss, learning_rate, grad_norm, …)",
    "eval_metrics": "latest evaluation values (eval_loss, eval_accuracy, …)",
    "best_metric": "`state.best_metric`",
    "metric_for_best_model": "the metric `best_metric` is (`args.metric_for_best_model` as the "
    "Trainer compares it: `eval_loss`)",
    "best_model_checkpoint": "`state.best_model_checkpoint`",
    "checkpoint": "the checkpoint saved at this step (save and epoch_end events)",
    "error": "train_error only: `kind` (crash, interrupted, terminated, unfinished), "
    "`type`, `message`, `traceback`",
    "alert": "alert only: `kind` (nan, spike, threshold, stall, recovered), `metric`, `value`, "
    "`condition` (the rule, e.g. `loss > 10`), `message` (one line), `step`",
}


_SCALARS = (float, int, str, bool, type(None))


def plain_value(value: Any) -> Any:
    """A JSON-like copy of a logged value: numbers, strings, lists and dicts only."""
    if type(value) in _SCALARS or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    item = getattr(value, "item", None)  # a 0-d tensor or numpy scalar
    if callable(item):
        try:
            return plain_value(item())
        except Exception:  # noqa: BLE001 - not a scalar after all
            pass
    return str(value)


def plain_metrics(logs: Mapping[str, Any]) -> dict[str, Any]:
    """Copy logged metrics into plain values; the caller's dict is never touched."""
    return {str(k): plain_value(v) for k, v in logs.items()}


def best_metric_name(args: Any) -> str | None:
    """The metric ``state.best_metric`` holds: the Trainer prefixes ``eval_`` when it is missing."""
    name = getattr(args, "metric_for_best_model", None)
    if not name:
        return None
    return str(name) if str(name).startswith("eval_") else f"eval_{name}"


class RunTracker:
    """What the callback knows about the current run, turned into template contexts."""

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self.reset()

    def reset(self) -> None:
        self.started: float | None = None
        self.start_step = 0
        self.metrics: dict[str, Any] = {}
        self.eval_metrics: dict[str, Any] = {}
        self.checkpoint: str | None = None
        self.checkpoint_step: int | None = None
        self.static: dict[str, Any] = {}
        self.state: dict[str, Any] = {}

    def begin(self, args: Any, state: Any) -> None:
        """Record the run's fixed facts from TrainingArguments, keeping only plain values."""
        self.started = time.monotonic()
        self.start_step = int(state.global_step or 0)
        output_dir = str(args.output_dir) if args.output_dir else None
        run_name = args.run_name or (
            os.path.basename(os.path.normpath(output_dir)) if output_dir else None
        )
        self.static = {
            "run_name": run_name,
            "output_dir": output_dir,
            "hub_model_id": getattr(args, "hub_model_id", None),
            "host": self.host,
            "resumed": self.start_step > 0,
            "rank": int(getattr(args, "process_index", 0) or 0),
            "world_size": int(getattr(args, "world_size", 1) or 1),
            "metric_for_best_model": best_metric_name(args),
        }
        self.update(state)

    def update(self, state: Any) -> None:
        """Copy where training is from the TrainerState (plain values only)."""
        self.state = {
            "epoch": state.epoch,
            "num_train_epochs": state.num_train_epochs,
            "global_step": state.global_step,
            "max_steps": state.max_steps,
            "best_metric": state.best_metric,
            "best_model_checkpoint": state.best_model_checkpoint,
        }

    def context(self, event: str, **extra: Any) -> dict[str, Any]:
        """The template context for ``event`` now."""
        step = self.state.get("global_step") or 0
        max_steps = self.state.get("max_steps") or 0
        progress = min(step / max_steps, 1.0) if max_steps else None
        elapsed = time.monotonic() - self.started if self.started is not None else None
        eta = None
        done = step - self.start_step
        if elapsed and done > 0 and max_steps:
            eta = max(max_steps - step, 0) * elapsed / done
        context: dict[str, Any] = {
            "event": event,
            **self.static,
            **self.state,
            "progress": progress,
            "elapsed": elapsed,
            "eta": eta,
            "metrics": dict(self.metrics),
            "eval_metrics": dict(self.eval_metrics),
            "checkpoint": self.checkpoint if self.checkpoint_step == step else None,
            "error": None,
            "alert": None,
        }
        context.update(extra)
        return context


def sample_context(event: str) -> dict[str, Any]:
    """A realistic context for previews and template checks."""
    context: dict[str, Any] = {
        "event": event,
        "run_name": "bert-base-sst2",
        "output_dir": "runs/bert-base-sst2",
        "hub_model_id": None,
        "host": "gpu-node-07",
        "resumed": False,
        "rank": 0,
        "world_size": 1,
        "epoch": 2.0,
        "num_train_epochs": 3,
        "global_step": 1400,
        "max_steps": 2100,
        "progress": 1400 / 2100,
        "elapsed": 1265.0,
        "eta": 632.5,
        "metrics": {"loss": 0.2311, "grad_norm": 1.87, "learning_rate": 1.7e-05},
        "eval_metrics": {"eval_loss": 0.2874, "eval_accuracy": 0.9128},
        "best_metric": 0.2874,
        "metric_for_best_model": "eval_loss",
        "best_model_checkpoint": "runs/bert-base-sst2/checkpoint-1400",
        "checkpoint": "runs/bert-base-sst2/checkpoint-1400",
        "error": None,
        "alert": None,
    }
    if event == "train_end":
        context.update(epoch=3.0, global_step=2100, progress=1.0, elapsed=1897.0, eta=0.0)
        context["metrics"] = {"train_loss": 0.2512, "train_runtime": 1897.0}
    if event == "train_error":
        context["error"] = {
            "kind": "crash",
            "type": "torch.OutOfMemoryError",
            "message": "CUDA out of memory. Tried to allocate 2.00 GiB",
            "traceback": 'File "train.py", line 88, in <module>\n    trainer.train()',
        }
    if event == "alert":
        context["metrics"] = {**context["metrics"], "grad_norm": float("nan")}
        context["alert"] = {
            "kind": "nan",
            "metric": "grad_norm",
            "value": float("nan"),
            "condition": "grad_norm is NaN",
            "message": "NaN in grad_norm",
            "step": 1400,
        }
    if event == "train_begin":
        context.update(epoch=0.0, global_step=0, progress=0.0, elapsed=0.0, eta=None)
        context["metrics"], context["eval_metrics"] = {}, {}
    return context
