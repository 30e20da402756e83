"""Measures what NotifierCallback costs a training run (GitHub issue 3) and prints a Markdown table.

    python benchmarks/bench.py            # full run, 3 minutes on 2 quiet cores (6 when busy)
    python benchmarks/bench.py --quick    # about 1.5 minutes, noisier
    python benchmarks/bench.py --json results.json   # also every sample, for later analysis

1. train() of tests/tiny.py's Trainer (2 epochs) with NotifierCallback (Slack via slack_sdk's
   WebClient) against a loopback Slack server that answers every request after 500 ms, as a ratio
   to train() with no callback; the seed's synchronous SlackCallback (seed_callback.py) is the
   baseline. Each repetition runs the variants in a shuffled order and compares them pairwise;
   the callback is flushed after the timed train() so that no run sends during the next one.
   Alongside: the process CPU time ratio, the time spent inside the callback's hooks and the
   worker thread's CPU per message, which are far less sensitive to a busy machine.
2. The cost per call of the hooks the Trainer calls every step (batches of calls, the hooks taking
   turns), and of rendering and queueing one message for a backend whose send does nothing.
3. How long a process that trained with the callback takes to finish its exit flush once the
   server has answered the last message, and to exit; the same against a server that never
   answers (flush_timeout=2); and, for reference, the interpreter's own teardown.
4. Memory growth over 1,000,000 on_log calls (tracemalloc and RSS).

The Slack server runs in its own process (``--serve``), so that its request handling does not
compete with training for this process's GIL, as the real Slack would not; ``--inproc-server``
runs it in this process instead. ``--only`` picks parts.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

TOKEN = "xoxb-000000000000-0000000000000-BENCHBENCHBENCH"
CHANNEL = "#bench"
SERVER_DELAY = 0.5
MESSAGES_PER_RUN = 4  # train_begin, two epoch_end, train_end
LOGS = {"loss": 0.2311, "grad_norm": 1.87, "learning_rate": 1.7e-05, "epoch": 0.42}


# -- the loopback Slack server --------------------------------------------------------------
def serve(delay: float, hang: bool) -> None:
    """``--serve``: run tests/slack_server.py's server and answer questions on stdin."""
    from slack_server import Behaviour, SlackServer

    server = SlackServer()
    server.default = Behaviour(kind="hang" if hang else "ok", delay=delay)
    answered: list[float] = []
    handle = server._handle

    def timed_handle(handler: Any) -> None:
        handle(handler)
        answered.append(time.monotonic())  # the answer has been written to the socket

    server._handle = timed_handle  # type: ignore[method-assign]
    print(f"PORT {server.port}", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            reply: Any = len(server.posted())
        elif command == "times":
            reply = {"received": [r.at for r in server.posted()], "answered": list(answered)}
        else:
            reply = None
        print(json.dumps(reply), flush=True)
    server.close()


class RemoteServer:
    """The loopback Slack server in a child process (CLOCK_MONOTONIC is shared across processes)."""

    def __init__(self, delay: float = SERVER_DELAY, hang: bool = False) -> None:
        command = [sys.executable, __file__, "--serve", str(delay)] + (["--hang"] if hang else [])
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline().split()[1])
        self.base_url = f"http://127.0.0.1:{port}/api/"

    def _ask(self, command: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def count(self) -> int:
        return int(self._ask("count"))

    def times(self) -> dict[str, list[float]]:
        return dict(self._ask("times"))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


class LocalServer:
    """The same server in this process (``--inproc-server``)."""

    def __init__(self, delay: float = SERVER_DELAY) -> None:
        from slack_server import Behaviour, SlackServer

        self.server = SlackServer()
        self.server.default = Behaviour(delay=delay)
        self.base_url = self.server.base_url

    def count(self) -> int:
        return len(self.server.posted())

    def close(self) -> None:
        self.server.close()


# -- helpers ----------------------------------------------------------------------------------
def trainer_for(output_dir: Path, callbacks: list[Any]) -> Any:
    """tests/tiny.py's Trainer (2 epochs of 4 steps, a log every 2 steps), without the printer."""
    from transformers import PrinterCallback

    from tiny import make_trainer

    trainer = make_trainer(output_dir, callbacks)
    trainer.remove_callback(PrinterCallback)  # its print() is noise and no part of what we measure
    return trainer


def quantiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def noop_backends() -> tuple[Any, Any]:
    """A generic backend and a Slack backend (real templates, escaping) whose send does nothing."""
    from notifier_backends.slack import SlackBackend
    from slack_sdk import WebClient

    from notifier import Backend, Message

    class NoopBackend(Backend):
        name = "noop"
        description = "drops every message (benchmark)"

        def __init__(self) -> None:
            self.sent = 0

        def send(self, message: Message) -> None:
            self.sent += 1

    class NoopSlack(SlackBackend):
        interval = 0.0  # no pacing: the worker keeps up and the queue never overflows

        def send(self, message: Message) -> None:
            pass

    slack = NoopSlack(CHANNEL, client=WebClient(token=TOKEN, base_url="http://127.0.0.1:9/api/"))
    return NoopBackend(), slack


def hook_fixture(tmp: Path) -> tuple[Any, Any, Any, dict[str, Any]]:
    """TrainingArguments, TrainerState, TrainerControl and the kwargs the CallbackHandler passes."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from tiny import TinyRegressor

    args = TrainingArguments(
        output_dir=str(tmp / "hooks"), report_to="none", use_cpu=True, num_train_epochs=3
    )
    state = TrainerState()
    state.is_world_process_zero = True
    state.max_steps, state.num_train_epochs, state.global_step, state.epoch = 3000, 3, 10, 0.01
    kwargs = {
        "model": TinyRegressor(),
        "processing_class": None,
        "optimizer": None,
        "lr_scheduler": None,
        "train_dataloader": None,
        "eval_dataloader": None,
    }
    return args, state, TrainerControl(), kwargs


# -- 1. train() overhead ------------------------------------------------------------------------
def instrument(callback: Any, spent: dict[str, int]) -> None:
    """Add the wall time (ns) of each Trainer hook of ``callback`` to ``spent[hook name]``."""
    from transformers import TrainerCallback

    for name in (n for n in vars(TrainerCallback) if n.startswith("on_")):
        method = getattr(callback, name)

        def timed(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[_name] = spent.get(_name, 0) + time.perf_counter_ns() - started

        setattr(callback, name, timed)  # CallbackHandler looks hooks up on the instance


def bench_train(reps: int, seed_every: int, tmp: Path, inproc: bool) -> dict[str, Any]:
    from seed_callback import SlackCallback as SeedCallback
    from slack_sdk import WebClient

    from notifier import SlackCallback

    server: RemoteServer | LocalServer = LocalServer() if inproc else RemoteServer()
    times: dict[str, list[float]] = {"none": [], "ours": [], "seed": []}
    cpu_times: dict[str, list[float]] = {"none": [], "ours": [], "seed": []}
    ratios: dict[str, list[float]] = {"ours": [], "seed": []}
    cpu_ratios: dict[str, list[float]] = {"ours": [], "seed": []}
    hook_s: dict[str, list[float]] = {"ours": [], "seed": []}
    train_begin_s: list[float] = []
    send_cpu_s: list[float] = []
    pending_at_return: list[int] = []
    delivered: dict[str, list[int]] = {"ours": [], "seed": []}

    def run(variant: str, name: str) -> tuple[float, float]:
        client = WebClient(token=TOKEN, base_url=server.base_url, timeout=30)
        callback: Any = None
        spent: dict[str, int] = {}
        if variant == "ours":
            callback = SlackCallback(CHANNEL, client=client)
            backend = callback.backends[0]
            send = backend.send

            def timed_send(message: Any) -> None:
                started = time.thread_time()  # the worker's CPU, not the 500 ms wait
                try:
                    send(message)
                finally:
                    send_cpu_s.append(time.thread_time() - started)

            backend.send = timed_send
        elif variant == "seed":
            callback = SeedCallback(CHANNEL, client=client)
        if callback is not None:
            instrument(callback, spent)
        trainer = trainer_for(tmp / name, [callback] if callback else [])
        before = server.count()
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        trainer.train()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if variant == "ours":
            # NotifierCallback must not wait for Slack at train_end: messages are still queued.
            pending_at_return.append(sum(r.outbox.pending for r in callback._routes))
            if not callback.flush(30):  # drain, so the next run starts with an idle server
                raise RuntimeError("NotifierCallback did not deliver within 30 s")
        if variant != "none":
            hook_s[variant].append(sum(spent.values()) / 1e9)
            if variant == "ours":
                train_begin_s.append(spent["on_train_begin"] / 1e9)
            delivered[variant].append(server.count() - before)
        return elapsed, cpu

    try:
        for variant in times:  # warm-up: imports, first Trainer, first connection
            run(variant, f"warmup-{variant}")
        warm: tuple[list[Any], ...] = (*hook_s.values(), *delivered.values(), train_begin_s)
        for values in (*warm, send_cpu_s, pending_at_return):
            values.clear()
        order = random.Random(3)
        for rep in range(reps):
            # none and ours in every repetition; the seed (2 s a run) in every seed_every-th
            variants = ["none", "ours"] + (["seed"] if rep % seed_every == 0 else [])
            order.shuffle(variants)
            measured = {variant: run(variant, f"{variant}-{rep}") for variant in variants}
            for variant, (elapsed, cpu) in measured.items():
                times[variant].append(elapsed)
                cpu_times[variant].append(cpu)
                if variant != "none":
                    ratios[variant].append(elapsed / measured["none"][0])
                    cpu_ratios[variant].append(cpu / measured["none"][1])
            print(
                f"  train rep {rep + 1}/{reps}: "
                + ", ".join(f"{v} {t[0] * 1e3:.1f} ms" for v, t in measured.items()),
                file=sys.stderr,
            )
    finally:
        server.close()
    for variant, counts in delivered.items():
        if set(counts) != {MESSAGES_PER_RUN}:
            raise RuntimeError(f"{variant}: the server got {counts} messages per run")
    return {
        "server": "in-process" if inproc else "separate process",
        "reps": reps,
        "seed_reps": len(times["seed"]),
        "times_s": times,
        "ratios": ratios,
        "cpu_times_s": cpu_times,
        "cpu_ratios": cpu_ratios,
        "hook_s": hook_s,
        "on_train_begin_s": train_begin_s,
        "worker_cpu_per_send_s": send_cpu_s,
        "pending_at_return": pending_at_return,
        "delivered": delivered,
    }


# -- 2. hook costs ------------------------------------------------------------------------------
def time_hooks(
    hooks: dict[str, tuple[Callable[..., Any], dict[str, Any]]],
    call: tuple[Any, ...],
    batches: int,
    size: int,
) -> dict[str, list[float]]:
    """ns per call, one figure per batch of ``size`` calls; the hooks take turns batch by batch
    so that the machine's load changes weigh on each of them alike."""
    args, state, control = call
    calls = range(size)
    per_call: dict[str, list[float]] = {name: [] for name in hooks}
    for _ in range(batches):
        for name, (hook, kwargs) in hooks.items():
            started = time.perf_counter_ns()
            for _ in calls:
                hook(args, state, control, **kwargs)
            per_call[name].append((time.perf_counter_ns() - started) / size)
    return per_call


def bench_hooks(batches: int, size: int, renders: int, tmp: Path) -> dict[str, Any]:
    from transformers import TrainerCallback

    from notifier import NotifierCallback

    args, state, control, kwargs = hook_fixture(tmp)
    noop, slack = noop_backends()
    callback = NotifierCallback([noop])
    callback.on_train_begin(args, state, control, **kwargs)
    callback.flush(5)
    plain = TrainerCallback()  # a callback that does nothing: the cost of being called at all
    call = (args, state, control)
    log_kwargs = {**kwargs, "logs": dict(LOGS)}
    gc.collect()
    hot = time_hooks(
        {
            "on_step_end": (callback.on_step_end, kwargs),
            "on_step_begin": (callback.on_step_begin, kwargs),
            "on_log": (callback.on_log, log_kwargs),
            "reference: TrainerCallback.on_log": (plain.on_log, log_kwargs),
        },
        call,
        batches,
        size,
    )
    callback.on_train_end(args, state, control, **kwargs)
    if callback._hook_errors:
        raise RuntimeError(f"hooks failed: {callback._hook_errors}")

    events = ("train_begin", "epoch_end", "evaluate", "train_end")
    render: dict[str, list[float]] = {}
    sent: dict[str, int] = {}
    for label, backend in (("default templates", noop), ("Slack templates", slack)):
        cb = NotifierCallback([backend], events=events, max_backlog=10**6)
        cb.on_train_begin(args, state, control, **kwargs)
        cb.on_log(args, state, control, logs=dict(LOGS), **kwargs)
        cb.flush(5)
        measured: dict[str, list[float]] = {"train_begin": [], "epoch_end": [], "evaluate": []}
        metrics = {"eval_loss": 0.2874, "eval_accuracy": 0.9128, "epoch": 1.0}
        for i in range(renders):
            state.global_step = 100 + i
            started = time.perf_counter_ns()
            cb._emit("train_begin")
            measured["train_begin"].append(time.perf_counter_ns() - started)
            # epoch_end as the Trainer drives it: held at on_epoch_end, sent at the next step
            started = time.perf_counter_ns()
            cb.on_epoch_end(args, state, control, **kwargs)
            cb.on_step_begin(args, state, control, **kwargs)
            measured["epoch_end"].append(time.perf_counter_ns() - started)
            state.global_step += 1  # an evaluation that is not at an epoch's end
            started = time.perf_counter_ns()
            cb.on_evaluate(args, state, control, metrics=metrics, **kwargs)
            measured["evaluate"].append(time.perf_counter_ns() - started)
        cb.on_train_end(args, state, control, **kwargs)
        if not cb.flush(30):
            raise RuntimeError("the no-op backend did not drain")
        stats = cb.stats[backend.name]
        sent[label] = stats["sent"]
        if stats["sent"] != 3 * renders + 2 or cb._hook_errors or cb._render_errors:
            raise RuntimeError(f"render check failed ({label}): {stats}, {cb._hook_errors}")
        for event, values in measured.items():
            render[f"{event} ({label})"] = values
    state.global_step = 10
    return {
        "batches": batches,
        "batch_size": size,
        "hot_ns": hot,
        "render_ns": render,
        "sent": sent,
    }


# -- 3. exit delay --------------------------------------------------------------------------------
def child_exit(base_url: str, flush_timeout: float, variant: str, output_dir: str) -> None:
    """``--child-exit``: train with (or without) the callback, say when train() returned, exit."""
    from slack_sdk import WebClient

    from notifier import SlackCallback

    callbacks: list[Any] = []
    if variant == "ours":
        client = WebClient(token=TOKEN, base_url=base_url, timeout=30)
        callbacks.append(SlackCallback(CHANNEL, client=client, flush_timeout=flush_timeout))
    trainer = trainer_for(Path(output_dir), callbacks)
    # atexit runs handlers last-registered first: this one runs once the callback's exit
    # flush (registered at on_train_begin) has returned, before the interpreter tears down.
    atexit.register(lambda: print(f"ATEXIT {time.monotonic()!r}", flush=True))
    trainer.train()
    print(f"TRAINED {time.monotonic()!r}", flush=True)


def run_child(
    variant: str, server: RemoteServer | None, flush_timeout: float, tmp: Path
) -> dict[str, Any]:
    base_url = server.base_url if server else "http://127.0.0.1:9/api/"
    command = [
        sys.executable,
        __file__,
        "--child-exit",
        base_url,
        str(flush_timeout),
        variant,
        str(tmp / f"exit-{variant}"),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)  # returns once the child has exited
    exited = time.monotonic()
    if proc.returncode != 0 or "TRAINED" not in out:
        raise RuntimeError(f"exit child failed ({proc.returncode}):\n{out}\n{err}")
    trained = float(out.split("TRAINED", 1)[1].split()[0])
    flushed = float(out.split("ATEXIT", 1)[1].split()[0])
    result: dict[str, Any] = {
        "train_return_to_exit_s": exited - trained,
        "train_return_to_flushed_s": flushed - trained,
        "teardown_s": exited - flushed,
        "stderr": err[-500:],
    }
    if server is not None:
        seen = server.times()
        result["posted"] = len(seen["received"])
        if seen["received"]:
            result["last_received_to_exit_s"] = exited - max(seen["received"])
        if seen["answered"]:
            result["last_answered_to_flushed_s"] = flushed - max(seen["answered"])
            result["last_answered_to_exit_s"] = exited - max(seen["answered"])
    return result


def bench_exit(reps: int, tmp: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "ours": [], "hang": []}
    for rep in range(reps):
        runs["none"].append(run_child("none", None, 10.0, tmp))
        server = RemoteServer()
        try:
            runs["ours"].append(run_child("ours", server, 10.0, tmp))
        finally:
            server.close()
        server = RemoteServer(hang=True)
        try:
            runs["hang"].append(run_child("ours", server, 2.0, tmp))
        finally:
            server.close()
        print(
            f"  exit rep {rep + 1}/{reps}: "
            + ", ".join(f"{k} {v[-1]['train_return_to_exit_s']:.2f} s" for k, v in runs.items()),
            file=sys.stderr,
        )
    for run in runs["ours"]:
        if run["posted"] != MESSAGES_PER_RUN:
            raise RuntimeError(f"exit child posted {run['posted']} messages: {run['stderr']}")
    for run in runs["hang"]:
        if "gave up waiting" not in run["stderr"]:
            raise RuntimeError(f"the hanging child did not report giving up: {run['stderr']}")
    return {"reps": reps, "runs": runs}


# -- 4. memory ------------------------------------------------------------------------------------
def bench_memory(calls: int, tmp: Path) -> dict[str, Any]:
    from notifier import NotifierCallback

    args, state, control, kwargs = hook_fixture(tmp)
    noop, _ = noop_backends()
    callback = NotifierCallback([noop])
    callback.on_train_begin(args, state, control, **kwargs)
    rng = random.Random(0)
    logs = [
        {
            "loss": rng.random(),
            "grad_norm": rng.random() * 3,
            "learning_rate": 1e-5 * rng.random(),
            "epoch": i / 1024,
        }
        for i in range(1024)
    ]
    hook = callback.on_log

    def drive(n: int) -> None:
        for i in range(n):
            hook(args, state, control, logs=logs[i & 1023], **kwargs)

    drive(10_000)  # warm-up: caches, the metrics dict at its final size
    gc.collect()
    rss_before = rss_bytes()
    drive(calls)
    gc.collect()
    rss_growth = rss_bytes() - rss_before
    tracemalloc.start()
    gc.collect()
    traced_before = tracemalloc.get_traced_memory()[0]
    drive(calls)
    gc.collect()
    traced_after, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    callback.on_train_end(args, state, control, **kwargs)
    if callback._hook_errors:
        raise RuntimeError(f"on_log failed: {callback._hook_errors}")
    return {
        "calls": calls,
        "rss_growth_bytes": rss_growth,
        "traced_growth_bytes": traced_after - traced_before,
        "traced_peak_over_start_bytes": traced_peak - traced_before,
    }


# -- report ---------------------------------------------------------------------------------------
def us(ns: float) -> str:
    return f"{ns / 1e3:.2f} µs" if ns < 1e5 else f"{ns / 1e3:.0f} µs"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str, str]] = []
    train = results.get("train")
    if train:
        none_ms = statistics.median(train["times_s"]["none"]) * 1e3
        for variant, label in (
            ("ours", "NotifierCallback (Slack)"),
            ("seed", "seed SlackCallback"),
        ):
            lo, mid, hi = quantiles(train["ratios"][variant])
            best = min(train["times_s"][variant]) / min(train["times_s"]["none"])
            ms = statistics.median(train["times_s"][variant]) * 1e3
            target = "≤ 1.02×" if variant == "ours" else "baseline"
            ok = verdict(mid <= 1.02) if variant == "ours" else "–"
            rows.append(
                (
                    f"train() with {label} ÷ without a callback",
                    f"**{mid:.3f}×** (IQR {lo:.3f}–{hi:.3f}; best-of ratio {best:.3f}×; "
                    f"{ms:.0f} ms vs {none_ms:.0f} ms)",
                    target,
                    ok,
                )
            )
        lo, mid, hi = quantiles(train["cpu_ratios"]["ours"])
        rows.append(
            (
                "process CPU time of train() with NotifierCallback ÷ without (all threads; "
                "less sensitive to other processes' load)",
                f"{mid:.3f}× (IQR {lo:.3f}–{hi:.3f}; "
                f"{statistics.median(train['cpu_times_s']['none']) * 1e3:.0f} ms CPU bare)",
                "–",
                "–",
            )
        )
        for variant, label in (("ours", "NotifierCallback"), ("seed", "seed SlackCallback")):
            spent = statistics.median(train["hook_s"][variant])
            rows.append(
                (
                    f"time inside {label}'s hooks on the training thread, per train()",
                    f"{spent * 1e3:.2f} ms ({spent / none_ms * 1e5:.1f}% of a bare train())",
                    "–",
                    "–",
                )
            )
        begin = train["on_train_begin_s"]
        lo, mid, hi = quantiles(begin)
        rows.append(
            (
                "… of which NotifierCallback.on_train_begin (starts the worker thread)",
                f"{mid * 1e3:.2f} ms (IQR {lo * 1e3:.2f}–{hi * 1e3:.2f} ms, "
                f"max {max(begin) * 1e3:.2f} ms)",
                "–",
                "–",
            )
        )
        cpu = train["worker_cpu_per_send_s"]
        rows.append(
            (
                "CPU per Slack message on NotifierCallback's worker thread (slack_sdk request)",
                f"{statistics.median(cpu) * 1e3:.2f} ms; messages still queued when train() "
                f"returned: {statistics.median(train['pending_at_return']):.0f} "
                f"of {MESSAGES_PER_RUN}",
                "–",
                "–",
            )
        )
    hooks = results.get("hooks")
    if hooks:
        for name, values in hooks["hot_ns"].items():
            reference = name.startswith("reference")
            med = statistics.median(values)
            rows.append(
                (
                    f"{name}, per call" if reference else f"`{name}` per call (nothing to send)",
                    f"**{us(med)}** (p90 {us(sorted(values)[int(len(values) * 0.9)])})",
                    "–" if reference else "≤ 5 µs",
                    "–" if reference else verdict(med <= 5_000),
                )
            )
        for name, values in hooks["render_ns"].items():
            med = statistics.median(values)
            rows.append(
                (
                    f"render + enqueue `{name}`",
                    f"**{us(med)}** (p90 {us(sorted(values)[int(len(values) * 0.9)])})",
                    "≤ 200 µs",
                    verdict(med <= 200_000),
                )
            )
    exits = results.get("exit")
    if exits:
        runs = exits["runs"]

        def med(kind: str, key: str) -> float:
            return statistics.median(r[key] for r in runs[kind])

        teardown = med("none", "teardown_s")
        flushed = med("ours", "last_answered_to_flushed_s")
        rows.append(
            (
                "exit flush done after the server answered the last message (500 ms server)",
                f"**{flushed * 1e3:.1f} ms** (max "
                f"{max(r['last_answered_to_flushed_s'] for r in runs['ours']) * 1e3:.1f} ms)",
                "≤ 0.2 s",
                verdict(flushed <= 0.2),
            )
        )
        rows.append(
            (
                "process exit after the server answered the last message (500 ms server)",
                f"{med('ours', 'last_answered_to_exit_s'):.2f} s, of which interpreter teardown "
                f"{med('ours', 'teardown_s'):.2f} s (received → exit: "
                f"{med('ours', 'last_received_to_exit_s'):.2f} s)",
                "≤ 0.2 s + teardown",
                verdict(med("ours", "last_answered_to_exit_s") - med("ours", "teardown_s") <= 0.2),
            )
        )
        rows.append(
            (
                "process exit after train() returned, 500 ms server (3 messages still queued)",
                f"{med('ours', 'train_return_to_exit_s'):.2f} s",
                "–",
                "–",
            )
        )
        hang_flush = med("hang", "train_return_to_flushed_s")
        hang_max = max(r["train_return_to_flushed_s"] for r in runs["hang"])
        rows.append(
            (
                "exit flush done after train() returned, server never answers, flush_timeout=2",
                f"**{hang_flush:.2f} s** (max {hang_max:.2f} s; process exit "
                f"{med('hang', 'train_return_to_exit_s'):.2f} s incl. teardown)",
                "≤ 2 s (+ε)",
                verdict(hang_max <= 2.1),
            )
        )
        rows.append(
            (
                "reference: interpreter teardown after atexit, no callback (torch + transformers)",
                f"{teardown:.2f} s (train() return → exit "
                f"{med('none', 'train_return_to_exit_s'):.2f} s)",
                "–",
                "–",
            )
        )
    memory = results.get("memory")
    if memory:
        growth = memory["traced_growth_bytes"]
        rows.append(
            (
                f"memory growth over {memory['calls']:,} `on_log` calls",
                f"**{growth / 1024:.1f} KiB** traced "
                f"(RSS {memory['rss_growth_bytes'] / 1024:+.0f} KiB)",
                "< 1 MB",
                verdict(growth < 1_000_000 and memory["rss_growth_bytes"] < 1_000_000),
            )
        )
    lines = ["| Measure | Result (median) | Target | Met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    env = results["env"]
    lines.append("")
    lines.append(
        f"Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"slack_sdk {env['slack_sdk']}, {env['cpus']} CPUs; {env['mode']} mode"
        + (
            f"; train(): {train['reps']} shuffled paired repetitions ({train['seed_reps']} "
            f"with the seed), Slack server in {train['server']}, every request answered after "
            f"{SERVER_DELAY * 1e3:.0f} ms"
            if train
            else ""
        )
        + (f"; hooks: {hooks['batches']} batches of {hooks['batch_size']:,} calls" if hooks else "")
        + (f"; exit: {exits['reps']} run(s) of each child" if exits else "")
        + "."
    )
    return "\n".join(lines)


def environment(mode: str) -> dict[str, Any]:
    import slack_sdk.version
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "slack_sdk": slack_sdk.version.__version__,
        "cpus": os.cpu_count(),
        "mode": mode,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, about 1.5 minutes")
    parser.add_argument("--json", type=Path, help="also write every sample to this JSON file")
    parser.add_argument(
        "--inproc-server",
        action="store_true",
        help="run the Slack server for the train() figures in this process",
    )
    parser.add_argument(
        "--reps", type=int, help="paired train() repetitions (default: 30, or 4 with --quick)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["train", "hooks", "exit", "memory"],
        default=["train", "hooks", "exit", "memory"],
    )
    parser.add_argument("--serve", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--hang", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-exit", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.serve is not None:
        serve(options.serve, options.hang)
        return 0
    if options.child_exit:
        base_url, flush_timeout, variant, output_dir = options.child_exit
        child_exit(base_url, float(flush_timeout), variant, output_dir)
        return 0

    quick = options.quick
    results: dict[str, Any] = {"env": environment("quick" if quick else "full")}
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "train" in options.only:
            print("train() overhead…", file=sys.stderr)
            reps = options.reps or (4 if quick else 30)
            seed_every = 2 if quick else 5
            results["train"] = bench_train(reps, seed_every, tmp, options.inproc_server)
        if "hooks" in options.only:
            print("hook costs…", file=sys.stderr)
            results["hooks"] = bench_hooks(300 if quick else 3000, 100, 200 if quick else 2000, tmp)
        if "exit" in options.only:
            print("exit delay…", file=sys.stderr)
            results["exit"] = bench_exit(1 if quick else 3, tmp)
        if "memory" in options.only:
            print("memory…", file=sys.stderr)
            results["memory"] = bench_memory(100_000 if quick else 1_000_000, tmp)
    table = report(results)
    print(table)
    if options.json:
        results["table"] = table
        options.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
