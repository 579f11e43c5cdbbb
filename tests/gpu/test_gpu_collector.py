"""The GPU collector against the fake NVML: DCGM names and units, lost GPUs, unsupported calls, XIDs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from fmdiag import catalog
from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext, SourceUnavailableError
from fmdiag.exporters.collectors import gpu as gpu_collector
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState
from fmdiag.exporters.nvml_stand_in import FakeNvml
from fmdiag.exporters.options import OptionError

MIB = 1 << 20


def make_gpus(n: int = 4) -> list[GpuState]:
    gpus = [
        GpuState(
            index=i,
            uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
            sm_clock_mhz=1980,
            power_mw=612_345,
            energy_mj=1_000_000 + i,
            util_gpu_pct=97,
            util_mem_pct=40,
            fb_used_mib=70_000,
            fb_reserved_mib=555,
            sm_active=0.9,
            tensor_active=0.6,
            pcie_tx_bytes_per_s=3 * MIB,
            ecc_sbe_volatile=2,
            thermal_violation_us=1500,
            processes=[GpuProcess(pid=4000 + i, used_memory_bytes=69_000 * MIB)],
        )
        for i in range(n)
    ]
    gpus[2].clocks_event_reasons = 0x40
    gpus[2].sm_clock_mhz = 1200
    return gpus


def samples(collector: GpuCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value for fam in collector.collect() for s in fam.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    hits = [v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "nvml" / "state.json"
    gpu_state_file.write(path, make_gpus(), time_s=time.time(), hostname="p5-001")
    return path


@pytest.fixture
def collector(state_file: Path) -> Iterator[GpuCollector]:
    ctx = CollectorContext(options={"simulated-state": str(state_file)}, hostname="p5-001")
    c = GpuCollector(ctx)
    yield c
    c.close()


def test_dcgm_names_labels_and_units(collector: GpuCollector) -> None:
    found = samples(collector)
    assert value(found, "fmdiag_gpu_devices") == 4
    labels = {"gpu": "1", "UUID": "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd", "hostname": "p5-001"}
    assert value(found, "DCGM_FI_DEV_POWER_USAGE", **labels) == pytest.approx(612.345)  # mW -> W
    assert value(found, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", **labels) == 1_000_001  # mJ
    assert value(found, "DCGM_FI_DEV_GPU_UTIL", **labels) == 97
    assert value(found, "DCGM_FI_DEV_FB_USED", **labels) == 70_000  # MiB
    assert value(found, "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", **labels) == 2
    assert value(found, "DCGM_FI_DEV_THERMAL_VIOLATION", **labels) == 1_500_000  # ns, as NVML counts it
    assert value(found, "fmdiag_gpu_process_memory_bytes", gpu="1", pid="4001") == 69_000 * MIB
    sample_labels = next(ls for (n, ls) in found if n == "DCGM_FI_DEV_SM_CLOCK")
    assert {k for k, _ in sample_labels} == {"gpu", "UUID", "pci_bus_id", "device", "modelName", "hostname"}
    assert ("device", "nvidia0") in sample_labels or ("device", "nvidia1") in sample_labels


def test_a_simulated_node_keeps_its_own_host_name(state_file: Path) -> None:
    """The exporter serving a simulated node runs elsewhere: hostname names the simulated node."""
    ctx = CollectorContext(options={"simulated-state": str(state_file)}, hostname="the-laptop")
    c = GpuCollector(ctx)
    try:
        found = samples(c)
    finally:
        c.close()
    hosts = {v for (n, ls) in found if n == "DCGM_FI_DEV_SM_CLOCK" for k, v in ls if k == "hostname"}
    assert hosts == {"p5-001"}


def test_throttled_gpu_shows_bitmask_and_decoded_reason(collector: GpuCollector) -> None:
    found = samples(collector)
    assert value(found, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="2") == 0x40
    assert value(found, "fmdiag_gpu_clocks_event_active", gpu="2", reason="hw_thermal_slowdown") == 1
    assert value(found, "fmdiag_gpu_clocks_event_active", gpu="1", reason="hw_thermal_slowdown") == 0
    assert value(found, "DCGM_FI_DEV_SM_CLOCK", gpu="2") == 1200


def test_gpm_ratios_need_two_scrapes(collector: GpuCollector) -> None:
    first = samples(collector)
    assert not [n for (n, _) in first if n == "DCGM_FI_PROF_SM_ACTIVE"]
    second = samples(collector)
    assert value(second, "DCGM_FI_PROF_SM_ACTIVE", gpu="0") == pytest.approx(0.9)
    assert value(second, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", gpu="0") == pytest.approx(0.6)
    assert value(second, "DCGM_FI_PROF_PCIE_TX_BYTES", gpu="0") == pytest.approx(3 * MIB)


def test_a_lost_gpu_is_reported_and_the_others_still_served(
    collector: GpuCollector, state_file: Path
) -> None:
    samples(collector)  # learn identities while healthy
    gpus = make_gpus()
    gpus[3].lost = True
    gpu_state_file.write(state_file, gpus, time_s=time.time(), hostname="p5-001")
    time.sleep(0.05)
    found = samples(collector)
    assert value(found, "fmdiag_gpu_lost", gpu="3") == 1
    lost_uuid = dict(next(ls for (n, ls) in found if n == "fmdiag_gpu_lost" and ("gpu", "3") in ls))["UUID"]
    assert lost_uuid == "GPU-00000003-aaaa-bbbb-cccc-dddddddddddd", "identity kept from before"
    assert value(found, "fmdiag_gpu_lost", gpu="0") == 0
    assert not [ls for (n, ls) in found if n == "DCGM_FI_DEV_GPU_UTIL" and ("gpu", "3") in ls]
    assert len([1 for (n, _) in found if n == "DCGM_FI_DEV_GPU_UTIL"]) == 3
    assert value(found, "fmdiag_gpu_nvml_errors_total", gpu="3", error="GpuIsLost") >= 1


def test_unsupported_calls_are_tried_once_then_skipped(state_file: Path) -> None:
    fake = FakeNvml(state_file, not_supported=["nvmlDeviceGetTotalEccErrors"])
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake))
    try:
        for _ in range(3):
            found = samples(c)
    finally:
        c.close()
    assert not [n for (n, _) in found if n.startswith("DCGM_FI_DEV_ECC")]
    assert value(found, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == 97
    # one failing try per GPU per ECC field, never repeated on later scrapes
    assert value(found, "fmdiag_gpu_nvml_errors_total", gpu="0", call="DCGM_FI_DEV_ECC_SBE_VOL_TOTAL") == 1


def unavailable(collector: GpuCollector) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """The reason a collect reported its source unavailable, and the families it still served."""
    with pytest.raises(SourceUnavailableError) as info:
        collector.collect()
    found = {
        (s.name, frozenset(s.labels.items())): s.value for fam in info.value.families for s in fam.samples
    }
    return info.value.reason, found


def test_without_a_driver_the_node_reports_zero_gpus_and_fails_honestly(state_file: Path) -> None:
    c = GpuCollector(CollectorContext(hostname="h", nvml=FakeNvml(state_file, library_missing=True)))
    try:
        reason, found = unavailable(c)
    finally:
        c.close()
    # success 0 with the reason (the scrape logs it), and fmdiag_gpu_devices 0 still served.
    assert "NVML cannot initialise (LibraryNotFound" in reason
    assert value(found, "fmdiag_gpu_devices") == 0
    assert value(found, "fmdiag_gpu_nvml_errors_total", call="nvmlInit", error="LibraryNotFound") == 1


def test_the_xid_listener_picks_up_gpus_that_appear_after_start(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    gpu_state_file.write(path, make_gpus()[:2], time_s=time.time(), hostname="h")
    c = GpuCollector(CollectorContext(options={"simulated-state": str(path)}, hostname="h"))
    try:
        assert value(samples(c), "fmdiag_gpu_devices") == 2  # the listener starts with GPUs 0 and 1
        gpus = make_gpus(4)
        gpu_state_file.write(path, gpus, time_s=time.time() + 1, hostname="h")
        assert value(samples(c), "fmdiag_gpu_devices") == 4  # GPUs 2 and 3 registered now
        gpus[3].xid_events = [48]
        gpu_state_file.write(path, gpus, time_s=time.time() + 2, hostname="h")
        deadline = time.monotonic() + 10
        found = samples(c)
        while time.monotonic() < deadline and not any(n == "fmdiag_gpu_xid_errors_total" for (n, _) in found):
            time.sleep(0.1)
            found = samples(c)
        assert value(found, "fmdiag_gpu_xid_errors_total", gpu="3", xid="48", action="workflow") == 1
    finally:
        c.close()


def test_xid_events_are_counted_with_their_action(collector: GpuCollector, state_file: Path) -> None:
    samples(collector)  # starts the listener
    gpus = make_gpus()
    gpus[1].xid_events = [79]
    gpu_state_file.write(state_file, gpus, time_s=time.time() + 1, hostname="p5-001")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = samples(collector)
        if any(n == "fmdiag_gpu_xid_errors_total" for (n, _) in found):
            break
        time.sleep(0.1)
    assert value(found, "fmdiag_gpu_xid_errors_total", gpu="1", xid="79", action="reboot_node") == 1
    assert value(found, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 79
    assert value(found, "DCGM_EXP_XID_ERRORS_COUNT", gpu="1", xid="79", window_size_in_ms="300000") == 1


def test_gpu_processes_feed_the_host_collector(collector: GpuCollector) -> None:
    samples(collector)
    assert collector.gpu_processes() == {4000: "0", 4001: "1", 4002: "2", 4003: "3"}
    provider = collector.ctx.gpu_processes.provider  # what the host collector's context shares
    assert provider is not None and provider() == collector.gpu_processes()
    collector.close()
    assert collector.ctx.gpu_processes.provider is None


def test_xid_actions_follow_the_catalogue() -> None:
    assert catalog.XID_ACTIONS[48] == "workflow"
    assert catalog.XID_ACTIONS[13] == "restart_app"
    assert catalog.XID_ACTIONS[95] == "reset_gpu"


def test_pci_switch_is_the_bridge_above_the_upstream_port(tmp_path: Path) -> None:
    chain = (
        tmp_path
        / "devices"
        / "pci0000:10"
        / "0000:10:01.0"
        / "0000:11:00.0"
        / "0000:12:02.0"
        / "0000:18:00.0"
    )
    chain.mkdir(parents=True)
    devices = tmp_path / "bus" / "pci" / "devices"
    devices.mkdir(parents=True)
    (devices / "0000:18:00.0").symlink_to(chain)
    assert gpu_collector.pci_switch(tmp_path, "00000000:18:00.0") == "0000:11:00.0"
    assert gpu_collector.pci_switch(tmp_path, "00000000:99:00.0") == ""


def test_scrapes_do_not_accumulate_nvml_buffers(state_file: Path) -> None:
    """GPM samples are allocated and freed every scrape; neither side may keep them."""
    fake = FakeNvml(state_file)
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake))
    try:
        samples(c)
        after_first = len(fake._buffers)
        for _ in range(50):
            samples(c)
        assert len(fake._buffers) <= after_first + 4
    finally:
        c.close()


def test_a_failing_device_count_reads_as_zero_gpus(state_file: Path) -> None:
    def unknown_error() -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    fake = FakeNvml(state_file)
    fake.nvmlDeviceGetCount = unknown_error  # type: ignore[method-assign]
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake))
    try:
        found = samples(c)
    finally:
        c.close()
    assert value(found, "fmdiag_gpu_devices") == 0
    assert value(found, "fmdiag_gpu_nvml_errors_total", call="nvmlDeviceGetCount", error="Unknown") == 1


def test_simulating_gpus_leaves_pynvml_alone(state_file: Path) -> None:
    """The stand-in is handed to the collector; the pynvml module keeps the driver's functions."""
    real = {name: fn for name, fn in vars(pynvml).items() if name.startswith("nvml") and callable(fn)}
    c = GpuCollector(CollectorContext(options={"simulated-state": str(state_file)}, hostname="h"))
    try:
        found = samples(c)
        assert value(found, "fmdiag_gpu_devices") == 4
        assert isinstance(c.nvml, FakeNvml)
        changed = [n for n, fn in real.items() if getattr(pynvml, n) is not fn]
        assert not changed, changed
    finally:
        c.close()


def test_the_context_provides_nvml(state_file: Path) -> None:
    """Without --collector.gpu.simulated-state the collector uses what the context hands it."""
    fake = FakeNvml(state_file)
    c = GpuCollector(CollectorContext(hostname="h", nvml=fake, options={"events": "off"}))
    try:
        assert c.nvml is fake
        assert value(samples(c), "fmdiag_gpu_devices") == 4
    finally:
        c.close()
    assert GpuCollector(CollectorContext(hostname="h")).nvml is pynvml


def test_options_are_parsed_by_their_declarations(state_file: Path) -> None:
    c = GpuCollector(
        CollectorContext(options={"simulated-state": str(state_file), "xid-window": "1m30s", "events": "off"})
    )
    try:
        assert (c.xid_window_s, c.events) == (90.0, False)
    finally:
        c.close()
    with pytest.raises(OptionError, match=r"--collector\.gpu\.xid-window='soon': 'soon' is not a duration"):
        GpuCollector(CollectorContext(options={"xid-window": "soon"}))
    with pytest.raises(OptionError, match=r"--collector\.gpu\.events='maybe': expected on or off"):
        GpuCollector(CollectorContext(options={"events": "maybe"}))
    unknown = r"--collector\.gpu: unknown option\(s\) xid_window; known: clock-events-window, events, "
    with pytest.raises(OptionError, match=unknown):
        GpuCollector(CollectorContext(options={"xid_window": "60"}))


def test_a_garbled_state_file_is_refused_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "state.json"
    bad.write_text('{"format": "fmdiag-gpu-state", "version": 1, "time_s": 1.0, "gpus": [{"index": "0"}]}')
    with pytest.raises(OptionError, match=r"--collector\.gpu\.simulated-state=.*gpus\[0\]"):
        GpuCollector(CollectorContext(options={"simulated-state": str(bad)}))
    # A file not written yet is accepted at start and named as the reason, not "Driver Not
    # Loaded"; once the simulator writes it, the next scrape serves its GPUs.
    later = tmp_path / "later.json"
    c = GpuCollector(CollectorContext(hostname="h", options={"simulated-state": str(later)}))
    try:
        reason, found = unavailable(c)
        assert reason == f"simulated GPU state file {later} does not exist (yet)"
        assert value(found, "fmdiag_gpu_devices") == 0
        assert not [k for k in found if k[0] == "fmdiag_gpu_nvml_errors_total"]
        gpu_state_file.write(later, make_gpus()[:2], time_s=time.time(), hostname="h")
        assert value(samples(c), "fmdiag_gpu_devices") == 2
    finally:
        c.close()
