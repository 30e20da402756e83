"""``notifier demo``: trains a tiny model on CPU in seconds and notifies."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from .callback import NotifierCallback
from .secrets import get_logger

logger = get_logger("notifier")


def run_demo(backends: list[str] | None = None, *, epochs: int = 3) -> dict[str, Any]:
    """Train a 5-parameter regression for ``epochs`` epochs; returns the callback's stats."""
    try:
        import torch
        from torch import nn
    except ImportError as exc:  # torch is an extra, not a dependency
        raise SystemExit(
            "notifier demo needs PyTorch: pip install torch (or pip install 'notifier[demo]')"
        ) from exc
    from transformers import PrinterCallback, Trainer, TrainingArguments

    class Regressor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
            if self.training:
                time.sleep(0.05)  # slow enough for elapsed time and ETA to mean something
            prediction = self.linear(x).squeeze(-1)
            out: dict[str, Any] = {"logits": prediction}
            if labels is not None:
                out["loss"] = nn.functional.mse_loss(prediction, labels)
            return out

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    rows = [{"x": x[i], "labels": y[i]} for i in range(len(x))]

    if backends is None and os.environ.get("SLACK_BOT_TOKEN") and os.environ.get("SLACK_CHANNEL"):
        backends = ["slack"]
    callback = NotifierCallback(
        backends, events=["train_begin", "epoch_end", "train_end", "train_error"]
    )
    with tempfile.TemporaryDirectory(prefix="notifier-demo-") as tmp:
        args = TrainingArguments(
            output_dir=os.path.join(tmp, "notifier-demo"),
            run_name="notifier-demo",
            num_train_epochs=epochs,
            per_device_train_batch_size=16,
            learning_rate=0.05,
            logging_steps=8,
            eval_strategy="epoch",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
        )
        torch.manual_seed(0)
        trainer = Trainer(
            model=Regressor(),
            args=args,
            train_dataset=rows,
            eval_dataset=rows[:64],
            callbacks=[callback],
        )
        trainer.remove_callback(PrinterCallback)  # the notifications are the output here
        trainer.train()
        callback.flush()
    return callback.stats
