"""The Lustre collector on trees the simulator renders (fmdiag.simulate.nodes.render.render_node)
and on its ``lctl get_param`` text: every value checked against the state it was rendered from.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fmdiag.exporters.collectors.lustre import LCTL_ARGS
from fmdiag.simulate.nodes.readings import LustreFsState, LustreTargetState, NodeState, OpStat
from fmdiag.simulate.nodes.render import render_node
from fmdiag.simulate.nodes.tree_lustre import lctl_get_param

from .conftest import Key, Node

T0 = 1_700_000_000.0
RA_LABELS = {
    "hits": None,
    "misses": None,
    "readpage not consecutive": "readpage_not_consecutive",
    "miss inside window": "miss_inside_window",
    "read-ahead to EOF": "readahead_to_eof",
    "zero size window": "zero_size_window",
}


def k(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def op(count: int, lo: int, hi: int, total: int, unit: str = "usecs") -> OpStat:
    return OpStat(count=count, unit=unit, min=lo, max=hi, sum=total, sumsq=hi * total)


def make_fs(fsname: str, sbid: str, version: str, osts: int, scale: int) -> LustreFsState:
    """A mount with distinct numbers per OST, so a mix-up between devices cannot pass."""
    targets = []
    for i in range(osts):
        reads = 1000 * scale + 10 * i
        targets.append(
            LustreTargetState(
                index=i,
                stats={
                    "req_waittime": op(reads + 50, 40, 90_000 + i, 61_000_000 + 1_000 * i),
                    "req_active": op(reads + 50, 1, 8, 3 * reads, "reqs"),
                    "read_bytes": op(reads, 4096, 4 << 20, reads * (1 << 20) + i, "bytes"),
                    "write_bytes": op(reads // 2, 1 << 20, 1 << 20, (reads // 2) << 20, "bytes"),
                    "ost_read": op(reads, 300, 80_000 + i, 41_000_000 + 777 * i),
                    "ost_write": op(reads // 2, 900, 50_000, 9_000_000 + i),
                    "obd_ping": op(12, 60, 700, 3_000),
                },
                read_rpcs_in_flight=i % 4,
                write_rpcs_in_flight=(i + 1) % 3,
                pending_read_pages=i,
                pending_write_pages=16 * i,
                read_pages_per_rpc={1: 3 + i, 3: 2, 256: reads - 5 - i},
                write_pages_per_rpc={256: reads // 2 - 7, 1024: 7},
            )
        )
    mdt = LustreTargetState(
        index=0,
        stats={
            "req_waittime": op(500 * scale, 50, 20_000, 4_000_000 * scale),
            "mds_getattr": op(120 * scale, 80, 2_000, 40_000 * scale),
            "mds_close": op(90, 70, 900, 30_000),
            "ldlm_ibits_enqueue": op(300, 1, 1, 300, "reqs"),
        },
    )
    return LustreFsState(
        fsname=fsname,
        sbid=sbid,
        version=version,
        llite={
            "read_bytes": op(4000 * scale, 4096, 16 << 20, 4000 * scale * (1 << 20), "bytes"),
            "write_bytes": op(900 * scale, 1 << 20, 4 << 20, 900 * scale * (2 << 20), "bytes"),
            "read": op(4000 * scale, 100, 250_000, 96_000_000 * scale),
            "open": op(3000, 1, 172_939, 3_393_651),
            "close": op(3000, 2, 90_211, 1_204_511),
            "getattr": op(9000, 1, 10_472, 7_518_600),
        },
        read_ahead={
            "hits": 640_000 * scale,
            "misses": 1_024,
            "readpage not consecutive": 77,
            "miss inside window": 12,
            "read-ahead to EOF": 4,
            "zero size window": 8_726,
        },
        osts=targets,
        mdts=[mdt],
    )


def check_fs(s: dict[Key, float], fs: LustreFsState, layout: str) -> None:
    ll = {"fs": fs.fsname, "mount_id": fs.sbid}
    assert s[k("fmdiag_lustre_client_info", **ll, layout=layout)] == 1
    for name, st in fs.llite.items():
        ops = k("fmdiag_lustre_llite_operations_total", **ll, operation=name)
        if fs.version == "2.10" and name == "read":
            assert ops not in s  # a 2.10 client has no "read" counter (only read_bytes)
            continue
        assert s[ops] == st.count
        lat = k("fmdiag_lustre_llite_operation_latency_seconds_total", **ll, operation=name)
        if name.endswith("_bytes"):
            assert lat not in s
        elif fs.version == "2.10":
            assert lat not in s  # 2.10 llite operations are counts only
        else:
            assert s[lat] == st.sum / 1e6
            assert (
                s[k("fmdiag_lustre_llite_operation_latency_max_seconds", **ll, operation=name)]
                == st.max / 1e6
            )
    assert s[k("fmdiag_lustre_llite_read_bytes_total", **ll)] == fs.llite["read_bytes"].sum
    assert s[k("fmdiag_lustre_llite_write_bytes_total", **ll)] == fs.llite["write_bytes"].sum
    assert s[k("fmdiag_lustre_llite_read_ahead_hits_total", **ll)] == fs.read_ahead["hits"]
    assert s[k("fmdiag_lustre_llite_read_ahead_misses_total", **ll)] == fs.read_ahead["misses"]
    for reason, label in RA_LABELS.items():
        if label is not None:
            key = k("fmdiag_lustre_llite_read_ahead_events_total", **ll, reason=label)
            assert s[key] == fs.read_ahead[reason]

    for t in fs.osts:
        o = {"fs": fs.fsname, "ost": f"OST{t.index:04X}", "mount_id": fs.sbid}
        assert s[k("fmdiag_lustre_osc_read_bytes_total", **o)] == t.stats["read_bytes"].sum
        assert s[k("fmdiag_lustre_osc_write_bytes_total", **o)] == t.stats["write_bytes"].sum
        for name in ("ost_read", "ost_write", "req_waittime", "obd_ping"):
            st = t.stats[name]
            assert s[k("fmdiag_lustre_osc_operations_total", **o, operation=name)] == st.count
            assert (
                s[k("fmdiag_lustre_osc_operation_latency_seconds_total", **o, operation=name)] == st.sum / 1e6
            )
            assert (
                s[k("fmdiag_lustre_osc_operation_latency_max_seconds", **o, operation=name)] == st.max / 1e6
            )
        assert (
            s[k("fmdiag_lustre_osc_operations_total", **o, operation="req_active")]
            == t.stats["req_active"].count
        )
        assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **o, direction="read")] == t.read_rpcs_in_flight
        assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **o, direction="write")] == t.write_rpcs_in_flight
        assert s[k("fmdiag_lustre_osc_pending_pages", **o, direction="read")] == t.pending_read_pages
        assert s[k("fmdiag_lustre_osc_pending_pages", **o, direction="write")] == t.pending_write_pages
        for direction, rpcs in (("read", t.read_pages_per_rpc), ("write", t.write_pages_per_rpc)):
            h = "fmdiag_lustre_osc_pages_per_rpc"
            assert s[k(h + "_count", **o, direction=direction)] == sum(rpcs.values())
            for bound in (1, 2, 4, 8, 256, 512, 1024):
                # le is exact: an RPC of p pages is in every bucket with bound >= p.
                want = sum(n for pages, n in rpcs.items() if pages <= bound)
                assert s[k(h + "_bucket", **o, direction=direction, le=f"{bound}.0")] == want

    for t in fs.mdts:
        m = {"fs": fs.fsname, "mdt": f"MDT{t.index:04X}", "mount_id": fs.sbid}
        for name, st in t.stats.items():
            assert s[k("fmdiag_lustre_mdc_operations_total", **m, operation=name)] == st.count
            lat = k("fmdiag_lustre_mdc_operation_latency_seconds_total", **m, operation=name)
            assert (s[lat] == st.sum / 1e6) if st.unit == "usecs" else lat not in s


@pytest.mark.parametrize("version", ["2.10", "2.14", "2.15"])
def test_rendered_tree_matches_the_state(
    tmp_path: Path, make_node: Callable[..., Node], version: str
) -> None:
    filesystems = [
        make_fs("scratch", "ffff8810c2a3d000", version, osts=16, scale=1),
        make_fs("proj-a", "ffff9c4e7a5b6800", version, osts=16, scale=3),
    ]
    render_node(NodeState(hostname="n1", time_s=T0, lustre=filesystems), tmp_path)
    node = make_node(tmp_path)
    s = node.scrape()
    assert node.error_count == 0
    assert s[k("fmdiag_lustre_filesystems")] == 2
    for fs in filesystems:
        check_fs(s, fs, "proc" if version == "2.10" else "debugfs")


def test_live_tree_advances_mounts_and_unmounts(tmp_path: Path, make_node: Callable[..., Node]) -> None:
    a = make_fs("scratch", "ffff8810c2a3d000", "2.14", osts=4, scale=1)
    render_node(NodeState(hostname="n1", time_s=T0, lustre=[a]), tmp_path)
    node = make_node(tmp_path)
    check_fs(node.scrape(), a, "debugfs")

    a2 = make_fs("scratch", "ffff8810c2a3d000", "2.14", osts=4, scale=2)  # counters grew
    b = make_fs("work", "ffff9c4e00001000", "2.14", osts=2, scale=5)  # a second mount
    render_node(NodeState(hostname="n1", time_s=T0 + 15, lustre=[a2, b]), tmp_path)
    s = node.scrape()
    assert s[k("fmdiag_lustre_filesystems")] == 2
    check_fs(s, a2, "debugfs")
    check_fs(s, b, "debugfs")

    render_node(NodeState(hostname="n1", time_s=T0 + 30, lustre=[b]), tmp_path)  # unmount
    s = node.scrape()
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert not any(dict(labels).get("fs") == "scratch" for _, labels in s)
    check_fs(s, b, "debugfs")
    render_node(NodeState(hostname="n1", time_s=T0 + 45, lustre=[]), tmp_path)
    assert node.scrape() == {k("fmdiag_lustre_filesystems"): 0}
    assert node.error_count == 0


def test_simulated_lctl_output(tmp_path: Path, make_node: Callable[..., Node]) -> None:
    """A stand-in lctl printing what the simulator says lctl prints for our fixed arguments
    (and lctl's error for a pattern that matches nothing) gives the rendered tree's values."""
    filesystems = [
        make_fs("scratch", "ffff8810c2a3d000", "2.14", osts=16, scale=1),
        make_fs("proj-a", "ffff9c4e7a5b6800", "2.14", osts=16, scale=3),
    ]
    root = tmp_path / "node"
    render_node(NodeState(hostname="n1", time_s=T0, lustre=filesystems), root)
    out, err = [], []
    for pattern in (*LCTL_ARGS[1:], "mdc.*.no_such_param"):
        try:
            out.append(lctl_get_param(filesystems, pattern, time_s=T0, root=root))
        except LookupError as exc:
            err.append(str(exc))
    assert len(err) == 1
    (tmp_path / "out.txt").write_text("".join(out))
    (tmp_path / "err.txt").write_text("\n".join(err) + "\n")
    lctl = tmp_path / "lctl"
    lctl.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"assert sys.argv[1:] == {list(LCTL_ARGS)!r}, sys.argv\n"
        f"sys.stdout.write(open({str(tmp_path / 'out.txt')!r}).read())\n"
        f"sys.stderr.write(open({str(tmp_path / 'err.txt')!r}).read())\n"
        "sys.exit(2)\n"
    )
    lctl.chmod(0o755)
    node = make_node(tmp_path / "elsewhere", source="lctl", **{"lctl-path": str(lctl)})
    via_lctl = node.scrape()
    assert node.error_count == 0
    for fs in filesystems:
        check_fs(via_lctl, fs, "lctl")
    via_files = make_node(root).scrape()
    relabel = {
        (n, frozenset((a, "lctl" if a == "layout" else v) for a, v in labels)): v2
        for (n, labels), v2 in via_files.items()
    }
    assert via_lctl == relabel
