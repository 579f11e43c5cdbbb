"""The one duration parser of the CLI: Prometheus' units or seconds, and a clear error otherwise."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.durations import UNITS, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5),
        ("500ms", 0.5),
        ("1m", 60),
        ("5m", 300),
        ("1h30m", 5400),
        ("1m30s", 90),
        ("1d", 86400),
        ("2w", 14 * 86400),
        ("1y", 365 * 86400),
        ("1.5h", 5400),
        ("90", 90),
        ("0.25", 0.25),
        (".5", 0.5),
        (" 30s ", 30),
        ("1h0m5s", 3605),
    ],
)
def test_good_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is not a duration"),
        ("soon", "is not a duration"),
        ("5 s", "is not a duration"),
        ("1x", "is not a duration"),
        ("-1h", "is not a duration"),
        ("1e3", "is not a duration"),
        ("inf", "is not a duration"),
        ("nan", "is not a duration"),
        ("30m1h", "largest first, each once"),
        ("1m1m", "largest first, each once"),
        ("0", "expected seconds > 0"),
        ("0s", "expected seconds > 0"),
        ("9" * 400, "finite"),
    ],
)
def test_bad_durations_say_why_and_quote_the_text(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as err:
        parse_duration(text)
    assert repr(text) in str(err.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(300, "5m"), (3600, "1h"), (5400, "1h30m"), (0.25, "250ms"), (5, "5s"), (86400, "1d"), (1e-4, "0.0001")],
)
def test_format_writes_what_an_operator_would_type(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.text(max_size=30))
def test_any_text_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert value > 0 and math.isfinite(value)


_PARTS = st.lists(
    st.tuples(st.sampled_from(list(UNITS)), st.integers(min_value=0, max_value=10_000)),
    min_size=1,
    max_size=len(UNITS),
    unique_by=lambda part: part[0],
)


@given(_PARTS)
def test_composite_durations_add_up(parts: list[tuple[str, int]]) -> None:
    parts = sorted(parts, key=lambda part: list(UNITS).index(part[0]))
    text = "".join(f"{n}{unit}" for unit, n in parts)
    total = sum(n * UNITS[unit] for unit, n in parts)
    if total == 0:
        with pytest.raises(ValueError, match="expected seconds > 0"):
            parse_duration(text)
    else:
        assert parse_duration(text) == pytest.approx(total)


@given(st.integers(min_value=1, max_value=10**12))
def test_formatted_durations_parse_back(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-12)


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False))
def test_any_positive_seconds_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=1e-9)
