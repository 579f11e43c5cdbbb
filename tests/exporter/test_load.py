"""Load: 50 concurrent keep-alive scrapers for a bounded time against one exporter process
serving a simulated node that keeps changing.

Every scrape must succeed with a complete body and every collector up; the exporter's RSS
must stay flat (a generous bound on growth after warm-up, no timing assertions).
"""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.simulate.nodes.readings import EfaDeviceState, LustreFsState, LustreTargetState, NodeState, OpStat
from fmdiag.simulate.nodes.render import render_node

SCRAPERS = 50
DURATION_S = 10.0
#: Allowed RSS growth between the end of warm-up and the end of the run.
GROWTH_BOUND = 16 * 1024 * 1024
EFA_DEVICES = 8


def node_state(tick: int) -> NodeState:
    """A p5-like node (fewer devices, to keep the test quick) whose counters grow with ``tick``."""
    efa = [
        EfaDeviceState(
            name=f"rdmap{16 + i}s0", pci_address=f"0000:{16 + i:02x}:00.0", numa_node=i % 2,
            node_guid=f"0ab1:23ff:fe45:{i:04x}", fw_ver="0.0.0.0",
            port_counters={f: (k + 1) * 10**9 + tick * 10**6 for k, f in enumerate(EFA_PORT_COUNTERS)},
            device_counters={f: k + tick for k, f in enumerate(EFA_DEVICE_COUNTERS)},
        )
        for i in range(EFA_DEVICES)
    ]  # fmt: skip
    usecs = OpStat(count=1000 + tick, unit="usecs", min=1, max=900, sum=50_000 + tick, sumsq=10**9)
    data = OpStat(
        count=100 + tick, unit="bytes", min=4096, max=1 << 20, sum=10**9 + tick * 10**6, sumsq=10**15
    )
    osts = [
        LustreTargetState(index=i, stats={"ost_read": usecs, "req_waittime": usecs, "read_bytes": data},
                          read_pages_per_rpc={1: 1 + tick, 256: 10 + tick})
        for i in range(4)
    ]  # fmt: skip
    fs = LustreFsState(
        fsname="train",
        sbid="ffff9c4e7a5b6800",
        version="2.14",
        llite={"open": usecs, "read_bytes": data},
        read_ahead={"hits": tick, "misses": 1},
        osts=osts,
        mdts=[LustreTargetState(index=0, stats={"mds_getattr": usecs})],
    )
    return NodeState(hostname="load-node", time_s=1.7e9 + tick, efa=efa, lustre=[fs])


def test_fifty_concurrent_scrapers(start_exporter: Any, tmp_path: Path, helpers: ModuleType) -> None:
    """While the tree is re-rendered twice a second (files replaced as a live node changes)."""
    root = tmp_path / "node"
    render_node(node_state(0), root)
    spool = tmp_path / "spool"
    spool.mkdir()
    exp = start_exporter(
        "--collector.disable-defaults",
        "--collector.efa",
        "--collector.lustre",
        "--collector.steps",
        f"--collector.steps.spool-dir={spool}",
        f"--path.rootfs={root}",
        "--scrape.timeout=60s",
    )

    stop = threading.Event()
    lock = threading.Lock()
    ok = [0]
    failures: list[str] = []
    rss: list[tuple[float, int]] = []
    last: list[str | None] = [None]

    def scraper() -> None:
        conn = http.client.HTTPConnection(exp.host, exp.port, timeout=60)
        try:
            while not stop.is_set():
                conn.request("GET", "/metrics")
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    raise AssertionError(f"HTTP {resp.status}")
                # Plain substring checks: 50 clients parsing every body would starve the
                # writer thread in this process (the full parse is checked once below).
                for c in ("efa", "lustre", "steps"):
                    if f'fmdiag_exporter_collector_success{{collector="{c}"}} 1\n' not in body:
                        raise AssertionError(f"collector {c} failed in a scrape")
                if f"fmdiag_efa_devices {EFA_DEVICES}\n" not in body or not body.endswith("\n"):
                    raise AssertionError("incomplete EFA data")
                if last[0] is None:
                    last[0] = body
                with lock:
                    ok[0] += 1
        except Exception as exc:
            with lock:
                failures.append(repr(exc))
        finally:
            conn.close()

    def monitor() -> None:
        start = time.monotonic()
        while not stop.is_set():
            rss.append((time.monotonic() - start, exp.rss_bytes()))
            stop.wait(0.25)

    renders = [0]

    def advance() -> None:
        while not stop.is_set():
            renders[0] += 1
            render_node(node_state(renders[0]), root)  # the live node moves on under the scrapers
            stop.wait(0.5)

    threads = [threading.Thread(target=scraper) for _ in range(SCRAPERS)]
    mon = threading.Thread(target=monitor)
    mon.start()
    writer = threading.Thread(target=advance)
    writer.start()
    for t in threads:
        t.start()
    time.sleep(DURATION_S)
    stop.set()
    for t in [*threads, mon, writer]:
        t.join(120)

    assert failures == []
    assert ok[0] >= SCRAPERS
    assert renders[0] >= 2
    assert last[0] is not None
    parsed = helpers.samples(last[0])
    assert helpers.value(parsed, "fmdiag_lustre_filesystems") == 1
    warm = [r for t, r in rss if t >= DURATION_S / 3]
    assert warm, rss
    growth = max(warm) - warm[0]
    print(
        f"\n{ok[0]} scrapes by {SCRAPERS} clients in {DURATION_S:.0f} s, {renders[0]} tree updates; "
        f"RSS after warm-up "
        f"{warm[0] / 2**20:.1f} MiB, max {max(warm) / 2**20:.1f} MiB, growth {growth / 2**20:.1f} MiB"
    )
    assert growth < GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB under load"
    assert exp.proc.poll() is None
