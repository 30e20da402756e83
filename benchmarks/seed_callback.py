"""The seed: the original blog post's synchronous SlackCallback, the baseline of the benchmark."""

from __future__ import annotations

import os
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from transformers import TrainerCallback


class SlackCallback(TrainerCallback):
    """Posts to a Slack channel when training starts, after each epoch and when it ends."""

    def __init__(self, channel: str, client: WebClient | None = None) -> None:
        self.channel = channel
        self.client = client or WebClient(token=os.environ["SLACK_BOT_TOKEN"])

    def _post(self, text: str) -> None:
        try:
            self.client.chat_postMessage(channel=self.channel, text=text)
        except SlackApiError as exc:
            print(f"Slack notification failed: {exc.response['error']}")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._post(f"🚀 Training started: {args.run_name or args.output_dir}")

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            losses = [log["loss"] for log in state.log_history if "loss" in log]
            loss = f"{losses[-1]:.4f}" if losses else "n/a"
            self._post(
                f"📈 Epoch {state.epoch:.0f}/{args.num_train_epochs} done, "
                f"step {state.global_step}, loss {loss}"
            )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self._post(f"✅ Training finished: {state.global_step} steps")
