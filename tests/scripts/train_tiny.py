"""Train the tiny model in a fresh process, maybe notifying Slack, and print the result as JSON.

Run by the fault, crash and distributed tests so that exit codes, signals and exit
times are real. Slack settings come from SLACK_BOT_TOKEN and SLACK_CHANNEL; the
server from ``--base-url`` (no ``--base-url``: no callback, the baseline run).
A stdout line holds JSON: the final loss, the trained weights, when train()
returned and whether the crash guard put the process's hooks back; the last line
says when the atexit handlers (the callback's flush among them) were done.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tiny import TinyData, TinyRegressor, make_trainer  # noqa: E402


class SlowRegressor(TinyRegressor):
    """The tiny model, sleeping in every training forward so a signal lands mid-training."""

    def __init__(self, pause: float, crash_at: int | None = None) -> None:
        super().__init__(crash_at=crash_at)
        self.pause = pause

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        if self.training:
            time.sleep(self.pause)
        return super().forward(x, labels)


class NoisyData(TinyData):
    """TinyData whose labels get noise from Python's global ``random``, which the Trainer
    seeds: anything else drawing from it mid-training would change the result."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        return {"x": item["x"], "labels": item["labels"] + random.gauss(0.0, 0.01)}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-url", help="the Slack Web API base URL; absent: no callback")
    p.add_argument("--flush-timeout", type=float, default=None)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a Slack backend option, e.g. timeout=0.5 (repeatable)",
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--crash-at", type=int, default=None, help="forward call that raises")
    p.add_argument("--crash-rank", type=int, default=None, help="crash on this rank only")
    p.add_argument("--catch", action="store_true", help="catch train()'s exception, go on")
    p.add_argument(
        "--then",
        choices=["normal", "crash"],
        help="after a caught exception, train again: normally, or crashing again (uncaught)",
    )
    p.add_argument(
        "--new-callback", action="store_true", help="with --then: a new callback for the new run"
    )
    p.add_argument("--slow", type=float, default=0.0, help="seconds to sleep per forward")
    p.add_argument("--twice", action="store_true", help="train twice in this process")
    p.add_argument("--user-sigterm", action="store_true", help="install a SIGTERM handler")
    p.add_argument("--mark", action="store_true", help="print 'training' after the first step")
    p.add_argument("--stamp", action="store_true", help="print 'step N at T' after every step")
    return p.parse_args()


class Mark(TrainerCallback):
    """Prints one line once training is under way, for a test to wait on."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 1:
            print("training", flush=True)


class Stamp(TrainerCallback):
    """Prints each step's end time (wall clock), to time what follows the last one."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(f"step {state.global_step} at {time.time()!r}", flush=True)


def user_sigterm(signum: int, frame: FrameType | None) -> None:
    """A user's own handler: says it ran, then ends the process as SIGTERM's default would."""
    os.write(sys.stdout.fileno(), b"user SIGTERM handler ran\n")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _exiting() -> None:
    """Registered before the callback, so it runs after the callback's flush at exit."""
    os.write(sys.stdout.fileno(), f"atexit done at {time.time()!r}\n".encode())


def notifier_callback(opts: argparse.Namespace) -> Any:
    from notifier import NotifierCallback, get_backend

    backend_options: dict[str, Any] = {"base_url": opts.base_url}
    for item in opts.option:
        key, _, value = item.partition("=")
        backend_options[key] = json.loads(value)
    callback_options: dict[str, Any] = {}
    if opts.flush_timeout is not None:
        callback_options["flush_timeout"] = opts.flush_timeout
    return NotifierCallback([get_backend("slack", **backend_options)], **callback_options)


def main() -> int:
    opts = parse()
    atexit.register(_exiting)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Everything notifier logs, debug included, must be free of the token.
    logging.getLogger("notifier").setLevel(logging.DEBUG)
    if opts.user_sigterm:
        signal.signal(signal.SIGTERM, user_sigterm)

    callbacks: list[Any] = [Mark()] if opts.mark else []
    if opts.stamp:
        callbacks.append(Stamp())
    if opts.base_url:
        callbacks.append(notifier_callback(opts))

    crash_at = opts.crash_at
    if opts.crash_rank is not None and int(os.environ.get("RANK", "0")) != opts.crash_rank:
        crash_at = None
    torch.manual_seed(0)  # the same initial weights in every run
    model = SlowRegressor(opts.slow, crash_at) if opts.slow else TinyRegressor(crash_at)

    trainer = make_trainer(opts.output_dir, callbacks, epochs=opts.epochs, model=model)
    trainer.train_dataset = NoisyData()
    # After the Trainer is built: torch.distributed installs its own excepthook then.
    hooks = (sys.excepthook, signal.getsignal(signal.SIGTERM))
    result: dict[str, Any] = {}
    try:
        output = trainer.train()
        result["loss"] = output.training_loss
        if opts.twice:
            output = trainer.train()
            result["loss2"] = output.training_loss
    except RuntimeError as exc:
        if not opts.catch:
            raise
        result["caught"] = f"{type(exc).__name__}: {exc}"
        if opts.then is not None:
            if opts.then == "normal":
                model.crash_at = None
            if opts.new_callback and opts.base_url:
                trainer.remove_callback(callbacks[-1])
                trainer.add_callback(notifier_callback(opts))
            result["loss"] = trainer.train().training_loss
    result["returned_at"] = time.time()
    result["weights"] = [p.detach().flatten().tolist() for p in model.parameters()]
    result["hooks_restored"] = (sys.excepthook, signal.getsignal(signal.SIGTERM)) == hooks
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
