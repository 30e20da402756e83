"""The Jinja filters (duration, percent, number, bar, metrics), alone and inside templates."""

from __future__ import annotations

import math
from typing import Any

import pytest
from jinja2 import Undefined

from notifier.context import sample_context
from notifier.filters import (
    FILTERS,
    MISSING,
    bar,
    duration,
    metrics,
    number,
    percent,
    rounded,
    string,
)
from notifier.templates import Templates

NAN, INF = math.nan, math.inf

#: Inputs that mean "no value" to every filter.
MISSING_INPUTS: list[Any] = [None, Undefined(name="eta"), NAN, INF, -INF, "n/a", [1], True]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0s"),
        (5, "5s"),
        (2.5, "2.5s"),
        (9.96, "10.0s"),
        (59, "59s"),
        (60, "1m 00s"),
        (65, "1m 05s"),
        (3599, "59m 59s"),
        (3600, "1h 00m"),
        (3725, "1h 02m"),
        (86399, "23h 59m"),
        (90061, "1d 01h"),
        (3 * 86400, "3d 00h"),
        ("12", "12s"),
        (-1, MISSING),
        *[(value, MISSING) for value in MISSING_INPUTS],
    ],
)
def test_duration(value: Any, expected: str) -> None:
    assert duration(value) == expected


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0, 0, "0%"),
        (0.5, 0, "50%"),
        (1, 0, "100%"),
        (0.1234, 1, "12.3%"),
        (2 / 3, 0, "67%"),
        (1.5, 0, "150%"),
        *[(value, 0, MISSING) for value in MISSING_INPUTS],
    ],
)
def test_percent(value: Any, digits: int, expected: str) -> None:
    assert percent(value, digits) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (0.0, "0"),
        (1.0, "1"),
        (-5, "-5"),
        (999, "999"),
        (9999, "9999"),
        (10000, "10k"),
        (12345, "12.3k"),
        (1234567, "1.23M"),
        (-25_000_000_000, "-25G"),
        (999_999, "1M"),
        (123_456_789.0, "123M"),
        (4.2e13, "42T"),
        (0.2311, "0.2311"),
        (0.123456, "0.1235"),
        (0.000123, "1.23e-04"),
        (1.7e-05, "1.70e-05"),
        (NAN, "NaN"),
        (INF, "inf"),
        (-INF, "-inf"),
        ("n/a", "n/a"),  # a string is shown as it is
        (None, MISSING),
        (Undefined(name="best_metric"), MISSING),
        ([1], MISSING),
    ],
)
def test_number(value: Any, expected: str) -> None:
    assert number(value) == expected


def test_number_digits() -> None:
    assert number(0.123456, 2) == "0.12"
    assert number(0.000123456, 5) == "1.235e-04"


@pytest.mark.parametrize(
    ("value", "width", "expected"),
    [
        (0, 20, "░" * 20),
        (0.5, 20, "▓" * 10 + "░" * 10),
        (1, 20, "▓" * 20),
        (0.5, 4, "▓▓░░"),
        (0.26, 4, "▓░░░"),
        (1.5, 4, "▓▓▓▓"),  # clamped
        (-0.5, 4, "░░░░"),
        *[(value, 4, MISSING) for value in MISSING_INPUTS],
    ],
)
def test_bar(value: Any, width: int, expected: str) -> None:
    assert bar(value, width) == expected


@pytest.mark.parametrize(
    ("values", "options", "expected"),
    [
        ({"loss": 0.5, "learning_rate": 5e-05}, {}, "loss 0.5 · learning_rate 5.00e-05"),
        (
            {
                "loss": 1,
                "epoch": 2.0,
                "step": 8,
                "total_flos": 5.0,
                "train_runtime": 3.1,
                "train_samples_per_second": 4.0,
                "train_loss": 0.25,
            },
            {},
            "loss 1 · train_loss 0.25",
        ),
        ({"loss": 1, "epoch": 2.0}, {"all": True}, "loss 1 · epoch 2"),
        ({"loss": 1, "grad_norm": 2}, {"separator": ", "}, "loss 1, grad_norm 2"),
        ({"loss": NAN, "grad_norm": INF}, {}, "loss NaN · grad_norm inf"),
        ({"loss": None, "note": "diverged"}, {}, f"loss {MISSING} · note diverged"),
        ({"epoch": 1.0, "eval_runtime": 0.1}, {}, MISSING),  # nothing left to show
        ({}, {}, MISSING),
        (None, {}, MISSING),
        (Undefined(name="metrics"), {}, MISSING),
        ([("loss", 1)], {}, MISSING),
    ],
)
def test_metrics(values: Any, options: dict[str, Any], expected: str) -> None:
    assert metrics(values, **options) == expected


def test_every_filter_is_registered() -> None:
    assert FILTERS == {
        "duration": duration,
        "percent": percent,
        "number": number,
        "bar": bar,
        "metrics": metrics,
        "string": string,
        "round": rounded,
    }


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ("{{ best_metric|string }}", None, MISSING),
        ("{{ best_metric|string }}", 0.25, "0.25"),
        ("{{ best_metric|round(2) }}", None, MISSING),
        ("{{ best_metric|round(2) }}", 0.2874, "0.29"),
        ("{{ best_metric|round(1, 'floor') }}", 0.2874, "0.2"),
        ("{{ (best_metric|string) ~ '!' }}", None, MISSING + "!"),
        ("{{ 1400|round }}", None, "1400"),  # as Jinja's: an int stays an int
        ("{{ 2.6|round }}", None, "3.0"),
    ],
)
def test_jinja_filters_never_print_none_nor_fail_on_a_missing_value(
    template: str, value: Any, expected: str
) -> None:
    # Jinja's own would print "None" or raise TypeError, and the message would fall back.
    context = {**sample_context("train_end"), "best_metric": value}
    rendered = Templates({"train_end": template}, events=("train_end",)).render(
        "train_end", context
    )
    assert rendered["text"] == expected


def test_string_keeps_markup_in_html_parts() -> None:
    html = "{% set x %}<b>{{ run_name }}</b>{% endset %}{{ x|string }}"
    templates = Templates(
        {"epoch_end.html": html}, backend="email", parts=("text", "html"), events=("epoch_end",)
    )
    rendered = templates.render("epoch_end", sample_context("epoch_end"))
    assert rendered["html"] == "<b>bert-base-sst2</b>"  # escaped once, not twice


TEMPLATE = (
    "{{ eta|duration }}|{{ progress|percent }}|{{ best_metric|number }}|{{ progress|bar(4) }}"
    "|{{ eval_metrics|metrics }}|{{ best_metric }}"
)


@pytest.mark.parametrize(
    ("changes", "removed", "expected"),
    [
        (
            {"eta": 65.0, "progress": 0.5, "best_metric": 0.25, "eval_metrics": {"eval_loss": 1}},
            (),
            "1m 05s|50%|0.25|▓▓░░|eval_loss 1|0.25",
        ),
        (
            {"eta": None, "progress": None, "best_metric": None, "eval_metrics": {}},
            (),
            "—|—|—|—|—|—",
        ),
        ({"eta": NAN, "progress": NAN, "best_metric": NAN}, ("eval_metrics",), "—|—|NaN|—|—|nan"),
        ({}, ("eta", "progress", "best_metric", "eval_metrics"), "—|—|—|—|—|"),
    ],
    ids=["values", "none", "nan-and-absent", "absent (Undefined)"],
)
def test_filters_inside_a_template(
    changes: dict[str, Any], removed: tuple[str, ...], expected: str
) -> None:
    templates = Templates({"evaluate": TEMPLATE}, events=("evaluate",))
    context = {**sample_context("evaluate"), **changes}
    for name in removed:
        del context[name]
    assert templates.render("evaluate", context) == {"text": expected}
