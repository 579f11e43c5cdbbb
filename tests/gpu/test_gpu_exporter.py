"""`fmdiag exporter` serving simulated GPUs: what a Prometheus scrape of a GPU node sees."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from support import exporter_proc

from fmdiag.simulate import gpustate
from fmdiag.simulate.state import GpuState


def test_exporter_serves_dcgm_compatible_gpu_metrics(tmp_path: Path) -> None:
    helpers = exporter_proc
    state = tmp_path / "state.json"
    gpus = [GpuState(index=i, uuid=f"GPU-{i}", pci_bus_id=f"00000000:{0x18 + i:02X}:00.0") for i in range(2)]
    gpus[1].clocks_event_reasons = 0x88
    gpustate.write(state, gpus, time_s=time.time(), hostname="p5-9")
    args = ["--collector.disable-defaults", "--collector.gpu", f"--collector.gpu.simulated-state={state}"]
    with helpers.ExporterProcess(args, env={"NODE_NAME": "p5-9"}) as proc:
        text = urllib.request.urlopen(f"{proc.url}/metrics", timeout=10).read().decode()
        gpus[1].lost = True
        gpustate.write(state, gpus, time_s=time.time() + 1, hostname="p5-9")
        time.sleep(0.1)
        after = urllib.request.urlopen(f"{proc.url}/metrics", timeout=10).read().decode()
    # exactly dcgm-exporter's TYPE line for a counter without _total
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in text
    parsed = helpers.samples(text)
    assert helpers.value(parsed, "fmdiag_gpu_devices") == 2
    assert helpers.value(parsed, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="1", Hostname="p5-9") == 0x88
    assert (
        helpers.value(parsed, "fmdiag_gpu_clocks_event_active", gpu="1", reason="hw_power_brake_slowdown")
        == 1
    )
    assert helpers.value(parsed, "fmdiag_exporter_collector_success", collector="gpu") == 1
    lost = helpers.samples(after)
    assert helpers.value(lost, "fmdiag_gpu_lost", gpu="1", UUID="GPU-1") == 1
    assert helpers.value(lost, "DCGM_FI_DEV_GPU_UTIL", gpu="0") is not None
    assert helpers.value(lost, "DCGM_FI_DEV_GPU_UTIL", gpu="1") is None
