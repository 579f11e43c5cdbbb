"""The host collector's pure parsers: /proc/stat and /proc/pressure/* in each kernel's shape."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.exporters.collectors.host import cmdline_text, parse_pressure, parse_proc_stat

# Linux 5.x+: ten columns (guest, guest_nice included in user/nice already).
STAT_5X = """cpu  6783 10 1240 156311 405 0 35 2 0 0
cpu0 1294 5 383 80547 121 0 15 1 0 0
cpu1 5488 5 857 75763 283 0 20 1 0 0
intr 1 2 3
btime 1795305206
"""
# Linux 2.6.11-era: seven columns (no steal, guest).
STAT_OLD = "cpu  100 0 50 1000 20 1 2\ncpu0 100 0 50 1000 20 1 2\nbtime 1\n"


def test_proc_stat_sums_all_cpus_in_seconds() -> None:
    stat = parse_proc_stat(STAT_5X, user_hz=100)
    assert stat.cpus == 2
    assert stat.seconds == {
        "user": 67.83,
        "nice": 0.1,
        "system": 12.4,
        "idle": 1563.11,
        "iowait": 4.05,
        "irq": 0.0,
        "softirq": 0.35,
        "steal": 0.02,
    }


def test_proc_stat_old_kernel_has_fewer_modes() -> None:
    stat = parse_proc_stat(STAT_OLD, user_hz=100)
    assert set(stat.seconds) == {"user", "nice", "system", "idle", "iowait", "irq", "softirq"}
    assert stat.seconds["iowait"] == 0.2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("intr 1\nbtime 2\n", "no aggregate 'cpu' line"),
        ("cpu  1 2\n", "2 fields"),
        ("cpu  1 2 x 4 5\n", "system is 'x'"),
        ("cpu  1 2 -3 4 5\n", "system is '-3'"),
        ("", "no aggregate"),
    ],
)
def test_proc_stat_garbage_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_proc_stat(text)


def test_pressure_totals_in_microseconds() -> None:
    text = (
        "some avg10=1.00 avg60=0.50 avg300=0.25 total=123456\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=7\n"
    )
    assert parse_pressure(text) == {"some": 123456, "full": 7}


def test_pressure_cpu_before_5_13_has_only_some() -> None:
    assert parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n") == {"some": 42}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("many avg10=0 total=1\n", "expected 'some' or 'full'"),
        ("some avg10=0.00 avg60=0.00\n", "no total= field"),
        ("some total=-5\n", "not a count"),
        ("some total=\n", "not a count"),
        ("some total=12ab\n", "not a count"),
    ],
)
def test_pressure_garbage_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pressure(text)


def test_cmdline_joins_arguments() -> None:
    assert cmdline_text(b"/usr/bin/python3\0-u\0train.py\0") == "/usr/bin/python3 -u train.py"
    assert cmdline_text(b"sshd: listener\0") == "sshd: listener"
    assert cmdline_text(b"\xff\xfe\0") == "\ufffd\ufffd"


@given(st.text(max_size=400))
def test_proc_stat_never_raises_other_than_value_error(text: str) -> None:
    try:
        stat = parse_proc_stat(text)
    except ValueError:
        return
    assert stat.cpus >= 0
    assert all(v >= 0 for v in stat.seconds.values())


_PSI_LINE = st.builds(
    lambda kind, total, avg: f"{kind} avg10={avg:.2f} avg60={avg:.2f} avg300={avg:.2f} total={total}",
    st.sampled_from(["some", "full"]),
    st.integers(min_value=0, max_value=2**64),
    st.floats(min_value=0, max_value=100),
)


@given(st.lists(_PSI_LINE, max_size=3))
def test_pressure_round_trips_generated_files(lines: list[str]) -> None:
    expected: dict[str, int] = {}
    for line in lines:
        expected[line.split()[0]] = int(line.rsplit("=", 1)[1])
    assert parse_pressure("\n".join(lines) + "\n") == expected


@given(
    st.lists(_PSI_LINE, min_size=1, max_size=2), st.integers(min_value=0, max_value=200), st.text(max_size=30)
)
def test_pressure_truncated_or_garbled_is_value_error_or_parsed(
    lines: list[str], cut: int, junk: str
) -> None:
    text = ("\n".join(lines) + "\n")[:cut] + junk
    try:
        result = parse_pressure(text)
    except ValueError:
        return
    assert set(result) <= {"some", "full"}
    assert all(v >= 0 for v in result.values())
