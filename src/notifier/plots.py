"""Training curves as a PNG (loss, eval loss, eval metrics by step), drawn without pyplot.

matplotlib is optional (``pip install 'notifier[plots]'``) and imported only when
a plot is drawn. The figure is rendered with ``matplotlib.figure.Figure`` and the
Agg canvas directly, so the user's pyplot state, backend and open figures are
never touched and rendering is safe on a worker thread.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .alerts import hidden_nan_loss
from .errors import ConfigurationError
from .filters import NOISE, NOISE_SUFFIXES

PLOTS_HINT = "plots=True needs matplotlib: pip install 'notifier[plots]'"
#: Figure width and panel height in inches, and resolution: 800 px wide at 100 dpi.
WIDTH, PANEL_HEIGHT, DPI = 8.0, 3.2, 100
#: Longer training-loss series are drawn as bucket means with their min–max range.
MAX_POINTS = 1600
#: Eval values that are bookkeeping, not metrics (besides filters.NOISE*).
_SKIP_SUFFIXES = (*NOISE_SUFFIXES, "_time")

Series = list[tuple[float, float]]


def require_matplotlib() -> None:
    """Raise ConfigurationError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise ConfigurationError(PLOTS_HINT) from None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, (bool, str)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _curves(
    log_history: Sequence[Mapping[str, Any]],
) -> tuple[dict[str, Series], dict[str, Series], list[float]]:
    """Loss series, other eval metric series, and the steps where a loss was not finite."""
    losses: dict[str, Series] = {}
    metrics: dict[str, Series] = {}
    bad_steps: list[float] = []
    for entry in log_history:
        if not isinstance(entry, Mapping):
            continue
        step = _number(entry.get("step"))
        if step is None or not math.isfinite(step):
            continue
        hidden = hidden_nan_loss(entry)
        for key, raw in entry.items():
            if key == "loss":
                name = "train loss"
            elif key.startswith("eval_") and key not in NOISE and not key.endswith(_SKIP_SUFFIXES):
                name = key
            else:
                continue
            value = _number(raw)
            if value is None:
                continue
            if "loss" in name:
                if hidden and key == "loss":
                    value = math.nan
                if not math.isfinite(value):
                    bad_steps.append(step)
                    value = math.nan  # a gap in the line, never an axis stretched to inf
                losses.setdefault(name, []).append((step, value))
            else:
                metrics.setdefault(name, []).append(
                    (step, value if math.isfinite(value) else math.nan)
                )
    for series in (*losses.values(), *metrics.values()):
        series.sort(key=lambda point: point[0])
    return losses, metrics, bad_steps


@functools.cache
def _charmap() -> frozenset[int]:
    """The code points the default font can draw (missing glyphs would warn)."""
    from matplotlib import font_manager

    font = font_manager.get_font(font_manager.findfont(font_manager.FontProperties()))
    return frozenset(font.get_charmap())


def _label(text: str) -> str:
    """Text safe to draw: glyphs the font lacks (emoji) dropped, ``$`` not read as math."""
    drawable = _charmap()
    kept = "".join(c for c in text if ord(c) in drawable or c in "\n\t")
    return " ".join(kept.split()).replace("$", r"\$")


def render_curves(
    log_history: Sequence[Mapping[str, Any]],
    *,
    best_checkpoint_step: int | None = None,
    title: str = "",
) -> bytes:
    """Draw ``state.log_history`` as a PNG and return its bytes.

    The top panel has the training ``loss`` and every eval loss (log scale when
    they span more than two orders of magnitude), with non-finite losses marked
    by red crosses on the axis; the panel below has the other eval metrics. A
    dashed line marks ``best_checkpoint_step``. An empty history gives a small
    placeholder image. Raises ConfigurationError when matplotlib is missing.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    losses, metrics, bad_steps = _curves(log_history)
    panels = int(bool(losses)) + int(bool(metrics))
    figure = Figure(figsize=(WIDTH, PANEL_HEIGHT * max(panels, 1) + 0.6), dpi=DPI)
    FigureCanvasAgg(figure)
    if title:
        figure.suptitle(_label(title))
    if panels == 0:
        axes = figure.add_subplot()
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", color="0.4")
        return _png(figure)

    all_axes = figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    index = 0
    if losses:
        axes = all_axes[index]
        index += 1
        colour = 0
        for name, series in losses.items():
            if name != "train loss":
                colour += 1
                steps, values = _columns(series)
                axes.plot(
                    steps, values, label=_label(name), marker="o", markersize=3, color=f"C{colour}"
                )
            elif len(series) <= MAX_POINTS:
                steps, values = _columns(series)
                axes.plot(steps, values, label=name, linewidth=1.0, color="C0")
            else:  # more points than pixels: each bucket's mean, and its range shaded
                steps, means, lows, highs = _buckets(series, MAX_POINTS // 2)
                axes.fill_between(steps, lows, highs, color="C0", alpha=0.25, linewidth=0)
                axes.plot(steps, means, label=f"{name} (mean of {len(series)} points)", color="C0")
        finite = [v for s in losses.values() for _, v in s if math.isfinite(v)]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
            axes.set_yscale("log")
        if bad_steps:
            axes.plot(
                bad_steps,
                [0.0] * len(bad_steps),
                linestyle="none",
                marker="x",
                color="red",
                clip_on=False,
                transform=axes.get_xaxis_transform(),
                label="NaN/inf loss",
            )
        axes.set_ylabel("loss")
    if metrics:
        axes = all_axes[index]
        for name, series in metrics.items():
            steps, values = _columns(series)
            axes.plot(steps, values, label=_label(name), marker="o", markersize=3)
        axes.set_ylabel("eval metrics")
    if best_checkpoint_step is not None:
        for n, axes in enumerate(all_axes):
            axes.axvline(
                best_checkpoint_step,
                color="0.35",
                linestyle="--",
                linewidth=1.0,
                label=f"best checkpoint (step {best_checkpoint_step})" if n == 0 else None,
            )
    for axes in all_axes:
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize="small")
    all_axes[-1].set_xlabel("step")
    # Fixed margins: a layout engine measures every artist first and doubles the time.
    height = figure.get_figheight()
    figure.subplots_adjust(
        left=0.1,
        right=0.98,
        bottom=0.55 / height,
        top=1 - (0.5 if title else 0.2) / height,
        hspace=0.1,
    )
    return _png(figure)


def _columns(series: Series) -> tuple[list[float], list[float]]:
    return [step for step, _ in series], [value for _, value in series]


def _buckets(
    series: Series, count: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Split a long series into ``count`` runs: each run's middle step, mean, min and max."""
    size = math.ceil(len(series) / count)
    steps, means, lows, highs = [], [], [], []
    for start in range(0, len(series), size):
        run = series[start : start + size]
        values = [v for _, v in run if math.isfinite(v)]
        steps.append(run[len(run) // 2][0])
        if values:
            means.append(sum(values) / len(values))
            lows.append(min(values))
            highs.append(max(values))
        else:
            means.append(math.nan)
            lows.append(math.nan)
            highs.append(math.nan)
    return steps, means, lows, highs


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
