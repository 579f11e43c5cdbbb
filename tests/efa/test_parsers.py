"""The EFA sysfs parsers: the kernel's real text forms, and anything else fails cleanly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.exporters.collectors.efa import (
    U64_MAX,
    parse_counter,
    parse_label_text,
    parse_lifespan_seconds,
    parse_numa_node,
    parse_pci_address,
    parse_rate_bytes,
    parse_state,
    parse_vendor,
)

PARSERS = (
    parse_counter,
    parse_lifespan_seconds,
    parse_state,
    parse_rate_bytes,
    parse_vendor,
    parse_numa_node,
    parse_label_text,
)


@pytest.mark.parametrize(
    ("raw", "value"),
    [(b"0\n", 0), (b"123456789012\n", 123456789012), (b"18446744073709551615\n", U64_MAX), (b"  7 \n", 7)],
)
def test_counter(raw: bytes, value: int) -> None:
    assert parse_counter(raw) == value


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n",
        b"-1\n",
        b"+1\n",
        b"1_000\n",
        b"0x10\n",
        b"12 34\n",
        b"18446744073709551616\n",
        b"9" * 400,
        b"1.5\n",
        b"\xff\xfe",
        "٣".encode(),
        b"N/A\n",
    ],
)
def test_counter_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_counter(raw)


def test_lifespan_is_milliseconds() -> None:
    assert parse_lifespan_seconds(b"10\n") == 0.01
    assert parse_lifespan_seconds(b"1000\n") == 1.0


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"4: ACTIVE\n", 4),
        (b"1: DOWN\n", 1),
        (b"5: LinkUp\n", 5),
        (b"3: Disabled\n", 3),
        (b"7: PortConfigurationTraining\n", 7),
        (b"4\n", 4),
    ],
)
def test_state(raw: bytes, value: int) -> None:
    assert parse_state(raw) == value


@pytest.mark.parametrize("raw", [b"", b"ACTIVE\n", b": ACTIVE", b"4 ACTIVE", b"99999: X", b"\xff"])
def test_state_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_state(raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"100 Gb/sec (4X EDR)\n", 12.5e9),
        (b"100 Gb/sec\n", 12.5e9),
        (b"400 Gb/sec\n", 50e9),
        (b"2.5 Gb/sec (1X SDR)\n", 312.5e6),
        (b"0 Gb/sec\n", 0.0),
        (b"10 Mb/sec\n", 1.25e6),
    ],
)
def test_rate(raw: bytes, value: float) -> None:
    assert parse_rate_bytes(raw) == pytest.approx(value)


@pytest.mark.parametrize("raw", [b"", b"fast\n", b"100\n", b"100 GB/s\n", b"Gb/sec", b"-1 Gb/sec"])
def test_rate_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_rate_bytes(raw)


def test_vendor_numa_text() -> None:
    assert parse_vendor(b"0x1d0f\n") == 0x1D0F
    assert parse_vendor(b"0x15B3\n") == 0x15B3
    assert parse_numa_node(b"1\n") == 1
    assert parse_numa_node(b"-1\n") == -1
    assert parse_label_text(b"0ab1:23ff:fe45:6789\n") == "0ab1:23ff:fe45:6789"
    for bad in (b"", b"1d0f", b"0xzz", b"0x1d0f0000"):
        with pytest.raises(ValueError):
            parse_vendor(bad)
    for bad in (b"", b"one", b"1.5", b"123456"):
        with pytest.raises(ValueError):
            parse_numa_node(bad)
    for bad in (b"", b"\n", b"a\nb", b"\x00x", b"\xff", b"x" * 300):
        with pytest.raises(ValueError):
            parse_label_text(bad)


def test_pci_address() -> None:
    assert parse_pci_address("../../../0000:4f:00.0") == "0000:4f:00.0"
    assert parse_pci_address("/sys/devices/pci0000:00/0000:00:1c.0/0000:4F:00.1/") == "0000:4f:00.1"
    for bad in ("../../../virtual", "", "0000:4f:00.8", "4f:00.0"):
        with pytest.raises(ValueError):
            parse_pci_address(bad)


@given(st.integers(0, U64_MAX), st.sampled_from([b"", b"\n", b" \n"]))
def test_counter_round_trip(value: int, tail: bytes) -> None:
    assert parse_counter(str(value).encode() + tail) == value


@given(st.binary(max_size=64))
def test_parsers_fail_only_with_value_error(raw: bytes) -> None:
    """Any bytes: a value or a ValueError naming the problem, never another exception."""
    for parse in PARSERS:
        try:
            parse(raw)
        except ValueError as exc:
            assert str(exc)


@given(st.text(max_size=80))
def test_pci_address_fails_only_with_value_error(target: str) -> None:
    try:
        addr = parse_pci_address(target)
    except ValueError:
        return
    assert addr == addr.lower() and addr.count(":") == 2


@given(st.integers(0, 10**6), st.sampled_from(["Gb", "Mb"]), st.text(max_size=20))
def test_rate_any_suffix(n: int, unit: str, suffix: str) -> None:
    raw = f"{n} {unit}/sec ({suffix})\n".encode()
    assert parse_rate_bytes(raw) == pytest.approx(n * (1e9 if unit == "Gb" else 1e6) / 8)
