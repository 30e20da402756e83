"""Training-curve PNGs: drawn from log histories without pyplot, and matplotlib being optional."""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from notifier import ConfigurationError
from notifier.plots import PLOTS_HINT, _curves, _label, render_curves, require_matplotlib
from tiny import TinyRegressor, make_trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAN, INF = float("nan"), float("inf")


def image(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    picture = Image.open(io.BytesIO(png))
    picture.load()
    return picture


def history(steps: int, eval_every: int = 0) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        entries.append({"loss": 2.0 / math.sqrt(step), "grad_norm": 1.0, "step": step})
        if eval_every and step % eval_every == 0:
            entries.append(
                {
                    "eval_loss": 2.2 / math.sqrt(step),
                    "eval_accuracy": 1 - 0.5 / math.sqrt(step),
                    "eval_runtime": 1.0,
                    "eval_samples_per_second": 90.0,
                    "epoch": step / eval_every,
                    "step": step,
                }
            )
    return entries


def colours(picture: Image.Image) -> set[tuple[int, ...]]:
    return {tuple(c) for c in np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)}


@pytest.mark.parametrize(
    ("log_history", "size"),
    [
        ([], (800, 380)),  # a placeholder, not an error
        (history(50), (800, 380)),  # training loss only: one panel
        (history(50, eval_every=10), (800, 700)),  # eval metrics: a second panel
        ([{"eval_accuracy": 0.9, "step": 5}], (800, 380)),  # eval metrics only
        ([{"loss": 0.5}, {"step": 3, "eval_runtime": 1.0}, "junk"], (800, 380)),  # no usable data
    ],
)
def test_png_and_its_dimensions(log_history: list[Any], size: tuple[int, int]) -> None:
    picture = image(render_curves(log_history, title="run-a"))
    assert picture.format == "PNG"
    assert picture.size == size


def test_curves_separate_losses_metrics_and_bookkeeping() -> None:
    losses, metrics, bad = _curves(
        [
            {"loss": 1.0, "learning_rate": 0.1, "epoch": 0.5, "step": 2},
            {"loss": 0.0, "grad_norm": NAN, "step": 4},  # a NaN hidden by logging_nan_inf_filter
            {"loss": INF, "step": 6},
            {"eval_loss": 0.8, "eval_f1": 0.7, "eval_runtime": 2.0, "epoch": 1.0, "step": 6},
            {"eval_model_preparation_time": 0.1, "eval_steps_per_second": 3.0, "step": 6},
            {"train_loss": 0.5, "train_runtime": 3.0, "total_flos": 1.0, "step": 6},
            {"loss": 0.7},  # no step
        ]
    )
    assert list(losses) == ["train loss", "eval_loss"]
    assert [step for step, _ in losses["train loss"]] == [2, 4, 6]
    assert math.isnan(losses["train loss"][1][1]) and math.isnan(losses["train loss"][2][1])
    assert list(metrics) == ["eval_f1"]
    assert bad == [4, 6]


def test_nan_and_unsorted_steps_still_draw(tmp_path: Path) -> None:
    entries = history(40, eval_every=10)
    entries[5]["loss"] = NAN
    entries[9].update(loss=0.0, grad_norm=NAN)
    entries[12]["eval_accuracy"] = INF
    entries.reverse()
    png = render_curves(entries, best_checkpoint_step=20, title="nan run")
    assert image(png).size == (800, 700)
    assert (255, 0, 0) in colours(image(png))  # the red NaN markers are there


def line_columns(picture: Image.Image, colour: tuple[int, int, int]) -> dict[int, int]:
    """x -> how many pixels of exactly ``colour`` that column has (more than 100 only)."""
    pixels = np.asarray(picture.convert("RGB"))
    per_column = (pixels == colour).all(axis=2).sum(axis=0)
    return {int(x): int(per_column[x]) for x in np.flatnonzero(per_column > 100)}


def test_best_checkpoint_is_marked_where_it_belongs() -> None:
    entries = history(50, eval_every=10)
    grey = (89, 89, 89)  # the marker's colour, 0.35
    assert line_columns(image(render_curves(entries)), grey) == {}
    columns = line_columns(image(render_curves(entries, best_checkpoint_step=30)), grey)
    assert len(columns) == 1
    # steps 1..50 with matplotlib's 5% margins across the axes from x=80 to x=784
    low, high = 1 - 0.05 * 49, 50 + 0.05 * 49
    expected = 80 + (784 - 80) * (30 - low) / (high - low)
    assert abs(next(iter(columns)) - expected) <= 3


@pytest.mark.parametrize(
    ("text", "drawn"),
    [
        ("🚀 run $x$", r"run \$x\$"),  # emoji dropped (no glyph), $ not read as math
        ("a\n  b", "a b"),
        ("plain", "plain"),
    ],
)
def test_labels_are_drawable(text: str, drawn: str) -> None:
    assert _label(text) == drawn


def test_title_with_emoji_and_dollars_warns_nothing() -> None:
    # pytest runs with filterwarnings=error: a missing-glyph or mathtext warning fails here.
    assert image(render_curves(history(5), title="🔥 $lr$ sweep ✅")).size == (800, 380)


def test_pyplot_is_never_imported() -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    render_curves(history(20, eval_every=5), best_checkpoint_step=10)
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules


def test_ten_thousand_points_draw_quickly(record_property: Any) -> None:
    entries = history(10_000, eval_every=1_000)
    render_curves(history(10))  # imports and font cache out of the way
    start = time.perf_counter()
    png = render_curves(entries, best_checkpoint_step=7_000, title="long run")
    record_property("render_seconds_10k", round(time.perf_counter() - start, 3))
    picture = image(png)
    assert picture.size == (800, 700)
    losses, _, _ = _curves(entries)
    assert len(losses["train loss"]) == 10_000


def test_real_trainer_history(tmp_path: Path) -> None:
    trainer = make_trainer(
        tmp_path / "run",
        epochs=3,
        model=TinyRegressor(),
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None
    step = int(best.rsplit("-", 1)[1])
    losses, metrics, _ = _curves(trainer.state.log_history)
    assert set(losses) == {"train loss", "eval_loss"}
    assert metrics == {}
    picture = image(render_curves(trainer.state.log_history, best_checkpoint_step=step))
    assert picture.size == (800, 380)


def test_missing_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigurationError) as info:
        require_matplotlib()
    assert (
        str(info.value)
        == PLOTS_HINT
        == ("plots=True needs matplotlib: pip install 'notifier[plots]'")
    )
    with pytest.raises(ConfigurationError, match="notifier\\[plots\\]"):
        render_curves(history(3))
