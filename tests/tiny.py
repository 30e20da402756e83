"""A tiny model, data set and Trainer factory that train on CPU in well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments


class TinyRegressor(nn.Module):
    """y = w·x + b, with an optional NaN loss or a crash at a chosen step."""

    def __init__(self, crash_at: int | None = None, nan_loss: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.crash_at = crash_at
        self.nan_loss = nan_loss
        self.calls = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        self.calls += 1
        if self.crash_at is not None and self.training and self.calls >= self.crash_at:
            raise RuntimeError(f"boom at forward call {self.calls}")
        prediction = self.linear(x).squeeze(-1)
        out: dict[str, Any] = {"logits": prediction}
        if labels is not None:
            loss = nn.functional.mse_loss(prediction, labels)
            out["loss"] = loss * float("nan") if self.nan_loss else loss
        return out


class TinyData(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def make_trainer(
    output_dir: str | Path,
    callbacks: list[Any] | None = None,
    *,
    epochs: int = 2,
    model: nn.Module | None = None,
    **overrides: Any,
) -> Trainer:
    options: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": epochs,
        "per_device_train_batch_size": 8,
        "learning_rate": 0.05,
        "logging_steps": 2,
        "save_strategy": "no",
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "seed": 0,
    }
    options.update(overrides)
    torch.manual_seed(0)
    return Trainer(
        model=model or TinyRegressor(),
        args=TrainingArguments(**options),
        train_dataset=TinyData(),
        eval_dataset=TinyData(16, seed=1),
        callbacks=callbacks,
    )
