"""Scrape cost of the Lustre collector on a node with 2 filesystems x 16 OSTs (+ 1 MDT each).

Builds the tree from the hand-written 2.14 fixture (instances renamed), then times
whole scrapes (list directories, read ~70 files, parse, build families) and, separately,
parsing alone, in both the debugfs and the lctl layouts. Prints medians and p99s; no
assertions (machines are noisy). Usage: ``python benchmarks/lustre_collector.py [N]``.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.lustre import LustreCollector
from fmdiag.exporters.lustre_formats import (
    parse_lctl_output,
    parse_read_ahead_stats,
    parse_rpc_stats,
    parse_stats,
)

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lustre" / "v2.14"
SRC = FIXTURE / "sys" / "kernel" / "debug" / "lustre"
SRC_PROC = FIXTURE / "proc" / "fs" / "lustre"  # 2.12-2.14 leave osc rpc_stats in /proc
SB = "ffff9c4e7a5b6800"
FILESYSTEMS, OSTS = 2, 16
PARSERS: dict[str, Callable[[str], object]] = {
    "stats": parse_stats,
    "read_ahead_stats": parse_read_ahead_stats,
    "rpc_stats": parse_rpc_stats,
}


def build(root: Path) -> str:
    """The node tree under ``root``; returns the same node as ``lctl get_param`` text."""
    debug = root / "sys" / "kernel" / "debug" / "lustre"
    proc = root / "proc" / "fs" / "lustre"
    lctl: list[str] = []
    for f in range(FILESYSTEMS):
        fs, sbid = f"fs{f}", f"ffff9c4e{f:08x}"
        devices = [("llite", f"proj-a-{SB}", f"{fs}-{sbid}", ("stats", "read_ahead_stats"))]
        devices += [
            ("osc", f"proj-a-OST0000-osc-{SB}", f"{fs}-OST{i:04x}-osc-{sbid}", ("stats", "rpc_stats"))
            for i in range(OSTS)
        ]
        devices.append(("mdc", f"proj-a-MDT0000-mdc-{SB}", f"{fs}-MDT0000-mdc-{sbid}", ("stats",)))
        for kind, src, dst, params in devices:
            shutil.copytree(SRC / kind / src, debug / kind / dst)
            if (SRC_PROC / kind / src).is_dir():
                shutil.copytree(SRC_PROC / kind / src, proc / kind / dst)
            for p in params:
                where = SRC_PROC if p == "rpc_stats" else SRC
                lctl.append(f"{kind}.{dst}.{p}=\n" + (where / kind / src / p).read_text())
    return "".join(lctl)


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def report(label: str, times: list[float]) -> None:
    times = sorted(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"{label:<44} p50 {statistics.median(times) * 1e3:7.3f} ms   p99 {p99 * 1e3:7.3f} ms")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lctl_text = build(root)
        paths = Paths(sysfs=root / "sys", procfs=root / "proc", debugfs=root / "sys" / "kernel" / "debug")
        errors = ErrorReporter()
        collector = LustreCollector(CollectorContext(paths=paths, errors=errors))
        families = list(collector.collect())
        series = sum(len(f.samples) for f in families)
        files = sum(1 for p in root.rglob("*") if p.is_file())
        print(f"node: {FILESYSTEMS} filesystems x {OSTS} OSTs, {files} files, {series} series per scrape")
        report("full scrape (debugfs tree)", timed(lambda: list(collector.collect()), n))

        texts = [(p.name, p.read_text()) for p in root.rglob("*") if p.name in PARSERS]

        def parse_all() -> None:
            for name, text in texts:
                PARSERS[name](text)

        lines = sum(t.count("\n") for _, t in texts)
        parse_times = timed(parse_all, n)
        report("parse only (every file of the node)", parse_times)
        print(f"{'':<44} = {lines / statistics.median(parse_times) / 1e6:.2f} M lines/s ({lines} lines)")
        report("split lctl get_param output of the node", timed(lambda: parse_lctl_output(lctl_text), n))
        assert errors.count("lustre") == 0


if __name__ == "__main__":
    main()
