"""The NVML stand-in answers like the pynvml module, with pynvml's types and errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest

from fmdiag.exporters import gpu_state_file, nvml_stand_in
from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState
from fmdiag.exporters.nvml_stand_in import FakeNvml

MIB = 1 << 20


def gpu(i: int, **changes: object) -> GpuState:
    g = GpuState(
        index=i,
        uuid=f"GPU-{i:08d}-1111-2222-3333-444444444444",
        pci_bus_id=f"00000000:{0x53 + 0x11 * i:02X}:00.0",
        sm_clock_mhz=1980 - i,
        mem_clock_mhz=2619,
        temperature_c=40 + i,
        memory_temperature_c=50 + i,
        power_mw=300_000 + i,
        energy_mj=10**6 + i,
        util_gpu_pct=90,
        util_mem_pct=40,
        fb_used_mib=60_000,
        clocks_event_reasons=0x40 if i == 1 else 0,
        sm_active=0.75,
        sm_occupancy=0.5,
        tensor_active=0.6,
        dram_active=0.3,
        pcie_tx_bytes_per_s=2.0 * MIB,
        nvlink_rx_bytes_per_s=180.0 * MIB,
        ecc_sbe_volatile=3,
        ecc_dbe_aggregate=1,
        remapped_rows_correctable=2,
        remap_failure=i == 1,
        power_violation_us=1500,
        thermal_violation_us=250,
        pcie_replay_count=7,
        processes=[GpuProcess(41000 + i, 70 << 30)],
        numa_node=i // 4,
    )
    for key, value in changes.items():
        setattr(g, key, value)
    return g


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "nvml" / "state.json"
    gpu_state_file.write(path, [gpu(0), gpu(1), gpu(2, lost=True)], time_s=1000.0, driver_version="550.54.15")
    return path


@pytest.fixture
def nvml(state_file: Path) -> Iterator[FakeNvml]:
    fake = FakeNvml(state_file, not_supported_by_gpu={1: ["nvmlDeviceGetPcieReplayCounter"]})
    fake.nvmlInit()
    yield fake


def test_calls_before_init_and_after_shutdown(state_file: Path) -> None:
    nvml = FakeNvml(state_file)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    nvml.nvmlInit()
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 3  # still one reference
    nvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlShutdown()


def test_device_values(nvml: FakeNvml) -> None:
    assert nvml.nvmlSystemGetDriverVersion() == "550.54.15"
    assert nvml.nvmlDeviceGetCount() == 3
    h = nvml.nvmlDeviceGetHandleByIndex(1)
    g = gpu(1)
    assert nvml.nvmlDeviceGetIndex(h) == 1
    assert nvml.nvmlDeviceGetUUID(h) == g.uuid
    assert nvml.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    pci = nvml.nvmlDeviceGetPciInfo_v3(h)
    assert isinstance(pci, pynvml.nvmlPciInfo_t)
    assert (pci.busId, pci.busIdLegacy, pci.bus) == (g.pci_bus_id, "0000:64:00.0", 0x64)
    assert pci.pciDeviceId == 0x233010DE
    assert nvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == g.sm_clock_mhz
    assert nvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == g.mem_clock_mhz
    assert nvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == g.max_sm_clock_mhz
    assert nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == g.temperature_c
    assert nvml.nvmlDeviceGetPowerUsage(h) == g.power_mw
    assert nvml.nvmlDeviceGetPowerManagementLimit(h) == g.power_limit_mw
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == g.energy_mj
    util = nvml.nvmlDeviceGetUtilizationRates(h)
    assert (util.gpu, util.memory) == (90, 40)
    mem = nvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert (mem.total, mem.reserved, mem.used) == (
        g.fb_total_mib * MIB,
        g.fb_reserved_mib * MIB,
        g.fb_used_mib * MIB,
    )
    assert mem.free == mem.total - mem.reserved - mem.used
    legacy = nvml.nvmlDeviceGetMemoryInfo(h)
    assert legacy.used == mem.used + mem.reserved and legacy.free == mem.free
    assert nvml.nvmlDeviceGetCurrentClocksEventReasons(h) == pynvml.nvmlClocksEventReasonHwThermalSlowdown
    assert nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h) == 0x40
    assert (
        nvml.nvmlDeviceGetTotalEccErrors(h, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC)
        == 3
    )
    assert (
        nvml.nvmlDeviceGetTotalEccErrors(
            h, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC
        )
        == 1
    )
    assert nvml.nvmlDeviceGetRemappedRows(h) == (2, 0, 0, 1)
    viol = nvml.nvmlDeviceGetViolationStatus(h, pynvml.NVML_PERF_POLICY_POWER)
    assert viol.violationTime == 1_500_000 and viol.referenceTime == 1000 * 10**6
    assert nvml.nvmlDeviceGetViolationStatus(h, pynvml.NVML_PERF_POLICY_THERMAL).violationTime == 250_000
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(h)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(41001, 70 << 30)]
    assert nvml.nvmlDeviceGetNumaNodeId(h) == 0
    h0 = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetPcieReplayCounter(h0) == 7


def test_lookup_by_uuid_and_bus_id(nvml: FakeNvml) -> None:
    h = nvml.nvmlDeviceGetHandleByUUID(gpu(1).uuid)
    assert nvml.nvmlDeviceGetIndex(h) == 1
    assert nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByPciBusId("0000:64:00.0")) == 1  # legacy form
    assert nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByPciBusId("00000000:53:00.0")) == 0
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID("GPU-nope")
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(9)


def test_lost_gpu_and_not_supported(nvml: FakeNvml, state_file: Path) -> None:
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByUUID(gpu(2).uuid)
    h1 = nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetPcieReplayCounter(h1)  # not supported on GPU 1 only
    # A GPU that falls off the bus after its handle was taken: every call says so.
    gpu_state_file.write(state_file, [gpu(0), gpu(1, lost=True), gpu(2, lost=True)], time_s=1001.0)
    for call in (nvml.nvmlDeviceGetPowerUsage, nvml.nvmlDeviceGetUUID, nvml.nvmlDeviceGetName):
        with pytest.raises(pynvml.NVMLError_GpuIsLost):
            call(h1)
    assert nvml.nvmlDeviceGetPowerUsage(nvml.nvmlDeviceGetHandleByIndex(0)) == 300_000
    # The errors are pynvml's: code written against pynvml catches them by value too.
    try:
        nvml.nvmlDeviceGetTemperature(h1, pynvml.NVML_TEMPERATURE_GPU)
    except pynvml.NVMLError as err:
        assert err.value == pynvml.NVML_ERROR_GPU_IS_LOST
        assert str(err) == "GPU is lost"


def test_live_updates_are_seen(nvml: FakeNvml, state_file: Path) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 10**6
    gpu_state_file.write(state_file, [gpu(0, energy_mj=2 * 10**6), gpu(1)], time_s=1001.0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(h) == 2 * 10**6
    assert nvml.nvmlDeviceGetCount() == 2


def test_field_values(nvml: FakeNvml) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(1)
    ids = [
        pynvml.NVML_FI_DEV_MEMORY_TEMP,
        pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION,
        (pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, 0),
        pynvml.NVML_FI_DEV_PERF_POLICY_POWER,
        pynvml.NVML_FI_MAX + 5,
    ]
    values = nvml.nvmlDeviceGetFieldValues(h, ids)
    assert len(values) == 5
    assert values[0].nvmlReturn == pynvml.NVML_SUCCESS
    assert values[0].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT and values[0].value.uiVal == 51
    assert values[1].value.ullVal == 10**6 + 1
    assert values[2].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    assert values[3].value.ullVal == 1_500_000
    assert values[4].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert values[0].timestamp == 1000 * 10**6


def test_xid_events(nvml: FakeNvml, state_file: Path) -> None:
    h0, h1 = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    es = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(h1, pynvml.nvmlEventTypeXidCriticalError, es)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(es, 5)
    gpu_state_file.write(state_file, [gpu(0, xid_events=[13]), gpu(1, xid_events=[48, 79])], time_s=1001.0)
    got = []
    for _ in range(2):
        data = nvml.nvmlEventSetWait_v2(es, 5)
        assert data.eventType == pynvml.nvmlEventTypeXidCriticalError
        assert data.gpuInstanceId == nvml_stand_in.NO_INSTANCE
        got.append((nvml.nvmlDeviceGetIndex(data.device), data.eventData))
    assert got == [(1, 48), (1, 79)]  # GPU 0 was not registered
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait(es, 5)  # each XID is delivered once
    # Registering after an XID was raised does not replay it.
    nvml.nvmlDeviceRegisterEvents(h0, pynvml.nvmlEventTypeXidCriticalError, es)
    with pytest.raises(pynvml.NVMLError_Timeout):
        nvml.nvmlEventSetWait_v2(es, 5)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceRegisterEvents(h0, pynvml.nvmlEventTypeGpuRecoveryAction, es)
    nvml.nvmlEventSetFree(es)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlEventSetWait_v2(es, 5)


def test_waiting_thread_receives_an_xid_written_later(nvml: FakeNvml, state_file: Path) -> None:
    es = nvml.nvmlEventSetCreate()
    nvml.nvmlDeviceRegisterEvents(
        nvml.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, es
    )
    result: list[object] = []

    def wait() -> None:
        try:
            result.append(nvml.nvmlEventSetWait_v2(es, 30_000).eventData)
        except pynvml.NVMLError as err:
            result.append(err)

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.05)
    gpu_state_file.write(state_file, [gpu(0, xid_events=[94]), gpu(1)], time_s=1002.0)
    t.join(timeout=30)
    assert result == [94]


def test_gpm_metrics(nvml: FakeNvml, state_file: Path) -> None:
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 1
    s1, s2 = nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()
    nvml.nvmlGpmSampleGet(h, s1)
    gpu_state_file.write(state_file, [gpu(0, sm_active=0.25), gpu(1)], time_s=1001.0)
    nvml.nvmlGpmSampleGet(h, s2)
    mg = pynvml.c_nvmlGpmMetricsGet_t()
    mg.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    wanted = [
        pynvml.NVML_GPM_METRIC_SM_UTIL,
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
        pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_L17_RX_PER_SEC,
        pynvml.NVML_GPM_METRIC_NVLINK_L20_RX_PER_SEC,
        pynvml.NVML_GPM_METRIC_FP64_UTIL,
    ]
    mg.numMetrics = len(wanted)
    mg.sample1, mg.sample2 = s1, s2
    for i, mid in enumerate(wanted):
        mg.metrics[i].metricId = mid
    nvml.nvmlGpmMetricsGet(mg)
    values = [mg.metrics[i].value for i in range(len(wanted))]
    assert values[:7] == pytest.approx([25.0, 50.0, 60.0, 30.0, 2.0, 180.0, 10.0])
    assert [mg.metrics[i].nvmlReturn for i in (7, 8)] == [pynvml.NVML_ERROR_NOT_SUPPORTED] * 2
    fresh = nvml.nvmlGpmSampleAlloc()
    mg.sample1 = fresh
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlGpmMetricsGet(mg)  # a sample never taken
    mg.version = 7
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        nvml.nvmlGpmMetricsGet(mg)
    for s in (s1, s2, fresh):
        nvml.nvmlGpmSampleFree(s)


def test_gpm_not_on_older_gpus(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    gpu_state_file.write(path, [gpu(0, name="NVIDIA A100-SXM4-80GB")], time_s=1.0)
    nvml = FakeNvml(path)
    nvml.nvmlInit()
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlGpmQueryDeviceSupport(h).isSupportedDevice == 0
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlGpmSampleGet(h, nvml.nvmlGpmSampleAlloc())
    assert nvml.nvmlDeviceGetPciInfo(h).pciDeviceId == 0x20B210DE


def test_missing_library_and_driver(tmp_path: Path, state_file: Path) -> None:
    nvml = FakeNvml(state_file, library_missing=True)
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_DriverNotLoaded):
        FakeNvml(tmp_path / "absent.json").nvmlInit()


def test_unimplemented_calls_and_pynvml_untouched(state_file: Path) -> None:
    real_count = pynvml.nvmlDeviceGetCount
    nvml = FakeNvml(state_file)
    assert nvml.nvmlStructToFriendlyObject is pynvml.nvmlStructToFriendlyObject  # a helper, not a call
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetNvLinkState(None, 0)  # not modelled, but still behind nvmlInit
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetNvLinkState(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    # Names pynvml lacks are missing here too, so feature tests with getattr() answer the same.
    assert getattr(nvml, "nvmlNoSuchCall", None) is None
    with pytest.raises(AttributeError):
        nvml.not_an_nvml_name  # noqa: B018
    # The stand-in never replaces the module's functions.
    assert pynvml.nvmlDeviceGetCount is real_count
    with pytest.raises(pynvml.NVMLError):  # the real library: not on this machine
        pynvml.nvmlInit()


def test_not_supported_everywhere_or_on_one_gpu(state_file: Path) -> None:
    nvml = FakeNvml(
        state_file,
        not_supported=["nvmlDeviceGetTotalEnergyConsumption"],
        not_supported_by_gpu={0: ["nvmlDeviceGetPowerUsage"]},
    )
    nvml.nvmlInit()
    h0, h1 = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTotalEnergyConsumption(h1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetPowerUsage(h0)
    assert nvml.nvmlDeviceGetPowerUsage(h1) == 300_001
