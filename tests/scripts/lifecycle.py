"""Runs whose end depends on the process around them, each in a fresh process; prints JSON.

``collected``: train inside a function with a Slack callback that is garbage-collected
before the process exits (Slack settings from SLACK_BOT_TOKEN and SLACK_CHANNEL).
``notebook``: cells run by a real IPython InteractiveShell, training on a background
thread, on the cell's own thread with an uncaught crash, and with a caught one.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import notifier  # noqa: E402
from tiny import TinyRegressor, make_trainer  # noqa: E402

EVENTS = ["train_begin", "train_end", "train_error"]


def collected(output_dir: Path, base_url: str) -> dict[str, Any]:
    def train() -> weakref.ReferenceType[notifier.NotifierCallback]:
        callback = notifier.NotifierCallback([notifier.get_backend("slack", base_url=base_url)])
        make_trainer(output_dir, [callback]).train()
        return weakref.ref(callback)

    ref = train()
    gc.collect()
    return {"collected": ref() is None}


class Recording(notifier.Backend):
    """Keeps each message's event and error kind."""

    name = "recording"
    interval = 0.0

    def __init__(self) -> None:
        self.seen: list[str] = []

    def send(self, message: notifier.Message) -> None:
        error = message.context.get("error")
        self.seen.append(f"{message.event}:{error['kind']}" if error else message.event)


class Gate(TrainerCallback):
    """Holds training at its first step until told to go on."""

    def __init__(self) -> None:
        self.reached, self.go = threading.Event(), threading.Event()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.reached.set()
        self.go.wait()


CELLS = {
    # Starts training on a thread and ends while it trains.
    "background": "thread = threading.Thread(target=trainer.train)\n"
    "thread.start()\n"
    "gate.reached.wait()",
    "background, later": "gate.go.set()\nthread.join()",
    "crash": "make_trainer(out / 'crash', [callbacks['crash']], model=TinyRegressor(3)).train()",
    "caught": "try:\n"
    "    make_trainer(out / 'caught', [callbacks['caught']], model=TinyRegressor(3)).train()\n"
    "except RuntimeError:\n"
    "    pass",
}


def notebook(output_dir: Path) -> dict[str, Any]:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file in the home directory
    shell = InteractiveShell.instance(config=config)
    backends = {run: Recording() for run in ("background", "crash", "caught")}
    callbacks = {run: notifier.NotifierCallback([b], events=EVENTS) for run, b in backends.items()}
    gate = Gate()
    shell.user_ns.update(
        threading=threading,
        gate=gate,
        out=output_dir,
        callbacks=callbacks,
        make_trainer=make_trainer,
        TinyRegressor=TinyRegressor,
        trainer=make_trainer(output_dir / "background", [callbacks["background"], gate]),
    )
    raised = {}
    for name, cell in CELLS.items():
        result = shell.run_cell(cell)
        raised[name] = type(result.error_in_exec).__name__ if result.error_in_exec else None
    for callback in callbacks.values():
        callback.flush(10)
    return {"raised": raised, **{run: b.seen for run, b in backends.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("scenario", choices=["collected", "notebook"])
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--base-url")
    opts = p.parse_args()
    if opts.scenario == "collected":
        result = collected(opts.output_dir, opts.base_url)
    else:
        result = notebook(opts.output_dir)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
