"""The host collector on this machine's real /proc, with a real "training process"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fmdiag.exporters.collectors.host import CPU_MODES

from .conftest import make, one, pick, pids, scrape

# Burns at least 0.2 s of CPU, writes 1 MiB and fsyncs it, starts 3 extra threads, says so,
# then waits: every figure the collector reports has a known lower bound.
TRAINER = """
import os, sys, threading, time
path = sys.argv[1]
t0 = os.times()
while os.times().user - t0.user < 0.2:
    sum(range(10000))
with open(path, "wb") as f:
    f.write(os.urandom(1 << 20))
    f.flush()
    os.fsync(f.fileno())
stop = threading.Event()
for _ in range(3):
    threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    marker = f"fmdiag-test-train-{uuid.uuid4().hex}"
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tmp_path / "ckpt.bin"), marker],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    yield proc, marker
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def test_real_training_process_is_found_with_its_figures(trainer: tuple[subprocess.Popen[str], str]) -> None:
    proc, marker = trainer
    collector = make(Path("/proc"), **{"process-pattern": marker})
    s = scrape(collector)
    assert pids(s) == {proc.pid}
    labels = {"pid": str(proc.pid)}
    truth = psutil.Process(proc.pid)
    assert one(s, "fmdiag_process_cpu_seconds_total", mode="user", **labels) >= 0.2
    assert one(s, "fmdiag_process_threads", **labels) >= 4
    assert one(s, "fmdiag_process_resident_memory_bytes", **labels) > 1 << 20
    assert one(s, "fmdiag_process_start_time_seconds", **labels) == pytest.approx(truth.create_time())
    # The trainer is idle now (blocked on stdin), so its I/O counters hold still.
    io = truth.io_counters()
    assert one(s, "fmdiag_process_read_bytes_total", **labels) == io.read_bytes
    assert one(s, "fmdiag_process_write_bytes_total", **labels) == io.write_bytes
    name = dict(next(iter(pick(s, "fmdiag_process_threads", **labels))))["name"]
    assert name == truth.name()
    assert collector.ctx.errors.count("host") == 0


def test_real_node_metrics_are_consistent_with_psutil() -> None:
    s = scrape(make(Path("/proc")))
    modes = {dict(lab)["mode"] for lab in pick(s, "fmdiag_host_cpu_seconds_total")}
    assert {"user", "system", "idle", "iowait"} <= modes <= set(CPU_MODES)
    assert one(s, "fmdiag_host_cpus") == len(psutil.cpu_times(percpu=True))
    # Counters taken after psutil's reading can only be larger or equal.
    before = psutil.cpu_times()
    after = scrape(make(Path("/proc")))
    assert one(after, "fmdiag_host_cpu_seconds_total", mode="user") >= before.user - 0.011
    if Path("/proc/pressure/cpu").exists():
        assert pick(s, "fmdiag_host_pressure_stall_seconds_total", resource="cpu", kind="some")


def test_the_exporter_never_lists_itself(trainer: tuple[subprocess.Popen[str], str]) -> None:
    """The exporter's own command line carries the pattern text; it must not match itself."""
    _, marker = trainer
    own = " ".join(psutil.Process(os.getpid()).cmdline())
    collector = make(Path("/proc"), **{"process-pattern": f"{marker}|{re.escape(own[:40])}"})
    assert os.getpid() not in pids(scrape(collector))
