"""The metric catalog: every metric fmdiag's exporters emit, defined once, as data.

Exporters look names up here (an uncatalogued name is a bug, not a new metric), dashboards
and alert rules may reference only these names or recording rules, and the tests check
both directions. GPU metrics keep dcgm-exporter's names, types and labels so that existing
DCGM dashboards and rules keep working whichever exporter feeds them; everything else
follows Prometheus conventions: ``fmdiag_<subsystem>_<what>_<unit>``, base units,
``_total`` on counters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum


class MetricType(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    SUMMARY = "summary"


@dataclass(frozen=True)
class Metric:
    """One metric family as exposed on /metrics (``name`` is the exposed sample name)."""

    name: str
    type: MetricType
    unit: str
    help: str
    labels: tuple[str, ...]
    subsystem: str
    source: str = ""
    #: Labels present only in some deployments (MIG, Kubernetes, Slurm).
    optional_labels: tuple[str, ...] = ()
    #: True when the name, type and labels are dcgm-exporter's (compatibility contract).
    dcgm: bool = False
    #: False for metrics emitted only when their option is switched on.
    default: bool = True
    #: For DCGM names: whether stock dcgm-exporter emits it in its default set.
    dcgm_default: bool = False

    @property
    def all_labels(self) -> tuple[str, ...]:
        return self.labels + self.optional_labels


# --- labels shared by a subsystem ----------------------------------------------------------

#: dcgm-exporter's per-GPU labels, in its order.
GPU_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname")
#: Catalogued labels an exporter option may spell another way, default spelling first. dcgm-exporter
#: renamed ``Hostname`` to ``hostname`` after 4.5.3 (NVIDIA/dcgm-exporter#655); fmdiag emits
#: ``hostname`` unless ``--collector.gpu.hostname-label=Hostname`` (stored series, simulated dumps
#: and old dashboards), and its dashboards and rules read both.
LABEL_SPELLINGS: dict[str, tuple[str, ...]] = {"Hostname": ("hostname", "Hostname")}
#: The spelling -> the catalogued label (``hostname`` -> ``Hostname``).
CATALOGUED_LABEL: dict[str, str] = {
    spelling: label for label, spellings in LABEL_SPELLINGS.items() for spelling in spellings
}
#: Added by dcgm-exporter for MIG instances and by the Kubernetes/Slurm mappers.
GPU_OPTIONAL_LABELS = (
    "GPU_I_PROFILE",
    "GPU_I_ID",
    "pod",
    "namespace",
    "container",
    "slurm_job_id",
)
EFA_PORT_LABELS = ("device", "port")
EFA_DEVICE_LABELS = ("device",)
LLITE_LABELS = ("fs", "mount_id")
OSC_LABELS = ("fs", "ost", "mount_id")
MDC_LABELS = ("fs", "mdt", "mount_id")
#: The training job id is ``training_job``, not ``job``: Prometheus attaches ``job`` (the scrape
#: job) and ``instance`` to every series and renames a clashing exported label to
#: ``exported_job``, so ``by (job)`` would silently group by scrape job (see TARGET_LABELS).
STEP_LABELS = ("training_job", "rank")
PROCESS_LABELS = ("pid", "name", "gpu")
COLLECTOR_LABELS = ("collector",)
#: The kubelet's view of a device: its id as the device plugin names it, the resource, the owner.
_POD_OWNER = ("device_id", "resource", "pod", "namespace", "container")
POD_INFO_LABELS_GPU = ("UUID", *_POD_OWNER)
#: On a MIG device's pod info (its instance on the GPU named by UUID, as dcgm-exporter labels
#: MIG series) and on a Dynamic Resource Allocation device's (the claim that holds it).
POD_INFO_OPTIONAL_GPU = ("GPU_I_ID", "GPU_I_PROFILE", "claim_name", "claim_namespace")
POD_INFO_LABELS_EFA = ("device", *_POD_OWNER)
#: Labels Prometheus attaches to every scraped series: no catalogued metric may export them.
TARGET_LABELS = frozenset({"job", "instance"})


def _m(
    name: str,
    mtype: MetricType,
    unit: str,
    help_: str,
    labels: Iterable[str],
    subsystem: str,
    source: str = "",
    *,
    optional: Iterable[str] = (),
    dcgm: bool = False,
    default: bool = True,
    dcgm_default: bool = False,
) -> Metric:
    return Metric(
        name=name,
        type=mtype,
        unit=unit,
        help=help_,
        labels=tuple(labels),
        subsystem=subsystem,
        source=source,
        optional_labels=tuple(optional),
        dcgm=dcgm,
        default=default,
        dcgm_default=dcgm_default,
    )


C, G, H = MetricType.COUNTER, MetricType.GAUGE, MetricType.HISTOGRAM


# fmt: off
# --- GPU: dcgm-exporter compatible ---------------------------------------------------------
# (name, type, unit, help, NVML source, on by default in dcgm-exporter)
_DCGM: tuple[tuple[str, MetricType, str, str, str, bool], ...] = (
    ("DCGM_FI_DEV_SM_CLOCK", G, "MHz", "SM clock frequency (in MHz).", "nvmlDeviceGetClockInfo(SM)", True),
    ("DCGM_FI_DEV_MEM_CLOCK", G, "MHz", "Memory clock frequency (in MHz).", "nvmlDeviceGetClockInfo(MEM)", True),
    ("DCGM_FI_DEV_MAX_SM_CLOCK", G, "MHz", "Maximum SM clock frequency (in MHz); with SM_CLOCK gives the fraction of peak clock.", "nvmlDeviceGetMaxClockInfo(SM)", False),
    ("DCGM_FI_DEV_GPU_TEMP", G, "C", "GPU temperature (in C).", "nvmlDeviceGetTemperature", True),
    ("DCGM_FI_DEV_MEMORY_TEMP", G, "C", "Memory temperature (in C).", "nvmlDeviceGetFieldValues(MEMORY_TEMP)", True),
    ("DCGM_FI_DEV_POWER_USAGE", G, "W", "Power draw (in W).", "nvmlDeviceGetPowerUsage", True),
    ("DCGM_FI_DEV_POWER_MGMT_LIMIT", G, "W", "Power management limit (in W).", "nvmlDeviceGetPowerManagementLimit", False),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", C, "mJ", "Total energy consumption since boot (in mJ).", "nvmlDeviceGetTotalEnergyConsumption", True),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", C, "", "Total number of PCIe retries.", "nvmlDeviceGetPcieReplayCounter", True),
    ("DCGM_FI_DEV_GPU_UTIL", G, "%", "GPU utilization (in %).", "nvmlDeviceGetUtilizationRates.gpu", True),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", G, "%", "Memory utilization (in %).", "nvmlDeviceGetUtilizationRates.memory", True),
    ("DCGM_FI_DEV_ENC_UTIL", G, "%", "Encoder utilization (in %).", "nvmlDeviceGetEncoderUtilization", True),
    ("DCGM_FI_DEV_DEC_UTIL", G, "%", "Decoder utilization (in %).", "nvmlDeviceGetDecoderUtilization", True),
    ("DCGM_FI_DEV_XID_ERRORS", G, "", "Value of the last XID error encountered.", "nvmlEventSetWait_v2(XidCriticalError)", True),
    ("DCGM_FI_DEV_FB_FREE", G, "MiB", "Framebuffer memory free (in MiB).", "nvmlDeviceGetMemoryInfo_v2", True),
    ("DCGM_FI_DEV_FB_USED", G, "MiB", "Framebuffer memory used (in MiB).", "nvmlDeviceGetMemoryInfo_v2", True),
    ("DCGM_FI_DEV_FB_RESERVED", G, "MiB", "Framebuffer memory reserved (in MiB).", "nvmlDeviceGetMemoryInfo_v2", True),
    ("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", C, "", "Total number of NVLink bandwidth counters for all lanes.", "nvmlDeviceGetFieldValues(NVLINK_THROUGHPUT)", True),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", C, "", "Number of remapped rows for uncorrectable errors.", "nvmlDeviceGetRemappedRows", True),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", C, "", "Number of remapped rows for correctable errors.", "nvmlDeviceGetRemappedRows", True),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", G, "", "Whether remapping of rows has failed.", "nvmlDeviceGetRemappedRows", True),
    ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", G, "ratio", "Ratio of time the graphics engine is active.", "nvmlGpmMetricsGet(GRAPHICS_UTIL)", True),
    ("DCGM_FI_PROF_SM_ACTIVE", G, "ratio", "The ratio of cycles an SM has at least 1 warp assigned.", "nvmlGpmMetricsGet(SM_UTIL)", False),
    ("DCGM_FI_PROF_SM_OCCUPANCY", G, "ratio", "The ratio of number of warps resident on an SM.", "nvmlGpmMetricsGet(SM_OCCUPANCY)", False),
    ("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", G, "ratio", "Ratio of cycles the tensor (HMMA) pipe is active.", "nvmlGpmMetricsGet(ANY_TENSOR_UTIL)", True),
    ("DCGM_FI_PROF_DRAM_ACTIVE", G, "ratio", "Ratio of cycles the device memory interface is active sending or receiving data.", "nvmlGpmMetricsGet(DRAM_BW_UTIL)", True),
    ("DCGM_FI_PROF_PCIE_TX_BYTES", G, "B/s", "The rate of data transmitted over the PCIe bus - including both protocol headers and data payloads - in bytes per second.", "nvmlGpmMetricsGet(PCIE_TX_PER_SEC)", True),
    ("DCGM_FI_PROF_PCIE_RX_BYTES", G, "B/s", "The rate of data received over the PCIe bus - including both protocol headers and data payloads - in bytes per second.", "nvmlGpmMetricsGet(PCIE_RX_PER_SEC)", True),
    ("DCGM_FI_PROF_NVLINK_TX_BYTES", G, "B/s", "The rate of data transmitted over NVLink, not including protocol headers, in bytes per second.", "nvmlGpmMetricsGet(NVLINK_TOTAL_TX_PER_SEC)", False),
    ("DCGM_FI_PROF_NVLINK_RX_BYTES", G, "B/s", "The rate of data received over NVLink, not including protocol headers, in bytes per second.", "nvmlGpmMetricsGet(NVLINK_TOTAL_RX_PER_SEC)", False),
    # Off by default in dcgm-exporter, wanted by operators.
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", C, "", "Total number of single-bit volatile ECC errors.", "nvmlDeviceGetTotalEccErrors(CORRECTED, VOLATILE)", False),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", C, "", "Total number of double-bit volatile ECC errors.", "nvmlDeviceGetTotalEccErrors(UNCORRECTED, VOLATILE)", False),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", C, "", "Total number of single-bit persistent ECC errors.", "nvmlDeviceGetTotalEccErrors(CORRECTED, AGGREGATE)", False),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", C, "", "Total number of double-bit persistent ECC errors.", "nvmlDeviceGetTotalEccErrors(UNCORRECTED, AGGREGATE)", False),
    ("DCGM_FI_DEV_RETIRED_SBE", C, "", "Total number of retired pages due to single-bit errors.", "nvmlDeviceGetRetiredPages(MULTIPLE_SINGLE_BIT)", False),
    ("DCGM_FI_DEV_RETIRED_DBE", C, "", "Total number of retired pages due to double-bit errors.", "nvmlDeviceGetRetiredPages(DOUBLE_BIT)", False),
    ("DCGM_FI_DEV_RETIRED_PENDING", C, "", "Total number of pages pending retirement.", "nvmlDeviceGetRetiredPagesPendingStatus", False),
    ("DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL", C, "", "Total number of NVLink flow-control CRC errors.", "nvmlDeviceGetNvLinkErrorCounter(CRC_FLIT)", False),
    ("DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", C, "", "Total number of NVLink data CRC errors.", "nvmlDeviceGetNvLinkErrorCounter(CRC_DATA)", False),
    ("DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL", C, "", "Total number of NVLink retries.", "nvmlDeviceGetNvLinkErrorCounter(REPLAY)", False),
    ("DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", C, "", "Total number of NVLink recovery errors.", "nvmlDeviceGetNvLinkErrorCounter(RECOVERY)", False),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", G, "", "Current clock event (throttle) reasons, a bitmask of nvmlClocksEventReason* (0x8 HW slowdown, 0x40 HW thermal, 0x80 HW power brake).", "nvmlDeviceGetCurrentClocksEventReasons", False),
    ("DCGM_FI_DEV_POWER_VIOLATION", C, "ns", "Throttling duration due to power constraints (in ns, as NVML counts it; documented as us before dcgm-exporter 4.4.2).", "nvmlDeviceGetViolationStatus(POWER)", False),
    ("DCGM_FI_DEV_THERMAL_VIOLATION", C, "ns", "Throttling duration due to thermal constraints (in ns, as NVML counts it; documented as us before dcgm-exporter 4.4.2).", "nvmlDeviceGetViolationStatus(THERMAL)", False),
    ("DCGM_FI_DEV_SYNC_BOOST_VIOLATION", C, "ns", "Throttling duration due to sync-boost constraints (in ns, as NVML counts it; documented as us before dcgm-exporter 4.4.2).", "nvmlDeviceGetViolationStatus(SYNC_BOOST)", False),
    ("DCGM_FI_DEV_BOARD_LIMIT_VIOLATION", C, "ns", "Throttling duration due to board limit constraints (in ns, as NVML counts it; documented as us before dcgm-exporter 4.4.2).", "nvmlDeviceGetViolationStatus(BOARD_LIMIT)", False),
    ("DCGM_FI_DEV_LOW_UTIL_VIOLATION", C, "ns", "Throttling duration due to low utilization (in ns, as NVML counts it; documented as us before dcgm-exporter 4.4.2).", "nvmlDeviceGetViolationStatus(LOW_UTILIZATION)", False),
    ("DCGM_FI_DEV_RELIABILITY_VIOLATION", C, "ns", "Throttling duration due to reliability constraints (in ns, as NVML counts it; documented as us before dcgm-exporter 4.4.2).", "nvmlDeviceGetViolationStatus(RELIABILITY)", False),
)

# NVML 13 (driver R575+) fields, under the DCGM field names a DCGM 4.x user lists in dcgm-exporter's
# counters file. Each is read where the GPU answers it and skipped, per GPU, where it answers
# NOT_SUPPORTED (NVLink 5 counters exist on Blackwell only, C2C on Grace-coupled GPUs only).
_NVLINK5 = "nvmlDeviceGetFieldValues(NVLINK_COUNT_{}), summed over links"
_DCGM_NVML13: tuple[tuple[str, MetricType, str, str, str, bool], ...] = (
    ("DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION", G, "", "GPU recovery action NVML asks for (nvmlDeviceGpuRecoveryAction_t: 0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset).", "nvmlDeviceGetFieldValues(GET_GPU_RECOVERY_ACTION)", False),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP_NS", C, "ns", "Time clocks were held down to stay within the power limit (in ns).", "nvmlDeviceGetFieldValues(CLOCKS_EVENT_REASON_SW_POWER_CAP)", False),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST_NS", C, "ns", "Time clocks were held down to match the sync-boost group (in ns).", "nvmlDeviceGetFieldValues(CLOCKS_EVENT_REASON_SYNC_BOOST)", False),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN_NS", C, "ns", "Time clocks were held down to keep GPU and memory below their operating temperature (in ns).", "nvmlDeviceGetFieldValues(CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN)", False),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN_NS", C, "ns", "Time in HW thermal slowdown, clocks cut by half or more (in ns).", "nvmlDeviceGetFieldValues(CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN)", False),
    ("DCGM_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN_NS", C, "ns", "Time in HW power brake slowdown, clocks cut by half or more (in ns).", "nvmlDeviceGetFieldValues(CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN)", False),
    ("DCGM_FI_DEV_NVLINK_COUNT_TX_PACKETS", C, "", "NVLink 5 packets transmitted, all links.", _NVLINK5.format("XMIT_PACKETS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_TX_BYTES", C, "bytes", "NVLink 5 bytes transmitted, all links.", _NVLINK5.format("XMIT_BYTES"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_PACKETS", C, "", "NVLink 5 packets received, all links.", _NVLINK5.format("RCV_PACKETS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_BYTES", C, "bytes", "NVLink 5 bytes received, all links.", _NVLINK5.format("RCV_BYTES"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_MALFORMED_PACKET_ERRORS", C, "", "NVLink 5 packets received malformed, all links.", _NVLINK5.format("MALFORMED_PACKET_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_BUFFER_OVERRUN_ERRORS", C, "", "NVLink 5 packets dropped on receive for a buffer overrun, all links.", _NVLINK5.format("BUFFER_OVERRUN_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_ERRORS", C, "", "NVLink 5 packets received with errors, all links.", _NVLINK5.format("RCV_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_REMOTE_ERRORS", C, "", "NVLink 5 packets received with a stomp/EBP marker from the far end, all links.", _NVLINK5.format("RCV_REMOTE_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_GENERAL_ERRORS", C, "", "NVLink 5 packets received with a header mismatch, all links.", _NVLINK5.format("RCV_GENERAL_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_LOCAL_LINK_INTEGRITY_ERRORS", C, "", "Times the local NVLink 5 error count crossed its threshold, all links.", _NVLINK5.format("LOCAL_LINK_INTEGRITY_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_TX_DISCARDS", C, "", "NVLink 5 packets discarded on transmit, all links.", _NVLINK5.format("XMIT_DISCARDS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_SUCCESSFUL_EVENTS", C, "", "NVLink 5 link recoveries that succeeded, all links.", _NVLINK5.format("LINK_RECOVERY_SUCCESSFUL_EVENTS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_FAILED_EVENTS", C, "", "NVLink 5 link recoveries that failed, all links.", _NVLINK5.format("LINK_RECOVERY_FAILED_EVENTS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_EVENTS", C, "", "NVLink 5 link recoveries started, all links.", _NVLINK5.format("LINK_RECOVERY_EVENTS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_RX_SYMBOL_ERRORS", C, "", "NVLink 5 symbol errors received (corrected by FEC), all links.", _NVLINK5.format("SYMBOL_ERRORS"), False),
    ("DCGM_FI_DEV_NVLINK_COUNT_EFFECTIVE_ERRORS", C, "", "NVLink 5 errors left after FEC, all links.", _NVLINK5.format("EFFECTIVE_ERRORS"), False),
    # GPM metrics Blackwell adds: C2C (Grace-Blackwell), per NVLink further below.
    ("DCGM_FI_PROF_C2C_TX_ALL_BYTES", G, "B/s", "The rate of data transmitted over C2C, headers included, in bytes per second.", "nvmlGpmMetricsGet(C2C_TOTAL_TX_PER_SEC)", False),
    ("DCGM_FI_PROF_C2C_TX_DATA_BYTES", G, "B/s", "The rate of data transmitted over C2C, payload only, in bytes per second.", "nvmlGpmMetricsGet(C2C_DATA_TX_PER_SEC)", False),
    ("DCGM_FI_PROF_C2C_RX_ALL_BYTES", G, "B/s", "The rate of data received over C2C, headers included, in bytes per second.", "nvmlGpmMetricsGet(C2C_TOTAL_RX_PER_SEC)", False),
    ("DCGM_FI_PROF_C2C_RX_DATA_BYTES", G, "B/s", "The rate of data received over C2C, payload only, in bytes per second.", "nvmlGpmMetricsGet(C2C_DATA_RX_PER_SEC)", False),
)
#: Per NVLink (L0-L17), emitted only with --collector.gpu.nvlink-links (36 series a GPU).
_DCGM_NVLINK_LINKS: tuple[tuple[str, MetricType, str, str, str, bool], ...] = tuple(
    (f"DCGM_FI_PROF_NVLINK_L{link}_{d.upper()}_BYTES", G, "B/s",
     f"The rate of data {verb} over NVLink {link}, in bytes per second.", f"nvmlGpmMetricsGet(NVLINK_L{link}_{d.upper()}_PER_SEC)", False)
    for link in range(18) for d, verb in (("tx", "transmitted"), ("rx", "received"))
)

GPU: tuple[Metric, ...] = tuple(
    _m(name, t, unit, h, GPU_LABELS, "gpu", src, optional=GPU_OPTIONAL_LABELS, dcgm=True, dcgm_default=on)
    for name, t, unit, h, src, on in _DCGM + _DCGM_NVML13
) + tuple(
    _m(name, t, unit, h, GPU_LABELS, "gpu", src, optional=GPU_OPTIONAL_LABELS, dcgm=True, default=False)
    for name, t, unit, h, src, _ in _DCGM_NVLINK_LINKS
) + (
    # dcgm-exporter 4.x's own counters (DCGM_EXP_*), its labels: a GPU with nothing in the window
    # has one series without xid / clock_event, valued 0, as dcgm-exporter writes it.
    _m("DCGM_EXP_XID_ERRORS_COUNT", G, "", "Count of XID errors within the user-specified time window (see xid label).",
       (*GPU_LABELS, "window_size_in_ms"), "gpu", "nvmlEventSetWait_v2(XidCriticalError)",
       optional=("xid", *GPU_OPTIONAL_LABELS), dcgm=True),
    _m("DCGM_EXP_CLOCK_EVENTS_COUNT", G, "", "Count of clock events within the user-specified time window (see clock_event label).",
       (*GPU_LABELS, "window_size_in_ms"), "gpu", "nvmlDeviceGetCurrentClocksEventReasons, sampled each scrape",
       optional=("clock_event", *GPU_OPTIONAL_LABELS), dcgm=True),
    _m("DCGM_EXP_GPU_HEALTH_STATUS", G, "", "GPU health by health watch (0 pass, 10 warn, 20 fail) and the DCGM_FR_* code of the finding; fmdiag judges it from NVML readings.",
       (*GPU_LABELS, "health_watch", "health_error_code"), "gpu", "ECC, row remapping, clock events, PCIe replays, NVLink 5 errors, recovery action",
       optional=GPU_OPTIONAL_LABELS, dcgm=True),
    _m("DCGM_EXP_P2P_STATUS", G, "", "NVLink peer-to-peer status toward peer_gpu (nvmlGpuP2PStatus_t: 0 OK; link_status names it).",
       (*GPU_LABELS, "peer_gpu", "link_status"), "gpu", "nvmlDeviceGetP2PStatus(NVLINK)",
       optional=GPU_OPTIONAL_LABELS, dcgm=True, default=False),
    # fmdiag's own GPU metrics: what dcgm-exporter hides or drops.
    _m("fmdiag_gpu_devices", G, "", "GPUs NVML enumerates on this node; below the node's usual count means a GPU fell off the bus.",
       (), "gpu", "nvmlDeviceGetCount"),
    _m("fmdiag_gpu_lost", G, "", "1 when NVML answers GPU_IS_LOST for this GPU (dcgm-exporter silently drops it).",
       ("gpu", "UUID", "pci_bus_id", "Hostname"), "gpu", "NVML_ERROR_GPU_IS_LOST"),
    _m("fmdiag_gpu_info", G, "", "GPU identity and topology: join on UUID to place a GPU on its NUMA node and PCIe switch next to its EFA devices.",
       (*GPU_LABELS, "driver_version", "vbios_version", "numa_node", "pci_switch"), "gpu", "nvmlDeviceGetPciInfo_v3"),
    _m("fmdiag_gpu_xid_errors_total", C, "", "XID errors seen, by code and the action tier of NVIDIA's XID catalog (catalog.XID_ACTIONS; unknown past XID 172).",
       (*GPU_LABELS, "xid", "action"), "gpu", "nvmlEventSetWait_v2(XidCriticalError)", optional=GPU_OPTIONAL_LABELS),
    _m("fmdiag_gpu_clocks_event_active", G, "", "1 while this clock event reason is active (one series per reason bit, decoded from the bitmask).",
       (*GPU_LABELS, "reason"), "gpu", "nvmlDeviceGetCurrentClocksEventReasons", optional=GPU_OPTIONAL_LABELS),
    _m("fmdiag_gpu_nvml_errors_total", C, "", "NVML calls that failed, by call and NVML error name (NOT_SUPPORTED calls are tried once and then skipped).",
       ("gpu", "call", "error"), "gpu", "NVMLError"),
    _m("fmdiag_gpu_process_memory_bytes", G, "bytes", "GPU memory used by a compute process on this GPU.",
       ("gpu", "UUID", "pid"), "gpu", "nvmlDeviceGetComputeRunningProcesses"),
    _m("fmdiag_gpu_mig_enabled", G, "", "1 when MIG mode is on for this GPU, 0 when it is off; absent for a GPU without MIG (NOT_SUPPORTED).",
       GPU_LABELS, "gpu", "nvmlDeviceGetMigMode"),
    _m("fmdiag_gpu_mig_info", G, "", "A MIG device (mig_uuid, the id the kubelet hands pods) of this physical GPU (UUID), with its GPU and compute instance ids and profile.",
       ("gpu", "UUID", "Hostname", "mig_uuid", "GPU_I_PROFILE", "GPU_I_ID", "GPU_CI_ID"), "gpu",
       "nvmlDeviceGetMigDeviceHandleByIndex, nvmlDeviceGetGpuInstanceId, nvmlDeviceGetComputeInstanceId"),
    # Ownership as info series (always 1), joined in PromQL on UUID: a pod or job label on every
    # GPU series would multiply storage, which is why operators drop dcgm-exporter's.
    _m("fmdiag_gpu_pod_info", G, "", "The Kubernetes pod and container a GPU (or MIG device, time-sliced replica or DRA claim's device) is assigned to, from the kubelet; UUID is the physical GPU's: join on UUID.",
       POD_INFO_LABELS_GPU, "gpu", "kubelet pod-resources v1 List", optional=POD_INFO_OPTIONAL_GPU, default=False),
    _m("fmdiag_gpu_slurm_job_info", G, "", "A Slurm job using this GPU (from its processes' cgroup or environment, or a prolog's mapping file); join on UUID.",
       ("gpu", "UUID", "slurm_job_id", "via"), "gpu", "/proc/<pid>/cgroup, /proc/<pid>/environ, mapping directory", default=False),
)


# -- label vocabularies: the values some labels take, shared by the exporter, the simulator and rules

#: nvmlClocksEventReason* bits -> the ``reason`` label of fmdiag_gpu_clocks_event_active.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

#: dcgm-exporter's ``clock_event`` label of DCGM_EXP_CLOCK_EVENTS_COUNT, by the same bits (its own
#: spelling, which differs from ``reason`` above: a query must not mix the two).
DCGM_CLOCK_EVENTS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "clocks_setting",
    0x4: "power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clocks",
}

#: The ``action`` label of fmdiag_gpu_xid_errors_total: NVIDIA's XID catalog "resolution bucket
#: (immediate action)" for Ampere and newer, as NVSentinel mirrors it, in fmdiag's words. Where the
#: catalog names no bucket (162-172) the tier follows its trigger text. What each tier asks an
#: operator to do is XID_ACTION_MEANING; docs/runbook.md repeats it.
_XID_BUCKETS: dict[str, tuple[int, ...]] = {
    "reset_gpu": (46, 62, 64, 95, 109, 110, 119, 120, 136, 140, 143, 155, 156, 158),
    # 151 is RESTART_VM (key rotation, confidential computing): on a cloud instance the VM is the node.
    # 160 is RESTART_BM in NVSentinel's mirror; one catalog revision says IGNORE: the stricter is kept.
    "reboot_node": (79, 151, 160),
    # 45, 48, 74: the catalog's XID workflows; 144-150: WORKFLOW_NVLINK5_ERR (NVLink 5, decided by the
    # error status, so NVML's recovery action says what is needed); 159: CHECK_UVM; 171/172 refine a
    # 48 (uncorrectable DRAM vs SRAM error) and take its workflow.
    "workflow": (45, 48, 74, 144, 145, 146, 147, 148, 149, 150, 159, 171, 172),
    "restart_app": (13, 31, 94),
    # 154: "GPU recovery action changed": the new action is DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION.
    "recovery_action": (154,),
    # 162-170: no bucket in the catalog; power smoothing wear, confidential-computing faults, PCIe
    # fatal timeout, reduced memory capacity and a micro-controller halt: watch the GPU's recovery
    # action and report repeats to the hardware vendor.
    "monitor": (163, 164, 165, 166, 167, 168, 169, 170),
    "ignore": (43, 63, 92, 152, 153, 157, 161, 162),
    "report": (61,),
}
XID_ACTIONS: dict[int, str] = {xid: action for action, xids in _XID_BUCKETS.items() for xid in xids}
#: What each ``action`` tier asks of an operator (alert descriptions and the runbook use it).
XID_ACTION_MEANING: dict[str, str] = {
    "reset_gpu": "drain the node and reset the GPU",
    "reboot_node": "drain and reboot the node",
    "workflow": "follow the XID's workflow in NVIDIA's XID catalog (NVLink and memory errors)",
    "restart_app": "restart the application",
    "recovery_action": "do what the GPU's recovery action (DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION) asks",
    "monitor": "watch the GPU's recovery action and report repeats to the hardware vendor",
    "ignore": "nothing",
    "report": "report the error to NVIDIA or the hardware vendor",
    "unknown": "look the XID up in NVIDIA's XID catalog (newer than this fmdiag)",
}
#: The highest XID NVIDIA's catalog lists that this table knows.
XID_CATALOG_MAX = 172

#: NVML_FI_DEV_GET_GPU_RECOVERY_ACTION values (nvmlDeviceGpuRecoveryAction_t) -> name.
GPU_RECOVERY_ACTIONS: dict[int, str] = {
    0: "none",
    1: "gpu_reset",
    2: "node_reboot",
    3: "drain_p2p",
    4: "drain_and_reset",
    5: "recover_imex_domain",
    6: "bus_reset",
    7: "system_reboot",
}
#: Recovery actions that take the GPU out of service (page); the others degrade it (warn).
GPU_RECOVERY_OUT_OF_SERVICE = (1, 2, 4, 6, 7)

#: DCGM_EXP_GPU_HEALTH_STATUS values (dcgmHealthWatchResults_t) and the health watches fmdiag
#: evaluates from NVML readings (dcgm-exporter also lists PMU, MCU, SM, INFOROM, DRIVER, which
#: only DCGM's own checks can judge; fmdiag leaves them out rather than report a PASS it did not test).
HEALTH_RESULTS: dict[str, int] = {"pass": 0, "warn": 10, "fail": 20}
HEALTH_WATCHES = ("PCIE", "NVLINK", "MEM", "THERMAL", "POWER", "ALL")

#: DCGM_EXP_P2P_STATUS values (nvmlGpuP2PStatus_t over NVLink) -> dcgm-exporter's link_status label.
P2P_LINK_STATUS: dict[int, str] = {
    0: "OK",
    1: "ChipsetNotSupported",
    2: "GPUNotSupported",
    3: "TopologyNotSupported",
    4: "DisabledByRegKey",
    5: "NotSupported",
    6: "Unknown",
}

# --- EFA ----------------------------------------------------------------------------------
# sysfs file under ports/1/hw_counters -> exposed name; all are counters.
EFA_PORT_COUNTERS: dict[str, tuple[str, str]] = {
    "tx_bytes": ("fmdiag_efa_tx_bytes_total", "Bytes transmitted by the port."),
    "tx_pkts": ("fmdiag_efa_tx_packets_total", "Packets transmitted by the port."),
    "rx_bytes": ("fmdiag_efa_rx_bytes_total", "Bytes received by the port."),
    "rx_pkts": ("fmdiag_efa_rx_packets_total", "Packets received by the port."),
    "rx_drops": ("fmdiag_efa_rx_drops_total", "Packets received and then dropped."),
    "send_bytes": ("fmdiag_efa_send_bytes_total", "Bytes sent by send work requests."),
    "send_wrs": ("fmdiag_efa_send_wrs_total", "Send work requests posted."),
    "recv_bytes": ("fmdiag_efa_recv_bytes_total", "Bytes received by receive work requests."),
    "recv_wrs": ("fmdiag_efa_recv_wrs_total", "Receive work requests completed."),
    "rdma_read_wrs": ("fmdiag_efa_rdma_read_wrs_total", "RDMA read work requests."),
    "rdma_read_bytes": ("fmdiag_efa_rdma_read_bytes_total", "Bytes read by RDMA read."),
    "rdma_read_wr_err": ("fmdiag_efa_rdma_read_wr_errors_total", "RDMA read work requests that failed."),
    "rdma_read_resp_bytes": ("fmdiag_efa_rdma_read_resp_bytes_total", "Bytes sent in responses to remote RDMA reads."),
    "rdma_write_wrs": ("fmdiag_efa_rdma_write_wrs_total", "RDMA write work requests."),
    "rdma_write_bytes": ("fmdiag_efa_rdma_write_bytes_total", "Bytes written by RDMA write."),
    "rdma_write_wr_err": ("fmdiag_efa_rdma_write_wr_errors_total", "RDMA write work requests that failed."),
    "rdma_write_recv_bytes": ("fmdiag_efa_rdma_write_recv_bytes_total", "Bytes received by remote RDMA writes."),
    "retrans_bytes": ("fmdiag_efa_retrans_bytes_total", "Bytes retransmitted by SRD (Nitro v4+)."),
    "retrans_pkts": ("fmdiag_efa_retrans_packets_total", "Packets retransmitted by SRD (Nitro v4+)."),
    "retrans_timeout_events": ("fmdiag_efa_retrans_timeout_events_total", "SRD traffic timed out and the path changed (Nitro v4+)."),
    "unresponsive_remote_events": ("fmdiag_efa_unresponsive_remote_events_total", "A remote peer stopped answering (Nitro v4+)."),
    "impaired_remote_conn_events": ("fmdiag_efa_impaired_remote_conn_events_total", "A connection became impaired and its throughput was limited (Nitro v4+)."),
}
# sysfs file under hw_counters (device level) -> exposed name; all are counters.
EFA_DEVICE_COUNTERS: dict[str, tuple[str, str]] = {
    "submitted_cmds": ("fmdiag_efa_submitted_cmds_total", "Admin commands submitted to the device."),
    "completed_cmds": ("fmdiag_efa_completed_cmds_total", "Admin commands the device completed."),
    "cmds_err": ("fmdiag_efa_cmds_errors_total", "Admin commands that failed."),
    "no_completion_cmds": ("fmdiag_efa_no_completion_cmds_total", "Admin commands that never completed."),
    "keep_alive_rcvd": ("fmdiag_efa_keep_alive_received_total", "Keep-alive events received from the device."),
    "alloc_pd_err": ("fmdiag_efa_alloc_pd_errors_total", "Protection-domain allocation failures."),
    "create_qp_err": ("fmdiag_efa_create_qp_errors_total", "Queue-pair creation failures."),
    "create_cq_err": ("fmdiag_efa_create_cq_errors_total", "Completion-queue creation failures."),
    "reg_mr_err": ("fmdiag_efa_reg_mr_errors_total", "Memory-region registration failures."),
    "alloc_ucontext_err": ("fmdiag_efa_alloc_ucontext_errors_total", "User-context allocation failures."),
    "create_ah_err": ("fmdiag_efa_create_ah_errors_total", "Address-handle creation failures."),
    "mmap_err": ("fmdiag_efa_mmap_errors_total", "mmap failures."),
    # amzn-drivers r2.12+ with kernel-verbs support (GPUDirect RDMA through the kernel).
    "alloc_mr_err": ("fmdiag_efa_alloc_mr_errors_total", "Memory-region allocation failures (kernel verbs, amzn-drivers r2.12+)."),
    "get_dma_mr_err": ("fmdiag_efa_get_dma_mr_errors_total", "DMA memory-region requests that failed (kernel verbs, amzn-drivers r2.12+)."),
}

EFA: tuple[Metric, ...] = (
    tuple(_m(n, C, "bytes" if n.endswith("bytes_total") else "", h, EFA_PORT_LABELS, "efa", f"ports/<port>/hw_counters/{f}")
          for f, (n, h) in EFA_PORT_COUNTERS.items())
    + tuple(_m(n, C, "", h, EFA_DEVICE_LABELS, "efa", f"hw_counters/{f}")
            for f, (n, h) in EFA_DEVICE_COUNTERS.items())
    + (
        _m("fmdiag_efa_port_other_counter_total", C, "", "A port hw_counter this fmdiag version does not know by name (newer drivers), so no counter is lost.",
           (*EFA_PORT_LABELS, "counter"), "efa", "ports/<port>/hw_counters/*"),
        _m("fmdiag_efa_device_other_counter_total", C, "", "A device hw_counter this fmdiag version does not know by name (newer drivers).",
           (*EFA_DEVICE_LABELS, "counter"), "efa", "hw_counters/*"),
        _m("fmdiag_efa_hw_counters_lifespan_seconds", G, "seconds", "How long the driver caches hw_counters values before refreshing them.",
           EFA_PORT_LABELS, "efa", "ports/<port>/hw_counters/lifespan"),
        _m("fmdiag_efa_port_state_id", G, "", "Port logical state (4 = ACTIVE).", EFA_PORT_LABELS, "efa", "ports/<port>/state"),
        _m("fmdiag_efa_port_physical_state_id", G, "", "Port physical state (5 = LinkUp).", EFA_PORT_LABELS, "efa", "ports/<port>/phys_state"),
        _m("fmdiag_efa_port_rate_bytes_per_second", G, "bytes", "Port signalling rate.", EFA_PORT_LABELS, "efa", "ports/<port>/rate"),
        _m("fmdiag_efa_info", G, "", "EFA device identity: firmware, node GUID, PCI address and NUMA node, to group EFAs with the GPUs on the same PCIe switch.",
           ("device", "fw_ver", "node_guid", "pci_address", "numa_node", "link_layer"), "efa", "fw_ver, node_guid, device/"),
        _m("fmdiag_efa_devices", G, "", "Amazon EFA devices (PCI vendor 0x1d0f) found on this node.", (), "efa", "class/infiniband/*/device/vendor"),
        _m("fmdiag_efa_pod_info", G, "", "The Kubernetes pod and container an EFA device is assigned to, from the kubelet; join on (instance, device).",
           POD_INFO_LABELS_EFA, "efa", "kubelet pod-resources v1 List", default=False),
        _m("fmdiag_efa_slurm_job_info", G, "", "A Slurm job using this EFA device (its GPU processes hold the device's uverbs node open); join on (instance, device).",
           ("device", "slurm_job_id", "via"), "efa", "/proc/<pid>/fd, class/infiniband_verbs/*/ibdev", default=False),
    )
)


# --- Lustre client ------------------------------------------------------------------------
def _lustre_stats(target: str, labels: tuple[str, ...], what: str) -> tuple[Metric, ...]:
    """The families every Lustre `stats` file maps to, for one target kind (llite, osc, mdc)."""
    src = f"{target}.*.stats"
    return (
        _m(f"fmdiag_lustre_{target}_operations_total", C, "", f"{what} operations, by operation name as the stats file spells it.",
           (*labels, "operation"), "lustre", src),
        _m(f"fmdiag_lustre_{target}_operation_latency_seconds_total", C, "seconds",
           f"Summed latency of {what} operations (lines with a [usec]/[usecs] unit); divide its rate by operations_total's.",
           (*labels, "operation"), "lustre", src),
        _m(f"fmdiag_lustre_{target}_operation_latency_max_seconds", G, "seconds",
           f"Longest single {what} operation since the stats were last cleared.",
           (*labels, "operation"), "lustre", src),
        _m(f"fmdiag_lustre_{target}_operation_latency_min_seconds", G, "seconds",
           f"Shortest single {what} operation since the stats were last cleared (a rising floor means every request got slower).",
           (*labels, "operation"), "lustre", src),
        _m(f"fmdiag_lustre_{target}_read_bytes_total", C, "bytes", f"Bytes read through {what} (read_bytes sum).", labels, "lustre", src),
        _m(f"fmdiag_lustre_{target}_write_bytes_total", C, "bytes", f"Bytes written through {what} (write_bytes sum).", labels, "lustre", src),
    )


LUSTRE: tuple[Metric, ...] = (
    _lustre_stats("llite", LLITE_LABELS, "client filesystem (llite)")
    + _lustre_stats("osc", OSC_LABELS, "per-OST client (osc)")
    + _lustre_stats("mdc", MDC_LABELS, "per-MDT client (mdc)")
    + (
        _m("fmdiag_lustre_llite_read_ahead_hits_total", C, "", "Read-ahead page hits.", LLITE_LABELS, "lustre", "llite.*.read_ahead_stats"),
        _m("fmdiag_lustre_llite_read_ahead_misses_total", C, "", "Read-ahead page misses.", LLITE_LABELS, "lustre", "llite.*.read_ahead_stats"),
        _m("fmdiag_lustre_llite_read_ahead_events_total", C, "", "Other read-ahead events, by read_ahead_stats reason in snake_case (2.14.52+ spelling on every release).",
           (*LLITE_LABELS, "reason"), "lustre", "llite.*.read_ahead_stats"),
        _m("fmdiag_lustre_llite_read_ahead_pages_total", C, "", "Pages read ahead (the page sum of 2.16+'s readahead_pages line).",
           LLITE_LABELS, "lustre", "llite.*.read_ahead_stats readahead_pages"),
        _m("fmdiag_lustre_llite_close_to_open_total", C, "", "Files opened again after a close (openclosetime samples, 2.15+); kept apart from operations.",
           LLITE_LABELS, "lustre", "llite.*.stats openclosetime"),
        _m("fmdiag_lustre_llite_close_to_open_seconds_total", C, "seconds", "Summed time between closing a file and opening it again (openclosetime, 2.15+): not an operation latency, so not in operation_latency_seconds_total.",
           LLITE_LABELS, "lustre", "llite.*.stats openclosetime"),
        _m("fmdiag_lustre_osc_rpcs_in_flight", G, "", "RPCs in flight to this OST now (direction read, write, and dio on newer clients).", (*OSC_LABELS, "direction"), "lustre", "osc.*.rpc_stats"),
        _m("fmdiag_lustre_osc_pending_pages", G, "", "Pages waiting to be sent to this OST.", (*OSC_LABELS, "direction"), "lustre", "osc.*.rpc_stats"),
        _m("fmdiag_lustre_osc_pages_per_rpc", H, "", "Pages per RPC (the rpc_stats histogram; le is the row label, an exact upper page bound; no _sum).",
           (*OSC_LABELS, "direction"), "lustre", "osc.*.rpc_stats"),
        _m("fmdiag_lustre_client_info", G, "", "A mounted Lustre client instance and the layout its stats were read from (proc, debugfs, lctl; sysfs: mounted, stats unreadable).",
           (*LLITE_LABELS, "layout"), "lustre", "llite.*"),
        _m("fmdiag_lustre_filesystems", G, "", "Lustre client mounts (llite instances) on this node.", (), "lustre", "llite.*"),
    )
)


# --- host and training processes ----------------------------------------------------------
HOST: tuple[Metric, ...] = (
    _m("fmdiag_host_cpu_seconds_total", C, "seconds", "CPU time by mode summed over all CPUs (node_exporter has it per CPU: 8 series here instead of 8 x 192).",
       ("mode",), "host", "psutil.cpu_times"),
    _m("fmdiag_host_cpus", G, "", "Logical CPUs online.", (), "host", "psutil.cpu_count"),
    _m("fmdiag_host_pressure_stall_seconds_total", C, "seconds", "Pressure stall time (PSI) by resource (cpu, memory, io) and kind (some, full).",
       ("resource", "kind"), "host", "/proc/pressure/*"),
    _m("fmdiag_host_training_processes", G, "", "Training processes found (GPU users plus --collector.host.process-pattern matches), before the --collector.host.max-processes bound.",
       (), "host", "psutil.process_iter"),
    _m("fmdiag_process_cpu_seconds_total", C, "seconds", "CPU time of a training process, by mode (user, system, iowait).",
       (*PROCESS_LABELS, "mode"), "host", "psutil.Process.cpu_times"),
    _m("fmdiag_process_resident_memory_bytes", G, "bytes", "Resident memory of a training process.", PROCESS_LABELS, "host", "psutil.Process.memory_info"),
    _m("fmdiag_process_read_bytes_total", C, "bytes", "Bytes a training process read from storage.", PROCESS_LABELS, "host", "psutil.Process.io_counters"),
    _m("fmdiag_process_write_bytes_total", C, "bytes", "Bytes a training process wrote to storage.", PROCESS_LABELS, "host", "psutil.Process.io_counters"),
    _m("fmdiag_process_threads", G, "", "Threads of a training process.", PROCESS_LABELS, "host", "psutil.Process.num_threads"),
    _m("fmdiag_process_start_time_seconds", G, "seconds", "Start time of a training process since the Unix epoch (tells restarts apart).",
       PROCESS_LABELS, "host", "psutil.Process.create_time"),
)


# --- step time (steptrace spool) ----------------------------------------------------------
#: Upper bounds of the step-duration histogram: 50 ms to 10 minutes.
STEP_DURATION_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)

STEPS: tuple[Metric, ...] = (
    _m("fmdiag_step_duration_seconds", H, "seconds", "Wall time of each training step (end_ns - start_ns).", STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_last", G, "", "Number of the last completed step.", STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_last_duration_seconds", G, "seconds", "Wall time of the last completed step.", STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_last_end_timestamp_seconds", G, "seconds", "When the last step ended (Unix seconds); time() minus this is how long a rank has been silent.",
       STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_phase_seconds_total", C, "seconds", "Time spent in each step phase.", (*STEP_LABELS, "phase"), "steps", "steptrace spool"),
    _m("fmdiag_step_tokens_total", C, "", "Tokens processed.", STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_samples_total", C, "", "Samples processed.", STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_records_dropped_total", C, "", "Step records the writer dropped because its buffer was full (slow spool filesystem).",
       STEP_LABELS, "steps", "steptrace spool"),
    _m("fmdiag_step_series_dropped_total", C, "", "Step records not exported because the per-node (job, rank) limit was reached.",
       (), "steps", "--collector.steps.max-ranks"),
    _m("fmdiag_step_spool_files", G, "", "Step-record files being followed in the spool directory.", (), "steps", "steptrace spool"),
)


# --- the exporter itself ------------------------------------------------------------------
EXPORTER: tuple[Metric, ...] = (
    _m("fmdiag_exporter_collector_success", G, "", "1 when the collector's last scrape finished without error and within its deadline.",
       COLLECTOR_LABELS, "exporter"),
    _m("fmdiag_exporter_collector_duration_seconds", G, "seconds", "How long the collector's last scrape took.", COLLECTOR_LABELS, "exporter"),
    _m("fmdiag_exporter_collector_parse_errors_total", C, "", "Source files or lines a collector could not parse and skipped (the file is named in the log).",
       COLLECTOR_LABELS, "exporter"),
    _m("fmdiag_exporter_collector_timeouts_total", C, "", "Scrapes in which the collector missed the per-scrape deadline.", COLLECTOR_LABELS, "exporter"),
    _m("fmdiag_exporter_build_info", G, "", "Build information; always 1.", ("version", "python_version"), "exporter"),
    _m("fmdiag_exporter_resident_memory_bytes", G, "bytes", "Resident memory of the exporter process itself (a value that keeps growing is a leak).",
       (), "exporter", "/proc/self/statm"),
    _m("fmdiag_exporter_cpu_seconds_total", C, "seconds", "CPU time (user + system) used by the exporter process itself.",
       (), "exporter", "os.times"),
)


# fmt: on

CATALOG: tuple[Metric, ...] = GPU + EFA + LUSTRE + HOST + STEPS + EXPORTER
BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOG}
SUBSYSTEMS: tuple[str, ...] = ("gpu", "efa", "lustre", "host", "steps", "exporter")

#: Sample-name suffixes a family may expose besides its own name.
_SUFFIXES: dict[MetricType, tuple[str, ...]] = {
    MetricType.HISTOGRAM: ("_bucket", "_count", "_sum", "_created"),
    MetricType.SUMMARY: ("_count", "_sum", "_created"),
    MetricType.COUNTER: ("_created",),
    MetricType.GAUGE: (),
}


def get(name: str) -> Metric:
    """The catalog entry for ``name``; KeyError names the metric when it is not catalogued."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in fmdiag's catalog (fmdiag/catalog.py)") from None


def family_of(sample_name: str) -> Metric | None:
    """The catalogued family a sample name belongs to (``x_bucket`` -> histogram ``x``), if any."""
    if sample_name in BY_NAME:
        return BY_NAME[sample_name]
    for suffix in ("_bucket", "_count", "_sum", "_created"):
        if sample_name.endswith(suffix):
            base = BY_NAME.get(sample_name[: -len(suffix)])
            if base is not None and suffix in _SUFFIXES[base.type]:
                return base
    return None


def by_subsystem(subsystem: str) -> Iterator[Metric]:
    return (m for m in CATALOG if m.subsystem == subsystem)


def _spelled(label: str) -> str:
    """``hostname/Hostname`` for a label an option may spell either way (default first)."""
    return "/".join(LABEL_SPELLINGS.get(label, (label,)))


def to_markdown() -> str:
    """The catalog as the Markdown reference in docs/metrics.md (regenerated, never hand-edited)."""
    out = [
        "# fmdiag metric catalog",
        "",
        "Generated by `fmdiag catalog --format markdown` from `fmdiag/catalog.py`.",
        "",
    ]
    for sub in SUBSYSTEMS:
        out += [f"## {sub}", "", "| name | type | unit | labels | help |", "|---|---|---|---|---|"]
        for m in by_subsystem(sub):
            labels = ", ".join(_spelled(x) for x in m.labels) + (
                f" (+ {', '.join(m.optional_labels)})" if m.optional_labels else ""
            )
            out.append(f"| `{m.name}` | {m.type.value} | {m.unit} | {labels} | {m.help.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
