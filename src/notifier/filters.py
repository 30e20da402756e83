"""Jinja filters for messages: durations, percentages, compact numbers, progress bars, metrics."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from jinja2 import Undefined
from jinja2.filters import do_round
from markupsafe import soft_str

MISSING = "—"


def _number_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, Undefined) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def duration(value: Any) -> str:
    """Seconds as ``1h 02m``, ``3m 05s`` or ``12s``; ``2d 03h`` past a day."""
    seconds = _number_or_none(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return MISSING
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    if seconds < 10 and seconds != total:
        return f"{seconds:.1f}s"
    return f"{secs}s"


def percent(value: Any, digits: int = 0) -> str:
    """A 0–1 fraction as a percentage: ``0.5`` -> ``50%``."""
    fraction = _number_or_none(value)
    if fraction is None or not math.isfinite(fraction):
        return MISSING
    return f"{fraction * 100:.{digits}f}%"


def number(value: Any, digits: int = 4) -> str:
    """A compact number: ``12345`` -> ``12.3k``, ``0.000123`` -> ``1.23e-04``."""
    x = _number_or_none(value)
    if x is None:
        return MISSING if not isinstance(value, str) else value
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(value, int) or x.is_integer():
        if abs(x) < 1e4:
            return f"{int(x)}"
        # The smallest unit that keeps three digits: 12.3k, 1.23M (999999 -> 1M, not 1e+03k).
        for size, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
            text = f"{x / size:.3g}"
            if abs(float(text)) < 1000:
                return f"{text}{suffix}"
        return f"{x / 1e12:.3g}T"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}g}"


def bar(value: Any, width: int = 20) -> str:
    """A text progress bar for a 0–1 fraction: ``▓▓▓▓▓░░░░░``."""
    fraction = _number_or_none(value)
    if fraction is None or not math.isfinite(fraction):
        return MISSING
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return "▓" * filled + "░" * (width - filled)


#: Bookkeeping values the ``metrics`` filter leaves out unless asked for (``all=True``).
NOISE = ("epoch", "total_flos", "step")
NOISE_SUFFIXES = ("_runtime", "_per_second")


def metrics(values: Any, separator: str = " · ", all: bool = False) -> str:  # noqa: A002
    """A mapping of metrics as ``loss 0.123 · learning_rate 5e-05``, without speed bookkeeping."""
    if not isinstance(values, Mapping) or not values:
        return MISSING
    shown = [
        f"{k} {number(v)}"
        for k, v in values.items()
        if all or (k not in NOISE and not str(k).endswith(NOISE_SUFFIXES))
    ]
    return separator.join(shown) or MISSING


def string(value: Any) -> str:
    """Jinja's ``string``, except that a missing value is ``—``, never ``None``."""
    if value is None or isinstance(value, Undefined):
        return MISSING
    return soft_str(value)  # as Jinja's: markup stays markup


def rounded(value: Any, precision: int = 0, method: str = "common") -> Any:
    """Jinja's ``round``, except that a missing value stays missing (shown as ``—``)
    instead of failing the whole message."""
    if value is None or isinstance(value, Undefined):
        return None
    return do_round(value, precision, method)  # type: ignore[arg-type]


FILTERS: dict[str, Callable[..., Any]] = {
    "duration": duration,
    "percent": percent,
    "number": number,
    "bar": bar,
    "metrics": metrics,
    # Jinja's own, made safe for missing values (None would print as "None" or raise).
    "string": string,
    "round": rounded,
}
