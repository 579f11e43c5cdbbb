"""A stand-in for NVML that behaves like ``pynvml`` (nvidia-ml-py) and serves simulated GPUs.

No test machine has a GPU, so the GPU collector is tested against this fake. It keeps
pynvml's function names and signatures, returns pynvml's own ctypes structures
(``nvmlPciInfo_t``, ``c_nvmlMemory_v2_t``, ``c_nvmlFieldValue_t`` arrays, ...) and raises
pynvml's own exception classes (``NVMLError_GpuIsLost``, ``NVMLError_NotSupported``,
``NVMLError_Timeout``...), so code written against pynvml runs unchanged.

Values come from the GPU state file (:mod:`fmdiag.exporters.gpu_state_file`), re-read whenever it
changes, so a ``--live`` simulator advancing it is seen by the next call. Failure modes:

* a GPU with ``lost`` set answers ``NVMLError_GpuIsLost`` to every call, handle lookup
  included (nvidia-smi's "Unable to determine the device handle ... GPU is lost");
* calls named in ``not_supported`` (for all GPUs, or per GPU index) raise
  ``NVMLError_NotSupported``;
* ``library_missing`` makes ``nvmlInit`` raise ``NVMLError_LibraryNotFound`` (a node without
  the driver's libnvidia-ml.so); a missing state file makes it raise
  ``NVMLError_DriverNotLoaded``;
* MIG: a GPU without ``mig_capable`` answers ``NVMLError_NotSupported`` to
  ``nvmlDeviceGetMigMode``; one with MIG enabled hands out MIG device handles for the
  ``mig_devices`` it lists (an empty slot is ``NVMLError_NotFound``), which answer the MIG
  calls (UUID, name, GPU and compute instance ids, parent handle, GPU instance info) and
  ``NVMLError_NotSupported`` to the per-GPU queries;
* field values answer per entry, as NVML does (the call itself succeeds): the NVML 13 fields
  (recovery action 230, clock-event durations 269-271) NOT_SUPPORTED on a driver before R575
  (``driver_version``), the NVLink 5 counters (201-250, per link: ``scopeId`` 0-17, beyond it
  INVALID_ARGUMENT) NOT_SUPPORTED on anything but Blackwell, an unknown field NOT_SUPPORTED;
  GPM's C2C metrics answer only on Grace-coupled GPUs (GH200, GB200); ``nvmlDeviceGetP2PStatus``
  gives the worse end's ``nvlink_p2p_status`` over NVLink (GPU_NOT_SUPPORTED for a PCIe card);
* every call before ``nvmlInit`` (or after the last ``nvmlShutdown``) raises
  ``NVMLError_Uninitialized``; pynvml functions this fake does not implement raise
  ``NVMLError_FunctionNotFound``, as a driver lacking the entry point would.

It is handed to the GPU collector in place of the ``pynvml`` module (``CollectorContext.nvml``,
or ``--collector.gpu.simulated-state=FILE``); nothing is patched, so the real pynvml stays
untouched for the rest of the process.
"""

from __future__ import annotations

import ctypes
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.gpu_state_file import MIG_MAX_DEVICES, GpuState, MigDeviceState

MIB = 1 << 20
#: NVLink links of an H100 SXM; GPM per-link metrics beyond them are not supported.
NVLINK_LINKS = 18
#: ``gpuInstanceId``/``computeInstanceId`` when MIG is off.
NO_INSTANCE = 0xFFFFFFFF
#: PCI device ids (upper half of ``pciDeviceId``) by marketing-name fragment; vendor 0x10DE.
_PCI_DEVICE_IDS = (("H200", 0x2335), ("H100 PCIe", 0x2331), ("H100", 0x2330), ("A100", 0x20B2))
_GPM_FAMILIES = ("H100", "H200", "H800", "GH200", "B100", "B200", "B300", "GB200", "GB300")
#: NVLink 5 GPUs: they answer the NVLINK_COUNT_* fields (201-250); Hopper answers NOT_SUPPORTED.
_NVLINK5_FAMILIES = ("B100", "B200", "B300", "GB200", "GB300")
#: Grace-coupled GPUs: they answer GPM's C2C metrics.
_C2C_FAMILIES = ("GH200", "GB200", "GB300")
#: Driver branch from which NVML answers the recovery action (230) and the ns clock-event fields
#: (269-271); an older driver answers NOT_SUPPORTED for them, as for any field it does not know.
NVML13_DRIVER = 575
#: C2C payload as a share of all C2C bytes (headers not modelled further).
C2C_DATA_SHARE = 0.9
_SUPPORTED_EVENTS = (
    pynvml.nvmlEventTypeSingleBitEccError
    | pynvml.nvmlEventTypeDoubleBitEccError
    | pynvml.nvmlEventTypePState
    | pynvml.nvmlEventTypeXidCriticalError
    | pynvml.nvmlEventTypeClock
)
#: pynvml helpers that are not NVML calls: the fake hands out pynvml's own.
_NOT_CALLS = frozenset({"nvmlExceptionClass", "nvmlStructToFriendlyObject", "nvmlFriendlyObjectToStruct"})


def _err(cls_name: str) -> Exception:
    """An instance of pynvml's exception class ``NVMLError_<cls_name>``."""
    cls: type[Exception] = getattr(pynvml, f"NVMLError_{cls_name}")
    return cls()


def _address(obj: Any) -> int | None:
    try:
        value = ctypes.cast(obj, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return None
    return int(value) if value is not None else None


@dataclass
class _EventSet:
    #: GPU index -> registered nvmlEventType* mask
    masks: dict[int, int] = field(default_factory=dict)
    #: (snapshot time, GPU index, position in xid_events) already delivered or predating registration
    seen: set[tuple[float, int, int]] = field(default_factory=set)


@dataclass
class _GpmSample:
    index: int | None = None
    time_s: float = 0.0
    gpu: GpuState | None = None


def _gpm_value(gpu: GpuState, metric_id: int) -> float | None:
    """GPM metric ``metric_id`` for ``gpu`` (percentages 0-100, bandwidths in MiB/s)."""
    fixed: dict[int, float] = {
        pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL: float(gpu.util_gpu_pct),
        pynvml.NVML_GPM_METRIC_SM_UTIL: gpu.sm_active * 100.0,
        pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: gpu.sm_occupancy * 100.0,
        pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: gpu.tensor_active * 100.0,
        pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: gpu.dram_active * 100.0,
        pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC: gpu.pcie_tx_bytes_per_s / MIB,
        pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC: gpu.pcie_rx_bytes_per_s / MIB,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC: gpu.nvlink_tx_bytes_per_s / MIB,
        pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC: gpu.nvlink_rx_bytes_per_s / MIB,
    }
    if metric_id in fixed:
        return fixed[metric_id]
    if any(f in gpu.name for f in _C2C_FAMILIES):
        c2c = {
            pynvml.NVML_GPM_METRIC_C2C_TOTAL_TX_PER_SEC: gpu.c2c_tx_bytes_per_s / MIB,
            pynvml.NVML_GPM_METRIC_C2C_TOTAL_RX_PER_SEC: gpu.c2c_rx_bytes_per_s / MIB,
            pynvml.NVML_GPM_METRIC_C2C_DATA_TX_PER_SEC: gpu.c2c_tx_bytes_per_s * C2C_DATA_SHARE / MIB,
            pynvml.NVML_GPM_METRIC_C2C_DATA_RX_PER_SEC: gpu.c2c_rx_bytes_per_s * C2C_DATA_SHARE / MIB,
        }
        if metric_id in c2c:
            return c2c[metric_id]
    for link in range(NVLINK_LINKS):
        if metric_id == getattr(pynvml, f"NVML_GPM_METRIC_NVLINK_L{link}_RX_PER_SEC", None):
            return gpu.nvlink_rx_bytes_per_s / NVLINK_LINKS / MIB
        if metric_id == getattr(pynvml, f"NVML_GPM_METRIC_NVLINK_L{link}_TX_PER_SEC", None):
            return gpu.nvlink_tx_bytes_per_s / NVLINK_LINKS / MIB
    return None


def _nvlink5_totals(gpu: GpuState) -> dict[int, int]:
    """NVLINK_COUNT_* field id -> the GPU's total over all links."""
    return {
        pynvml.NVML_FI_DEV_NVLINK_COUNT_XMIT_BYTES: gpu.nvlink5_tx_bytes,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_BYTES: gpu.nvlink5_rx_bytes,
        # 256-byte packets, the NVLink 5 maximum payload, so the counts stay consistent.
        pynvml.NVML_FI_DEV_NVLINK_COUNT_XMIT_PACKETS: gpu.nvlink5_tx_bytes // 256,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_PACKETS: gpu.nvlink5_rx_bytes // 256,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_SYMBOL_ERRORS: gpu.nvlink5_symbol_errors,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_EFFECTIVE_ERRORS: gpu.nvlink5_effective_errors,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_EVENTS: gpu.nvlink5_recovery_events,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_SUCCESSFUL_EVENTS: gpu.nvlink5_recovery_events
        - gpu.nvlink5_recovery_failed_events,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_FAILED_EVENTS: gpu.nvlink5_recovery_failed_events,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_VL15_DROPPED: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_MALFORMED_PACKET_ERRORS: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_BUFFER_OVERRUN_ERRORS: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_ERRORS: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_REMOTE_ERRORS: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_RCV_GENERAL_ERRORS: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_LOCAL_LINK_INTEGRITY_ERRORS: 0,
        pynvml.NVML_FI_DEV_NVLINK_COUNT_XMIT_DISCARDS: 0,
    }


def _field_value(gpu: GpuState, field_id: int, scope: int, driver: int) -> tuple[int, int | float] | int:
    """(NVML_VALUE_TYPE_*, value) of field ``field_id`` at ``scope``, or the NVML_ERROR_* it answers.

    NVLink 5 counters are per link (``scope`` is the link, 0-17): each link holds an equal share
    of the GPU's total, the remainder on link 0, so summing the links gives the total back.
    """
    ull, uint = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    nvlink5 = _nvlink5_totals(gpu)
    if field_id in nvlink5:
        if not any(f in gpu.name for f in _NVLINK5_FAMILIES):
            return int(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= scope < NVLINK_LINKS:
            return int(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        total = nvlink5[field_id]
        share = total // NVLINK_LINKS + (total % NVLINK_LINKS if scope == 0 else 0)
        return (ull, share)
    newer: dict[int, tuple[int, int]] = {
        pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION: (uint, gpu.recovery_action),
        pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN: (ull, gpu.sw_thermal_slowdown_ns),
        pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN: (ull, gpu.hw_thermal_slowdown_ns),
        pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN: (ull, gpu.hw_power_brake_slowdown_ns),
    }
    if field_id in newer:
        return newer[field_id] if driver >= NVML13_DRIVER else int(pynvml.NVML_ERROR_NOT_SUPPORTED)
    table: dict[int, tuple[int, int]] = {
        pynvml.NVML_FI_DEV_MEMORY_TEMP: (uint, gpu.memory_temperature_c),
        pynvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION: (ull, gpu.energy_mj),
        pynvml.NVML_FI_DEV_POWER_INSTANT: (uint, gpu.power_mw),
        pynvml.NVML_FI_DEV_POWER_AVERAGE: (uint, gpu.power_mw),
        pynvml.NVML_FI_DEV_ECC_SBE_VOL_TOTAL: (ull, gpu.ecc_sbe_volatile),
        pynvml.NVML_FI_DEV_ECC_DBE_VOL_TOTAL: (ull, gpu.ecc_dbe_volatile),
        pynvml.NVML_FI_DEV_ECC_SBE_AGG_TOTAL: (ull, gpu.ecc_sbe_aggregate),
        pynvml.NVML_FI_DEV_ECC_DBE_AGG_TOTAL: (ull, gpu.ecc_dbe_aggregate),
        pynvml.NVML_FI_DEV_PCIE_REPLAY_COUNTER: (ull, gpu.pcie_replay_count),
        pynvml.NVML_FI_DEV_REMAPPED_COR: (uint, gpu.remapped_rows_correctable),
        pynvml.NVML_FI_DEV_REMAPPED_UNC: (uint, gpu.remapped_rows_uncorrectable),
        pynvml.NVML_FI_DEV_REMAPPED_PENDING: (uint, 0),
        pynvml.NVML_FI_DEV_REMAPPED_FAILURE: (uint, int(gpu.remap_failure)),
        # Violation counters are in ns, like nvmlDeviceGetViolationStatus's violationTime; 74 and
        # 76 are also NVML 13's CLOCKS_EVENT_REASON_SW_POWER_CAP and _SYNC_BOOST (ns).
        pynvml.NVML_FI_DEV_PERF_POLICY_POWER: (ull, gpu.power_violation_us * 1000),
        pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL: (ull, gpu.thermal_violation_us * 1000),
        pynvml.NVML_FI_DEV_PERF_POLICY_SYNC_BOOST: (ull, 0),
    }
    return table.get(field_id, int(pynvml.NVML_ERROR_NOT_SUPPORTED))


def _driver_branch(version: str) -> int:
    """``"580.65.06"`` -> 580 (0 when the version is not numbered that way)."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


class FakeNvml:
    """The NVML calls, as methods named and shaped like pynvml's module functions."""

    def __init__(
        self,
        state_path: Path,
        *,
        not_supported: Iterable[str] = (),
        not_supported_by_gpu: Mapping[int, Iterable[str]] | None = None,
        library_missing: bool = False,
        poll_interval_s: float = 0.01,
    ) -> None:
        self.state_path = Path(state_path)
        self.not_supported = frozenset(not_supported)
        self.not_supported_by_gpu = {i: frozenset(c) for i, c in (not_supported_by_gpu or {}).items()}
        self.library_missing = library_missing
        self.poll_interval_s = poll_interval_s
        self._lock = threading.RLock()
        self._refcount = 0
        self._cache: tuple[bytes, gpu_state_file.GpuStateDoc] | None = None
        #: address -> the buffer behind an opaque handle; freed samples and event sets drop theirs.
        self._buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self._handles: dict[int, Any] = {}  # GPU index -> c_nvmlDevice_t
        self._handle_index: dict[int, int] = {}  # handle address -> GPU index
        #: (GPU index, MIG slot) -> its c_nvmlDevice_t, and the reverse by address.
        self._mig_handles: dict[tuple[int, int], Any] = {}
        self._mig_handle_slot: dict[int, tuple[int, int]] = {}
        #: address of a c_nvmlGpuInstance_t -> (GPU index, GPU instance id)
        self._gpu_instances: dict[int, tuple[int, int]] = {}
        self._event_sets: dict[int, _EventSet] = {}
        self._samples: dict[int, _GpmSample] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def _opaque(self, ptr_type: Any) -> tuple[Any, int]:
        """A fresh opaque handle of pynvml's pointer type ``ptr_type``, and its address."""
        buf = ctypes.create_string_buffer(8)
        self._buffers[ctypes.addressof(buf)] = buf
        ptr = ctypes.cast(buf, ptr_type)
        return ptr, ctypes.addressof(buf)

    def _check_init(self) -> None:
        if self._refcount <= 0:
            raise _err("Uninitialized")

    def simulated_hostname(self) -> str:
        """The simulated node's host name from the state file ("" when it names none).

        The exporter serving a simulated node runs on another machine; dcgm-exporter's
        host label (``hostname``, or ``Hostname``) must still name the node the GPUs belong to.
        """
        try:
            return self._doc().hostname
        except (pynvml.NVMLError, gpu_state_file.GpuStateError):
            return ""

    def _doc(self) -> gpu_state_file.GpuStateDoc:
        try:
            data = self.state_path.read_bytes()
        except FileNotFoundError:
            raise _err("DriverNotLoaded") from None
        with self._lock:
            if self._cache is not None and self._cache[0] == data:
                return self._cache[1]
            doc = gpu_state_file.loads(data.decode("utf-8"), str(self.state_path))
            self._cache = (data, doc)
            return doc

    def _gpus(self) -> dict[int, GpuState]:
        return {g.index: g for g in self._doc().gpus}

    def _handle(self, index: int) -> Any:
        with self._lock:
            if index not in self._handles:
                ptr, addr = self._opaque(pynvml.c_nvmlDevice_t)
                self._handles[index] = ptr
                self._handle_index[addr] = index
            return self._handles[index]

    def _index(self, handle: Any) -> int:
        addr = _address(handle) if isinstance(handle, pynvml.c_nvmlDevice_t) else None
        index = self._handle_index.get(addr) if addr is not None else None
        if index is None:
            raise _err("InvalidArgument")
        return index

    def _device(self, handle: Any, call: str) -> GpuState:
        """The GPU behind ``handle``, after the checks every NVML device call makes.

        A MIG device handle is accepted only by the MIG calls (which use :meth:`_mig`); every
        other query on one answers NOT_SUPPORTED, as clocks, power and thermals do on MIG
        devices in real NVML (they are the parent GPU's).
        """
        self._check_init()
        if self._mig_slot(handle) is not None:
            self._mig(handle, call)  # a lost parent or a destroyed instance answers first
            raise _err("NotSupported")
        index = self._index(handle)
        gpu = self._gpus().get(index)
        if gpu is None or gpu.lost:
            raise _err("GpuIsLost")
        if call in self.not_supported or call in self.not_supported_by_gpu.get(index, ()):
            raise _err("NotSupported")
        return gpu

    # -- library -------------------------------------------------------------------------------

    def nvmlInitWithFlags(self, flags: int) -> None:
        if self.library_missing:
            raise _err("LibraryNotFound")
        if not self.state_path.is_file():
            raise _err("DriverNotLoaded")
        with self._lock:
            self._refcount += 1

    def nvmlInit(self) -> None:
        self.nvmlInitWithFlags(0)

    def nvmlShutdown(self) -> None:
        with self._lock:
            self._check_init()
            self._refcount -= 1

    def nvmlErrorString(self, result: int) -> str:
        known: dict[int, str] = pynvml.NVMLError._errcode_to_string
        if result in known:
            return known[result]
        for name in dir(pynvml):
            if name.startswith("NVML_ERROR_") and getattr(pynvml, name) == result:
                return name.removeprefix("NVML_ERROR_").replace("_", " ").capitalize()
        return "Unknown Error"

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return self._doc().driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._check_init()
        return f"12.{self._doc().driver_version}"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check_init()
        return self._doc().cuda_driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.nvmlSystemGetCudaDriverVersion()

    # -- enumeration ---------------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return len(self._doc().gpus)

    def _lookup(self, gpu: GpuState | None, missing: str) -> Any:
        if gpu is None:
            raise _err(missing)
        if gpu.lost:
            raise _err("GpuIsLost")
        return self._handle(gpu.index)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check_init()
        return self._lookup(self._gpus().get(index), "InvalidArgument")

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        self._check_init()
        want = uuid.decode() if isinstance(uuid, bytes) else uuid
        for g in self._doc().gpus:
            for m in g.mig_devices if g.mig_enabled else ():
                if m.uuid == want:  # NVML hands out MIG device handles by their UUID too
                    if g.lost:
                        raise _err("GpuIsLost")
                    return self._mig_handle(g.index, m.index)
        return self._lookup(next((g for g in self._doc().gpus if g.uuid == want), None), "NotFound")

    def nvmlDeviceGetHandleByPciBusId(self, pciBusId: str | bytes) -> Any:
        self._check_init()
        want = (pciBusId.decode() if isinstance(pciBusId, bytes) else pciBusId).lower()
        found = None
        for g in self._doc().gpus:
            bus = g.pci_bus_id.lower()
            if want in (bus, bus[4:]):  # NVML also accepts the legacy 4-digit domain form
                found = g
        return self._lookup(found, "NotFound")

    # -- identity ------------------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetIndex").index

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetMinorNumber").index

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        if self._mig_slot(handle) is not None:
            return self._mig(handle, "nvmlDeviceGetUUID")[1].uuid
        return self._device(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        if self._mig_slot(handle) is not None:
            # NVML names a MIG device after its parent and profile: "NVIDIA H100 80GB HBM3 MIG 1g.10gb".
            parent, mig = self._mig(handle, "nvmlDeviceGetName")
            return f"{parent.name} MIG {mig.profile}"
        return self._device(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetNumaNodeId").numa_node

    def nvmlDeviceGetPciInfo_v3(self, handle: Any) -> Any:
        gpu = self._device(handle, "nvmlDeviceGetPciInfo_v3")
        return self._pci_info(gpu)

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu = self._device(handle, "nvmlDeviceGetPciInfo")
        return self._pci_info(gpu)

    @staticmethod
    def _pci_info(gpu: GpuState) -> Any:
        domain_s, bus_s, rest = gpu.pci_bus_id.split(":")
        domain, bus, dev = int(domain_s, 16), int(bus_s, 16), int(rest.split(".")[0], 16)
        device_id = next((pid for frag, pid in _PCI_DEVICE_IDS if frag in gpu.name), 0x2330)
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.pci_bus_id
        info.busIdLegacy = pynvml.NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT % (domain, bus, dev)
        info.domain = domain
        info.bus = bus
        info.device = dev
        info.pciDeviceId = (device_id << 16) | 0x10DE
        info.pciSubSystemId = (0x16C1 << 16) | 0x10DE
        return info

    # -- MIG (Multi-Instance GPU) --------------------------------------------------------------

    def _mig_handle(self, index: int, slot: int) -> Any:
        with self._lock:
            key = (index, slot)
            if key not in self._mig_handles:
                ptr, addr = self._opaque(pynvml.c_nvmlDevice_t)
                self._mig_handles[key] = ptr
                self._mig_handle_slot[addr] = key
            return self._mig_handles[key]

    def _mig_slot(self, handle: Any) -> tuple[int, int] | None:
        addr = _address(handle) if isinstance(handle, pynvml.c_nvmlDevice_t) else None
        return self._mig_handle_slot.get(addr) if addr is not None else None

    def _mig(self, handle: Any, call: str) -> tuple[GpuState, MigDeviceState]:
        """The parent GPU and MIG device behind a MIG device handle.

        A full GPU's handle answers NOT_SUPPORTED (it is no MIG device); a handle whose
        instance has since been destroyed, or whose GPU left MIG mode, INVALID_ARGUMENT, as a
        stale handle does in NVML.
        """
        self._check_init()
        key = self._mig_slot(handle)
        if key is None:
            self._device(handle, call)
            raise _err("NotSupported")
        gpu = self._gpus().get(key[0])
        if gpu is None or gpu.lost:
            raise _err("GpuIsLost")
        if call in self.not_supported or call in self.not_supported_by_gpu.get(gpu.index, ()):
            raise _err("NotSupported")
        mig = next((m for m in gpu.mig_devices if m.index == key[1]), None) if gpu.mig_enabled else None
        if mig is None:
            raise _err("InvalidArgument")
        return gpu, mig

    def _mig_parent(self, handle: Any, call: str) -> GpuState:
        """A full GPU's state for a MIG call on it: NOT_SUPPORTED unless it can do MIG."""
        if self._mig_slot(handle) is not None:
            self._mig(handle, call)
            raise _err("InvalidArgument")  # a MIG device has no MIG devices of its own
        gpu = self._device(handle, call)
        if not gpu.mig_capable:
            raise _err("NotSupported")
        return gpu

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        """[current, pending] as pynvml returns them; NOT_SUPPORTED on a GPU without MIG."""
        gpu = self._mig_parent(device, "nvmlDeviceGetMigMode")
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if gpu.mig_enabled else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        """Zero when MIG is not supported or not enabled (NVML's documented answer)."""
        if self._mig_slot(device) is not None:
            self._mig(device, "nvmlDeviceGetMaxMigDeviceCount")
            return 0
        gpu = self._device(device, "nvmlDeviceGetMaxMigDeviceCount")
        return MIG_MAX_DEVICES if gpu.mig_capable and gpu.mig_enabled else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        """The MIG device in slot ``index``: INVALID_ARGUMENT beyond the maximum, NOT_FOUND when empty."""
        gpu = self._mig_parent(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not gpu.mig_enabled or not 0 <= index < MIG_MAX_DEVICES:
            raise _err("InvalidArgument")
        if not any(m.index == index for m in gpu.mig_devices):
            raise _err("NotFound")
        return self._mig_handle(gpu.index, index)

    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> Any:
        """A ``c_uint``, not an int: pynvml returns the ctypes object itself."""
        self._check_init()
        if self._mig_slot(device) is not None:
            self._mig(device, "nvmlDeviceIsMigDeviceHandle")
            return ctypes.c_uint(1)
        self._device(device, "nvmlDeviceIsMigDeviceHandle")
        return ctypes.c_uint(0)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> Any:
        if self._mig_slot(migDevice) is None:
            self._device(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
            raise _err("InvalidArgument")
        gpu, _ = self._mig(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        return self._handle(gpu.index)

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        return self._mig(device, "nvmlDeviceGetGpuInstanceId")[1].gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        return self._mig(device, "nvmlDeviceGetComputeInstanceId")[1].compute_instance_id

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        """An opaque ``c_nvmlGpuInstance_t``; NOT_FOUND when no GPU instance has that id."""
        gpu = self._mig_parent(device, "nvmlDeviceGetGpuInstanceById")
        if not gpu.mig_enabled:
            raise _err("InvalidArgument")
        if not any(m.gpu_instance_id == gpuInstanceId for m in gpu.mig_devices):
            raise _err("NotFound")
        with self._lock:
            key = (gpu.index, gpuInstanceId)
            for addr, known in self._gpu_instances.items():  # one handle per instance, as NVML's
                if known == key:
                    return ctypes.cast(self._buffers[addr], pynvml.c_nvmlGpuInstance_t)
            ptr, addr = self._opaque(pynvml.c_nvmlGpuInstance_t)
            self._gpu_instances[addr] = key
            return ptr

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        """``c_nvmlGpuInstanceInfo_t``: parent handle, id, profile id and placement."""
        self._check_init()
        addr = _address(gpuInstance) if isinstance(gpuInstance, pynvml.c_nvmlGpuInstance_t) else None
        key = self._gpu_instances.get(addr) if addr is not None else None
        if key is None:
            raise _err("InvalidArgument")
        gpu = self._gpus().get(key[0])
        if gpu is None or gpu.lost:
            raise _err("GpuIsLost")
        if "nvmlGpuInstanceGetInfo" in self.not_supported or "nvmlGpuInstanceGetInfo" in (
            self.not_supported_by_gpu.get(gpu.index, ())
        ):
            raise _err("NotSupported")
        mig = next((m for m in gpu.mig_devices if m.gpu_instance_id == key[1]), None)
        if mig is None or not gpu.mig_enabled:
            raise _err("InvalidArgument")  # the instance was destroyed since
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.device = self._handle(gpu.index)
        info.id = mig.gpu_instance_id
        info.profileId = mig.gi_profile_id
        info.placement.start = mig.placement_start
        info.placement.size = mig.placement_size
        return info

    # -- clocks, thermals, power ----------------------------------------------------------------

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetClockInfo")
        if type in (pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM):
            return gpu.sm_clock_mhz
        if type == pynvml.NVML_CLOCK_MEM:
            return gpu.mem_clock_mhz
        if type == pynvml.NVML_CLOCK_VIDEO:
            raise _err("NotSupported")  # the state does not model the video clock
        raise _err("InvalidArgument")

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, type: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetMaxClockInfo")
        if type in (pynvml.NVML_CLOCK_GRAPHICS, pynvml.NVML_CLOCK_SM):
            return gpu.max_sm_clock_mhz
        if type == pynvml.NVML_CLOCK_MEM:
            return gpu.mem_clock_mhz
        if type == pynvml.NVML_CLOCK_VIDEO:
            raise _err("NotSupported")
        raise _err("InvalidArgument")

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").clocks_event_reasons

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetTemperature")
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _err("InvalidArgument")
        return gpu.temperature_c

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetPowerManagementLimit").power_limit_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetViolationStatus(self, device: Any, perfPolicyType: int) -> Any:
        gpu = self._device(device, "nvmlDeviceGetViolationStatus")
        if not 0 <= perfPolicyType < pynvml.NVML_PERF_POLICY_COUNT:
            raise _err("InvalidArgument")
        ns = {
            pynvml.NVML_PERF_POLICY_POWER: gpu.power_violation_us * 1000,
            pynvml.NVML_PERF_POLICY_THERMAL: gpu.thermal_violation_us * 1000,
        }.get(perfPolicyType, 0)
        out = pynvml.c_nvmlViolationTime_t()
        out.referenceTime = int(self._doc().time_s * 1e6)
        out.violationTime = ns
        return out

    # -- utilisation and memory ----------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu = self._device(handle, "nvmlDeviceGetUtilizationRates")
        util = pynvml.c_nvmlUtilization_t()
        util.gpu = gpu.util_gpu_pct
        util.memory = gpu.util_mem_pct
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        gpu = self._device(handle, "nvmlDeviceGetMemoryInfo")
        total, used, reserved = gpu.fb_total_mib * MIB, gpu.fb_used_mib * MIB, gpu.fb_reserved_mib * MIB
        if not version:
            mem = pynvml.c_nvmlMemory_t()  # v1 counts the driver's reservation as used
            mem.total, mem.used = total, used + reserved
            mem.free = max(0, total - used - reserved)
            return mem
        if version != pynvml.nvmlMemory_v2:
            raise _err("ArgumentVersionMismatch")
        mem2 = pynvml.c_nvmlMemory_v2_t()
        mem2.version = version
        mem2.total, mem2.reserved, mem2.used = total, reserved, used
        mem2.free = max(0, total - used - reserved)
        return mem2

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        gpu = self._device(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [
            pynvml.nvmlFriendlyObject(
                {
                    "pid": p.pid,
                    "usedGpuMemory": p.used_memory_bytes,
                    "gpuInstanceId": NO_INSTANCE,
                    "computeInstanceId": NO_INSTANCE,
                }
            )
            for p in gpu.processes
        ]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[Any]:
        return self.nvmlDeviceGetComputeRunningProcesses(handle)

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any) -> list[Any]:
        return self.nvmlDeviceGetComputeRunningProcesses(handle)

    # -- errors and health ---------------------------------------------------------------------

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        gpu = self._device(handle, "nvmlDeviceGetTotalEccErrors")
        table = {
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC): gpu.ecc_sbe_volatile,
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC): gpu.ecc_dbe_volatile,
            (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC): gpu.ecc_sbe_aggregate,
            (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC): gpu.ecc_dbe_aggregate,
        }
        if (errorType, counterType) not in table:
            raise _err("InvalidArgument")
        return table[(errorType, counterType)]

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        gpu = self._device(device, "nvmlDeviceGetRemappedRows")
        return (gpu.remapped_rows_correctable, gpu.remapped_rows_uncorrectable, 0, int(gpu.remap_failure))

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        return self._device(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replay_count

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: Sequence[int | tuple[int, int]]) -> Any:
        gpu = self._device(handle, "nvmlDeviceGetFieldValues")
        doc = self._doc()
        stamp = int(doc.time_s * 1e6)
        driver = _driver_branch(doc.driver_version)
        values = (pynvml.c_nvmlFieldValue_t * len(fieldIds))()
        for i, fid in enumerate(fieldIds):
            if isinstance(fid, tuple):
                values[i].fieldId, values[i].scopeId = fid
            else:
                values[i].fieldId = fid
            fid_num = values[i].fieldId
            values[i].timestamp = stamp
            found = _field_value(gpu, fid_num, int(values[i].scopeId), driver)
            if not 0 <= fid_num < pynvml.NVML_FI_MAX:
                values[i].nvmlReturn = pynvml.NVML_ERROR_INVALID_ARGUMENT
            elif isinstance(found, int):
                values[i].nvmlReturn = found
            else:
                vtype, value = found
                values[i].valueType = vtype
                values[i].nvmlReturn = pynvml.NVML_SUCCESS
                if vtype == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT:
                    values[i].value.uiVal = int(value)
                else:
                    values[i].value.ullVal = int(value)
        return values

    def nvmlDeviceGetP2PStatus(self, device1: Any, device2: Any, p2pIndex: int) -> int:
        """nvmlGpuP2PStatus_t between two GPUs: the worse end's ``nvlink_p2p_status`` over NVLink.

        A GPU without NVLink (a PCIe card) answers GPU_NOT_SUPPORTED for the NVLink index; the other
        indexes (read, write, atomics, PCI) answer OK. The same GPU twice is INVALID_ARGUMENT.
        """
        first = self._device(device1, "nvmlDeviceGetP2PStatus")
        second = self._device(device2, "nvmlDeviceGetP2PStatus")
        if first.index == second.index or not 0 <= p2pIndex < pynvml.NVML_P2P_CAPS_INDEX_UNKNOWN:
            raise _err("InvalidArgument")
        if p2pIndex != pynvml.NVML_P2P_CAPS_INDEX_NVLINK:
            return int(pynvml.NVML_P2P_STATUS_OK)
        if "PCIe" in first.name or "PCIe" in second.name:
            return int(pynvml.NVML_P2P_STATUS_GPU_NOT_SUPPORTED)
        return max(first.nvlink_p2p_status, second.nvlink_p2p_status)

    # -- events (XIDs) -------------------------------------------------------------------------

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._device(handle, "nvmlDeviceGetSupportedEventTypes")
        return int(_SUPPORTED_EVENTS)

    def nvmlEventSetCreate(self) -> Any:
        self._check_init()
        with self._lock:
            ptr, addr = self._opaque(pynvml.c_nvmlEventSet_t)
            self._event_sets[addr] = _EventSet()
            return ptr

    def _event_set(self, eventSet: Any) -> _EventSet:
        addr = _address(eventSet) if isinstance(eventSet, pynvml.c_nvmlEventSet_t) else None
        es = self._event_sets.get(addr) if addr is not None else None
        if es is None:
            raise _err("InvalidArgument")
        return es

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        gpu = self._device(handle, "nvmlDeviceRegisterEvents")
        if eventTypes & ~_SUPPORTED_EVENTS:
            raise _err("NotSupported")
        doc_time = self._doc().time_s
        with self._lock:
            es = self._event_set(eventSet)
            es.masks[gpu.index] = es.masks.get(gpu.index, 0) | eventTypes
            # Only errors raised after registration are delivered, as with real NVML.
            es.seen.update((doc_time, gpu.index, pos) for pos in range(len(gpu.xid_events)))

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        """The next XID on a registered GPU, waiting up to ``timeoutms``; else NVMLError_Timeout."""
        self._check_init()
        deadline = time.monotonic() + max(0, timeoutms) / 1000.0
        while True:
            doc = self._doc()
            with self._lock:
                es = self._event_set(eventSet)
                es.seen = {k for k in es.seen if k[0] == doc.time_s}  # older snapshots are gone
                for gpu in sorted(doc.gpus, key=lambda g: g.index):
                    if not es.masks.get(gpu.index, 0) & pynvml.nvmlEventTypeXidCriticalError:
                        continue
                    for pos, xid in enumerate(gpu.xid_events):
                        key = (doc.time_s, gpu.index, pos)
                        if key in es.seen:
                            continue
                        es.seen.add(key)
                        data = pynvml.c_nvmlEventData_t()
                        data.device = self._handle(gpu.index)
                        data.eventType = pynvml.nvmlEventTypeXidCriticalError
                        data.eventData = xid
                        data.gpuInstanceId = NO_INSTANCE
                        data.computeInstanceId = NO_INSTANCE
                        return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _err("Timeout")
            time.sleep(min(self.poll_interval_s, remaining))

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._check_init()
        with self._lock:
            self._event_set(eventSet)
            addr = _address(eventSet)
            if addr is not None:
                self._event_sets.pop(addr, None)
                self._buffers.pop(addr, None)

    # -- GPM (profiling metrics from two samples) ----------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        gpu = self._device(device, "nvmlGpmQueryDeviceSupport")
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = int(any(f in gpu.name for f in _GPM_FAMILIES))
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._check_init()
        with self._lock:
            ptr, addr = self._opaque(pynvml.c_nvmlGpmSample_t)
            self._samples[addr] = _GpmSample()
            return ptr

    def _sample(self, gpmSample: Any) -> _GpmSample:
        addr = _address(gpmSample) if isinstance(gpmSample, pynvml.c_nvmlGpmSample_t) else None
        sample = self._samples.get(addr) if addr is not None else None
        if sample is None:
            raise _err("InvalidArgument")
        return sample

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        self._check_init()
        with self._lock:
            self._sample(gpmSample)
            addr = _address(gpmSample)
            if addr is not None:
                self._samples.pop(addr, None)
                self._buffers.pop(addr, None)

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
        gpu = self._device(device, "nvmlGpmSampleGet")
        if not any(f in gpu.name for f in _GPM_FAMILIES):
            raise _err("NotSupported")
        doc_time = self._doc().time_s
        with self._lock:
            sample = self._sample(gpmSample)
            sample.index, sample.time_s, sample.gpu = gpu.index, doc_time, gpu
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        """Fill ``metricsGet``: the metrics of the state at the second sample."""
        self._check_init()
        if metricsGet.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise _err("ArgumentVersionMismatch")
        with self._lock:
            first, second = self._sample(metricsGet.sample1), self._sample(metricsGet.sample2)
        if first.gpu is None or second.gpu is None or first.index != second.index:
            raise _err("InvalidArgument")
        if not 0 < metricsGet.numMetrics <= pynvml.NVML_GPM_METRIC_MAX:
            raise _err("InvalidArgument")
        current = self._gpus().get(second.index) if second.index is not None else None
        if current is None or current.lost:
            raise _err("GpuIsLost")
        for i in range(metricsGet.numMetrics):
            metric = metricsGet.metrics[i]
            value = _gpm_value(second.gpu, metric.metricId)
            if value is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                metric.value = 0.0
            else:
                metric.nvmlReturn = pynvml.NVML_SUCCESS
                metric.value = value
        return metricsGet

    # -- the rest of pynvml ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        """Any other pynvml ``nvml*`` function: FunctionNotFound, as a driver without it answers.

        Only names the ``pynvml`` module has as functions, so ``getattr(nvml, name, None)``
        feature tests (a call renamed in newer pynvml releases) answer as pynvml would.
        """
        if name.startswith("nvml") and isinstance(getattr(pynvml, name, None), types.FunctionType):
            return getattr(pynvml, name) if name in _NOT_CALLS else self.unimplemented(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def unimplemented(self, name: str) -> Callable[..., Any]:
        """A pynvml function this fake does not model: FunctionNotFound, once initialised."""

        def call(*args: Any, **kwargs: Any) -> Any:
            self._check_init()
            raise _err("FunctionNotFound")

        call.__name__ = name
        return call
