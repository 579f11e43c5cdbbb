"""Exact values through Families.add: 64-bit counters must not go through a float."""

from __future__ import annotations

from fmdiag.exporters.exposition import Format, render
from fmdiag.exporters.families import Families


def test_add_keeps_64_bit_integers_exact_in_both_formats() -> None:
    fams = Families()
    big = 2**64 - 1
    odd = 2**53 + 1  # the first integer a float cannot hold
    fams.add("fmdiag_efa_rx_bytes_total", big, {"device": "d", "port": "1"})
    fams.add("fmdiag_efa_tx_bytes_total", odd, {"device": "d", "port": "1"})
    fams.add("fmdiag_efa_devices", True)  # bools are numbers, printed as 1
    built = list(fams)
    for fmt in (Format.TEXT, Format.OPENMETRICS):
        text = render(built, fmt).decode()
        assert f'fmdiag_efa_rx_bytes_total{{device="d",port="1"}} {big}\n' in text
        assert f'fmdiag_efa_tx_bytes_total{{device="d",port="1"}} {odd}\n' in text
        assert "fmdiag_efa_devices 1\n" in text
