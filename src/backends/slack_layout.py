"""What Slack is sent: escaping, the Block Kit layout, the run card and the dead-man's alert."""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import notifier
from notifier.filters import NOISE, NOISE_SUFFIXES, bar, duration, metrics, number, percent

HEADER_LIMIT, SECTION_LIMIT, MAX_FIELDS = 150, 3000, 10
TEXT_LIMIT = 39_000  # chat.postMessage truncates past 40,000 characters


def escape(value: str) -> str:
    """Slack's escaping for message text: only &, < and > (so no value becomes <!channel>)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def trim(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in a visible "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def blocks(message: notifier.Message) -> list[dict[str, Any]]:
    """A Block Kit layout built alongside the text: a header, the body and metric fields."""
    layout: list[dict[str, Any]] = []
    if message.title:
        # plain_text is shown literally: undo the entity escaping meant for mrkdwn.
        header = trim(html.unescape(message.title), HEADER_LIMIT)
        layout.append(
            {"type": "header", "text": {"type": "plain_text", "text": header, "emoji": True}}
        )
    if message.body:
        layout.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": trim(message.body, SECTION_LIMIT)},
            }
        )
    values: dict[str, Any] = {}
    if message.event in ("epoch_end", "evaluate", "train_end", "progress"):
        # Evaluation first: of at most MAX_FIELDS, the held-out metrics matter most. The
        # bookkeeping (epoch, train_runtime, …_per_second) is left out, as in |metrics.
        for group in ("eval_metrics", "metrics"):
            source = message.context.get(group) or {}
            if not isinstance(source, Mapping):
                continue
            values.update(
                {
                    k: v
                    for k, v in source.items()
                    if k not in NOISE and not str(k).endswith(NOISE_SUFFIXES)
                }
            )
    fields = [
        {"type": "mrkdwn", "text": trim(f"*{escape(str(k))}*\n{escape(number(v))}", 2000)}
        for k, v in list(values.items())[:MAX_FIELDS]
    ]
    if fields:
        layout.append({"type": "section", "fields": fields})
    return layout


#: train_error's card headline, by error kind.
FAILED = {
    "crash": "❌ {run}: failed",
    "interrupted": "⏹️ {run}: interrupted",
    "terminated": "🛑 {run}: terminated",
    "unfinished": "⚠️ {run}: ended without finishing",
}


def _text(value: Any, default: str = "—") -> str:
    """A context value for message text, escaped for mrkdwn."""
    return escape(str(value)) if value not in (None, "") else default


def card_message(message: notifier.Message, stage: str) -> notifier.Message:
    """The run card at ``stage`` (``start`` or ``final``), built from ``message``'s context
    like templates/progress.j2 (the core renders the card's ``progress`` updates)."""
    ctx = message.context
    run = _text(ctx.get("run_name"), "run")
    step, steps = _text(ctx.get("global_step"), "0"), _text(ctx.get("max_steps"))
    progress = ctx.get("progress") or 0.0
    epochs = f"Epoch {number(ctx.get('epoch') or 0)}/{number(ctx.get('num_train_epochs'))}"
    host = _text(ctx.get("host"))
    if stage == "start":
        what = "resumed" if ctx.get("resumed") else "started"
        headline = f"⏳ {run}: {percent(progress)} · step {step}/{steps}"
        lines = [f"{bar(progress)} {percent(progress)}", f"{epochs} · {what} on {host}"]
    else:
        if message.event == "train_end":
            headline, progress = f"✅ {run}: finished · step {step}/{steps}", 1.0
        else:
            kind = str((ctx.get("error") or {}).get("kind") or "crash")
            headline = FAILED.get(kind, FAILED["crash"]).format(run=run)
            headline += f" at step {step}/{steps}"
        lines = [
            f"{bar(progress)} {percent(progress)}",
            f"{epochs} · {duration(ctx.get('elapsed'))} on {host}",
            f"Train: {escape(metrics(ctx.get('metrics')))}",
        ]
        if ctx.get("eval_metrics"):
            lines.append(f"Eval: {escape(metrics(ctx.get('eval_metrics')))}")
    return notifier.Message("progress", "\n".join([headline, *lines]), context=ctx)


def resumed_message(message: notifier.Message) -> notifier.Message:
    """train_begin after resume_from_checkpoint, as a reply in the run's existing thread."""
    ctx = message.context
    headline = (
        f"🔁 Resumed {_text(ctx.get('run_name'), 'run')} at step "
        f"{_text(ctx.get('global_step'), '0')}/{_text(ctx.get('max_steps'))}"
    )
    return dataclasses.replace(message, text=f"{headline}\n{message.text.strip()}")


def _for_minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:g} s"
    minutes = seconds / 60
    return f"{minutes:g} min" if minutes.is_integer() else f"{minutes:.1f} min"


def alarm_text(context: Mapping[str, Any], after: float, now: float) -> str:
    """The dead-man's alert, written when armed at ``now`` (wall clock) to post ``after``
    seconds later; Slack shows the time in each reader's own time zone."""
    utc = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    since = f"<!date^{int(now)}^{{date_short_pretty}} {{time}}|{utc}>"
    return (
        f"⚠️ run {_text(context.get('run_name'), 'run')} has been silent since {since} "
        f"(no heartbeat for {_for_minutes(after)}): the process may have been killed (OOM, "
        "SIGKILL, lost node). Last seen: step "
        f"{_text(context.get('global_step'), '0')}/{_text(context.get('max_steps'))}, epoch "
        f"{escape(number(context.get('epoch')))} on host {_text(context.get('host'))}."
    )
