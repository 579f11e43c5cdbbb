"""The node metrics the diagnosis and its reports read, so readers can drop the rest early.

A 512-node dump holds ~140 million metric rows (every DCGM, EFA, Lustre and host series); the
verdicts and the HTML overlays read sixteen metrics. Filtering in Arrow, before the conversion to
pandas, is what keeps a 4,096-rank diagnosis inside its time and memory. A test checks that
every metric name the consuming modules mention is listed here.
"""

from __future__ import annotations

USED: frozenset[str] = frozenset(
    {
        # verdicts: hardware cause of a straggler; HTML: the culprit GPU against its peers
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
        "DCGM_FI_DEV_SM_CLOCK",
        "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        # verdicts: where an EFA device sits (its NUMA node and the GPUs on it)
        "fmdiag_efa_info",
        "fmdiag_gpu_info",
        # verdicts: the EFA device with the errors, and throughput against line rate
        "fmdiag_efa_tx_bytes_total",
        "fmdiag_efa_port_rate_bytes_per_second",
        "fmdiag_efa_retrans_packets_total",
        "fmdiag_efa_impaired_remote_conn_events_total",
        "fmdiag_efa_unresponsive_remote_events_total",
        "fmdiag_efa_rx_drops_total",
        # verdicts: io or host (iowait against busy CPUs; PSI io and cpu stall shares as evidence)
        "fmdiag_host_cpu_seconds_total",
        "fmdiag_host_pressure_stall_seconds_total",
        # verdicts: the slow OST
        "fmdiag_lustre_osc_operation_latency_max_seconds",
    }
)
