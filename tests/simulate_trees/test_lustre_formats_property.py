"""Property tests: whatever the counters, the Lustre texts keep their grammar and their sums."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.simulate.nodes.readings import LustreTargetState, OpStat
from fmdiag.simulate.nodes.tree_lustre_rpc import RpcHistory, advance_rpc_history, format_osc_rpc_stats
from fmdiag.simulate.nodes.tree_lustre_stats import format_ptlrpc_stats, lustre_profile

ROW = re.compile(r"^(\d+):\t\t {0,9}(\d+) +(\d+) +(\d+)   \| +(\d+) +(\d+) +(\d+)$")
LINE = re.compile(r"^(\S+) +(\d+) samples \[(\w+)\] (\d+) (\d+) (\d+) (\d+)$")

counts = st.integers(min_value=0, max_value=10**12)
pages = st.dictionaries(
    st.integers(min_value=1, max_value=4096), st.integers(min_value=0, max_value=10**9), max_size=8
)
versions = st.sampled_from(["2.10", "2.14", "2.15"])


@settings(max_examples=60)
@given(read=pages, write=pages, rif=st.integers(0, 64), version=versions, steps=st.integers(1, 3))
def test_rpc_stats_rows_add_up(
    read: dict[int, int], write: dict[int, int], rif: int, version: str, steps: int
) -> None:
    profile = lustre_profile(version)
    target = LustreTargetState(
        index=0, read_rpcs_in_flight=rif, read_pages_per_rpc=read, write_pages_per_rpc=write
    )
    hist: RpcHistory | None = None
    for _ in range(steps):  # the same snapshot again adds nothing to the histories
        hist = advance_rpc_history(hist, target, profile)
    assert hist is not None
    text = format_osc_rpc_stats(target, hist, profile, 1_700_000_000.5, 1_699_990_000.0)
    sections = text.split("\n\t\t\tread\t\t\twrite\n")[1:]
    assert len(sections) == 3
    for section in sections:
        rows = [ROW.match(line) for line in section.splitlines()[1:] if line]
        assert all(rows), section
        read_tot = sum(int(m.group(2)) for m in rows if m)
        write_tot = sum(int(m.group(5)) for m in rows if m)
        assert read_tot == sum(read.values()) and write_tot == sum(write.values())
        last = rows[-1]
        assert last is not None
        if read_tot:
            assert last.group(4) == "100"
        if write_tot:
            assert last.group(7) == "100"


@settings(max_examples=60)
@given(
    stats=st.dictionaries(
        st.sampled_from(["req_waittime", "req_active", "ost_read", "read_bytes", "obd_ping", "new_op"]),
        st.tuples(counts, counts, counts, counts, counts),
    ),
    version=versions,
)
def test_ptlrpc_lines_keep_their_values(stats: dict[str, tuple[int, ...]], version: str) -> None:
    ops = {name: OpStat(c, "usecs", mn, mx, sm, sq) for name, (c, mn, mx, sm, sq) in stats.items()}
    text = format_ptlrpc_stats(ops, lustre_profile(version), 1_700_000_000.0, 1_699_000_000.0)
    body = [line for line in text.splitlines() if "samples" in line]
    parsed = {m.group(1): m.groups()[1:] for m in (LINE.match(line) for line in body) if m}
    assert len(parsed) == len(body)
    assert set(parsed) == {name for name, op in ops.items() if op.count > 0}
    for name, (count, _unit, mn, mx, sm, sq) in parsed.items():
        op = ops[name]
        assert (int(count), int(mn), int(mx), int(sm), int(sq)) == (
            op.count,
            op.min,
            op.max,
            op.sum,
            op.sumsq,
        )
