"""GPU collector lifetime: shutdown during a scrape, GPM samples of replaced GPUs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pynvml

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.gpu_state_file import GpuState
from fmdiag.exporters.nvml_stand_in import FakeNvml


def _gpus(uuid_prefix: str = "GPU-0000000") -> list[GpuState]:
    return [
        GpuState(
            index=i, uuid=f"{uuid_prefix}{i}-aaaa", pci_bus_id=f"00000000:{0x18 + i:02X}:00.0", sm_active=0.5
        )
        for i in range(2)
    ]


def _collect(c: GpuCollector) -> list[Any]:
    return [s for fam in c.collect() for s in fam.samples]


def test_close_during_a_scrape_leaves_nvml_to_that_scrape(tmp_path: Path) -> None:
    """SIGTERM while a scrape is inside NVML: close() must not free GPM samples or shut NVML
    down under it (use-after-free in the real library), nor hang on a scrape that never ends."""
    state = tmp_path / "state.json"
    gpu_state_file.write(state, _gpus(), time_s=time.time(), hostname="h")
    fake = FakeNvml(state)
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake))
    _collect(c)  # GPM samples now held between scrapes
    held = len(fake._samples)
    assert held == 2
    entered, release = threading.Event(), threading.Event()
    real = fake.nvmlDeviceGetPowerUsage

    def slow(handle: Any) -> int:
        entered.set()
        release.wait(10)
        return int(real(handle))

    fake.nvmlDeviceGetPowerUsage = slow  # type: ignore[method-assign]
    result: list[list[Any]] = []
    scrape = threading.Thread(target=lambda: result.append(_collect(c)))
    try:
        scrape.start()
        assert entered.wait(10)
        c._CLOSE_WAIT_S = 0.2
        c.close()  # returns although the scrape is still inside NVML
        assert fake._refcount > 0, "NVML shut down under a running scrape"
        assert len(fake._samples) >= held, "GPM samples freed under a running scrape"
    finally:
        release.set()
        scrape.join(10)
        del fake.nvmlDeviceGetPowerUsage
    # The fake does not model every call (FunctionNotFound); anything else is damage.
    errors = [
        s.labels
        for s in result[0]
        if s.name == "fmdiag_gpu_nvml_errors_total" and s.labels["error"] != "FunctionNotFound"
    ]
    assert not errors, errors
    # The scrape that outlived close() released NVML when it ended.
    assert fake._refcount == 0 and not fake._samples
    assert c._xid is None
    # A scrape after close exports nothing and starts nothing.
    assert _collect(c) == []
    assert c._xid is None and fake._refcount == 0


def test_a_replaced_gpu_frees_its_gpm_sample(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    gpu_state_file.write(state, _gpus(), time_s=time.time(), hostname="h")
    fake = FakeNvml(state)
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake, options={"events": "off"}))
    try:
        _collect(c)
        _collect(c)
        assert len(fake._samples) == 2  # one kept per GPU
        gpu_state_file.write(state, _gpus("GPU-1111111"), time_s=time.time() + 1, hostname="h")
        found = _collect(c)
        assert len(fake._samples) == 2, "the replaced GPUs' GPM samples leaked"
        uuids = {s.labels["UUID"] for s in found if s.name == "fmdiag_gpu_info"}
        assert uuids == {"GPU-11111110-aaaa", "GPU-11111111-aaaa"}
    finally:
        c.close()


def test_a_gpu_lost_while_sampling_does_not_leak_the_new_gpm_sample(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    gpu_state_file.write(state, _gpus(), time_s=time.time(), hostname="h")
    fake = FakeNvml(state)
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake, options={"events": "off"}))

    def lost(device: Any, sample: Any) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    try:
        _collect(c)
        fake.nvmlGpmSampleGet = lost  # type: ignore[method-assign]
        for _ in range(3):
            found = _collect(c)
        assert {s.labels["gpu"]: s.value for s in found if s.name == "fmdiag_gpu_lost"} == {
            "0": 1,
            "1": 1,
        }
        assert len(fake._samples) == 2, "a GPM sample leaked per scrape of a lost GPU"
    finally:
        del fake.nvmlGpmSampleGet
        c.close()


def test_a_process_listed_twice_on_one_gpu_is_one_series(tmp_path: Path) -> None:
    """NVML lists a process once per context (MIG instances, several contexts): the exposition
    must still hold one series per (gpu, pid), with the memory summed."""
    from fmdiag.exporters.gpu_state_file import GpuProcess

    gpus = _gpus()
    gpus[0].processes = [GpuProcess(pid=77, used_memory_bytes=1000), GpuProcess(pid=77, used_memory_bytes=24)]
    state = tmp_path / "state.json"
    gpu_state_file.write(state, gpus, time_s=time.time(), hostname="h")
    fake = FakeNvml(state)
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake, options={"events": "off"}))
    try:
        found = _collect(c)
    finally:
        c.close()
    series = [(s.name, tuple(sorted(s.labels.items()))) for s in found]
    assert len(series) == len(set(series)), "duplicate series"
    mem = [s.value for s in found if s.name == "fmdiag_gpu_process_memory_bytes"]
    assert mem == [1024]
