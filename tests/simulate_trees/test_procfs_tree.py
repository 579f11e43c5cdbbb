"""The procfs part of a rendered node tree, read back through psutil as the host collector will."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fmdiag.simulate.nodes.readings import NodeState
from fmdiag.simulate.nodes.render import render_node

PSI_RE = re.compile(r"^(some|full) avg10=(\d+\.\d\d) avg60=(\d+\.\d\d) avg300=(\d+\.\d\d) total=(\d+)$")


@pytest.fixture
def procfs(tmp_path: Path) -> Iterator[Path]:
    """psutil pointed at the tree's /proc for the test, and back afterwards."""
    saved = psutil.PROCFS_PATH
    psutil.PROCFS_PATH = str(tmp_path / "proc")
    try:
        yield tmp_path
    finally:
        psutil.PROCFS_PATH = saved


def tick() -> float:
    return 1.0 / os.sysconf("SC_CLK_TCK")


def test_psutil_reads_the_state(procfs: Path, node: Callable[..., NodeState]) -> None:
    state = node(step=2)
    render_node(state, procfs)
    cpu = psutil.cpu_times()
    for mode, seconds in state.host.cpu_seconds.items():
        assert getattr(cpu, mode) == pytest.approx(seconds, abs=tick())
    per_cpu = psutil.cpu_times(percpu=True)
    assert len(per_cpu) == state.host.ncpus
    assert sum(c.user for c in per_cpu) == pytest.approx(cpu.user, abs=tick())
    boot = psutil.boot_time()
    assert boot <= min(p.start_time_s for p in state.host.processes)
    assert sorted(psutil.pids()) == sorted(p.pid for p in state.host.processes)

    for want in state.host.processes:
        p = psutil.Process(want.pid)
        assert p.name() == want.name  # the 15-byte comm is completed from the cmdline like on Linux
        assert p.cmdline() == want.cmdline
        times = p.cpu_times()
        assert times.user == pytest.approx(want.cpu_user_s, abs=tick())
        assert times.system == pytest.approx(want.cpu_system_s, abs=tick())
        assert times.iowait == pytest.approx(want.cpu_iowait_s, abs=tick())
        page = os.sysconf("SC_PAGE_SIZE")
        assert p.memory_info().rss == want.rss_bytes // page * page
        io = p.io_counters()
        assert (io.read_bytes, io.write_bytes) == (want.read_bytes, want.write_bytes)
        assert p.num_threads() == want.threads
        assert p.create_time() == pytest.approx(want.start_time_s, abs=tick())
        assert p.status() == psutil.STATUS_SLEEPING
    names = {p.info["name"] for p in psutil.process_iter(["name"])}
    assert names == {p.name for p in state.host.processes}
    assert (procfs / "proc/41017/comm").read_text() == "a_very_long_dat\n"


def test_exited_process_disappears(procfs: Path, node: Callable[..., NodeState]) -> None:
    state = node(step=1)
    render_node(state, procfs)
    proc = psutil.Process(41017)
    later = node(step=2)
    later.host.processes = later.host.processes[:1]
    render_node(later, procfs)
    assert psutil.pids() == [41000]
    with pytest.raises(psutil.NoSuchProcess):
        proc.cpu_times()
    with pytest.raises(psutil.NoSuchProcess):
        psutil.Process(41017)


def parse_psi(text: str) -> dict[str, tuple[float, float, float, int]]:
    out = {}
    for line in text.splitlines():
        m = PSI_RE.match(line)
        assert m, line
        out[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)), int(m.group(5)))
    return out


def test_pressure_totals_and_averages(procfs: Path, node: Callable[..., NodeState]) -> None:
    render_node(node(step=1), procfs)
    first = parse_psi((procfs / "proc/pressure/io").read_text())
    assert first["some"] == (0.0, 0.0, 0.0, 400_000)
    assert first["full"][3] == 100_000
    assert parse_psi((procfs / "proc/pressure/memory").read_text())["some"] == (0.0, 0.0, 0.0, 0)
    render_node(node(step=2), procfs)  # 0.4 s of io stall in 1 s: 40% over the interval
    second = parse_psi((procfs / "proc/pressure/io").read_text())
    assert second["some"][3] == 800_000
    for got, window in zip(second["some"][:3], (10, 60, 300), strict=True):
        assert got == pytest.approx(40 * (1 - math.exp(-1 / window)), abs=0.006)
    assert second["some"][0] > second["some"][1] > second["some"][2] > 0


def test_boot_time_is_kept_across_renders(procfs: Path, node: Callable[..., NodeState]) -> None:
    render_node(node(step=1), procfs)
    boot = psutil.boot_time()
    render_node(node(step=50), procfs)
    assert psutil.boot_time() == boot
    uptime, _idle = (float(x) for x in (procfs / "proc/uptime").read_text().split())
    assert uptime == pytest.approx(node(step=50).time_s - boot, abs=0.01)
    render_node(node(step=51), procfs, boot_time_s=boot - 100)
    assert psutil.boot_time() == boot - 100
    assert (procfs / "sys/devices/system/cpu/online").read_text() == "0-7\n"
