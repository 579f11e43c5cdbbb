"""NVIDIA GPUs through NVML (pynvml), under dcgm-exporter's metric names and labels.

What it does that dcgm-exporter does not:

* A GPU that answers ``NVML_ERROR_GPU_IS_LOST`` stays visible as ``fmdiag_gpu_lost 1`` with the
  identity it had, and every other GPU is still exported (dcgm-exporter drops it silently).
* A call, field or GPM metric a GPU does not support is tried once, counted, said once in the
  log, and skipped on later scrapes, so a mixed fleet (Hopper next to Blackwell, R550 next to
  R580) costs no repeated failing calls; any other NVML error is counted per call in
  ``fmdiag_gpu_nvml_errors_total`` and never fails the scrape.
* NVML 13's fields where the GPU has them (:mod:`fmdiag.exporters.gpu_fields`): the recovery
  action the driver asks for, clock-event durations in ns, NVLink 5 counters; and dcgm-exporter
  4.x's own ``DCGM_EXP_*`` counters computed from NVML readings (:mod:`fmdiag.exporters.gpu_exp`),
  under its names and labels, the node label spelled ``hostname`` or, by option, ``Hostname``.
* Clock event (throttle) reasons are exported as the raw bitmask *and* one series per active
  reason, and XIDs are counted per code with NVIDIA's resolution bucket, so alerts need no
  bit arithmetic or lookup tables.
* MIG devices are mapped to the physical GPU they are carved from
  (``fmdiag_gpu_mig_info{UUID, mig_uuid, GPU_I_ID, GPU_CI_ID, GPU_I_PROFILE}``), and the map
  is shared with the kubernetes collector (``CollectorContext.gpu_processes.inventory``) so
  a pod holding a MIG device is attributed to the physical GPU's UUID in one PromQL join.
* Profiling ratios come from NVML's GPM API (Hopper and newer) without DCGM: a GPM sample is
  kept from one scrape to the next and the metrics are the averages over the interval between
  them, so there is no background sampling thread. Blackwell adds per-NVLink bandwidth (opt-in)
  and C2C bandwidth on Grace-coupled GPUs.

The only background state is the XID listener (:mod:`fmdiag.exporters.gpu_xid`; NVML delivers
XIDs as events), the GPM samples and the clock-event samples of the window count; all are
released by :meth:`GpuCollector.close` or bounded.

Every NVML call goes through ``self.nvml``, the implementation the exporter hands over
(``CollectorContext.nvml``: the ``pynvml`` module by default, the NVML stand-in with
``--collector.gpu.simulated-state``), so simulating GPUs never patches pynvml for the
process. Constants, structures and exception classes are always pynvml's own.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pynvml
from prometheus_client.core import Metric

from fmdiag.catalog import CLOCK_EVENT_REASONS, LABEL_SPELLINGS, P2P_LINK_STATUS, XID_ACTIONS
from fmdiag.exporters import gpu_exp, gpu_state_file
from fmdiag.exporters.collector import (
    Collector,
    CollectorContext,
    GpuInventory,
    MigInstance,
    SourceUnavailableError,
    register,
)
from fmdiag.exporters.families import Families
from fmdiag.exporters.gpu_fields import FieldReader
from fmdiag.exporters.gpu_fields import number as field_number  # one decoder of valueType
from fmdiag.exporters.gpu_xid import XidListener
from fmdiag.exporters.options import Option, choice, duration, switch

log = logging.getLogger("fmdiag.exporter.gpu")
T = TypeVar("T")
MIB = 1 << 20

#: GPM metric id -> (DCGM field, scale from NVML's unit to DCGM's).
_GPM_METRICS: tuple[tuple[int, str, float], ...] = (
    (pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_SM_UTIL, "DCGM_FI_PROF_SM_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_SM_OCCUPANCY, "DCGM_FI_PROF_SM_OCCUPANCY", 0.01),
    (pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL, "DCGM_FI_PROF_DRAM_ACTIVE", 0.01),
    (pynvml.NVML_GPM_METRIC_PCIE_TX_PER_SEC, "DCGM_FI_PROF_PCIE_TX_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_PCIE_RX_PER_SEC, "DCGM_FI_PROF_PCIE_RX_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, "DCGM_FI_PROF_NVLINK_TX_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, "DCGM_FI_PROF_NVLINK_RX_BYTES", MIB),
    # Blackwell's additions: C2C where the GPU is Grace-coupled, and every NVLink on its own.
    (pynvml.NVML_GPM_METRIC_C2C_TOTAL_TX_PER_SEC, "DCGM_FI_PROF_C2C_TX_ALL_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_C2C_DATA_TX_PER_SEC, "DCGM_FI_PROF_C2C_TX_DATA_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_C2C_TOTAL_RX_PER_SEC, "DCGM_FI_PROF_C2C_RX_ALL_BYTES", MIB),
    (pynvml.NVML_GPM_METRIC_C2C_DATA_RX_PER_SEC, "DCGM_FI_PROF_C2C_RX_DATA_BYTES", MIB),
)
#: Per NVLink (36 series a GPU), with --collector.gpu.nvlink-links, as DCGM_FI_PROF_NVLINK_L*.
_GPM_LINKS: tuple[tuple[int, str, float], ...] = (
    *(
        (
            getattr(pynvml, f"NVML_GPM_METRIC_NVLINK_L{n}_{d}_PER_SEC"),
            f"DCGM_FI_PROF_NVLINK_L{n}_{d}_BYTES",
            1.0 * MIB,
        )
        for n in range(18)
        for d in ("TX", "RX")
    ),
)

#: (DCGM field, NVML error type, NVML counter type) for the ECC totals.
_ECC: tuple[tuple[str, int, int], ...] = (
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_VOLATILE_ECC),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_AGGREGATE_ECC),
)

#: (DCGM field, NVML perf policy) for throttle durations, in ns as NVML counts them and as DCGM and
#: dcgm-exporter report them (its docs said us until 4.4.2; fmdiag divided by 1000 until then too).
_VIOLATIONS: tuple[tuple[str, int], ...] = (
    ("DCGM_FI_DEV_POWER_VIOLATION", pynvml.NVML_PERF_POLICY_POWER),
    ("DCGM_FI_DEV_THERMAL_VIOLATION", pynvml.NVML_PERF_POLICY_THERMAL),
    ("DCGM_FI_DEV_SYNC_BOOST_VIOLATION", pynvml.NVML_PERF_POLICY_SYNC_BOOST),
    ("DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", pynvml.NVML_PERF_POLICY_BOARD_LIMIT),
    ("DCGM_FI_DEV_LOW_UTIL_VIOLATION", pynvml.NVML_PERF_POLICY_LOW_UTILIZATION),
    ("DCGM_FI_DEV_RELIABILITY_VIOLATION", pynvml.NVML_PERF_POLICY_RELIABILITY),
)


class GpuLostError(Exception):
    """NVML answered GPU_IS_LOST: stop reading this GPU for this scrape."""


def error_name(exc: pynvml.NVMLError) -> str:
    """``NVMLError_NotSupported`` -> ``NotSupported``: a stable, low-cardinality label."""
    name = type(exc).__name__
    return name.removeprefix("NVMLError_") if name != "NVMLError" else f"code_{exc.value}"


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def pci_switch(sysfs: Path, bus_id: str) -> str:
    """The PCI address of the bridge above the GPU's upstream port: EFAs behind it share it.

    NVML's bus id has an 8-digit domain (``00000000:18:00.0``); sysfs uses 4 digits.
    """
    domain, _, rest = bus_id.lower().partition(":")
    address = f"{domain[-4:]}:{rest}"
    try:
        real = (sysfs / "bus" / "pci" / "devices" / address).resolve(strict=True)
    except OSError:
        return ""
    bridges = [p for p in real.parents if ":" in p.name and "." in p.name]
    return bridges[1].name if len(bridges) > 1 else (bridges[0].name if bridges else "")


@dataclass
class _Gpu:
    """What is known about one GPU index across scrapes."""

    labels: dict[str, str]
    info: dict[str, str]
    minor: int = -1
    unsupported: set[str] = field(default_factory=set)
    gpm_sample: Any = None
    gpm_supported: bool | None = None
    #: GPM metric ids this GPU answered NOT_SUPPORTED (C2C on a GPU without C2C): not asked again.
    gpm_dropped: set[int] = field(default_factory=set)
    fields: FieldReader = field(default_factory=lambda: FieldReader(""))
    #: The previous scrape's field values and (time, PCIe replays), for the health deltas.
    last_fields: dict[str, float | int] = field(default_factory=dict)
    last_replays: tuple[float, int] | None = None
    last_remapped_unc: int | None = None


def _state_file(text: str) -> Path | None:
    """A GPU state file, read once now so a garbled one stops the exporter at start-up.

    A file that does not exist (yet) is accepted: the stand-in serves it as a node whose
    driver is not loaded, until the simulator writes it. An empty value is no simulation.
    """
    if not text:
        return None
    path = Path(text)
    try:
        gpu_state_file.read(path)  # a GpuStateError names the file and the field
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


XID_WINDOW = duration("xid-window", 300.0, "Window of DCGM_EXP_XID_ERRORS_COUNT, as in dcgm-exporter.")
CLOCK_EVENTS_WINDOW = duration(
    "clock-events-window",
    300.0,
    "Window of DCGM_EXP_CLOCK_EVENTS_COUNT (dcgm-exporter's --clock-events-count-window-size); "
    "the count is of scrapes in the window that saw the reason.",
)
HOSTNAME_LABEL = choice(
    "hostname-label",
    LABEL_SPELLINGS["Hostname"],
    LABEL_SPELLINGS["Hostname"][0],
    "Name of the GPU series' host label: hostname as dcgm-exporter after 4.5.3, or Hostname as "
    "before (keeps existing queries and stored series joined). fmdiag's dashboards and rules read both.",
)
NVLINK_LINKS = switch(
    "nvlink-links",
    False,
    "Export NVLink bandwidth per link (DCGM_FI_PROF_NVLINK_L<n>_TX_BYTES/_RX_BYTES from GPM: 36 "
    "series per GPU), off by default as in dcgm-exporter; the totals are always exported.",
)
P2P_STATUS = switch(
    "p2p-status",
    False,
    "Export DCGM_EXP_P2P_STATUS (NVLink P2P status of every GPU pair: n*(n-1) NVML calls a scrape), "
    "off by default as in dcgm-exporter.",
)
EVENTS = switch("events", True, "Listen for XID events (a background thread waiting on NVML).")
SIMULATED_STATE: Option[Path | None] = Option(
    "simulated-state",
    _state_file,
    None,
    "Serve GPUs from a `fmdiag simulate` GPU state file (nodes/<host>/nvml/state.json) through "
    "the NVML stand-in instead of the driver: demos and tests. A garbled file stops the exporter "
    "at start; a missing one reads as a node whose driver is not loaded.",
    metavar="FILE",
)


@register
class GpuCollector(Collector):
    """NVIDIA GPUs through NVML, under dcgm-exporter's names and labels."""

    name = "gpu"
    options = (
        XID_WINDOW,
        EVENTS,
        SIMULATED_STATE,
        HOSTNAME_LABEL,
        CLOCK_EVENTS_WINDOW,
        P2P_STATUS,
        NVLINK_LINKS,
    )

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.hostname = ctx.hostname or socket.gethostname()
        self.xid_window_s = self.option(XID_WINDOW)
        #: The host label's spelling on every GPU series (hostname or Hostname).
        self.host_label = self.option(HOSTNAME_LABEL)
        self.p2p = self.option(P2P_STATUS)
        self._gpm_metrics = _GPM_METRICS + (_GPM_LINKS if self.option(NVLINK_LINKS) else ())
        self._clock_events = gpu_exp.ClockEventWindow(self.option(CLOCK_EVENTS_WINDOW))
        self.events = self.option(EVENTS)
        state = self.option(SIMULATED_STATE)
        self._state = state
        self._init_reason = "NVML not initialised yet"
        #: pynvml's nvml* functions: the driver's, the context's, or the stand-in's.
        self.nvml: Any
        if state is not None:
            from fmdiag.exporters.nvml_stand_in import FakeNvml  # noqa: PLC0415 - only when simulating

            self.nvml = FakeNvml(state)
        else:
            self.nvml = ctx.nvml if ctx.nvml is not None else pynvml
        self._lock = threading.Lock()
        self._initialised = False
        self._next_init = 0.0
        self._init_error = ""
        self._gpus: dict[int, _Gpu] = {}
        self._driver = ""
        self._xid: XidListener | None = None
        self._errors: dict[tuple[str, str, str], int] = {}
        self._processes: dict[int, str] = {}
        self._inventory = GpuInventory()
        self._closed = False
        ctx.gpu_processes.provider = self.gpu_processes
        ctx.gpu_processes.identities = self.gpu_identities
        ctx.gpu_processes.inventory = self.gpu_inventory

    # -- NVML plumbing -------------------------------------------------------------------------
    def _init(self) -> bool:
        """Initialise NVML, retrying at most once a minute: a driver may load after boot."""
        if self._initialised:
            return True
        if self._state is not None and not self._state.is_file():
            # The simulator has not written the file yet: say so, not "Driver Not Loaded",
            # and look again at the next scrape (a stat is cheap).
            self._init_reason = f"simulated GPU state file {self._state} does not exist (yet)"
            return False
        now = time.monotonic()
        if now < self._next_init:
            return False
        self._next_init = now + 60.0
        try:
            self.nvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self._count_error("", "nvmlInit", exc)
            self._init_reason = f"NVML cannot initialise ({error_name(exc)}: {exc}); retried every minute"
            if error_name(exc) != self._init_error:
                log.warning("NVML unavailable (%s): exporting fmdiag_gpu_devices 0", exc)
                self._init_error = error_name(exc)
            return False
        self._initialised = True
        self._driver = self._try(lambda: _text(self.nvml.nvmlSystemGetDriverVersion()), "")
        simulated = getattr(self.nvml, "simulated_hostname", None)
        if callable(simulated) and simulated():
            self.hostname = str(simulated())  # a simulated node's GPUs carry its name, not ours
        return True

    def _count_error(self, gpu: str, call: str, exc: pynvml.NVMLError) -> None:
        key = (gpu, call, error_name(exc))
        self._errors[key] = self._errors.get(key, 0) + 1

    @staticmethod
    def _try(fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except pynvml.NVMLError:
            return default

    def _call(self, index: int, gpu: _Gpu, call: str, fn: Callable[[], T]) -> T | None:
        """One NVML call: None when unsupported or failing (counted); GpuLostError propagates."""
        if call in gpu.unsupported:
            return None
        try:
            return fn()
        except pynvml.NVMLError_GpuIsLost:
            raise GpuLostError from None
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound) as exc:
            gpu.unsupported.add(call)
            self._count_error(str(index), call, exc)
            log.info("GPU %s does not support %s (%s); not asked again", index, call, error_name(exc))
        except pynvml.NVMLError as exc:
            self._count_error(str(index), call, exc)
        return None

    def _identify(self, index: int, handle: Any) -> _Gpu:
        uuid = _text(self.nvml.nvmlDeviceGetUUID(handle))
        known = self._gpus.get(index)
        if known is not None and known.labels["UUID"] == uuid:
            return known
        bus_id = _text(self.nvml.nvmlDeviceGetPciInfo_v3(handle).busId)
        minor = self._try(lambda: int(self.nvml.nvmlDeviceGetMinorNumber(handle)), index)
        labels = {
            "gpu": str(index),
            "UUID": uuid,
            "pci_bus_id": bus_id,
            "device": f"nvidia{minor}",
            "modelName": _text(self.nvml.nvmlDeviceGetName(handle)),
            self.host_label: self.hostname,
        }
        info = {
            "driver_version": self._driver,
            "vbios_version": self._try(lambda: _text(self.nvml.nvmlDeviceGetVbiosVersion(handle)), ""),
            "numa_node": str(self._try(lambda: int(self.nvml.nvmlDeviceGetNumaNodeId(handle)), -1)),
            "pci_switch": pci_switch(self.ctx.paths.sysfs, bus_id),
        }
        gpu = _Gpu(labels=labels, info=info, minor=minor, fields=FieldReader(str(index)))
        if known is not None and known.gpm_sample is not None:  # another GPU now has this index
            self._try(lambda s=known.gpm_sample: self.nvml.nvmlGpmSampleFree(s), None)  # type: ignore[misc]
        self._gpus[index] = gpu
        return gpu

    # -- the scrape ----------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        fam = self.families()
        problem = None
        with self._lock:
            if not self._closed:
                problem = self._collect(fam)
                if self._closed:  # close() gave up waiting for this scrape: release NVML now
                    self._release()
        if problem is not None:
            # success 0 with the reason, but fmdiag_gpu_devices 0 stays: the "fewer GPUs than
            # usual" alert must see it.
            raise SourceUnavailableError(problem, list(fam))
        return fam

    def _collect(self, fam: Families) -> str | None:
        """One scrape into ``fam``; the reason when NVML cannot be used at all."""
        if not self._init():
            self._no_inventory()
            fam.add("fmdiag_gpu_devices", 0)
            self._emit_errors(fam)
            return self._init_reason
        try:
            count = int(self.nvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as exc:
            self._count_error("", "nvmlDeviceGetCount", exc)
            self.report("nvmlDeviceGetCount", exc)
            self._no_inventory()
            # No usable GPU is what the "fewer GPUs than usual" alert must see, not an absent series.
            fam.add("fmdiag_gpu_devices", 0)
            self._emit_errors(fam)
            return None
        fam.add("fmdiag_gpu_devices", count)
        handles: dict[int, Any] = {}
        processes: dict[int, set[str]] = {}
        by_minor: dict[int, str] = {}
        migs: dict[str, MigInstance] = {}
        for index in range(count):
            known = self._gpus.get(index)
            try:
                handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = self._identify(index, handle)
                self._read(fam, index, gpu, handle, processes)
                gpu_migs = self._mig(fam, index, gpu, handle)
            except (GpuLostError, pynvml.NVMLError_GpuIsLost):
                self._emit_lost(fam, index, known)
                continue
            except pynvml.NVMLError as exc:
                self._count_error(str(index), "identify", exc)
                self.report(f"GPU {index}", exc)
                continue
            fam.add("fmdiag_gpu_lost", 0, _lost_labels(gpu.labels, self.host_label))
            handles[index] = handle
            by_minor[gpu.minor] = gpu.labels["UUID"]
            migs.update((m.uuid, m) for m in gpu_migs)
        self._processes = {pid: ",".join(sorted(g, key=int)) for pid, g in processes.items()}
        self._inventory = GpuInventory(by_minor=by_minor, migs=migs, scraped=True)
        self._clock_events.forget({str(i) for i in handles})
        if self.p2p:
            self._p2p(fam, handles)
        self._emit_xids(fam, handles)
        self._emit_errors(fam)
        return None

    def _no_inventory(self) -> None:
        """A scrape that found no GPUs: readers of the inventory stop waiting for a first one."""
        if not self._inventory.scraped:
            self._inventory = GpuInventory(scraped=True)

    def _emit_lost(self, fam: Families, index: int, known: _Gpu | None) -> None:
        labels = (
            known.labels
            if known
            else {"gpu": str(index), "UUID": "", "pci_bus_id": "", self.host_label: self.hostname}
        )
        fam.add("fmdiag_gpu_lost", 1, _lost_labels(labels, self.host_label))
        self._count_error(str(index), "device", pynvml.NVMLError_GpuIsLost())
        self.report(f"GPU {index} ({labels['UUID'] or 'unknown UUID'})", "NVML_ERROR_GPU_IS_LOST")

    def _read(self, fam: Families, index: int, gpu: _Gpu, h: Any, processes: dict[int, set[str]]) -> None:
        lab = gpu.labels

        def put(metric: str, call: str, fn: Callable[[], float | int | None]) -> float | int | None:
            value = self._call(index, gpu, call, fn)
            if value is not None:
                fam.add(metric, value, lab)
            return value

        fam.add("fmdiag_gpu_info", 1, {**lab, **gpu.info})
        put(
            "DCGM_FI_DEV_SM_CLOCK",
            "clock_sm",
            lambda: self.nvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
        )
        put(
            "DCGM_FI_DEV_MEM_CLOCK",
            "clock_mem",
            lambda: self.nvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
        )
        put(
            "DCGM_FI_DEV_MAX_SM_CLOCK",
            "max_clock_sm",
            lambda: self.nvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
        )
        put(
            "DCGM_FI_DEV_GPU_TEMP",
            "temperature",
            lambda: self.nvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
        )
        put(
            "DCGM_FI_DEV_MEMORY_TEMP",
            "memory_temperature",
            lambda: _field(self.nvml, h, pynvml.NVML_FI_DEV_MEMORY_TEMP),
        )
        put("DCGM_FI_DEV_POWER_USAGE", "power", lambda: self.nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
        put(
            "DCGM_FI_DEV_POWER_MGMT_LIMIT",
            "power_limit",
            lambda: self.nvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0,
        )
        put(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "energy",
            lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(h),
        )
        replays = put(
            "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
            "pcie_replay",
            lambda: self.nvml.nvmlDeviceGetPcieReplayCounter(h),
        )
        util = self._call(index, gpu, "utilization", lambda: self.nvml.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            fam.add("DCGM_FI_DEV_GPU_UTIL", util.gpu, lab)
            fam.add("DCGM_FI_DEV_MEM_COPY_UTIL", util.memory, lab)
        put("DCGM_FI_DEV_ENC_UTIL", "encoder", lambda: self.nvml.nvmlDeviceGetEncoderUtilization(h)[0])
        put("DCGM_FI_DEV_DEC_UTIL", "decoder", lambda: self.nvml.nvmlDeviceGetDecoderUtilization(h)[0])
        mem = self._call(
            index, gpu, "memory", lambda: self.nvml.nvmlDeviceGetMemoryInfo(h, pynvml.nvmlMemory_v2)
        )
        if mem is not None:
            fam.add("DCGM_FI_DEV_FB_FREE", mem.free // MIB, lab)
            fam.add("DCGM_FI_DEV_FB_USED", mem.used // MIB, lab)
            fam.add("DCGM_FI_DEV_FB_RESERVED", getattr(mem, "reserved", 0) // MIB, lab)
        reasons = self._call(index, gpu, "clocks_event_reasons", lambda: _clock_reasons(self.nvml, h))
        if reasons is not None:
            fam.add("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", reasons, lab)
            for bit, reason in CLOCK_EVENT_REASONS.items():
                fam.add(
                    "fmdiag_gpu_clocks_event_active", 1 if reasons & bit else 0, {**lab, "reason": reason}
                )
        ecc = {
            metric: put(metric, metric, partial(self.nvml.nvmlDeviceGetTotalEccErrors, h, err, counter))
            for metric, err, counter in _ECC
        }
        rows = self._call(index, gpu, "remapped_rows", lambda: self.nvml.nvmlDeviceGetRemappedRows(h))
        if rows is not None:
            fam.add("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", rows[0], lab)
            fam.add("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", rows[1], lab)
            fam.add("DCGM_FI_DEV_ROW_REMAP_FAILURE", 1 if rows[3] else 0, lab)
        for metric, policy in _VIOLATIONS:
            put(metric, metric, partial(_violation_ns, self.nvml, h, policy))
        found = self._fields(fam, index, gpu, h)
        self._health(fam, gpu, reasons, rows, ecc.get("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"), replays, found)
        procs = self._call(index, gpu, "processes", lambda: self.nvml.nvmlDeviceGetComputeRunningProcesses(h))
        used_by_pid: dict[int, int] = {}
        for proc in procs or ():
            processes.setdefault(int(proc.pid), set()).add(str(index))
            used = proc.usedGpuMemory
            if used is not None:  # one entry per context (MIG instance): one series per pid
                used_by_pid[int(proc.pid)] = used_by_pid.get(int(proc.pid), 0) + int(used)
        for pid, used in used_by_pid.items():
            fam.add(
                "fmdiag_gpu_process_memory_bytes",
                used,
                {"gpu": str(index), "UUID": lab["UUID"], "pid": str(pid)},
            )
        self._gpm(fam, index, gpu, h)

    def _fields(self, fam: Families, index: int, gpu: _Gpu, h: Any) -> dict[str, float | int]:
        """NVML 13 field values (recovery action, ns clock events, NVLink 5) in one call."""
        if "field_values" in gpu.unsupported:
            return {}

        def failed(metric: str, ret: int) -> None:
            self._count_error(str(index), metric, pynvml.NVMLError(ret))

        def get(ids: list[tuple[int, int] | int]) -> Any:
            return self.nvml.nvmlDeviceGetFieldValues(h, ids)

        found = self._call(index, gpu, "field_values", lambda: gpu.fields.read(get, failed))
        for metric, value in (found or {}).items():
            fam.add(metric, value, gpu.labels)
        return found or {}

    def _health(
        self,
        fam: Families,
        gpu: _Gpu,
        reasons: int | None,
        rows: Any,
        dbe: float | int | None,
        replays: float | int | None,
        found: dict[str, float | int],
    ) -> None:
        """DCGM_EXP_GPU_HEALTH_STATUS from this scrape's readings, and the clock-event sample."""
        now = time.monotonic()
        replay_rate = None
        if replays is not None:
            replay_rate = gpu_exp.rate_per_minute(gpu.last_replays, (now, int(replays)))
            gpu.last_replays = (now, int(replays))
        remapped = int(rows[1]) if rows is not None else None
        remap_delta = None
        if remapped is not None:
            last = gpu.last_remapped_unc
            remap_delta = remapped - last if last is not None and remapped > last else 0
            gpu.last_remapped_unc = remapped
        action = found.get("DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION")
        readings = gpu_exp.HealthReadings(
            ecc_dbe_volatile=int(dbe) if dbe is not None else None,
            row_remap_failure=bool(rows[3]) if rows is not None else None,
            remapped_uncorrectable_delta=remap_delta,
            clocks_event_reasons=reasons,
            pcie_replays_per_minute=replay_rate if replays is not None else None,
            nvlink_recovery_failed_delta=gpu_exp.delta(
                gpu.last_fields, found, "DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_FAILED_EVENTS"
            ),
            nvlink_effective_errors_delta=gpu_exp.delta(
                gpu.last_fields, found, "DCGM_FI_DEV_NVLINK_COUNT_EFFECTIVE_ERRORS"
            ),
            recovery_action=int(action) if action is not None else None,
        )
        gpu.last_fields = found
        for f in gpu_exp.health(readings):
            labels = {**gpu.labels, "health_watch": f.watch, "health_error_code": f.code}
            fam.add("DCGM_EXP_GPU_HEALTH_STATUS", f.result, labels)
        if reasons is not None:
            self._clock_events.add(gpu.labels["gpu"], reasons, now)
        window = str(int(self._clock_events.window_s * 1000))
        counts = self._clock_events.counts(gpu.labels["gpu"], now)
        for event, count in counts.items():
            labels = {**gpu.labels, "clock_event": event, "window_size_in_ms": window}
            fam.add("DCGM_EXP_CLOCK_EVENTS_COUNT", count, labels)
        if reasons is not None and not counts:
            fam.add("DCGM_EXP_CLOCK_EVENTS_COUNT", 0, {**gpu.labels, "window_size_in_ms": window})

    def _p2p(self, fam: Families, handles: dict[int, Any]) -> None:
        """DCGM_EXP_P2P_STATUS: NVLink P2P status of every ordered pair of GPUs (as dcgm-exporter)."""
        for index, h in handles.items():
            gpu = self._gpus[index]
            if "p2p_status" in gpu.unsupported:
                continue
            for peer, peer_h in handles.items():
                if peer == index:
                    continue
                status = self._call(
                    index,
                    gpu,
                    "p2p_status",
                    partial(self.nvml.nvmlDeviceGetP2PStatus, h, peer_h, pynvml.NVML_P2P_CAPS_INDEX_NVLINK),
                )
                if status is None:
                    break
                name = P2P_LINK_STATUS.get(int(status), P2P_LINK_STATUS[6])
                labels = {**gpu.labels, "peer_gpu": str(peer), "link_status": name}
                fam.add("DCGM_EXP_P2P_STATUS", int(status), labels)

    def _mig(self, fam: Families, index: int, gpu: _Gpu, h: Any) -> list[MigInstance]:
        """MIG mode and one info series per MIG device, mapping its UUID to this GPU.

        The kubelet hands pods MIG devices by their own UUID (``MIG-...``) while every GPU
        series is keyed by the physical GPU's, so without this map a MIG pod's GPU cannot be
        found. A GPU without MIG answers NOT_SUPPORTED once and is not asked again (not counted
        as an error: it is the answer, not a failure); an empty slot answers NOT_FOUND, which
        is no error either. Asked every scrape: MIG devices are created and destroyed at run
        time, without the GPU leaving the bus. The parent is the GPU the walk starts from, so
        nvmlDeviceGetDeviceHandleFromMigDeviceHandle is not needed.
        """
        if "mig_mode" in gpu.unsupported:
            return []
        try:
            mode = self.nvml.nvmlDeviceGetMigMode(h)
        except pynvml.NVMLError_NotSupported:
            # The normal answer of a GPU without MIG (pre-Ampere, L40S): no error to count.
            gpu.unsupported.add("mig_mode")
            return []
        except pynvml.NVMLError_GpuIsLost:
            raise GpuLostError from None
        except pynvml.NVMLError as exc:
            if isinstance(exc, pynvml.NVMLError_FunctionNotFound):
                gpu.unsupported.add("mig_mode")  # a driver without the MIG API
            self._count_error(str(index), "mig_mode", exc)
            return []
        enabled = int(mode[0]) == pynvml.NVML_DEVICE_MIG_ENABLE
        fam.add("fmdiag_gpu_mig_enabled", 1 if enabled else 0, gpu.labels)
        if not enabled:
            return []
        slots = self._call(
            index, gpu, "mig_device_count", lambda: self.nvml.nvmlDeviceGetMaxMigDeviceCount(h)
        )
        found: list[MigInstance] = []
        for slot in range(int(slots or 0)):
            try:
                mig_handle = self.nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
            except pynvml.NVMLError_NotFound:
                continue  # an empty slot
            except pynvml.NVMLError_GpuIsLost:
                raise GpuLostError from None
            except pynvml.NVMLError as exc:
                self._count_error(str(index), "mig_device", exc)
                continue
            mig = self._mig_device(index, gpu, h, mig_handle)
            if mig is None:
                continue
            found.append(mig)
            fam.add(
                "fmdiag_gpu_mig_info",
                1,
                {
                    "gpu": str(index),
                    "UUID": gpu.labels["UUID"],
                    self.host_label: gpu.labels[self.host_label],
                    "mig_uuid": mig.uuid,
                    "GPU_I_PROFILE": mig.profile,
                    "GPU_I_ID": str(mig.gpu_instance_id),
                    "GPU_CI_ID": str(mig.compute_instance_id),
                },
            )
        return found

    def _mig_device(self, index: int, gpu: _Gpu, parent: Any, h: Any) -> MigInstance | None:
        """One MIG device's identity; None when NVML will not give its UUID or instance ids."""
        uuid = self._call(index, gpu, "mig_uuid", lambda: _text(self.nvml.nvmlDeviceGetUUID(h)))
        gi = self._call(index, gpu, "mig_gpu_instance", lambda: int(self.nvml.nvmlDeviceGetGpuInstanceId(h)))
        ci = self._call(
            index, gpu, "mig_compute_instance", lambda: int(self.nvml.nvmlDeviceGetComputeInstanceId(h))
        )
        if uuid is None or gi is None or ci is None:
            return None
        # NVML names a MIG device "<parent name> MIG <profile>" (the profile, 1g.10gb, as the
        # device plugin's nvidia.com/mig-<profile> and dcgm-exporter's GPU_I_PROFILE spell it).
        name = self._call(index, gpu, "mig_name", lambda: _text(self.nvml.nvmlDeviceGetName(h))) or ""
        profile = name.rpartition(" MIG ")[2] if " MIG " in name else ""
        # The GPU instance's profile id and placement name the device in NVIDIA's DRA driver.
        info = self._call(
            index,
            gpu,
            "mig_gpu_instance_info",
            lambda: self.nvml.nvmlGpuInstanceGetInfo(self.nvml.nvmlDeviceGetGpuInstanceById(parent, gi)),
        )
        return MigInstance(
            uuid=uuid,
            parent_uuid=gpu.labels["UUID"],
            parent_index=index,
            gpu_instance_id=gi,
            compute_instance_id=ci,
            profile=profile,
            gi_profile_id=int(info.profileId) if info is not None else None,
            placement_start=int(info.placement.start) if info is not None else None,
            placement_size=int(info.placement.size) if info is not None else None,
        )

    def _gpm(self, fam: Families, index: int, gpu: _Gpu, h: Any) -> None:
        """Profiling ratios between this scrape's GPM sample and the previous scrape's."""
        if gpu.gpm_supported is None:
            support = self._call(index, gpu, "gpm_support", lambda: self.nvml.nvmlGpmQueryDeviceSupport(h))
            gpu.gpm_supported = bool(support is not None and support.isSupportedDevice)
        if not gpu.gpm_supported:
            return
        sample = self._call(index, gpu, "gpm_sample", self.nvml.nvmlGpmSampleAlloc)
        if sample is None:
            return
        try:
            taken = self._call(index, gpu, "gpm_sample", lambda: self.nvml.nvmlGpmSampleGet(h, sample))
        except GpuLostError:
            self._try(lambda: self.nvml.nvmlGpmSampleFree(sample), None)
            raise
        if taken is None:
            self._try(lambda: self.nvml.nvmlGpmSampleFree(sample), None)
            return
        previous, gpu.gpm_sample = gpu.gpm_sample, sample
        if previous is None:
            return  # the first scrape only starts the interval
        try:
            wanted = [m for m in self._gpm_metrics if m[0] not in gpu.gpm_dropped]
            if not wanted:
                return
            request = pynvml.c_nvmlGpmMetricsGet_t()
            request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = len(wanted)
            request.sample1, request.sample2 = previous, sample
            for i, (metric_id, _, _) in enumerate(wanted):
                request.metrics[i].metricId = metric_id
            result = self._call(index, gpu, "gpm_metrics", lambda: self.nvml.nvmlGpmMetricsGet(request))
            if result is None:
                return
            gone = []
            for i, (metric_id, metric, scale) in enumerate(wanted):
                entry = result.metrics[i]
                if entry.nvmlReturn == pynvml.NVML_SUCCESS:
                    fam.add(metric, entry.value * scale, gpu.labels)
                elif entry.nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED:
                    # C2C on a GPU without C2C, a link the GPU does not have: said once, not asked again.
                    gpu.gpm_dropped.add(metric_id)
                    gone.append(metric)
            if gone:
                log.info("GPU %s does not support GPM %s; not asked again", index, ", ".join(gone))
        finally:
            self._try(lambda: self.nvml.nvmlGpmSampleFree(previous), None)

    def _emit_xids(self, fam: Families, handles: dict[int, Any]) -> None:
        if self.events and self._xid is None and handles and not self._closed:
            try:
                self._xid = XidListener(self.nvml, handles, self.xid_window_s)
                self._xid.start()
            except pynvml.NVMLError as exc:
                self._count_error("", "nvmlEventSetCreate", exc)
                self.events = False
        if self._xid is None:
            return
        self._xid.watch(handles)
        last, totals, windowed = self._xid.snapshot()
        window = str(int(self.xid_window_s * 1000))
        for index, gpu in self._gpus.items():
            if index in handles:
                fam.add("DCGM_FI_DEV_XID_ERRORS", last.get(index, 0), gpu.labels)
        for (index, xid), count in totals.items():
            seen = self._gpus.get(index)
            if seen is None:
                continue
            action = XID_ACTIONS.get(xid, "unknown")
            fam.add("fmdiag_gpu_xid_errors_total", count, {**seen.labels, "xid": str(xid), "action": action})
        # dcgm-exporter's windowed count: one series per XID seen in the window, or one series
        # without xid valued 0 for a GPU that had none (so "no XID" is a value, not an absence).
        in_window = {index for (index, _), n in windowed.items() if n}
        for (index, xid), n in windowed.items():
            seen = self._gpus.get(index)
            if seen is not None and n and index in handles:
                labels = {**seen.labels, "xid": str(xid), "window_size_in_ms": window}
                fam.add("DCGM_EXP_XID_ERRORS_COUNT", n, labels)
        for index in handles.keys() - in_window:
            fam.add("DCGM_EXP_XID_ERRORS_COUNT", 0, {**self._gpus[index].labels, "window_size_in_ms": window})

    def _emit_errors(self, fam: Families) -> None:
        for (gpu, call, error), count in self._errors.items():
            fam.add("fmdiag_gpu_nvml_errors_total", count, {"gpu": gpu, "call": call, "error": error})

    def gpu_processes(self) -> dict[int, str]:
        """pid -> GPU indices, for the host collector's training-process metrics."""
        return dict(self._processes)

    def gpu_identities(self) -> dict[int, str]:
        """GPU index -> UUID as of the last scrape, for the slurm collector's job info."""
        return {index: gpu.labels["UUID"] for index, gpu in list(self._gpus.items())}  # one C-level copy

    def gpu_inventory(self) -> GpuInventory:
        """Minor numbers and MIG devices as of the last scrape, for the kubernetes collector."""
        return self._inventory

    #: How long close() waits for a scrape that is inside NVML before leaving NVML as it is.
    _CLOSE_WAIT_S = 5.0

    def close(self) -> None:
        if self.ctx.gpu_processes.provider == self.gpu_processes:
            self.ctx.gpu_processes.provider = None
        if self.ctx.gpu_processes.identities == self.gpu_identities:
            self.ctx.gpu_processes.identities = None
        if self.ctx.gpu_processes.inventory == self.gpu_inventory:
            self.ctx.gpu_processes.inventory = None
        self._closed = True  # a scrape still running starts no XID listener, later ones nothing
        # Freeing GPM samples or shutting NVML down under a running scrape is a use-after-free
        # in the library; a scrape stuck in NVML for good must not hang shutdown either.
        if not self._lock.acquire(timeout=self._CLOSE_WAIT_S):
            # That scrape releases everything (XID listener included) when it returns.
            log.warning("GPU scrape still inside NVML at shutdown; it releases NVML when it returns")
            return
        try:
            self._release()
        finally:
            self._lock.release()

    def _release(self) -> None:
        if self._xid is not None:
            self._xid.stop()
            self._xid = None
        for gpu in self._gpus.values():
            if gpu.gpm_sample is not None:
                self._try(lambda s=gpu.gpm_sample: self.nvml.nvmlGpmSampleFree(s), None)  # type: ignore[misc]
                gpu.gpm_sample = None
        if self._initialised:
            self._try(self.nvml.nvmlShutdown, None)
            self._initialised = False


def _lost_labels(labels: dict[str, str], host_label: str) -> dict[str, str]:
    return {k: labels[k] for k in ("gpu", "UUID", "pci_bus_id", host_label)}


def _field(nvml: Any, handle: Any, field_id: int) -> float:
    value = nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
    if value.nvmlReturn != pynvml.NVML_SUCCESS:
        raise pynvml.NVMLError(value.nvmlReturn)
    return float(field_number(value))


def _violation_ns(nvml: Any, handle: Any, policy: int) -> int:
    """Throttle time under ``policy`` in nanoseconds, as NVML counts it and dcgm-exporter reports it."""
    return int(nvml.nvmlDeviceGetViolationStatus(handle, policy).violationTime)


def _clock_reasons(nvml: Any, handle: Any) -> int:
    """The current bitmask, under its newer name when the driver's pynvml has it."""
    getter = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if getter is None:
        getter = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return int(getter(handle))
