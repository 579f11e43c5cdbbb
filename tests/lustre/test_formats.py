"""The Lustre text parsers on hand-written input in each format the Lustre source prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmdiag.exporters.lustre_formats import (
    Instance,
    StatLine,
    canonical_reason,
    parse_instance,
    parse_lctl_output,
    parse_read_ahead_stats,
    parse_rpc_stats,
    parse_stats,
    snake_case,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lustre"
PROC_210 = FIXTURES / "v2.10" / "proc" / "fs" / "lustre"
DEBUG_214 = FIXTURES / "v2.14" / "sys" / "kernel" / "debug" / "lustre"
PROC_214 = FIXTURES / "v2.14" / "proc" / "fs" / "lustre"  # 2.12-2.14 leave osc rpc_stats here


# --- stats ---------------------------------------------------------------------------------
def test_stats_2_10_counts_only_and_byte_sums() -> None:
    text = (PROC_210 / "llite" / "scratch-ffff8810c2a3d000" / "stats").read_text()
    stats = parse_stats(text)
    assert stats.errors == []
    # 2.10 pads the nanoseconds with spaces ("%9lu") and calls them usecs.
    assert stats.snapshot_time == pytest.approx(1589909588.036399821)
    assert stats.lines["open"] == StatLine("open", 136, "regs")
    assert stats.lines["read_bytes"] == StatLine("read_bytes", 4129, "bytes", 0, 4194304, 8657043456)
    assert stats.lines["inode_permission"].count == 1203
    assert len(stats.lines) == 18


def test_stats_2_14_latency_lines_with_sumsq_and_header() -> None:
    text = (DEBUG_214 / "llite" / "proj-a-ffff9c4e7a5b6800" / "stats").read_text()
    stats = parse_stats(text)
    assert stats.errors == []
    assert stats.snapshot_time == pytest.approx(1700000400.5)
    assert stats.lines["open"] == StatLine("open", 35955, "usecs", 0, 172939, 3393651, 8836730033)
    assert stats.lines["ioctl"] == StatLine("ioctl", 3, "reqs")
    assert "start_time" not in stats.lines and "elapsed_time" not in stats.lines


def test_stats_units_from_the_lustre_source() -> None:
    text = "\n".join(
        [
            "snapshot_time             1700000000.000000001 secs.nsecs",
            "a 1 samples [reqs]",
            "b 2 samples [regs]",
            "c 3 samples [bytes] 1 2 3",
            "d 4 samples [pages] 1 2 3 4",
            "e 5 samples [locks]",
            "f 6 samples [locks/s] 1 1 6 6",
            "g 7 samples [secs] 1 3 14",
            "h 8 samples [usec] 1 2 3 4",
            "i 9 samples [usecs] 1 2 3 4",
        ]
    )
    stats = parse_stats(text)
    assert stats.errors == []
    assert [(s.name, s.unit) for s in stats.lines.values()] == [
        ("a", "reqs"), ("b", "regs"), ("c", "bytes"), ("d", "pages"), ("e", "locks"),
        ("f", "locks/s"), ("g", "secs"), ("h", "usec"), ("i", "usecs"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("open 12 samples [usecs] 1 2", "expected min max sum"),
        ("open twelve samples [regs]", "not a 64-bit unsigned number"),
        ("open -3 samples [regs]", "not a 64-bit unsigned number"),
        ("open 1 samples [usecs] 1 2 x", "'x' is not a 64-bit number"),
        ("open 1 samples [usecs] 1 2 " + "9" * 21, "is not a 64-bit number"),
        ("open 1 samples [usecs] 0 -5 10", "negative sum or max"),
        ("open 1 samples [usecs 1 2 3", "is not '[unit]'"),
        ("open 136", "no '<count> samples' field"),
        ("ópen 1 samples [regs]", "not printable ASCII"),
    ],
)
def test_stats_bad_line_is_skipped_with_its_reason(line: str, reason: str) -> None:
    stats = parse_stats(f"snapshot_time 1.0 secs.nsecs\nclose 4 samples [regs]\n{line}\n")
    assert list(stats.lines) == ["close"]  # the good line survives
    (error,) = stats.errors
    assert error.lineno == 3
    assert reason in error.reason
    assert f"line 3 {line[:40]!r}"[:20] in str(error)


def test_stats_duplicate_counter_keeps_the_first() -> None:
    stats = parse_stats("open 1 samples [regs]\nopen 9 samples [regs]\n")
    assert stats.lines["open"].count == 1
    assert "appears twice" in stats.errors[0].reason


def test_stats_empty_text_is_an_error() -> None:
    assert parse_stats("").errors[0].reason.startswith("empty")
    assert parse_stats("  \n\n").errors


def test_stats_largest_64_bit_values_are_kept() -> None:
    top = 2**64 - 1
    stats = parse_stats(f"x {top} samples [usecs] 0 {top} {top}\n")
    assert stats.errors == []
    assert stats.lines["x"].count == top and stats.lines["x"].sum == top
    assert parse_stats(f"x {2**64} samples [regs]\n").errors


# --- read_ahead_stats ---------------------------------------------------------------------
def test_read_ahead_stats_format_with_spaces_in_reasons() -> None:
    text = (PROC_210 / "llite" / "scratch-ffff8810c2a3d000" / "read_ahead_stats").read_text()
    ra = parse_read_ahead_stats(text)
    assert ra.errors == []
    assert ra.events == {
        "hits": 88120,
        "misses": 1411,
        "readpage_not_consecutive": 37,
        "miss_inside_window": 9,
        "failed_grab_cache_page": 2,
        "read_but_discarded": 120,
        "zero_size_window": 31,
        "readahead_to_eof": 4,
    }


def test_read_ahead_stats_pre_lprocfs_format() -> None:
    # Clients before read-ahead stats became an lprocfs stats file printed "%-25s %lu".
    text = (
        "snapshot_time:         1257876232.478311 (secs.usecs)\n"
        "pending issued pages:           3\n"
        "hits                      4711\n"
        "misses                    12\n"
        "readpage not consecutive  2\n"
        "hit max r-a issue         0\n"
        "wrong page from grab_cache_page 1\n"
    )
    ra = parse_read_ahead_stats(text)
    assert ra.errors == []
    assert ra.events == {
        "hits": 4711,
        "misses": 12,
        "readpage_not_consecutive": 2,
        "hit_max_readahead_issue": 0,
        "wrong_page_from_grab_cache_page": 1,
    }


def test_read_ahead_stats_underscore_spelling_and_sums() -> None:
    ra = parse_read_ahead_stats(
        "snapshot_time 1.0 secs.nsecs\nzero_size_window 8726 samples [pages]\n"
        "readahead_pages 12 samples [pages] 15 2047 10772\nhits x\nfoo\n"
    )
    # 2.16+'s readahead_pages carries min/max/sum of pages: the page sum is kept, not the
    # number of read-ahead requests.
    assert ra.events == {"zero_size_window": 8726}
    assert ra.pages == 10772
    assert [e.lineno for e in ra.errors] == [4, 5]


def test_read_ahead_pages_without_a_sum_stays_an_event() -> None:
    ra = parse_read_ahead_stats("snapshot_time 1.0 secs.nsecs\nreadahead_pages 12 samples [pages]\n")
    assert ra.events == {"readahead_pages": 12} and ra.pages is None


def test_lctl_sections_whose_kind_has_a_dash() -> None:
    out = parse_lctl_output(
        "osd-ldiskfs.fs-OST0003.stats=\nsnapshot_time 1.0 secs.nsecs\nread_bytes 1 samples [bytes] 1 1 1\n"
        "llite.fs-ffff88.stats=\nsnapshot_time 2.0 secs.nsecs\nopen 3 samples [usecs] 1 2 3\n"
    )
    assert out.errors == []
    assert [(p.kind, p.instance, p.param) for p in out.params] == [
        ("osd-ldiskfs", "fs-OST0003", "stats"),
        ("llite", "fs-ffff88", "stats"),
    ]
    # The dashed section's lines are not appended to the previous parameter.
    assert out.params[1].text.count("snapshot_time") == 1


@pytest.mark.parametrize(
    ("reason", "snake"),
    [
        ("failed grab_cache_page", "failed_grab_cache_page"),
        ("read-ahead to EOF", "readahead_to_eof"),  # renamed in 2.14.52: one label for both
        ("readahead_to_eof", "readahead_to_eof"),
        ("hit max r-a issue", "hit_max_readahead_issue"),
        ("failed_to_fast_read", "failed_to_fast_read"),
        ("  miss  inside window ", "miss_inside_window"),
    ],
)
def test_canonical_reason(reason: str, snake: str) -> None:
    assert canonical_reason(reason) == snake
    assert snake_case(reason) in (snake, "read_ahead_to_eof", "hit_max_r_a_issue")


# --- rpc_stats ------------------------------------------------------------------------------
def test_rpc_stats_2_10() -> None:
    text = (PROC_210 / "osc" / "scratch-OST0000-osc-ffff8810c2a3d000" / "rpc_stats").read_text()
    rpc = parse_rpc_stats(text)
    assert rpc.errors == []
    assert rpc.in_flight == {"read": 2, "write": 1}
    assert rpc.pending_pages == {"write": 64, "read": 0}
    assert rpc.pages_per_rpc["read"] == [
        (1, 10), (2, 0), (4, 4), (8, 0), (16, 2), (32, 0), (64, 0), (128, 24), (256, 40920),
    ]  # fmt: skip
    assert rpc.pages_per_rpc["write"][-1] == (256, 20480)
    assert sum(n for _, n in rpc.pages_per_rpc["write"]) == 20480


def test_rpc_stats_2_14_has_dio_and_more_tables() -> None:
    text = (PROC_214 / "osc" / "proj-a-OST0000-osc-ffff9c4e7a5b6800" / "rpc_stats").read_text()
    rpc = parse_rpc_stats(text)
    assert rpc.errors == []
    assert rpc.in_flight == {"read": 3, "write": 1, "dio": 0}
    assert rpc.pending_pages == {"write": 256, "read": 0}
    # Only the pages-per-rpc table is kept, not "rpcs in flight" (also 1:, 2: rows) or latency.
    assert rpc.pages_per_rpc["read"][-1] == (1024, 800)
    assert len(rpc.pages_per_rpc["read"]) == 11


def test_rpc_stats_bad_histogram_row_drops_only_the_histogram() -> None:
    text = (
        "read RPCs in flight:  1\nwrite RPCs in flight: 0\n"
        "pending write pages:  0\npending read pages:   7\n\n"
        "\t\t\tread\t\t\twrite\n"
        "pages per rpc         rpcs   % cum % |       rpcs   % cum %\n"
        "1:\t\t         5  50  50   |          0   0   0\n"
        "2:\t\t         5  50 100   |          oops\n"
    )
    rpc = parse_rpc_stats(text)
    assert rpc.in_flight == {"read": 1, "write": 0}
    assert rpc.pending_pages == {"write": 0, "read": 7}
    assert rpc.pages_per_rpc == {}
    (error,) = rpc.errors
    assert error.lineno == 9 and "pages per rpc table dropped" in error.reason


def test_rpc_stats_rows_out_of_order_drop_the_histogram() -> None:
    text = (
        "read RPCs in flight: 0\n"
        "pages per rpc         rpcs   % cum % |       rpcs   % cum %\n"
        "2:   1 50 50 |  0 0 0\n"
        "1:   1 50 100 | 0 0 0\n"
    )
    rpc = parse_rpc_stats(text)
    assert rpc.pages_per_rpc == {}
    assert "increasing" in rpc.errors[0].reason


def test_rpc_stats_mdc_style_and_unknown_scalars_are_not_errors() -> None:
    text = (
        "snapshot_time:            1790276932.809512007 secs.nsecs\n"
        "modify_RPCs_in_flight:  0\n\n\t\t\tmodify\n"
        "rpcs in flight        rpcs   % cum %\n0:   0 0 0\n1:   1079 100 100\n"
        "read RPCs in flight:  0\nsome future counter: 12\n"
    )
    rpc = parse_rpc_stats(text)
    assert rpc.errors == []
    assert rpc.in_flight == {"read": 0}
    assert rpc.pages_per_rpc == {}


def test_rpc_stats_garbage_line_is_reported() -> None:
    rpc = parse_rpc_stats("read RPCs in flight: 0\nthis is not rpc_stats\n")
    assert rpc.in_flight == {"read": 0}
    assert rpc.errors[0].lineno == 2


# --- instance names -------------------------------------------------------------------------
def _inst(kind: str, name: str, fs: str, sbid: str, target: str = "") -> Instance:
    return Instance(kind, name, fs, sbid, target)


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("llite", "lustrefs-ffff88105db50000", ("lustrefs", "ffff88105db50000", "")),
        ("llite", "proj-a-ffff9c4e7a5b6800", ("proj-a", "ffff9c4e7a5b6800", "")),
        ("osc", "a-b-OST0003-osc-ffff8810", ("a-b", "ffff8810", "OST0003")),
        ("osc", "fs-OST00ab-osc-ffff8810", ("fs", "ffff8810", "OST00AB")),
        ("mdc", "x-y-MDT0001-mdc-00000000deadbeef", ("x-y", "00000000deadbeef", "MDT0001")),
        ("llite", "nodash", None),
        ("llite", "fs-nothex", None),
        ("llite", "-ffff", None),
        ("osc", "fs-OST0003-osc-MDT0000", None),  # a server-side device, not a client mount
        ("osc", "num_refs", None),
        ("mdc", "fs-MDT0000-osc-ffff", None),
        ("osc", "fs x-OST0003-osc-ffff", None),
        ("lov", "fs-clilov-ffff", None),
    ],
)
def test_parse_instance(kind: str, name: str, expected: tuple[str, str, str] | None) -> None:
    want = None if expected is None else _inst(kind, name, *expected)
    assert parse_instance(kind, name) == want


# --- lctl get_param output --------------------------------------------------------------------
def test_lctl_output_splits_into_parameters() -> None:
    out = parse_lctl_output((FIXTURES / "lctl-2.14.txt").read_text())
    assert out.errors == []
    keys = [(p.kind, p.instance, p.param) for p in out.params]
    assert keys == [
        ("llite", "proj-a-ffff9c4e7a5b6800", "stats"),
        ("llite", "proj-a-ffff9c4e7a5b6800", "read_ahead_stats"),
        ("osc", "proj-a-OST0000-osc-ffff9c4e7a5b6800", "stats"),
        ("osc", "proj-a-OST000a-osc-ffff9c4e7a5b6800", "stats"),
        ("osc", "proj-a-OST0000-osc-ffff9c4e7a5b6800", "rpc_stats"),
        ("osc", "proj-a-OST000a-osc-ffff9c4e7a5b6800", "rpc_stats"),
        ("mdc", "proj-a-MDT0000-mdc-ffff9c4e7a5b6800", "stats"),
    ]
    # Each value is exactly the file lctl read.
    for p in out.params:
        base = PROC_214 if p.param == "rpc_stats" else DEBUG_214
        assert p.text == (base / p.kind / p.instance / p.param).read_text()


def test_lctl_header_layout_and_one_line_values() -> None:
    text = (
        "version=2.14.0_ddn259\n"
        "llite.fs-ffff01.stats=snapshot_time 1.0 secs.nsecs\n"
        "llite.fs-ffff01.stats=open 3 samples [usecs] 1 2 4 6\n"
        "llite.fs-ffff01.stats=\n"
        "osc.fs-OST0000-osc-ffff01.cur_dirty_bytes=0\n"
        "osc.fs-OST0001-osc-ffff01.cur_dirty_bytes=0\n"
    )
    out = parse_lctl_output(text)
    assert out.errors == []
    stats, dirty0, dirty1 = out.params
    assert stats.text == "snapshot_time 1.0 secs.nsecs\nopen 3 samples [usecs] 1 2 4 6\n\n"
    assert (dirty0.instance, dirty0.text) == ("fs-OST0000-osc-ffff01", "0\n")
    assert dirty1.instance == "fs-OST0001-osc-ffff01"


def test_lctl_lines_before_any_parameter_are_reported() -> None:
    out = parse_lctl_output("garbage here\n\nllite.fs-ff.stats=\nopen 1 samples [regs]\n")
    assert [e.lineno for e in out.errors] == [1]
    assert out.params[0].text == "open 1 samples [regs]\n"
