"""GPU queries: dcgm-exporter's names and labels only, except where a name says ``fmdiag_``.

Everything here but the fmdiag-only health series (lost, device count, decoded XID counts)
works unchanged on a stock dcgm-exporter, so an existing DCGM deployment gets the dashboards,
with its node label spelled ``hostname`` (4.5.3 and later) or ``Hostname`` (before): every GPU
series is read through :func:`~fmdiag.dashboards.queries.scope.gpu_vector`.
PromQL has no bitwise operators: a bit of the clock-event bitmask is ``floor(x / bit) % 2``.
"""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries.scope import Scope, by, gpu_vector

#: Clock event reason bits (nvmlClocksEventReason*) that make a GPU a straggler.
HW_SLOWDOWN, HW_THERMAL, HW_POWER_BRAKE = 0x8, 0x40, 0x80


def gpu_labels(c: Config) -> tuple[str, ...]:
    """The labels that name one GPU in every aggregation."""
    return (c.cluster_label, c.gpu_node_label, "gpu", "UUID")


def series(c: Config, s: Scope, metric: str, extra: str = "") -> str:
    """The raw series of ``metric`` in scope, the node label under its current spelling."""
    return gpu_vector(c, s, lambda sel: f"{metric}{sel}", extra)


def per_gpu(c: Config, s: Scope, metric: str) -> str:
    """One series per GPU, aggregated to the GPU's labels (drops the scrape job's labels)."""
    return f"max {by(*gpu_labels(c))} ({series(c, s, metric)})"


def fleet_avg(c: Config, s: Scope, metric: str) -> str:
    return f"avg {by(c.cluster_label)} ({series(c, s, metric)})"


def fleet_power_watts(c: Config, s: Scope) -> str:
    return f"sum {by(c.cluster_label)} ({series(c, s, 'DCGM_FI_DEV_POWER_USAGE')})"


def node_power_watts(c: Config, s: Scope) -> str:
    return f"sum {by(c.cluster_label, c.gpu_node_label)} ({series(c, s, 'DCGM_FI_DEV_POWER_USAGE')})"


def memory_used_ratio(c: Config, s: Scope) -> str:
    labels = by(*gpu_labels(c))
    used = f"max {labels} ({series(c, s, 'DCGM_FI_DEV_FB_USED')})"
    free = f"max {labels} ({series(c, s, 'DCGM_FI_DEV_FB_FREE')})"
    return f"{used} / ({used} + {free})"


def clock_fraction(c: Config, s: Scope) -> str:
    """SM clock as a fraction of its maximum: a throttled GPU sits well below 1."""
    return f"{per_gpu(c, s, 'DCGM_FI_DEV_SM_CLOCK')} / {per_gpu(c, s, 'DCGM_FI_DEV_MAX_SM_CLOCK')}"


def clock_event_bit(c: Config, s: Scope, bit: int) -> str:
    """1 on GPUs whose clock-event bitmask has ``bit`` set, 0 on the others."""
    return f"floor({per_gpu(c, s, 'DCGM_FI_DEV_CLOCKS_EVENT_REASONS')} / {bit}) % 2"


def hw_slowdown_gpus(c: Config, s: Scope) -> str:
    """GPUs in HW slowdown, HW thermal slowdown or HW power brake right now (value 1)."""
    bits = " or ".join(
        f"({clock_event_bit(c, s, bit)} == 1)" for bit in (HW_THERMAL, HW_POWER_BRAKE, HW_SLOWDOWN)
    )
    return bits


def throttled_gpu_count(c: Config, s: Scope) -> str:
    return f"count {by(c.cluster_label)} ({hw_slowdown_gpus(c, s)}) or vector(0)"


def xid_errors(c: Config, s: Scope, window: str, action: str = ".+") -> str:
    """XID errors in ``window`` by code and NVIDIA's resolution tier (fmdiag's counter)."""
    matcher = f'action=~"{action}"'
    increase = gpu_vector(c, s, lambda sel: f"increase(fmdiag_gpu_xid_errors_total{sel}[{window}])", matcher)
    return f"sum {by(*gpu_labels(c), 'xid', 'action')} ({increase})"


def xid_count_dcgm(c: Config, s: Scope, xids: str) -> str:
    """dcgm-exporter's own XID count over its window (DCGM_EXP_XID_ERRORS_COUNT), for ``xids``."""
    counts = series(c, s, "DCGM_EXP_XID_ERRORS_COUNT", f'xid=~"{xids}"')
    return f"max {by(*gpu_labels(c), 'xid')} ({counts})"


def counter_increase(c: Config, s: Scope, metric: str, window: str) -> str:
    increase = gpu_vector(c, s, lambda sel: f"increase({metric}{sel}[{window}])")
    return f"sum {by(*gpu_labels(c))} ({increase})"


def counter_rate(c: Config, s: Scope, metric: str, window: str) -> str:
    rate = gpu_vector(c, s, lambda sel: f"rate({metric}{sel}[{window}])")
    return f"sum {by(*gpu_labels(c))} ({rate})"


NVLINK_ERRORS = (
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
    # NVLink 5 (Blackwell) names its errors anew: errors left after FEC, and link recoveries.
    "DCGM_FI_DEV_NVLINK_COUNT_EFFECTIVE_ERRORS",
    "DCGM_FI_DEV_NVLINK_COUNT_LINK_RECOVERY_EVENTS",
)


def nvlink_error_rate(c: Config, s: Scope, window: str) -> str:
    """NVLink CRC, replay and recovery errors per second, summed over the counters of NVLink 4 and 5."""
    return " + ".join(
        f"({counter_rate(c, s, m, window)} or {per_gpu(c, s, 'DCGM_FI_DEV_GPU_TEMP')} * 0)"
        for m in NVLINK_ERRORS
    )


def gpu_devices(c: Config, s: Scope) -> str:
    """GPUs NVML enumerates per node (fmdiag's exporter only)."""
    return f"max {by(c.cluster_label, c.node_label)} (fmdiag_gpu_devices{s.fmdiag(c)})"


def gpus_reporting(c: Config, s: Scope) -> str:
    """GPUs with series per node, whichever exporter serves them."""
    return f"count {by(c.cluster_label, c.gpu_node_label)} ({per_gpu(c, s, 'DCGM_FI_DEV_GPU_TEMP')})"


def lost_gpus(c: Config, s: Scope) -> str:
    return f"max {by(*gpu_labels(c))} ({series(c, s, 'fmdiag_gpu_lost')}) == 1"


def lost_gpu_count(c: Config, s: Scope) -> str:
    return f"count {by(c.cluster_label)} ({lost_gpus(c, s)}) or vector(0)"
