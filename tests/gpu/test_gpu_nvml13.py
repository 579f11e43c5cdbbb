"""NVML 13 fields through the NVML stand-in: recovery action, ns clock events, NVLink 5, Blackwell GPM.

Each field is read only where the GPU and driver have it; a NOT_SUPPORTED answer is per GPU, said
once in the log and not asked again, and the other GPUs keep their readings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pynvml
import pytest

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.gpu_state_file import GpuState
from fmdiag.exporters.nvml_stand_in import FakeNvml

MIB = 1 << 20
Found = dict[tuple[str, frozenset[tuple[str, str]]], float]


def b200(i: int, **changes: Any) -> GpuState:
    g = GpuState(
        index=i,
        uuid=f"GPU-b200000{i}-aaaa-bbbb-cccc-dddddddddddd",
        pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
        name="NVIDIA B200",
        recovery_action=0,
        sw_thermal_slowdown_ns=7_000,
        hw_thermal_slowdown_ns=5_000_000_019,
        hw_power_brake_slowdown_ns=3_000,
        power_violation_us=2,
        nvlink5_tx_bytes=18 * 10**12 + 5,
        nvlink5_rx_bytes=9 * 10**12,
        nvlink5_symbol_errors=37,
        nvlink5_effective_errors=1,
        nvlink5_recovery_events=4,
        nvlink5_recovery_failed_events=1,
        nvlink_tx_bytes_per_s=36.0 * MIB,
        nvlink_rx_bytes_per_s=18.0 * MIB,
        c2c_tx_bytes_per_s=10.0 * MIB,
        c2c_rx_bytes_per_s=20.0 * MIB,
    )
    for key, value in changes.items():
        setattr(g, key, value)
    return g


def h100(i: int) -> GpuState:
    return GpuState(
        index=i,
        uuid=f"GPU-h100000{i}-aaaa-bbbb-cccc-dddddddddddd",
        pci_bus_id=f"00000000:{0x38 + i:02X}:00.0",
        power_violation_us=5,
        thermal_violation_us=9,
    )


def write(path: Path, gpus: Sequence[GpuState], driver: str = "580.65.06") -> None:
    gpu_state_file.write(path, gpus, time_s=time.time(), hostname="p6-001", driver_version=driver)


class CountingNvml(FakeNvml):
    """The stand-in, remembering the field ids each nvmlDeviceGetFieldValues call asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.asked: list[list[Any]] = []

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: Sequence[Any]) -> Any:
        self.asked.append(list(fieldIds))
        return super().nvmlDeviceGetFieldValues(handle, fieldIds)


def samples(c: GpuCollector) -> Found:
    return {(s.name, frozenset(s.labels.items())): s.value for fam in c.collect() for s in fam.samples}


def value(found: Found, name: str, **labels: str) -> float:
    hits = [v for (n, ls), v in found.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, f"{name}{labels}: {len(hits)} samples"
    return hits[0]


def names(found: Found, gpu: str) -> set[str]:
    return {n for (n, ls) in found if ("gpu", gpu) in ls}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "nvml" / "state.json"


@pytest.fixture
def collector(state: Path) -> Iterator[GpuCollector]:
    write(state, [b200(0, name="NVIDIA GB200"), b200(1, recovery_action=2)])
    options = {"simulated-state": str(state), "events": "off", "nvlink-links": "on"}
    c = GpuCollector(CollectorContext(options=options))
    yield c
    c.close()


def test_recovery_action_and_ns_clock_events_are_exported(collector: GpuCollector) -> None:
    found = samples(collector)
    assert value(found, "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION", gpu="0") == 0
    assert value(found, "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION", gpu="1") == 2  # node reboot
    ns = "DCGM_FI_DEV_CLOCKS_EVENT_REASON_{}_NS"
    assert value(found, ns.format("HW_THERM_SLOWDOWN"), gpu="1") == 5_000_000_019  # exact u64, ns
    assert value(found, ns.format("SW_THERM_SLOWDOWN"), gpu="1") == 7_000
    assert value(found, ns.format("HW_POWER_BRAKE_SLOWDOWN"), gpu="1") == 3_000
    assert value(found, ns.format("SW_POWER_CAP"), gpu="1") == 2_000  # field 74 in ns
    assert value(found, "DCGM_FI_DEV_POWER_VIOLATION", gpu="1") == 2_000  # the old counter, ns too


def test_nvlink5_counters_are_summed_over_the_links(collector: GpuCollector) -> None:
    found = samples(collector)
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_TX_BYTES", gpu="0") == 18 * 10**12 + 5
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_RX_BYTES", gpu="0") == 9 * 10**12
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_RX_SYMBOL_ERRORS", gpu="0") == 37
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_FAILED_EVENTS", gpu="0") == 1
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_SUCCESSFUL_EVENTS", gpu="0") == 3
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_TX_PACKETS", gpu="0") == (18 * 10**12 + 5) // 256


def test_blackwell_gpm_metrics_per_link_and_c2c_where_present(collector: GpuCollector) -> None:
    samples(collector)  # the first scrape starts the GPM interval
    found = samples(collector)
    for link in range(18):
        assert value(found, f"DCGM_FI_PROF_NVLINK_L{link}_TX_BYTES", gpu="0") == pytest.approx(2.0 * MIB)
        assert value(found, f"DCGM_FI_PROF_NVLINK_L{link}_RX_BYTES", gpu="1") == pytest.approx(1.0 * MIB)
    assert value(found, "DCGM_FI_PROF_C2C_TX_ALL_BYTES", gpu="0") == pytest.approx(10.0 * MIB)
    assert value(found, "DCGM_FI_PROF_C2C_RX_DATA_BYTES", gpu="0") == pytest.approx(18.0 * MIB)
    assert not {n for n in names(found, "1") if "C2C" in n}, "a B200 has no C2C: GPM answers NOT_SUPPORTED"


def test_per_link_nvlink_bandwidth_is_opt_in(state: Path) -> None:
    write(state, [b200(0)])
    c = GpuCollector(CollectorContext(options={"simulated-state": str(state), "events": "off"}))
    try:
        found = [samples(c) for _ in range(2)][-1]
    finally:
        c.close()
    assert value(found, "DCGM_FI_PROF_NVLINK_TX_BYTES", gpu="0") == pytest.approx(36.0 * MIB)
    assert not {n for n in names(found, "0") if n.startswith("DCGM_FI_PROF_NVLINK_L")}


def test_not_supported_is_per_gpu_said_once_and_not_asked_again(
    state: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An H100 on R550 next to a B200 on... the same node: each GPU keeps what it can answer."""
    write(state, [b200(0), h100(1)], driver="550.90.07")
    fake = CountingNvml(state)
    c = GpuCollector(CollectorContext(hostname="p6-001", nvml=fake, options={"events": "off"}))
    caplog.set_level(logging.INFO, logger="fmdiag.exporter.gpu")
    try:
        found = [samples(c) for _ in range(3)][-1]
    finally:
        c.close()
    # R550: no recovery action and no 269-271 on either GPU; fields 74/76 exist on every driver.
    for gpu in ("0", "1"):
        assert "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION" not in names(found, gpu)
        assert "DCGM_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN_NS" not in names(found, gpu)
    assert value(found, "DCGM_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP_NS", gpu="1") == 5_000
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_TX_BYTES", gpu="0") == 18 * 10**12 + 5
    assert "DCGM_FI_DEV_NVLINK_COUNT_TX_BYTES" not in names(found, "1"), "Hopper has no NVLink 5 counters"
    said = [r.getMessage() for r in caplog.records if "NVML NOT_SUPPORTED" in r.getMessage()]
    assert len(said) == 2, "one line per GPU, at the first scrape only"
    gpu0, gpu1 = sorted(said)
    assert gpu0.startswith(
        "GPU 0 does not support DCGM_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN_NS"
    )
    assert "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION" in gpu0 and "NVLINK" not in gpu0
    assert "DCGM_FI_DEV_NVLINK_COUNT_TX_BYTES, " in gpu1 and gpu1.endswith("; not asked again")
    # The later calls left the unsupported fields out: per GPU, three calls, the last two smaller.
    calls = [ids for ids in fake.asked if ids != [pynvml.NVML_FI_DEV_MEMORY_TEMP]]  # one call per GPU
    per_call = [len(ids) for ids in calls]
    assert len(per_call) == 6
    first_h100, later_h100 = per_call[1], per_call[5]
    assert later_h100 == 2 and first_h100 > 16 * 18, per_call  # only fields 74 and 76 remain
    nvlink = pynvml.NVML_FI_DEV_NVLINK_COUNT_XMIT_BYTES
    assert (nvlink, 17) in calls[4] and (nvlink, 0) not in calls[5]


def test_field_values_answer_like_pynvml(state: Path) -> None:
    """Per-entry results, not exceptions: pynvml raises only for the call as a whole."""
    write(state, [b200(0), h100(1)], driver="580.65.06")
    nvml = FakeNvml(state)
    nvml.nvmlInit()
    try:
        b, h = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
        fid = pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_BYTES
        out = nvml.nvmlDeviceGetFieldValues(b, [(fid, 0), (fid, 17), (fid, 18), pynvml.NVML_FI_MAX])
        assert [v.nvmlReturn for v in out] == [
            pynvml.NVML_SUCCESS,
            pynvml.NVML_SUCCESS,
            pynvml.NVML_ERROR_INVALID_ARGUMENT,  # no link 18
            pynvml.NVML_ERROR_INVALID_ARGUMENT,  # no such field
        ]
        assert out[0].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        assert (out[0].fieldId, out[0].scopeId, out[0].value.ullVal) == (fid, 0, 9 * 10**12 // 18)
        on_h100 = nvml.nvmlDeviceGetFieldValues(h, [(fid, 0), pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION])
        assert on_h100[0].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
        assert on_h100[1].nvmlReturn == pynvml.NVML_SUCCESS and on_h100[1].value.uiVal == 0
        assert (
            nvml.nvmlDeviceGetP2PStatus(b, h, pynvml.NVML_P2P_CAPS_INDEX_NVLINK) == pynvml.NVML_P2P_STATUS_OK
        )
        with pytest.raises(pynvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceGetP2PStatus(b, b, pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
        write(state, [b200(0, lost=True), h100(1)])
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            nvml.nvmlDeviceGetFieldValues(b, [fid])
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            nvml.nvmlDeviceGetP2PStatus(h, b, pynvml.NVML_P2P_CAPS_INDEX_NVLINK)
    finally:
        nvml.nvmlShutdown()


def test_a_gpu_lost_during_the_field_read_is_reported_and_the_others_served(state: Path) -> None:
    write(state, [b200(0), b200(1)])
    c = GpuCollector(CollectorContext(options={"simulated-state": str(state), "events": "off"}))
    try:
        samples(c)
        write(state, [b200(0), b200(1)], driver="580.65.06")
        nvml = c.nvml
        real = nvml.nvmlDeviceGetFieldValues

        def lose_gpu_1(handle: Any, ids: Sequence[Any]) -> Any:
            if nvml.nvmlDeviceGetIndex(handle) == 1:
                raise pynvml.NVMLError_GpuIsLost()
            return real(handle, ids)

        nvml.nvmlDeviceGetFieldValues = lose_gpu_1
        found = samples(c)
    finally:
        c.close()
    assert value(found, "fmdiag_gpu_lost", gpu="1") == 1
    assert value(found, "fmdiag_gpu_lost", gpu="0") == 0
    assert value(found, "DCGM_FI_DEV_NVLINK_COUNT_RX_BYTES", gpu="0") == 9 * 10**12


def test_every_new_catalogued_gpu_name_is_served_through_the_stand_in(state: Path) -> None:
    """The other direction of the catalog contract for what this release adds: each NVML 13,
    Blackwell GPM and dcgm-exporter 4.x name the catalog lists comes out of the collector."""
    from fmdiag import catalog

    prefixes = (
        "DCGM_FI_DEV_NVLINK_COUNT_",
        "DCGM_FI_DEV_CLOCKS_EVENT_REASON_",
        "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION",
        "DCGM_FI_PROF_C2C_",
        "DCGM_FI_PROF_NVLINK_L",
        "DCGM_EXP_",
    )
    wanted = {m.name for m in catalog.by_subsystem("gpu") if m.name.startswith(prefixes)}
    assert len(wanted) > 60
    write(state, [b200(0, name="NVIDIA GB200"), b200(1, clocks_event_reasons=0x40)])
    options = {"simulated-state": str(state), "nvlink-links": "on", "p2p-status": "on"}
    c = GpuCollector(CollectorContext(options=options))
    try:
        served = {n for _ in range(2) for (n, _) in samples(c)}
    finally:
        c.close()
    assert wanted - served == set()
