"""The Lustre part of a rendered node tree, parsed by a small independent reader."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fmdiag.simulate.nodes.readings import LustreFsState, NodeState
from fmdiag.simulate.nodes.render import render_node
from fmdiag.simulate.nodes.tree_lustre import lctl_get_param

HEADER_RE = re.compile(r"^(snapshot_time|start_time|elapsed_time) +(\d+)\.(\d{9}) secs\.nsecs$")
LINE_RE = re.compile(r"^(\S+(?: \S+)*?) +(\d+) samples \[(\w+)\](?: (\d+) (\d+) (\d+)(?: (\d+))?)?$")
RPC_HEADER_RE = re.compile(r"^snapshot_time: +(\d+)\.(\d{9}) \(secs\.nsecs\)$")
ROW_RE = re.compile(r"^(\d+):\t\t {0,9}(\d+) +(\d+) +(\d+)   \| +(\d+) +(\d+) +(\d+)$")


@dataclass
class Line:
    count: int
    unit: str
    nums: tuple[int, ...]


def parse_stats(text: str) -> tuple[dict[str, float], dict[str, Line]]:
    assert text.endswith("\n")
    headers: dict[str, float] = {}
    lines: dict[str, Line] = {}
    for raw in text.splitlines():
        h = HEADER_RE.match(raw)
        if h:
            assert not lines, "header lines come first"
            headers[h.group(1)] = int(h.group(2)) + int(h.group(3)) / 1e9
            continue
        m = LINE_RE.match(raw)
        assert m, f"not a stats line: {raw!r}"
        nums = tuple(int(x) for x in m.groups()[3:] if x is not None)
        lines[m.group(1)] = Line(int(m.group(2)), m.group(3), nums)
    return headers, lines


def parse_rpc_stats(text: str) -> dict[str, object]:
    lines = text.splitlines()
    out: dict[str, object] = {}
    m = RPC_HEADER_RE.match(lines[0])
    assert m, lines[0]
    out["time"] = int(m.group(1)) + int(m.group(2)) / 1e9
    for raw in lines[1:5]:
        key, _, value = raw.partition(":")
        assert re.fullmatch(r" +\d+", value), raw
        out[key] = int(value)
    tables: dict[str, list[tuple[int, int, int, int, int, int, int]]] = {}
    current = ""
    for raw in lines[5:]:
        if raw in {"", "\t\t\tread\t\t\twrite"}:
            continue
        title = re.match(
            r"^(pages per rpc|rpcs in flight|offset) +rpcs   % cum % \|       rpcs   % cum %$", raw
        )
        if title:
            current = title.group(1)
            tables[current] = []
            continue
        row = ROW_RE.match(raw)
        assert row, f"not a histogram row: {raw!r}"
        tables[current].append(tuple(int(x) for x in row.groups()))  # type: ignore[arg-type]
    out["tables"] = tables
    return out


def inst(fs: LustreFsState, kind: str, index: int = 0) -> str:
    if kind == "llite":
        return f"{fs.fsname}-{fs.sbid}"
    tgt = "OST" if kind == "osc" else "MDT"
    return f"{fs.fsname}-{tgt}{index:04x}-{kind}-{fs.sbid}"


def test_lustre_210_proc_layout(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node(step=2, version="2.10")
    fs = state.lustre[0]
    render_node(state, tmp_path)
    base = tmp_path / "proc/fs/lustre"
    headers, llite = parse_stats((base / "llite" / inst(fs, "llite") / "stats").read_text())
    assert headers == {"snapshot_time": pytest.approx(state.time_s, abs=1e-6)}
    # 2.10: operations are counts only in [regs]; bytes carry min/max/sum without sumsq.
    assert llite["open"] == Line(fs.llite["open"].count, "regs", ())
    rb = fs.llite["read_bytes"]
    assert llite["read_bytes"] == Line(rb.count, "bytes", (rb.min, rb.max, rb.sum))
    assert "getattr" not in llite  # count 0 lines are not printed
    assert "read" not in llite  # a 2.10 client has no llite read latency counter
    assert not (tmp_path / "sys/kernel/debug/lustre").exists()
    assert (base / "version").read_text().startswith("lustre: 2.10.0\n")

    ost = fs.osts[1]
    _, osc = parse_stats((base / "osc" / inst(fs, "osc", 1) / "stats").read_text())
    w = ost.stats["req_waittime"]
    assert osc["req_waittime"] == Line(w.count, "usec", (w.min, w.max, w.sum, w.sumsq))
    assert osc["req_active"].unit == "reqs"
    assert osc["ldlm_glimpse_enqueue"].unit == "reqs"
    assert osc["read_bytes"].unit == "bytes" and osc["ost_read"].unit == "usec"
    assert "obd_ping" not in osc
    assert list(osc) == ["req_waittime", "req_active", "ldlm_glimpse_enqueue", "read_bytes", "ost_read"]
    assert (base / "osc" / inst(fs, "osc", 1) / "max_rpcs_in_flight").read_text() == "8\n"
    assert (base / "llite" / inst(fs, "llite") / "max_read_ahead_mb").read_text() == "64\n"

    _, ra = parse_stats((base / "llite" / inst(fs, "llite") / "read_ahead_stats").read_text())
    assert ra["hits"] == Line(fs.read_ahead["hits"], "pages", ())
    assert ra["miss inside window"].count == 2
    assert "failed to fast read" not in ra  # no such reason before 2.12


def test_lustre_214_debugfs_layout(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node(step=2, version="2.14")
    fs = state.lustre[0]
    render_node(state, tmp_path)
    debug = tmp_path / "sys/kernel/debug/lustre"
    headers, llite = parse_stats((debug / "llite" / inst(fs, "llite") / "stats").read_text())
    assert set(headers) == {"snapshot_time"}
    op = fs.llite["open"]
    assert llite["open"] == Line(op.count, "usecs", (op.min, op.max, op.sum, op.sumsq))
    rb = fs.llite["read_bytes"]
    assert llite["read_bytes"] == Line(rb.count, "bytes", (rb.min, rb.max, rb.sum, rb.sumsq))
    assert llite["ioctl"] == Line(2, "reqs", ())
    assert list(llite)[:3] == ["read_bytes", "read", "ioctl"]
    _, osc = parse_stats((debug / "osc" / inst(fs, "osc") / "stats").read_text())
    assert osc["ost_read"].unit == "usecs" and osc["req_waittime"].unit == "usecs"
    _, mdc = parse_stats((debug / "mdc" / inst(fs, "mdc") / "stats").read_text())
    assert mdc["mds_close"].count == fs.mdts[0].stats["mds_close"].count
    _, ra = parse_stats((debug / "llite" / inst(fs, "llite") / "read_ahead_stats").read_text())
    assert ra["failed to fast read"].count == 3  # the state's underscore key, printed 2.14's way
    # rpc_stats stayed a /proc seq file; tunables moved to /sys/fs/lustre.
    assert (tmp_path / "proc/fs/lustre/osc" / inst(fs, "osc") / "rpc_stats").is_file()
    assert not (debug / "osc" / inst(fs, "osc") / "rpc_stats").exists()
    assert (tmp_path / "sys/fs/lustre/osc" / inst(fs, "osc") / "max_rpcs_in_flight").read_text() == "8\n"
    assert (tmp_path / "sys/fs/lustre/llite" / inst(fs, "llite") / "max_read_ahead_mb").read_text() == "64\n"
    assert (tmp_path / "sys/fs/lustre/version").read_text() == "2.14.0\n"
    assert not (tmp_path / "proc/fs/lustre/llite").exists()


def test_newer_releases_add_start_and_elapsed_time(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    state = node(step=1, version="2.15")
    fs = state.lustre[0]
    render_node(state, tmp_path, boot_time_s=state.time_s - 1000)
    debug = tmp_path / "sys/kernel/debug/lustre"
    headers, _ = parse_stats((debug / "osc" / inst(fs, "osc") / "stats").read_text())
    assert list(headers) == ["snapshot_time", "start_time", "elapsed_time"]
    assert headers["elapsed_time"] == pytest.approx(
        headers["snapshot_time"] - headers["start_time"], abs=1e-6
    )
    _, ra = parse_stats((debug / "llite" / inst(fs, "llite") / "read_ahead_stats").read_text())
    assert "miss_inside_window" in ra and "failed_to_fast_read" in ra
    rpc = (tmp_path / "proc/fs/lustre/osc" / inst(fs, "osc") / "rpc_stats").read_text().splitlines()
    assert re.match(r"^snapshot_time: {12}\d+\.\d{9} secs\.nsecs$", rpc[0])
    assert rpc[1].startswith("start_time:") and rpc[2].startswith("elapsed_time:")
    assert rpc[3] == f"read RPCs in flight:  {fs.osts[0].read_rpcs_in_flight}"


@pytest.mark.parametrize("version", ["2.10", "2.14"])
def test_rpc_stats_header_and_pages_histogram(
    tmp_path: Path, node: Callable[..., NodeState], version: str
) -> None:
    state = node(step=3, version=version)
    fs = state.lustre[0]
    render_node(state, tmp_path)
    for o, ost in enumerate(fs.osts):
        text = (tmp_path / "proc/fs/lustre/osc" / inst(fs, "osc", o) / "rpc_stats").read_text()
        got = parse_rpc_stats(text)
        assert got["time"] == pytest.approx(state.time_s, abs=1e-6)
        assert got["read RPCs in flight"] == ost.read_rpcs_in_flight
        assert got["write RPCs in flight"] == ost.write_rpcs_in_flight
        assert got["pending write pages"] == ost.pending_write_pages
        assert got["pending read pages"] == ost.pending_read_pages
        tables = got["tables"]
        assert isinstance(tables, dict)
        pages = {row[0]: (row[1], row[4]) for row in tables["pages per rpc"]}
        assert pages[256][0] == ost.read_pages_per_rpc[256]
        assert pages[1024][0] == ost.read_pages_per_rpc[1024]
        assert pages[1][1] == ost.write_pages_per_rpc[1]
        assert max(pages) == 1024, "rows stop once both columns reached their totals"
        for table in tables.values():
            read_tot = sum(r[1] for r in table)
            cum = 0
            for row in table:
                cum += row[1]
                assert row[2] == (row[1] * 100 // read_tot if read_tot else 0)
                assert row[3] == (cum * 100 // read_tot if read_tot else 0)
        first_rif = tables["rpcs in flight"][0][0]
        assert first_rif == (0 if version == "2.10" else 1)
        assert sum(r[1] for r in tables["rpcs in flight"]) == sum(ost.read_pages_per_rpc.values())
        assert sum(r[1] for r in tables["offset"]) == sum(ost.read_pages_per_rpc.values())
    mdc = (tmp_path / "proc/fs/lustre/mdc" / inst(fs, "mdc") / "rpc_stats").read_text()
    assert "modify_RPCs_in_flight:  0\n\n\t\t\tmodify\nrpcs in flight        rpcs   % cum %\n" in mdc
    assert ("read RPCs in flight:" in mdc) == (version != "2.10")


def test_rpcs_in_flight_histogram_accumulates_over_renders(
    tmp_path: Path, node: Callable[..., NodeState]
) -> None:
    render_node(node(step=2, version="2.14"), tmp_path)  # 8 reads at 2 in flight
    render_node(node(step=5, version="2.14"), tmp_path)  # 12 more at 5 in flight
    fs = node(step=5).lustre[0]
    got = parse_rpc_stats((tmp_path / "proc/fs/lustre/osc" / inst(fs, "osc") / "rpc_stats").read_text())
    tables = got["tables"]
    assert isinstance(tables, dict)
    rif = {row[0]: row[1] for row in tables["rpcs in flight"]}
    assert rif[2] == 8 and rif[5] == 12
    # lctl shares the history when given the root, and prints what the file holds.
    out = lctl_get_param([fs], "osc.*.rpc_stats", time_s=node(step=5).time_s, root=tmp_path)
    blocks = parse_lctl(out)
    name = f"osc.{inst(fs, 'osc')}.rpc_stats"
    assert blocks[name] == (tmp_path / "proc/fs/lustre/osc" / inst(fs, "osc") / "rpc_stats").read_text()


def parse_lctl(text: str) -> dict[str, str]:
    """``lctl get_param`` output -> {param: value}: ``name=`` alone starts a multi-line value."""
    out: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines(keepends=True):
        m = re.match(r"^((?:llite|osc|mdc)\.[\w-]+\.\w+|version|health_check)=(.*)$", line, re.DOTALL)
        if m:
            if m.group(2) in ("\n", ""):
                current = m.group(1)
                out[current] = ""
            else:
                current = None
                out[m.group(1)] = m.group(2)
        else:
            assert current is not None, f"value line outside a block: {line!r}"
            out[current] += line
    return out


@pytest.mark.parametrize("version", ["2.10", "2.14"])
def test_lctl_get_param_prints_the_files(
    tmp_path: Path, node: Callable[..., NodeState], version: str
) -> None:
    state = node(step=2, version=version, filesystems=2)
    render_node(state, tmp_path)
    stats_base = "proc/fs/lustre" if version == "2.10" else "sys/kernel/debug/lustre"
    for pattern, base, param in [
        ("llite.*.stats", stats_base, "stats"),
        ("llite.*.read_ahead_stats", stats_base, "read_ahead_stats"),
        ("osc.*.stats", stats_base, "stats"),
        ("mdc.*.stats", stats_base, "stats"),
        ("osc.*.rpc_stats", "proc/fs/lustre", "rpc_stats"),
    ]:
        blocks = parse_lctl(lctl_get_param(state.lustre, pattern, time_s=state.time_s, root=tmp_path))
        kind = pattern.split(".")[0]
        expected = {
            f"{kind}.{d.name}.{param}": (d / param).read_text()
            for d in sorted((tmp_path / base / kind).iterdir())
            if (d / param).exists()
        }
        assert blocks == expected, pattern
        assert list(blocks) == sorted(blocks)
    single = lctl_get_param(state.lustre, "osc.fs1-*.max_rpcs_in_flight", time_s=state.time_s)
    assert single.splitlines() == [
        f"osc.{inst(fs, 'osc', o)}.max_rpcs_in_flight=8" for fs in state.lustre[1:] for o in range(2)
    ]
    assert lctl_get_param(state.lustre, "version", time_s=state.time_s).startswith("version=")
    quiet = lctl_get_param(state.lustre[:1], "llite.*.stats", time_s=state.time_s, show_name=False)
    assert quiet.startswith("snapshot_time")
    with pytest.raises(LookupError, match=r"param_path 'osc\.\*\.nonesuch'"):
        lctl_get_param(state.lustre, "osc.*.nonesuch", time_s=state.time_s)


def test_unmount_and_layout_change(tmp_path: Path, node: Callable[..., NodeState]) -> None:
    two = node(step=1, version="2.10", filesystems=2)
    render_node(two, tmp_path)
    proc = tmp_path / "proc/fs/lustre"
    assert len(list((proc / "llite").iterdir())) == 2
    one = node(step=2, version="2.10", filesystems=2)
    one.lustre = one.lustre[:1]
    render_node(one, tmp_path)
    assert [d.name for d in (proc / "llite").iterdir()] == [inst(one.lustre[0], "llite")]
    assert all(d.name.startswith("fs0-") for d in (proc / "osc").iterdir())
    # The client is upgraded in place: the 2.10 files go, the 2.14 layout appears.
    render_node(node(step=3, version="2.10"), tmp_path, lustre_layout="2.14")
    assert not (proc / "llite").exists()
    assert not (proc / "version").exists()
    assert (tmp_path / "sys/kernel/debug/lustre/llite").is_dir()
    assert (tmp_path / "sys/fs/lustre/version").read_text() == "2.14.0\n"
    # Unmounted everywhere: nothing Lustre is left.
    bare = node(step=4)
    bare.lustre = []
    render_node(bare, tmp_path)
    assert not (tmp_path / "sys/kernel/debug/lustre").exists()
    assert not (tmp_path / "sys/fs/lustre").exists()
    assert not proc.exists()


@pytest.mark.parametrize("version", ["2.10", "2.14"])
def test_rpc_stats_time_lines_keep_lustres_padding(
    tmp_path: Path, node: Callable[..., NodeState], version: str
) -> None:
    state = node(step=1, version=version, time_s=1_700_000_001.025)
    fs = state.lustre[0]
    render_node(state, tmp_path)
    proc = tmp_path / "proc/fs/lustre"
    osc = (proc / "osc" / inst(fs, "osc") / "rpc_stats").read_text().splitlines()[0]
    mdc = (proc / "mdc" / inst(fs, "mdc") / "rpc_stats").read_text().splitlines()[0]
    assert osc == "snapshot_time:         1700000001.025000000 (secs.nsecs)"  # %09lu
    assert mdc == "snapshot_time:         1700000001. 25000000 (secs.nsecs)"  # %9lu
