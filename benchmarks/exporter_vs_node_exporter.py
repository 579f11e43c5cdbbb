"""fmdiag's exporter against node_exporter's infiniband collector, side by side in one run.

Part 1 (EFA): one simulated p5 sysfs tree, 32 EFA devices rendered by the simulator, plus
the 17 classic InfiniBand files in ``ports/1/counters/`` so node_exporter reports something
(on a real EFA node it reports nothing: it never reads ``hw_counters/``, see BENCHMARKS.md).
node_exporter runs with only its infiniband collector; fmdiag with only its EFA collector,
which reads every ``hw_counters`` file. Both are scraped N times, interleaved, each over its
own persistent HTTP connection; latency p50/p99, CPU per scrape (utime+stime deltas from
/proc/<pid>/stat), series counts and the ratios fmdiag / node_exporter are printed.

Part 2 (full node): 32 EFA devices, 2 Lustre filesystems x 16 OSTs, host with training
processes, a steptrace spool with 8 ranks (``--gpu`` adds 8 GPUs served by the simulator's
fake NVML, whose cost says nothing about real NVML's); fmdiag with those collectors,
scraped ``--full-scrapes`` times (10,000 by default) while its RSS is sampled.

Targets (issue 4): EFA latency ratio <= 1.0; RSS < 60 MB and flat. Issue 23 tightened the rest:
EFA CPU per scrape <= 0.6x node_exporter's (for twice its series), full node <= 25 ms of CPU
per scrape and p99 < 50 ms. Run: ``.venv/bin/python benchmarks/exporter_vs_node_exporter.py``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState
from fmdiag.simulate.nodes.readings import (
    EfaDeviceState,
    HostState,
    LustreFsState,
    LustreTargetState,
    NodeState,
    OpStat,
    ProcessState,
)
from fmdiag.simulate.nodes.render import render_node
from fmdiag.steprecord import PHASES, file_name

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or "/usr/bin/prometheus-node-exporter"
#: The counters node_exporter's infiniband collector reads from ports/<n>/counters/.
CLASSIC_IB_COUNTERS = (
    "excessive_buffer_overrun_errors", "link_downed", "link_error_recovery",
    "local_link_integrity_errors", "port_rcv_constraint_errors", "port_rcv_data", "port_rcv_errors",
    "port_rcv_packets", "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors",
    "port_xmit_constraint_errors", "port_xmit_data", "port_xmit_discards", "port_xmit_packets",
    "port_xmit_wait", "symbol_error", "VL15_dropped",
)  # fmt: skip
_LISTENING = re.compile(r"listening on (https?)://(\S+?) \(")


# --- trees ----------------------------------------------------------------------------------
def efa_devices(n: int = 32) -> list[EfaDeviceState]:
    return [
        EfaDeviceState(
            name=f"rdmap{16 + i}s0",
            pci_address=f"0000:{0x10 + i * 4:02x}:00.0",
            numa_node=i // 16,
            node_guid=f"0ab1:23ff:fe45:{i:04x}",
            fw_ver="0.0.0.0",
            port_counters={f: 10**12 + k * 10**9 + i for k, f in enumerate(EFA_PORT_COUNTERS)},
            device_counters={f: 10**6 + k for k, f in enumerate(EFA_DEVICE_COUNTERS)},
            rate_gbps=100,
        )
        for i in range(n)
    ]


def lustre_fs(fsname: str, sbid: str, osts: int = 16) -> LustreFsState:
    us = "usecs"
    llite = {
        op: OpStat(count=1000 + k, unit=us, min=1, max=5000, sum=90_000 + k, sumsq=10**9)
        for k, op in enumerate(("open", "close", "getattr", "setattr", "readdir", "statfs", "fsync", "mmap"))
    }
    llite["read_bytes"] = OpStat(count=10**6, unit="bytes", min=4096, max=4 << 20, sum=10**12, sumsq=10**18)
    llite["write_bytes"] = OpStat(count=10**5, unit="bytes", min=4096, max=4 << 20, sum=10**11, sumsq=10**17)
    targets = []
    for i in range(osts):
        stats = {
            "req_waittime": OpStat(count=10**6 + i, unit=us, min=10, max=90_000, sum=5 * 10**8, sumsq=10**14),
            "req_active": OpStat(count=10**6 + i, unit="reqs", min=1, max=8, sum=3 * 10**6, sumsq=10**7),
            "read_bytes": OpStat(
                count=10**5, unit="bytes", min=4096, max=4 << 20, sum=6 * 10**10, sumsq=10**17
            ),
            "write_bytes": OpStat(
                count=10**4, unit="bytes", min=4096, max=4 << 20, sum=6 * 10**9, sumsq=10**16
            ),
            "ost_read": OpStat(count=10**5, unit=us, min=100, max=90_000, sum=2 * 10**8, sumsq=10**13),
            "ost_write": OpStat(count=10**4, unit=us, min=100, max=90_000, sum=2 * 10**7, sumsq=10**12),
        }
        pages = {1 << k: 100 * (k + 1) for k in range(11)}
        targets.append(
            LustreTargetState(
                index=i,
                stats=stats,
                read_rpcs_in_flight=i % 4,
                pending_read_pages=i,
                read_pages_per_rpc=pages,
                write_pages_per_rpc=pages,
            )
        )
    mdt = LustreTargetState(
        index=0,
        stats={
            op: OpStat(count=5000, unit=us, min=50, max=20_000, sum=4 * 10**6, sumsq=10**10)
            for op in ("mds_getattr", "mds_close", "ldlm_enqueue", "mds_statfs", "req_waittime")
        },
    )
    return LustreFsState(
        fsname=fsname,
        sbid=sbid,
        version="2.14",
        llite=llite,
        read_ahead={"hits": 10**7, "misses": 10**4, "readpage_not_consecutive": 17},
        osts=targets,
        mdts=[mdt],
    )


def full_node_state(now: float) -> NodeState:
    procs = [
        ProcessState(
            pid=4000 + r,
            name="python3",
            cmdline=["python3", "train.py", f"--local-rank={r}"],
            cpu_user_s=1000.0 + r,
            cpu_system_s=100.0,
            cpu_iowait_s=5.0,
            rss_bytes=30 << 30,
            read_bytes=10**11,
            write_bytes=10**9,
            threads=64,
            start_time_s=now - 3600,
        )
        for r in range(8)
    ]
    host = HostState(
        cpu_seconds={
            "user": 9e5,
            "nice": 10.0,
            "system": 1e5,
            "idle": 5e6,
            "iowait": 2e3,
            "irq": 1.0,
            "softirq": 50.0,
            "steal": 0.0,
        },
        ncpus=192,
        pressure_us={r: {"some": 10**6, "full": 10**5} for r in ("cpu", "memory", "io")},
        processes=procs,
    )
    gpus = [
        GpuState(index=g, uuid=f"GPU-{g:08x}-bench", pci_bus_id=f"00000000:{0x18 + g * 0x10:02X}:00.0",
                 energy_mj=10**9 + g, util_gpu_pct=95, fb_used_mib=70_000, sm_active=0.8, tensor_active=0.6,
                 numa_node=g // 4, processes=[GpuProcess(pid=4000 + g, used_memory_bytes=70 << 30)])
        for g in range(8)
    ]  # fmt: skip
    return NodeState(
        hostname="p5-bench",
        time_s=now,
        gpus=gpus,
        efa=efa_devices(),
        lustre=[lustre_fs("train", "ffff9c4e7a5b6800"), lustre_fs("ckpt", "ffff9c4e7a5b7000")],
        host=host,
    )


def add_classic_counters(sysfs: Path) -> None:
    """What node_exporter 1.5 needs to report an EFA device at all: the 17 classic InfiniBand
    port counters, and the ``board_id``/``hca_type`` files (without them its procfs library
    returns "not found" and the collector reports nothing)."""
    for dev in sorted((sysfs / "class" / "infiniband").iterdir()):
        (dev / "board_id").write_text("EFA\n")
        (dev / "hca_type").write_text("efa\n")
        counters = dev / "ports" / "1" / "counters"
        counters.mkdir(exist_ok=True)
        for k, name in enumerate(CLASSIC_IB_COUNTERS):
            (counters / name).write_text(f"{10**9 + k}\n")


def write_spool(spool: Path, now: float, ranks: int = 8, steps: int = 200) -> None:
    spool.mkdir(parents=True, exist_ok=True)
    for rank in range(ranks):
        lines = []
        for step in range(steps):
            start = int((now - (steps - step) * 2.0) * 1e9)
            rec: dict[str, object] = {
                "v": 1,
                "job": "bench",
                "rank": rank,
                "node": "p5-bench",
                "step": step,
                "start_ns": start,
                "end_ns": start + 1_900_000_000,
                "local_rank": rank,
                "tokens": 65536,
                "samples": 16,
            }
            rec.update({phase: 0.1 for phase in PHASES})
            lines.append(json.dumps(rec, separators=(",", ":")))
        (spool / file_name("bench", rank)).write_text("\n".join(lines) + "\n")


# --- processes ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def wait_http(host: str, port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {host}:{port}")


def start_fmdiag(args: Sequence[str]) -> tuple[subprocess.Popen[str], str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmdiag", "exporter", "--web.listen-address=127.0.0.1:0", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        m = _LISTENING.search(line)
        if m:
            host, port = m.group(2).rsplit(":", 1)
            # Keep draining stderr so the exporter never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr or []], daemon=True).start()
            return proc, host, int(port)
    raise RuntimeError(f"fmdiag exporter did not start (exit {proc.wait()})")


def start_node_exporter(sysfs: Path, procfs: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            NODE_EXPORTER,
            f"--path.sysfs={sysfs}",
            f"--path.procfs={procfs}",
            "--collector.disable-defaults",
            "--collector.infiniband",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http("127.0.0.1", port)
    return proc, "127.0.0.1", port


class Client:
    """One keep-alive connection; :meth:`get` returns (seconds, body)."""

    def __init__(self, host: str, port: int) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def get(self, path: str = "/metrics") -> tuple[float, bytes]:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        dt = time.perf_counter() - t0
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return dt, body


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def series(body: bytes, prefix: str) -> int:
    return sum(1 for line in body.decode().splitlines() if line.startswith(prefix))


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- the two parts --------------------------------------------------------------------------
def efa_comparison(work: Path, scrapes: int) -> dict[str, float]:
    root = work / "efa-node"
    render_node(NodeState(hostname="p5-bench", time_s=time.time(), efa=efa_devices()), root)
    add_classic_counters(root / "sys")
    ne, ne_host, ne_port = start_node_exporter(root / "sys", root / "proc")
    fm, fm_host, fm_port = start_fmdiag(
        ["--collector.disable-defaults", "--collector.efa", f"--path.sysfs={root / 'sys'}"]
    )
    try:
        clients = {
            "node_exporter": (Client(ne_host, ne_port), ne.pid),
            "fmdiag": (Client(fm_host, fm_port), fm.pid),
        }
        bodies = {}
        for name, (client, _pid) in clients.items():
            for _ in range(50):  # warm-up
                _, bodies[name] = client.get()
        lat: dict[str, list[float]] = {name: [] for name in clients}
        cpu0 = {name: cpu_seconds(pid) for name, (_c, pid) in clients.items()}
        order = list(clients)
        for i in range(scrapes):
            for name in order if i % 2 == 0 else reversed(order):
                dt, _ = clients[name][0].get()
                lat[name].append(dt)
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) / scrapes for name, (_c, pid) in clients.items()}
        ne_series = series(bodies["node_exporter"], "node_infiniband_")
        fm_series = series(bodies["fmdiag"], "fmdiag_efa_")
        ne_ok = 'node_scrape_collector_success{collector="infiniband"} 1' in bodies["node_exporter"].decode()
        rss = {"node_exporter": rss_bytes(ne.pid), "fmdiag": rss_bytes(fm.pid)}
    finally:
        stop(ne)
        stop(fm)

    def row(name: str, n_series: int) -> str:
        return (
            f"| {name:<14} | {n_series:>6} | {percentile(lat[name], 50) * 1e3:>8.2f} | "
            f"{percentile(lat[name], 99) * 1e3:>8.2f} | {cpu[name] * 1e3:>9.2f} | {rss[name] / 2**20:>7.1f} |"
        )

    r50 = percentile(lat["fmdiag"], 50) / percentile(lat["node_exporter"], 50)
    r99 = percentile(lat["fmdiag"], 99) / percentile(lat["node_exporter"], 99)
    rcpu = cpu["fmdiag"] / cpu["node_exporter"] if cpu["node_exporter"] > 0 else float("nan")
    print(f"\n## EFA: 32 devices, {scrapes} interleaved scrapes each, keep-alive, no compression\n")
    print(f"node_exporter infiniband collector success: {ne_ok}")
    print("| exporter       | series | p50 (ms) | p99 (ms) | CPU/scrape (ms) | RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    print(row("node_exporter", ne_series))
    print(row("fmdiag", fm_series))
    print(
        f"| ratio fmdiag/NE | {fm_series / max(ne_series, 1):.2f}x | {r50:.2f} | {r99:.2f} | {rcpu:.2f} | |"
    )
    return {"p50_ratio": r50, "p99_ratio": r99, "cpu_ratio": rcpu}


def full_node(work: Path, scrapes: int, gpu: bool) -> dict[str, float]:
    root = work / "full-node"
    now = time.time()
    render_node(full_node_state(now), root)
    spool = work / "spool"
    write_spool(spool, now)
    fm, host, port = start_fmdiag(
        [
            "--collector.disable-defaults",
            "--collector.efa",
            "--collector.lustre",
            "--collector.host",
            "--collector.steps",
            f"--collector.steps.spool-dir={spool}",
            f"--path.sysfs={root / 'sys'}",
            f"--path.procfs={root / 'proc'}",
            f"--path.debugfs={root / 'sys' / 'kernel' / 'debug'}",
            "--collector.host.process-pattern=train",
            *(
                ["--collector.gpu", f"--collector.gpu.simulated-state={root / 'nvml' / 'state.json'}"]
                if gpu
                else []
            ),
        ]
    )
    try:
        client = Client(host, port)
        _, body = client.get()
        for _ in range(20):
            client.get()
        lat: list[float] = []
        rss: list[int] = []
        cpu0 = cpu_seconds(fm.pid)
        for i in range(scrapes):
            dt, _ = client.get()
            lat.append(dt)
            if i % 100 == 0:
                rss.append(rss_bytes(fm.pid))
        rss.append(rss_bytes(fm.pid))
        cpu = (cpu_seconds(fm.pid) - cpu0) / scrapes
        deciles = [rss[min(len(rss) - 1, round(k * (len(rss) - 1) / 10))] / 2**20 for k in range(11)]
        text = body.decode()
        ok = {
            c: f'fmdiag_exporter_collector_success{{collector="{c}"}} 1' in text
            for c in ("efa", "lustre", "host", "steps", *(["gpu"] if gpu else []))
        }
        n_series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    finally:
        stop(fm)
    p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    tenth = max(1, len(rss) // 10)
    early = statistics.mean(rss[1 : 1 + tenth]) / 2**20
    late = statistics.mean(rss[-tenth:]) / 2**20
    print(
        f"\n## Full node: {'8 GPUs (simulated NVML), ' if gpu else ''}32 EFA, 2 Lustre fs x 16 OSTs, "
        f"host, steps; {scrapes} sequential scrapes\n"
    )
    print(f"collectors up: {ok}; series per scrape: {n_series}; body {len(body) / 1024:.0f} KiB")
    print(
        "| p50 (ms) | p99 (ms) | max (ms) | CPU/scrape (ms) "
        "| RSS first / mean of first 10% / last 10% / max (MiB) |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {p50:.2f} | {p99:.2f} | {max(lat) * 1e3:.2f} | {cpu * 1e3:.2f} | "
        f"{rss[0] / 2**20:.1f} / {early:.1f} / {late:.1f} / {max(rss) / 2**20:.1f} |"
    )
    print("\nRSS (MiB) after 0%, 10%, ... 100% of the scrapes: " + " ".join(f"{v:.1f}" for v in deciles))
    return {
        "p99_ms": p99,
        "cpu_ms": cpu * 1e3,
        "rss_max_mib": max(rss) / 2**20,
        "rss_growth_mib": late - early,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scrapes", type=int, default=2000, help="interleaved EFA scrapes per exporter")
    parser.add_argument(
        "--full-scrapes", type=int, default=10_000, help="full-node scrapes for latency and RSS"
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="add 8 GPUs served by the simulator's fake NVML to the full node (its cost is not real NVML's)",
    )
    parser.add_argument("--workdir", type=Path, help="where to build the trees (default: a temporary dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fmdiag-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        efa = efa_comparison(work, args.scrapes)
        full = full_node(work, args.full_scrapes, args.gpu)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n## Targets\n")
    checks = [
        ("EFA p50 latency ratio <= 1.0", efa["p50_ratio"], efa["p50_ratio"] <= 1.0),
        ("EFA p99 latency ratio <= 1.0", efa["p99_ratio"], efa["p99_ratio"] <= 1.0),
        ("EFA CPU-per-scrape ratio <= 0.6", efa["cpu_ratio"], efa["cpu_ratio"] <= 0.6),
        ("full-node CPU per scrape <= 25 ms", full["cpu_ms"], full["cpu_ms"] <= 25),
        ("full-node p99 < 50 ms", full["p99_ms"], full["p99_ms"] < 50),
        ("RSS max < 60 MB", full["rss_max_mib"] * 2**20 / 1e6, full["rss_max_mib"] * 2**20 < 60e6),
        ("RSS flat (last 10% - first 10% < 2 MiB)", full["rss_growth_mib"], full["rss_growth_mib"] < 2),
    ]
    for label, value, ok in checks:
        print(f"- {label}: {value:.2f} -> {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
