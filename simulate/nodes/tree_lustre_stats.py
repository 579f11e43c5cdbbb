"""Lustre client ``lprocfs`` stats files as each release prints them: llite, osc/mdc, read-ahead.

The same counters print differently from release to release (units, min/max/sum columns,
header lines, reason spellings, the directory they live in); a :class:`LustreProfile` holds
those differences so the formatters stay pure functions of state, profile and time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fmdiag.simulate.nodes.readings import LustreFsState, OpStat


@dataclass(frozen=True)
class LustreProfile:
    """How one Lustre release lays out and prints client statistics."""

    release: str  # e.g. "2.14.0", what the version file says
    layout: str  # "proc" (<= 2.11) or "debugfs" (2.12+)
    usec: str  # unit of ptlrpc latency counters: "usec", later "usecs"
    sec: str  # unit of req_timeout: "sec", later "secs"
    llite_latency: bool  # llite operations carry [usecs] min/max/sum/sumsq
    elapsed_header: bool  # stats files add start_time/elapsed_time lines
    ra_underscores: bool  # read_ahead_stats reasons spelled with underscores
    rif_first_row: int  # first "rpcs in flight" row printed (0 in 2.10, 1 later)
    mdc_rw_sections: bool  # mdc rpc_stats has read/write histograms (Data-on-MDT, 2.11+)


def lustre_profile(version: str) -> LustreProfile:
    """The profile of ``version`` ("2.10", "2.14", "2.15.4"...).

    Checked against real files: 2.10 (a 2017 client's /proc tree) and 2.14 (client
    ``lctl get_param`` output). 2.11 is treated as 2.10 plus DoM, 2.12-2.13 as 2.14, and
    2.15+ adds the ``start_time``/``elapsed_time`` header lines and underscore read-ahead
    reasons; those boundaries come from reading the source history, not from real files.
    """
    try:
        parts = [int(p) for p in version.split(".")]
        major, minor = parts[0], parts[1]
    except (ValueError, IndexError):
        raise ValueError(f"Lustre version {version!r}: expected MAJOR.MINOR[.PATCH]") from None
    release = ".".join(str(p) for p in [*parts, 0, 0][:3])
    v = (major, minor)
    if v < (2, 12):
        return LustreProfile(release, "proc", "usec", "sec", False, False, False, 0, v >= (2, 11))
    if v < (2, 15):
        return LustreProfile(release, "debugfs", "usecs", "secs", True, False, False, 1, True)
    return LustreProfile(release, "debugfs", "usecs", "secs", True, True, True, 1, True)


def secs_nsecs(t: float) -> tuple[int, int]:
    """(seconds, nanoseconds) of a Unix time; a double near 1.7e9 holds microseconds, not ns."""
    total = round(t * 1e6) * 1000
    return total // 1_000_000_000, total % 1_000_000_000


def stats_header(profile: LustreProfile, time_s: float, start_s: float, *, colon: bool = False) -> str:
    """``snapshot_time`` (and on newer releases ``start_time``/``elapsed_time``) lines.

    ``colon=True`` is the form ``lprocfs_stats_header(..., ":", ...)`` prints for histogram
    files (rpc_stats) on releases that have it.
    """
    suffix = ":" if colon else ""
    lines = [("snapshot_time", time_s)]
    if profile.elapsed_header:
        lines += [("start_time", start_s), ("elapsed_time", max(0.0, time_s - start_s))]
    out = []
    for name, t in lines:
        s, ns = secs_nsecs(t)
        out.append(f"{name + suffix:<25} {s}.{ns:09d} secs.nsecs\n")
    return "".join(out)


def stat_line(name: str, stat: OpStat, unit: str, sums: bool, sumsq: bool) -> str:
    """One counter as ``lprocfs_stats_seq_show`` prints it (the caller drops count 0)."""
    line = f"{name:<25} {stat.count} samples [{unit}]"
    if sums and stat.count > 0:
        line += f" {stat.min} {stat.max} {stat.sum}"
        if sumsq:
            line += f" {stat.sumsq}"
    return line + "\n"


# The order counters appear in (the order of the kernel's counter tables).
_LLITE_210 = (
    "dirty_pages_hits", "dirty_pages_misses", "read_bytes", "write_bytes", "brw_read", "brw_write",
    "ioctl", "open", "close", "mmap", "page_fault", "page_mkwrite", "seek", "fsync", "readdir",
    "setattr", "truncate", "flock", "getattr", "create", "link", "unlink", "symlink", "mkdir",
    "rmdir", "mknod", "rename", "statfs", "alloc_inode", "setxattr", "getxattr", "getxattr_hits",
    "listxattr", "removexattr", "inode_permission",
)  # fmt: skip
_LLITE_214 = (
    "read_bytes", "write_bytes", "read", "write", "ioctl", "open", "close", "mmap", "page_fault",
    "page_mkwrite", "seek", "fsync", "readdir", "setattr", "truncate", "flock", "getattr",
    "fallocate", "create", "link", "unlink", "symlink", "mkdir", "rmdir", "mknod", "rename",
    "statfs", "setxattr", "getxattr", "getxattr_hits", "listxattr", "removexattr",
    "inode_permission", "opencount", "openclosetime",
)  # fmt: skip
#: llite counters newer releases added; a 2.10 client has no such line.
_LLITE_NOT_IN_210 = frozenset(_LLITE_214) - frozenset(_LLITE_210)
_PTLRPC_ORDER = (
    "req_waittime", "req_qdepth", "req_active", "req_timeout", "reqbuf_avail",
    "ldlm_glimpse_enqueue", "ldlm_plain_enqueue", "ldlm_extent_enqueue", "ldlm_flock_enqueue",
    "ldlm_ibits_enqueue", "mds_reint_setattr", "mds_reint_create", "mds_reint_link",
    "mds_reint_unlink", "mds_reint_rename", "mds_reint_open", "mds_reint_setxattr",
    "read_bytes", "write_bytes",
    "ost_reply", "ost_getattr", "ost_setattr", "ost_read", "ost_write", "ost_create", "ost_destroy",
    "ost_get_info", "ost_connect", "ost_disconnect", "ost_punch", "ost_open", "ost_close",
    "ost_statfs", "ost_sync", "ost_set_info", "ost_quotactl", "ost_ladvise", "ost_fallocate",
    "mds_getattr", "mds_getattr_name", "mds_close", "mds_reint", "mds_readpage", "mds_connect",
    "mds_disconnect", "mds_get_root", "mds_statfs", "mds_pin", "mds_unpin", "mds_sync",
    "mds_set_info", "mds_quotactl", "mds_getxattr", "mds_setxattr", "mds_get_info",
    "mds_hsm_state_get", "mds_hsm_state_set", "mds_hsm_action", "mds_hsm_progress",
    "mds_hsm_request", "mds_hsm_ct_register", "mds_hsm_ct_unregister", "mds_swap_layouts",
    "ldlm_enqueue", "ldlm_convert", "ldlm_cancel", "ldlm_bl_callback", "ldlm_cp_callback",
    "ldlm_gl_callback", "ldlm_set_info", "obd_ping", "obd_log_cancel", "obd_qc_callback",
    "obd_idx_read", "llog_origin_handle_create", "llog_origin_handle_next_block",
    "llog_origin_handle_read_header", "seq_query", "fld_query", "fld_read", "out_update",
    "lfsck_notify", "lfsck_query",
)  # fmt: skip
_PTLRPC_REQS = frozenset(
    {"req_qdepth", "req_active"}
    | {f"ldlm_{lock}_enqueue" for lock in ("glimpse", "plain", "extent", "flock", "ibits")}
    | {n for n in _PTLRPC_ORDER if n.startswith("mds_reint_")}
)
#: read_ahead_stats reasons: (spelling up to 2.14, spelling from 2.15), in table order.
_RA_REASONS = (
    ("hits", "hits"),
    ("misses", "misses"),
    ("readpage not consecutive", "readpage_not_consecutive"),
    ("miss inside window", "miss_inside_window"),
    ("failed grab_cache_page", "failed_grab_cache_page"),
    ("failed lock match", "failed_lock_match"),
    ("read but discarded", "read_but_discarded"),
    ("zero length file", "zero_length_file"),
    ("zero size window", "zero_size_window"),
    ("read-ahead to EOF", "readahead_to_eof"),
    ("hit max r-a issue", "hit_max_readahead_issue"),
    ("wrong page from grab_cache_page", "wrong_page_from_grab_cache_page"),
    ("failed to reach end", "failed_to_reach_end"),
    ("async readahead", "async_readahead"),
    ("failed to fast read", "failed_to_fast_read"),
    ("mmap range read", "mmap_range_read"),
)
_RA_IN_210 = 13  # 2.10 has the first 13 reasons
_RA_INDEX = {name: i for i, pair in enumerate(_RA_REASONS) for name in pair}


def _ordered(stats: Mapping[str, OpStat], order: Sequence[str]) -> list[tuple[str, OpStat]]:
    rank = {name: i for i, name in enumerate(order)}
    known = sorted((n for n in stats if n in rank), key=rank.__getitem__)
    return [(n, stats[n]) for n in known] + [(n, s) for n, s in stats.items() if n not in rank]


def format_llite_stats(fs: LustreFsState, profile: LustreProfile, time_s: float, start_s: float) -> str:
    """``llite.<instance>.stats``.

    The release decides each line's form, whatever the state's OpStat says: on 2.10 file
    operations are counts only (``[regs]``), ``read_bytes``/``write_bytes`` carry byte
    min/max/sum; from 2.12 operations carry ``[usecs]`` min/max/sum/sumsq. Counters a
    release does not have are left out; counters fmdiag does not know are printed as the
    release prints its default kind.
    """
    out = [stats_header(profile, time_s, start_s)]
    if not profile.llite_latency:
        for name, st in _ordered(fs.llite, _LLITE_210):
            if st.count == 0 or name in _LLITE_NOT_IN_210:
                continue
            if name in ("read_bytes", "write_bytes"):
                out.append(stat_line(name, st, "bytes", True, False))
            elif name in ("brw_read", "brw_write"):
                out.append(stat_line(name, st, "pages", True, False))
            else:
                out.append(stat_line(name, st, "regs", False, False))
        return "".join(out)
    for name, st in _ordered(fs.llite, _LLITE_214):
        if st.count == 0:
            continue
        if name in ("read_bytes", "write_bytes"):
            out.append(stat_line(name, st, "bytes", True, True))
        elif name in ("ioctl", "getxattr_hits", "dirty_pages_hits", "dirty_pages_misses"):
            out.append(stat_line(name, st, "reqs", False, False))
        elif name == "opencount":
            out.append(stat_line(name, st, "reqs", True, True))
        else:
            out.append(stat_line(name, st, "usecs", True, True))
    return "".join(out)


def format_ptlrpc_stats(
    stats: Mapping[str, OpStat], profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``osc.<instance>.stats`` / ``mdc.<instance>.stats``: the import's ptlrpc counters.

    Every counter carries min/max/sum/sumsq; the unit follows the counter (``req_active``
    in reqs, ``read_bytes`` in bytes, RPC opcodes in usec, "usecs" from 2.12).
    """
    out = [stats_header(profile, time_s, start_s)]
    for name, st in _ordered(stats, _PTLRPC_ORDER):
        if st.count == 0:
            continue
        if name in ("read_bytes", "write_bytes"):
            unit = "bytes"
        elif name in _PTLRPC_REQS:
            unit = "reqs"
        elif name == "req_timeout":
            unit = profile.sec
        elif name == "reqbuf_avail":
            unit = "bufs"
        else:
            unit = profile.usec
        out.append(stat_line(name, st, unit, True, True))
    return "".join(out)


def format_read_ahead_stats(
    reasons: Mapping[str, int], profile: LustreProfile, time_s: float, start_s: float
) -> str:
    """``llite.<instance>.read_ahead_stats``: an lprocfs stats file of page counts.

    State keys may use either spelling; the release decides which one is printed.
    """
    out = [stats_header(profile, time_s, start_s)]
    known: list[tuple[int, int]] = []
    unknown: list[tuple[str, int]] = []
    for name, count in reasons.items():
        idx = _RA_INDEX.get(name)
        if idx is None:
            unknown.append((name, count))
        elif profile.layout == "debugfs" or idx < _RA_IN_210:
            known.append((idx, count))
    for idx, count in sorted(known):
        if count > 0:
            name = _RA_REASONS[idx][1 if profile.ra_underscores else 0]
            out.append(f"{name:<25} {count} samples [pages]\n")
    for name, count in unknown:
        if count > 0:
            out.append(f"{name:<25} {count} samples [pages]\n")
    return "".join(out)
