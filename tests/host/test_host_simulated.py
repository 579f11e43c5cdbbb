"""The host collector on procfs trees rendered by the simulator, advanced like --live does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState
from fmdiag.simulate.nodes.readings import HostState, NodeState, ProcessState
from fmdiag.simulate.nodes.render import render_node

from .conftest import make, one, pick, pids, scrape

T0 = 1_764_000_000.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def rank_process(pid: int, local_rank: int, t: float) -> ProcessState:
    return ProcessState(
        pid=pid,
        name="pt_main_thread",
        cmdline=["/usr/bin/python3", "-u", "train.py", f"--local-rank={local_rank}"],
        cpu_user_s=100.0 + t,
        cpu_system_s=10.0 + t / 10,
        cpu_iowait_s=1.5,
        rss_bytes=(40 << 30) + 123,
        read_bytes=int(1e9 * (1 + t)),
        write_bytes=int(2e8 * (1 + t)),
        threads=80,
        start_time_s=T0 - 3600,
    )


def node(t: float, ranks: int = 2, extra: list[ProcessState] | None = None) -> NodeState:
    procs = [rank_process(5000 + r, r, t) for r in range(ranks)]
    procs.append(
        ProcessState(
            pid=700,
            name="containerd",
            cmdline=["/usr/bin/containerd"],
            cpu_user_s=5.0,
            cpu_system_s=1.0,
            cpu_iowait_s=0.0,
            rss_bytes=1 << 28,
            read_bytes=0,
            write_bytes=0,
            threads=30,
            start_time_s=T0 - 86000,
        )
    )
    procs += extra or []
    hs = HostState(
        cpu_seconds={
            "user": 50000.0 + 96 * t,
            "nice": 0.0,
            "system": 8000.0,
            "idle": 900000.0,
            "iowait": 1200.0 + 3 * t,
            "irq": 0.0,
            "softirq": 300.0,
            "steal": 0.0,
        },
        ncpus=96,
        pressure_us={
            "cpu": {"some": 10_000_000, "full": 0},
            "memory": {"some": 2_000_000, "full": 500_000},
            "io": {"some": int(4e6 + 5e5 * t), "full": int(3e6 + 4e5 * t)},
        },
        processes=procs,
    )
    gpus = [
        GpuState(
            index=i,
            uuid=f"GPU-{i}",
            pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
            processes=[GpuProcess(pid=5000 + i, used_memory_bytes=70 << 30)],
        )
        for i in range(ranks)
    ]
    return NodeState(hostname="p5-001", time_s=T0 + t, gpus=gpus, host=hs)


def test_simulated_node_round_trips_through_the_collector(tmp_path: Path) -> None:
    state = node(0.0)
    render_node(state, tmp_path)
    collector = make(tmp_path / "proc")
    s = scrape(collector)
    tick = os.sysconf("SC_CLK_TCK")
    for mode, seconds in state.host.cpu_seconds.items():
        assert one(s, "fmdiag_host_cpu_seconds_total", mode=mode) == pytest.approx(seconds, abs=1 / tick)
    assert one(s, "fmdiag_host_cpus") == 96
    assert one(s, "fmdiag_host_pressure_stall_seconds_total", resource="io", kind="full") == 3.0
    assert one(s, "fmdiag_host_pressure_stall_seconds_total", resource="memory", kind="some") == 2.0
    assert pids(s) == {5000, 5001}
    p = state.host.processes[0]
    labels = {"pid": "5000", "name": "pt_main_thread", "gpu": ""}
    assert one(s, "fmdiag_process_cpu_seconds_total", mode="user", **labels) == pytest.approx(p.cpu_user_s)
    assert one(s, "fmdiag_process_cpu_seconds_total", mode="iowait", **labels) == pytest.approx(1.5)
    assert one(s, "fmdiag_process_resident_memory_bytes", **labels) == p.rss_bytes // PAGE * PAGE
    assert one(s, "fmdiag_process_read_bytes_total", **labels) == p.read_bytes
    assert one(s, "fmdiag_process_write_bytes_total", **labels) == p.write_bytes
    assert one(s, "fmdiag_process_threads", **labels) == 80
    assert one(s, "fmdiag_process_start_time_seconds", **labels) == pytest.approx(
        p.start_time_s, abs=1 / tick
    )
    assert collector.ctx.errors.count("host") == 0


def test_gpu_users_from_the_simulated_gpu_state(tmp_path: Path) -> None:
    """What the GPU collector registers: pid -> GPU index from NVML's compute processes."""
    state = node(0.0)
    render_node(state, tmp_path)
    gpu_users = {p.pid: str(g.index) for g in state.gpus for p in g.processes}
    s = scrape(make(tmp_path / "proc", lambda: gpu_users, **{"process-pattern": ""}))
    assert pick(s, "fmdiag_process_threads", pid="5000", gpu="0")
    assert pick(s, "fmdiag_process_threads", pid="5001", gpu="1")
    assert pids(s) == {5000, 5001}


def test_live_tree_counters_grow_and_processes_come_and_go(tmp_path: Path) -> None:
    render_node(node(0.0), tmp_path)
    collector = make(tmp_path / "proc")
    first = scrape(collector)
    # 60 s later: rank 1 exited, a new rank started, counters moved on.
    newcomer = rank_process(6000, 1, 60.0)
    state = node(60.0, ranks=1, extra=[newcomer])
    render_node(state, tmp_path)
    second = scrape(collector)
    assert pids(first) == {5000, 5001}
    assert pids(second) == {5000, 6000}
    grew = one(second, "fmdiag_host_cpu_seconds_total", mode="user") - one(
        first, "fmdiag_host_cpu_seconds_total", mode="user"
    )
    assert grew == pytest.approx(96 * 60.0, abs=0.02)
    io_full = one(second, "fmdiag_host_pressure_stall_seconds_total", resource="io", kind="full")
    assert io_full == pytest.approx(3.0 + 0.4 * 60)
    read = one(second, "fmdiag_process_read_bytes_total", pid="5000")
    assert read - one(first, "fmdiag_process_read_bytes_total", pid="5000") == pytest.approx(60e9)
    assert collector.ctx.errors.count("host") == 0
