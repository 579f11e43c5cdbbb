"""`fmdiag exporter` serving simulated GPUs: what a Prometheus scrape of a GPU node sees."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from support import exporter_proc

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.gpu_state_file import GpuState


def test_exporter_serves_dcgm_compatible_gpu_metrics(tmp_path: Path) -> None:
    helpers = exporter_proc
    state = tmp_path / "state.json"
    gpus = [GpuState(index=i, uuid=f"GPU-{i}", pci_bus_id=f"00000000:{0x18 + i:02X}:00.0") for i in range(2)]
    gpus[1].clocks_event_reasons = 0x88
    gpu_state_file.write(state, gpus, time_s=time.time(), hostname="p5-9")
    args = ["--collector.disable-defaults", "--collector.gpu", f"--collector.gpu.simulated-state={state}"]
    with helpers.ExporterProcess(args, env={"NODE_NAME": "p5-9"}) as proc:
        text = urllib.request.urlopen(f"{proc.url}/metrics", timeout=10).read().decode()
        gpus[1].lost = True
        gpu_state_file.write(state, gpus, time_s=time.time() + 1, hostname="p5-9")
        time.sleep(0.1)
        after = urllib.request.urlopen(f"{proc.url}/metrics", timeout=10).read().decode()
    # exactly dcgm-exporter's TYPE line for a counter without _total
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    parsed = helpers.samples(text)
    assert helpers.value(parsed, "fmdiag_gpu_devices") == 2
    assert helpers.value(parsed, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="1", hostname="p5-9") == 0x88
    assert (
        helpers.value(parsed, "fmdiag_gpu_clocks_event_active", gpu="1", reason="hw_power_brake_slowdown")
        == 1
    )
    assert helpers.value(parsed, "fmdiag_exporter_collector_success", collector="gpu") == 1
    lost = helpers.samples(after)
    assert helpers.value(lost, "fmdiag_gpu_lost", gpu="1", UUID="GPU-1") == 1
    assert helpers.value(lost, "DCGM_FI_DEV_GPU_UTIL", gpu="0") is not None
    assert helpers.value(lost, "DCGM_FI_DEV_GPU_UTIL", gpu="1") is None


def test_gpu_flags_reach_the_collector(tmp_path: Path) -> None:
    helpers = exporter_proc
    state = tmp_path / "state.json"
    gpu_state_file.write(state, [GpuState(index=0, uuid="GPU-0", pci_bus_id="00000000:18:00.0")], time_s=1.0)
    args = [
        "--collector.disable-defaults",
        "--collector.gpu",
        f"--collector.gpu.simulated-state={state}",
        "--collector.gpu.xid-window=2m",
        "--no-collector.gpu.events",
    ]
    with helpers.ExporterProcess(args) as proc:
        text = urllib.request.urlopen(f"{proc.url}/metrics", timeout=10).read().decode()
    parsed = helpers.samples(text)
    assert helpers.value(parsed, "fmdiag_gpu_devices") == 1
    assert "DCGM_FI_DEV_XID_ERRORS" not in text, "--no-collector.gpu.events starts no XID listener"


def test_a_garbled_state_file_stops_the_exporter_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"format": "fmdiag-gpu-state", "version": 1, "time_s": 1.0, "gpus": [{"index": 0}]}')
    gpu_only = ["--collector.disable-defaults", "--collector.gpu", f"--collector.gpu.simulated-state={state}"]
    r = subprocess.run(
        [sys.executable, "-m", "fmdiag", "exporter", "--web.listen-address=127.0.0.1:0", *gpu_only],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "Invalid value for '--collector.gpu.simulated-state'" in r.stderr
    assert f"{state}: gpus[0]: missing field(s)" in r.stderr
    assert "Traceback" not in r.stderr
