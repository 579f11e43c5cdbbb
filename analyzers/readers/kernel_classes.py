"""Which library and operation a device kernel belongs to, from the table ``kernel_classes.toml``.

The table (shipped as package data; docs/kernel-classes.md renders it) is an ordered list of
entries ``pattern`` (a regular expression searched in the kernel name), ``kind`` (``comm``,
``memory``, ``compute``), ``library``, ``op`` and ``example`` (a real kernel name the entry is
for). :func:`classify` returns the first matching entry's ``(kind, library, op)``, or None when no
entry matches: such a kernel is counted as compute and listed as unclassified
(:func:`trace_summary`, :func:`merge`), so a user sees what the table does not know yet.

The table is read and compiled once per process, and each distinct name is classified once.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmdiag.analyzers.readers import kineto_frame as kf

TABLE = "kernel_classes.toml"
KINDS: tuple[str, ...] = ("comm", "memory", "compute")
#: How many unclassified names each trace reports (by kernel time), and the merged report.
TOP_PER_TRACE = 50
TOP = 10


@dataclass(frozen=True)
class Entry:
    pattern: str
    kind: str
    library: str
    op: str
    example: str
    #: Where the example was not taken from a trace: what it was derived from ("" otherwise).
    example_from: str = ""


Class = tuple[str, str, str]


def load(text: str | None = None) -> list[Entry]:
    """The table's entries in order (``text``: a TOML document instead of the shipped table).

    Raises ValueError for an entry that lacks a field, has an unknown kind or a bad pattern.
    """
    import tomllib  # noqa: PLC0415 - only when a trace is read

    if text is None:
        # beside this module (package data); importlib.resources would cost ~8 ms of start-up
        text = Path(__file__).with_name(TABLE).read_text(encoding="utf-8")
    raw = tomllib.loads(text).get("kernel", [])
    entries = []
    for i, item in enumerate(raw):
        where = f"{TABLE} entry {i + 1}"
        missing = [f for f in ("pattern", "kind", "library", "op", "example") if not item.get(f)]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)}")
        if item["kind"] not in KINDS:
            raise ValueError(f"{where}: kind {item['kind']!r}, expected one of {', '.join(KINDS)}")
        try:
            re.compile(item["pattern"])
        except re.error as exc:
            raise ValueError(f"{where}: pattern {item['pattern']!r}: {exc}") from None
        unknown = set(item) - {"pattern", "kind", "library", "op", "example", "example_from"}
        if unknown:
            raise ValueError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
        entries.append(Entry(**{k: str(v) for k, v in item.items()}))
    return entries


@functools.cache
def entries() -> tuple[Entry, ...]:
    """The shipped table, read once."""
    return tuple(load())


@functools.cache
def _compiled() -> tuple[tuple[re.Pattern[str], Class], ...]:
    return tuple((re.compile(e.pattern), (e.kind, e.library, e.op)) for e in entries())


def match(name: str) -> int | None:
    """The index of the entry that classifies ``name`` (the first whose pattern matches), or None."""
    for i, (pattern, _) in enumerate(_compiled()):
        if pattern.search(name):
            return i
    return None


@functools.lru_cache(maxsize=1 << 16)
def classify(name: str) -> Class | None:
    """``(kind, library, op)`` of the first entry whose pattern is found in ``name``; None if none is."""
    for pattern, cls in _compiled():
        if pattern.search(name):
            return cls
    return None


def trace_summary(names: list[str], gpu: Mapping[str, Any], top: int = TOP_PER_TRACE) -> dict[str, Any]:
    """Kernel time of one trace that the table did not classify, and communication time by library/op.

    Times are sums of event durations (µs; kernels running at once each count). Returns
    ``kernel_time_us`` (all kernels), ``unclassified`` (``names``: distinct kernel names no entry
    matched, ``kernel_time_us``, ``top``: ``[name, µs]`` by time, at most ``top``) and
    ``comm_by_library`` (library -> op -> µs over communication events; ``unknown`` when a name is
    communication by no table entry).
    """
    cat, kind, nid, dur = gpu["cat"], gpu["kind"], gpu["name"], gpu["dur"]
    n = len(names)
    kernels = cat == kf.CAT_KERNEL
    per_name = np.bincount(nid[kernels], weights=dur[kernels], minlength=n)
    seen = np.bincount(nid[kernels], minlength=n)
    unclassified = [
        (names[i], float(per_name[i])) for i in np.flatnonzero(seen) if classify(names[i]) is None
    ]
    unclassified.sort(key=lambda kv: (-kv[1], kv[0]))
    comm = kind == kf.KIND_COMM
    comm_time = np.bincount(nid[comm], weights=dur[comm], minlength=n)
    by_library: dict[str, dict[str, float]] = {}
    for i in np.flatnonzero(np.bincount(nid[comm], minlength=n)):
        cls = classify(names[i])
        library, op = (cls[1], cls[2]) if cls is not None and cls[0] == "comm" else ("unknown", "unknown")
        ops = by_library.setdefault(library, {})
        ops[op] = ops.get(op, 0.0) + float(comm_time[i])
    return {
        "kernel_time_us": float(dur[kernels].sum()),
        "unclassified": {
            "names": len(unclassified),
            "kernel_time_us": float(sum(t for _, t in unclassified)),
            "top": [[name, t] for name, t in unclassified[:top]],
            "complete": len(unclassified) <= top,
        },
        "comm_by_library": {lib: dict(sorted(ops.items())) for lib, ops in sorted(by_library.items())},
    }


def merge(parts: Iterable[tuple[int, Mapping[str, Any]]], top: int = TOP) -> dict[str, Any]:
    """Sum per-trace summaries (``(rank, trace_summary)``) across ranks.

    ``names`` counts the distinct unclassified names across traces; when a trace listed only its
    top names, ``names_exact`` is false and ``names`` a lower bound. ``top`` entries are
    ``{name, kernel_time_us, ranks}`` by kernel time summed across ranks; ``by_rank`` has each
    rank's ``names`` and ``kernel_time_us``.
    """
    total = 0.0
    time = 0.0
    exact = True
    by_name: dict[str, float] = {}
    ranks_of: dict[str, set[int]] = {}
    by_rank: dict[int, dict[str, float]] = {}
    for rank, part in parts:
        u = part.get("unclassified")
        if not u:
            continue
        total += part["kernel_time_us"]
        time += u["kernel_time_us"]
        exact = exact and u["complete"]
        r = by_rank.setdefault(rank, {"names": 0, "kernel_time_us": 0.0})
        r["names"] += u["names"]
        r["kernel_time_us"] += u["kernel_time_us"]
        for name, t in u["top"]:
            by_name[name] = by_name.get(name, 0.0) + t
            ranks_of.setdefault(name, set()).add(rank)
    ordered = sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "names": len(by_name) if exact else max([len(by_name), *(r["names"] for r in by_rank.values())]),
        "names_exact": exact,
        "kernel_time_us": time,
        "total_kernel_time_us": total,
        "share": time / total if total > 0 else None,
        "top": [{"name": n, "kernel_time_us": t, "ranks": len(ranks_of[n])} for n, t in ordered[:top]],
        "by_rank": {str(r): v for r, v in sorted(by_rank.items()) if v["names"]},
    }


def comm_by_rank(parts: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Rank -> library -> op -> communication kernel time (µs), summed over a rank's traces."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for rank, part in parts:
        libs = out.setdefault(rank, {})
        for lib, ops in part.get("comm_by_library", {}).items():
            into = libs.setdefault(lib, {})
            for op, t in ops.items():
                into[op] = into.get(op, 0.0) + t
    return {str(r): libs for r, libs in sorted(out.items()) if libs}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The table as the Markdown docs/kernel-classes.md shows (regenerate it after editing the TOML)."""
    lines = ["| # | library | op | kind | pattern | example |", "|---|---|---|---|---|---|"]
    for i, e in enumerate(entries(), 1):
        origin = "derived" if e.example_from else "trace"
        lines.append(f"| {i} | {e.library} | {e.op} | {e.kind} | `{_cell(e.pattern)}` | {origin} |")
    return "\n".join(lines) + "\n"
