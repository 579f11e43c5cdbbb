"""The Lustre collector on hand-written files in each real layout: exact metric values.

Fixtures (tests/fixtures/lustre): a Lustre 2.10 client's /proc tree, a 2.14 client's
debugfs + sysfs tree, and `lctl get_param` output of the same 2.14 node.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fmdiag import catalog
from fmdiag.exporters.collector import REGISTRY, CollectorContext
from fmdiag.exporters.collectors.lustre import LCTL_ARGS, LustreCollector
from fmdiag.exporters.exposition import Format, render

from .conftest import Key, Node

SB10 = "ffff8810c2a3d000"
SB14 = "ffff9c4e7a5b6800"


def k(name: str, **labels: str) -> Key:
    return (name, frozenset(labels.items()))


def of(samples: dict[Key, float], name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of one name whose labels include ``labels``."""
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and want <= lab}


@pytest.fixture
def node_210(make_node: Callable[..., Node], fixtures: Path) -> Node:
    return make_node(fixtures / "v2.10")


@pytest.fixture
def node_214(make_node: Callable[..., Node], fixtures: Path) -> Node:
    return make_node(fixtures / "v2.14")


def test_registered_under_its_name() -> None:
    assert REGISTRY["lustre"] is LustreCollector
    assert {o.name for o in LustreCollector.options} == {"source", "lctl-path", "lctl-timeout"}


# --- Lustre 2.10, /proc ------------------------------------------------------------------------
def test_2_10_llite(node_210: Node) -> None:
    s = node_210.scrape()
    assert node_210.error_count == 0
    ll = {"fs": "scratch", "mount_id": SB10}
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert s[k("fmdiag_lustre_client_info", **ll, layout="proc")] == 1
    ops = of(s, "fmdiag_lustre_llite_operations_total", **ll)
    assert len(ops) == 18
    assert s[k("fmdiag_lustre_llite_operations_total", **ll, operation="open")] == 136
    assert s[k("fmdiag_lustre_llite_operations_total", **ll, operation="getattr")] == 410
    assert s[k("fmdiag_lustre_llite_operations_total", **ll, operation="read_bytes")] == 4129
    assert s[k("fmdiag_lustre_llite_read_bytes_total", **ll)] == 8657043456
    assert s[k("fmdiag_lustre_llite_write_bytes_total", **ll)] == 2147483648
    # 2.10 llite operations carry counts only: no latency at all.
    assert of(s, "fmdiag_lustre_llite_operation_latency_seconds_total") == {}
    assert of(s, "fmdiag_lustre_llite_operation_latency_max_seconds") == {}


def test_2_10_read_ahead(node_210: Node) -> None:
    s = node_210.scrape()
    ll = {"fs": "scratch", "mount_id": SB10}
    assert s[k("fmdiag_lustre_llite_read_ahead_hits_total", **ll)] == 88120
    assert s[k("fmdiag_lustre_llite_read_ahead_misses_total", **ll)] == 1411
    events = {
        dict(lab)["reason"]: v for lab, v in of(s, "fmdiag_lustre_llite_read_ahead_events_total").items()
    }
    assert events == {
        "readpage_not_consecutive": 37,
        "miss_inside_window": 9,
        "failed_grab_cache_page": 2,
        "read_but_discarded": 120,
        "zero_size_window": 31,
        "readahead_to_eof": 4,
    }


def test_2_10_osc_stats_latency_per_ost(node_210: Node) -> None:
    s = node_210.scrape()
    o0 = {"fs": "scratch", "ost": "OST0000", "mount_id": SB10}
    o1 = {"fs": "scratch", "ost": "OST0001", "mount_id": SB10}
    assert s[k("fmdiag_lustre_osc_read_bytes_total", **o0)] == 42920550400
    assert s[k("fmdiag_lustre_osc_write_bytes_total", **o0)] == 21474836480
    assert s[k("fmdiag_lustre_osc_read_bytes_total", **o1)] == 10737418240
    assert k("fmdiag_lustre_osc_write_bytes_total", **o1) not in s  # that OST saw no writes
    lat = "fmdiag_lustre_osc_operation_latency_seconds_total"
    mx = "fmdiag_lustre_osc_operation_latency_max_seconds"
    cnt = "fmdiag_lustre_osc_operations_total"
    assert s[k(cnt, **o0, operation="ost_read")] == 40960
    assert s[k(lat, **o0, operation="ost_read")] == 812.331456
    assert s[k(mx, **o0, operation="ost_read")] == 4.410211
    assert s[k(lat, **o0, operation="ost_write")] == 220.11459
    assert s[k(lat, **o0, operation="req_waittime")] == 1062.342981
    assert s[k(cnt, **o0, operation="req_waittime")] == 91235
    assert s[k(lat, **o1, operation="ost_read")] == 201.233112
    assert s[k(mx, **o1, operation="req_waittime")] == 0.910233
    # [reqs] lines are counts, never latency.
    assert s[k(cnt, **o0, operation="req_active")] == 91235
    assert k(lat, **o0, operation="req_active") not in s
    assert k(lat, **o0, operation="read_bytes") not in s
    assert len(of(s, cnt, ost="OST0000")) == 14
    assert len(of(s, lat, ost="OST0000")) == 9


def test_2_10_rpc_stats(node_210: Node) -> None:
    s = node_210.scrape()
    o0 = {"fs": "scratch", "ost": "OST0000", "mount_id": SB10}
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **o0, direction="read")] == 2
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **o0, direction="write")] == 1
    assert s[k("fmdiag_lustre_osc_pending_pages", **o0, direction="write")] == 64
    assert s[k("fmdiag_lustre_osc_pending_pages", **o0, direction="read")] == 0
    h = "fmdiag_lustre_osc_pages_per_rpc"
    read = {dict(lab)["le"]: v for lab, v in of(s, h + "_bucket", **o0, direction="read").items()}
    assert read == {
        "1.0": 10, "2.0": 10, "4.0": 14, "8.0": 14, "16.0": 16, "32.0": 16, "64.0": 16,
        "128.0": 40, "256.0": 40960, "512.0": 40960, "1024.0": 40960, "+Inf": 40960,
    }  # fmt: skip
    write = {dict(lab)["le"]: v for lab, v in of(s, h + "_bucket", **o0, direction="write").items()}
    assert write["128.0"] == 0 and write["256.0"] == 20480 and write["+Inf"] == 20480
    assert s[k(h + "_count", **o0, direction="read")] == 40960
    assert of(s, h + "_sum") == {}  # a row bounds its RPCs' pages, it does not sum them


def test_2_10_mdc(node_210: Node) -> None:
    s = node_210.scrape()
    m = {"fs": "scratch", "mdt": "MDT0000", "mount_id": SB10}
    assert s[k("fmdiag_lustre_mdc_operations_total", **m, operation="mds_getattr")] == 120
    assert s[k("fmdiag_lustre_mdc_operation_latency_seconds_total", **m, operation="mds_getattr")] == 0.041233
    assert s[k("fmdiag_lustre_mdc_operation_latency_max_seconds", **m, operation="mds_close")] == 0.00098
    assert s[k("fmdiag_lustre_mdc_operations_total", **m, operation="ldlm_ibits_enqueue")] == 310
    assert len(of(s, "fmdiag_lustre_mdc_operations_total")) == 10


# --- Lustre 2.14, debugfs + sysfs --------------------------------------------------------------
def test_2_14_debugfs(node_214: Node) -> None:
    s = node_214.scrape()
    assert node_214.error_count == 0
    ll = {"fs": "proj-a", "mount_id": SB14}
    assert s[k("fmdiag_lustre_filesystems")] == 1
    assert s[k("fmdiag_lustre_client_info", **ll, layout="debugfs")] == 1
    lat = "fmdiag_lustre_llite_operation_latency_seconds_total"
    assert s[k(lat, **ll, operation="open")] == 3.393651
    assert s[k("fmdiag_lustre_llite_operation_latency_max_seconds", **ll, operation="open")] == 0.172939
    assert s[k("fmdiag_lustre_llite_operation_latency_min_seconds", **ll, operation="open")] == 0.0
    # openclosetime (2.15+, here a vendor 2.14) is the gap between a close and the next open of
    # a file: exported apart, never among the operations and their latencies.
    assert s[k("fmdiag_lustre_llite_close_to_open_total", **ll)] == 1800
    assert s[k("fmdiag_lustre_llite_close_to_open_seconds_total", **ll)] == 2193.0065
    for family in ("operations_total", "operation_latency_seconds_total", "operation_latency_min_seconds"):
        assert not of(s, f"fmdiag_lustre_llite_{family}", **ll, operation="openclosetime")
    assert s[k(lat, **ll, operation="read")] == 96.0
    assert s[k("fmdiag_lustre_llite_operations_total", **ll, operation="read")] == 6400
    assert k(lat, **ll, operation="opencount") not in s  # [reqs] with sums: a count, not a time
    assert s[k("fmdiag_lustre_llite_read_bytes_total", **ll)] == 26843545600
    assert s[k("fmdiag_lustre_llite_write_bytes_total", **ll)] == 6710886400
    assert s[k("fmdiag_lustre_llite_read_ahead_hits_total", **ll)] == 6400000
    assert s[k("fmdiag_lustre_llite_read_ahead_misses_total", **ll)] == 1024
    events = {
        dict(lab)["reason"]: v for lab, v in of(s, "fmdiag_lustre_llite_read_ahead_events_total").items()
    }
    assert events == {
        "readpage_not_consecutive": 77,
        "miss_inside_window": 12,
        "zero_size_window": 8726,
        "failed_to_fast_read": 24,
    }
    # readahead_pages (min/max/sum of pages): the page sum, not its 412 read-ahead requests.
    assert s[k("fmdiag_lustre_llite_read_ahead_pages_total", **ll)] == 6398976


def test_2_14_osc_and_mdc(node_214: Node) -> None:
    s = node_214.scrape()
    o0 = {"fs": "proj-a", "ost": "OST0000", "mount_id": SB14}
    oa = {"fs": "proj-a", "ost": "OST000A", "mount_id": SB14}
    assert s[k("fmdiag_lustre_osc_read_bytes_total", **o0)] == 5870993408
    assert s[k("fmdiag_lustre_osc_write_bytes_total", **o0)] == 1468006400
    assert s[k("fmdiag_lustre_osc_read_bytes_total", **oa)] == 13421772800
    lat = "fmdiag_lustre_osc_operation_latency_seconds_total"
    assert s[k(lat, **o0, operation="ost_read")] == 28.8
    assert s[k(lat, **o0, operation="ost_write")] == 4.0
    assert s[k(lat, **oa, operation="req_waittime")] == 29.7
    assert s[k("fmdiag_lustre_osc_operation_latency_max_seconds", **oa, operation="ost_read")] == 0.005625
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **o0, direction="read")] == 3
    assert s[k("fmdiag_lustre_osc_rpcs_in_flight", **o0, direction="dio")] == 0
    assert s[k("fmdiag_lustre_osc_pending_pages", **o0, direction="write")] == 256
    h = "fmdiag_lustre_osc_pages_per_rpc_bucket"
    read = {dict(lab)["le"]: v for lab, v in of(s, h, **o0, direction="read").items()}
    assert read == {
        "1.0": 0, "2.0": 0, "4.0": 1, "8.0": 1, "16.0": 1, "32.0": 1, "64.0": 1, "128.0": 1,
        "256.0": 2400, "512.0": 2400, "1024.0": 3200, "+Inf": 3200,
    }  # fmt: skip
    m = {"fs": "proj-a", "mdt": "MDT0000", "mount_id": SB14}
    assert (
        s[k("fmdiag_lustre_mdc_operation_latency_seconds_total", **m, operation="req_waittime")] == 1.483797
    )
    assert s[k("fmdiag_lustre_mdc_operations_total", **m, operation="mds_close")] == 434


def test_source_option_restricts_the_layout(make_node: Callable[..., Node], fixtures: Path) -> None:
    assert make_node(fixtures / "v2.10", source="debugfs").scrape()[k("fmdiag_lustre_filesystems")] == 0
    assert make_node(fixtures / "v2.14", source="proc").scrape()[k("fmdiag_lustre_filesystems")] == 0
    assert make_node(fixtures / "v2.14", source="debugfs").scrape()[k("fmdiag_lustre_filesystems")] == 1


# --- lctl get_param ----------------------------------------------------------------------------
def _stand_in_lctl(tmp_path: Path, body: str) -> Path:
    """An executable `lctl` that checks it got exactly the collector's fixed arguments."""
    script = tmp_path / "lctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        f"EXPECTED = {list(LCTL_ARGS)!r}\n"
        f"with open({str(tmp_path / 'argv')!r}, 'a') as f:\n"
        "    f.write(repr(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:] != EXPECTED:\n"
        "    sys.stderr.write('unexpected arguments: %r\\n' % (sys.argv[1:],))\n"
        "    sys.exit(64)\n" + body
    )
    script.chmod(0o755)
    return script


def test_lctl_output_matches_the_debugfs_tree(
    tmp_path: Path, make_node: Callable[..., Node], fixtures: Path, node_214: Node
) -> None:
    fixture = fixtures / "lctl-2.14.txt"
    lctl = _stand_in_lctl(tmp_path, f"sys.stdout.write(open({str(fixture)!r}).read())\n")
    node = make_node(tmp_path / "empty-node", source="lctl", **{"lctl-path": str(lctl)})
    via_lctl = node.scrape()
    assert node.error_count == 0
    assert (tmp_path / "argv").read_text() == repr(list(LCTL_ARGS)) + "\n"
    assert LCTL_ARGS == (
        "get_param",
        "llite.*.stats",
        "llite.*.read_ahead_stats",
        "osc.*.stats",
        "osc.*.rpc_stats",
        "mdc.*.stats",
    )
    via_files = node_214.scrape()
    info = k("fmdiag_lustre_client_info", fs="proj-a", mount_id=SB14, layout="lctl")
    assert via_lctl.pop(info) == 1
    assert via_files.pop(k("fmdiag_lustre_client_info", fs="proj-a", mount_id=SB14, layout="debugfs")) == 1
    assert via_lctl == via_files
    assert len(via_lctl) > 150


def test_exposition_is_valid_and_catalogued(node_210: Node, node_214: Node) -> None:
    for node in (node_210, node_214):
        fams = list(node.collector.collect())
        text = render(fams, Format.TEXT).decode()
        parsed = list(text_string_to_metric_families(text))
        assert parsed
        for fam in parsed:
            for sample in fam.samples:
                spec = catalog.family_of(sample.name)
                assert spec is not None and spec.subsystem == "lustre", sample.name
                assert set(spec.labels) <= set(sample.labels) | {"le"}


def test_bad_options_are_refused(fixtures: Path) -> None:
    for options, message in [
        ({"source": "nfs"}, "expected one of auto, proc, debugfs, lctl"),
        ({"lctl-timeout": "soon"}, "expected seconds"),
        ({"lctl-timeout": "0"}, "expected seconds"),
        ({"color": "blue"}, "unknown option"),
    ]:
        with pytest.raises(ValueError, match=message):
            LustreCollector(CollectorContext(options=options))


def test_scrape_reads_fresh_each_time(tmp_path: Path, make_node: Callable[..., Node], fixtures: Path) -> None:
    root = tmp_path / "node"
    shutil.copytree(fixtures / "v2.14", root)
    node = make_node(root)
    ll = {"fs": "proj-a", "mount_id": SB14}
    assert node.scrape()[k("fmdiag_lustre_llite_read_ahead_hits_total", **ll)] == 6400000
    ra = root / "sys/kernel/debug/lustre/llite" / f"proj-a-{SB14}" / "read_ahead_stats"
    ra.write_text(ra.read_text().replace("6400000 samples", "6400512 samples"))
    assert node.scrape()[k("fmdiag_lustre_llite_read_ahead_hits_total", **ll)] == 6400512
