"""Lustre client ``rpc_stats`` files and the histograms behind them.

The histograms ("rpcs in flight", "offset", "modify") accumulate over the life of a mount,
which one snapshot cannot give: :class:`RpcHistory` carries them from one render to the next
and :func:`advance_rpc_history` adds the RPCs sent in between.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fmdiag.simulate.nodes.readings import LustreTargetState
from fmdiag.simulate.nodes.tree_lustre_stats import LustreProfile, secs_nsecs, stats_header

#: ``OBD_HIST_MAX``: rows in every Lustre client histogram.
OBD_HIST_MAX = 32


@dataclass
class RpcHistory:
    """The osc/mdc histograms that accumulate over time (a snapshot cannot supply them).

    ``rpcs in flight``: the RPCs sent since the previous render are tallied at the state's
    current RPCs-in-flight count, as Lustre tallies each RPC at the count when it was sent.
    ``offset``: they are spread over the object offsets of a sequential stream of 64 RPCs
    of the dominant size. ``modify``: the mdc's modifying requests (close, reint) since the
    previous render, tallied at one in flight.
    """

    totals: list[int] = field(default_factory=lambda: [0, 0, 0])  # read, write, modify RPCs
    rif_read: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    rif_write: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    off_read: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    off_write: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)
    modify: list[int] = field(default_factory=lambda: [0] * OBD_HIST_MAX)

    def to_json(self) -> dict[str, list[int]]:
        return {
            "totals": self.totals,
            "rif_read": self.rif_read,
            "rif_write": self.rif_write,
            "off_read": self.off_read,
            "off_write": self.off_write,
            "modify": self.modify,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RpcHistory:
        h = cls()
        for name in ("totals", "rif_read", "rif_write", "off_read", "off_write", "modify"):
            value = raw.get(name)
            want = 3 if name == "totals" else OBD_HIST_MAX
            if isinstance(value, list) and len(value) == want and all(isinstance(v, int) for v in value):
                setattr(h, name, list(value))
        return h


def tally_log2(value: int) -> int:
    """The histogram row ``lprocfs_oh_tally_log2`` puts ``value`` in: ceil(log2 value)."""
    row = 0
    while (1 << row) < value and row < OBD_HIST_MAX - 1:
        row += 1
    return row


def pages_histogram(pages_per_rpc: Mapping[int, int]) -> list[int]:
    hist = [0] * OBD_HIST_MAX
    for pages, count in pages_per_rpc.items():
        hist[tally_log2(pages)] += count
    return hist


def _pct(a: int, b: int) -> int:
    return a * 100 // b if b else 0


def _hist_section(title: str, read: Sequence[int], write: Sequence[int], label: Any, first: int) -> str:
    """One read|write histogram as ``osc_rpc_stats_seq_show`` prints it."""
    out = ["\n\t\t\tread\t\t\twrite\n", f"{title:<22}rpcs   % cum % |       rpcs   % cum %\n"]
    read_tot, write_tot = sum(read), sum(write)
    read_cum = write_cum = 0
    for i in range(first, OBD_HIST_MAX):
        r, w = read[i], write[i]
        read_cum += r
        write_cum += w
        out.append(
            f"{label(i)}:\t\t{r:10d} {_pct(r, read_tot):3d} {_pct(read_cum, read_tot):3d}   | "
            f"{w:10d} {_pct(w, write_tot):3d} {_pct(write_cum, write_tot):3d}\n"
        )
        if read_cum == read_tot and write_cum == write_tot:
            break
    return "".join(out)


def _rpc_header(profile: LustreProfile, time_s: float, start_s: float, *, space_padded: bool = False) -> str:
    """The rpc_stats time line. Before 2.15 the mdc's modify histogram printed the
    nanoseconds with ``%9lu`` (space-padded: ``1700000000. 25000000``), the osc's with ``%09lu``.
    """
    if profile.elapsed_header:
        return stats_header(profile, time_s, start_s, colon=True)
    s, ns = secs_nsecs(time_s)
    frac = f"{ns:9d}" if space_padded else f"{ns:09d}"
    return f"snapshot_time:         {s}.{frac} (secs.nsecs)\n"


def _rw_rpc_sections(target: LustreTargetState, hist: RpcHistory, profile: LustreProfile) -> str:
    out = [
        f"read RPCs in flight:  {target.read_rpcs_in_flight}\n",
        f"write RPCs in flight: {target.write_rpcs_in_flight}\n",
        f"pending write pages:  {target.pending_write_pages}\n",
        f"pending read pages:   {target.pending_read_pages}\n",
        _hist_section(
            "pages per rpc",
            pages_histogram(target.read_pages_per_rpc),
            pages_histogram(target.write_pages_per_rpc),
            lambda i: 1 << i,
            0,
        ),
        _hist_section("rpcs in flight", hist.rif_read, hist.rif_write, lambda i: i, profile.rif_first_row),
        _hist_section("offset", hist.off_read, hist.off_write, lambda i: 0 if i == 0 else 1 << (i - 1), 0),
    ]
    return "".join(out)


def format_osc_rpc_stats(
    target: LustreTargetState, hist: RpcHistory, profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``osc.<instance>.rpc_stats``: in-flight/pending gauges and three histograms."""
    return _rpc_header(profile, time_s, start_s) + _rw_rpc_sections(target, hist, profile)


def format_mdc_rpc_stats(
    target: LustreTargetState, hist: RpcHistory, profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``mdc.<instance>.rpc_stats``: the modify-RPC histogram, then (2.11+) the osc-like part."""
    out = [_rpc_header(profile, time_s, start_s, space_padded=True), "modify_RPCs_in_flight:  0\n"]
    out.append("\n\t\t\tmodify\nrpcs in flight        rpcs   % cum %\n")
    tot = sum(hist.modify)
    cum = 0
    for i in range(OBD_HIST_MAX):
        n = hist.modify[i]
        cum += n
        out.append(f"{i}:\t\t{n:10d} {_pct(n, tot):3d} {_pct(cum, tot):3d}\n")
        if cum == tot:
            break
    if profile.mdc_rw_sections:
        out.append("\n")
        out.append(_rw_rpc_sections(target, hist, profile))
    return "".join(out)


def _spread(total: int, buckets: Sequence[int]) -> list[int]:
    """``total`` split over ``buckets`` (one share each, remainder to the first ones)."""
    out = [0] * OBD_HIST_MAX
    if total <= 0 or not buckets:
        return out
    base, rem = divmod(total, len(buckets))
    for j, b in enumerate(buckets):
        out[b] += base + (1 if j < rem else 0)
    return out


def _modify_total(target: LustreTargetState) -> int:
    return sum(st.count for name, st in target.stats.items() if name.startswith(("mds_reint", "mds_close")))


def advance_rpc_history(
    prev: RpcHistory | None, target: LustreTargetState, profile: LustreProfile
) -> RpcHistory:
    """The histograms after the RPCs sent since ``prev`` (``None``: a first look, no history)."""
    h = RpcHistory() if prev is None else RpcHistory.from_json(prev.to_json())
    read_pages = pages_histogram(target.read_pages_per_rpc)
    write_pages = pages_histogram(target.write_pages_per_rpc)
    totals = [sum(read_pages), sum(write_pages), _modify_total(target)]
    if any(now < before for now, before in zip(totals, h.totals, strict=True)):
        h = RpcHistory()  # counters went backwards: the client remounted, history restarts
    deltas = [now - before for now, before in zip(totals, h.totals, strict=True)]
    h.totals = totals
    for delta, pages, in_flight, rif, off in (
        (deltas[0], read_pages, target.read_rpcs_in_flight, h.rif_read, h.off_read),
        (deltas[1], write_pages, target.write_rpcs_in_flight, h.rif_write, h.off_write),
    ):
        if delta <= 0:
            continue
        rif[min(max(in_flight, 1), OBD_HIST_MAX - 1)] += delta
        size = 1 << max(range(OBD_HIST_MAX), key=lambda i: (pages[i], -i))  # dominant RPC size
        spread = _spread(delta, [tally_log2(m * size + 1) for m in range(64)])  # page offset + 1
        for i, n in enumerate(spread):
            off[i] += n
    if deltas[2] > 0:
        h.modify[1] += deltas[2]
    return h
