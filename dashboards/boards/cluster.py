"""Cluster overview: is the fleet healthy, and is any job slow right now?

Fleet GPU activity and power, health counts (throttled, lost, XIDs, exporters down), EFA and
Lustre throughput and errors, the step time of running jobs, and the firing fmdiag alerts.
"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards.boards import variables
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.panels import RATE, Board, Q, graph, link_to, single, steps
from fmdiag.dashboards.queries import efa, exporter, gpu, lustre
from fmdiag.dashboards.queries import steps as st
from fmdiag.dashboards.queries.scope import Scope

KEY = "cluster"
TITLE = "fmdiag / Cluster overview"


def build(c: Config) -> Dashboard:
    s = Scope(cluster="$cluster")
    t = c.thresholds
    cl = f"{{{{{c.cluster_label}}}}}"
    j = f"{{{{{c.job_label}}}}}"
    b = variables.cluster(
        Board(c, KEY, TITLE, "Fleet health at a glance: GPUs, EFA, Lustre and the step time of running jobs.")
    )
    b.row("Health")
    b.add(
        single(
            "GPUs in HW slowdown",
            "GPUs whose clocks are cut by HW slowdown, thermal slowdown or power brake. Each one is a "
            "straggler for its whole job: open the Node dashboard of the node named in "
            "FmdiagGpuHwThermalSlowdown/PowerBrake.",
            [Q(gpu.throttled_gpu_count(c, s), instant=True)],
            "short",
            thresholds=steps(("green", None), ("orange", 1)),
        ).links([link_to(c, "node", "Node dashboard")]),
        single(
            "GPUs lost",
            "GPUs that answer NVML_ERROR_GPU_IS_LOST (fmdiag exporter only). Any is a page: drain the node "
            "and reboot it.",
            [Q(gpu.lost_gpu_count(c, s), instant=True)],
            "short",
            thresholds=steps(("green", None), ("red", 1)),
        ).links([link_to(c, "node", "Node dashboard")]),
        single(
            "XIDs (1h)",
            "XID errors in the last hour on any GPU, every tier. The XID alerts say which tier (reboot, "
            "reset, restart).",
            [Q(f"sum ({gpu.xid_errors(c, s, '1h')}) or vector(0)", instant=True)],
            "short",
            thresholds=steps(("green", None), ("orange", 1)),
        ),
        single(
            "Exporters down",
            "fmdiag exporter targets Prometheus cannot scrape: those nodes are blind to every other panel "
            "and alert.",
            [Q(exporter.targets_down_count(c, s), instant=True)],
            "short",
            thresholds=steps(("green", None), ("red", 1)),
        ).links([link_to(c, "exporter", "Exporter health")]),
        single(
            "Firing fmdiag alerts",
            "fmdiag alerts firing now (Prometheus' ALERTS series); each alert links its runbook entry.",
            [Q('sum (ALERTS{alertstate="firing",alertname=~"Fmdiag.*"}) or vector(0)', instant=True)],
            "short",
            thresholds=steps(("green", None), ("orange", 1)),
        ),
        single(
            "Running jobs",
            "Training jobs whose ranks report steps (fmdiag_step_last).",
            [Q(f"count ({st.running_jobs(c, s)}) or vector(0)", instant=True)],
            "short",
        ),
    )
    b.row("GPUs")
    b.add(
        graph(
            "GPU activity",
            "Fleet-average SM activity (DCGM_FI_PROF_SM_ACTIVE) and GPU utilisation. Utilisation stays at "
            "100% while a GPU waits in NCCL; SM activity does not, so a gap between them is time spent "
            "waiting, not computing.",
            [
                Q(gpu.fleet_avg(c, s, "DCGM_FI_PROF_SM_ACTIVE"), f"SM active {cl}"),
                Q(f"{gpu.fleet_avg(c, s, 'DCGM_FI_DEV_GPU_UTIL')} / 100", f"GPU util {cl}"),
            ],
            "percentunit",
            min_val=0,
            max_val=1,
        ),
        graph(
            "GPU power",
            "Total GPU power draw. A drop while jobs run means GPUs are idle (waiting for data, the network "
            "or a straggler).",
            [Q(gpu.fleet_power_watts(c, s), cl)],
            "watt",
            min_val=0,
        ),
        graph(
            "GPUs reporting per node",
            "GPUs with series per node, from fmdiag's exporter or a stock dcgm-exporter. A node whose line "
            "drops lost a GPU (fell off the bus, or its exporter stopped serving it): FmdiagGpuMissing.",
            [Q(gpu.gpus_reporting(c, s), f"{{{{{c.gpu_node_label}}}}}")],
            "short",
            min_val=0,
        ),
        graph(
            "GPU power per node",
            "GPU power draw per node. One node far below the others while they run the same job has idle "
            "GPUs (waiting) or clock-limited ones (see the Node dashboard).",
            [Q(gpu.node_power_watts(c, s), f"{{{{{c.gpu_node_label}}}}}")],
            "watt",
            min_val=0,
        ),
    )
    b.row("Fabric and storage")
    b.add(
        graph(
            "EFA throughput",
            "Bytes per second sent and received over EFA by the whole fleet. Collective-heavy jobs move data "
            "in bursts; a sustained drop with the same step count means the fabric slowed.",
            [
                Q(efa.fleet_rate(c, s, "fmdiag_efa_tx_bytes_total", RATE), f"tx {cl}"),
                Q(efa.fleet_rate(c, s, "fmdiag_efa_rx_bytes_total", RATE), f"rx {cl}"),
            ],
            "Bps",
            min_val=0,
            width=8,
        ),
        graph(
            "EFA retransmits",
            "SRD packets retransmitted per packet sent, worst device per node. Above "
            f"{t.efa_retransmit_ratio:.0%} the fabric is degraded (FmdiagEfaRetransmits): if every node "
            "shows it, it is congestion; one node: drain it.",
            [
                Q(
                    f"max by ({c.cluster_label}, {c.node_label}) ({efa.retransmit_ratio(c, s, RATE)})",
                    f"{{{{{c.node_label}}}}}",
                )
            ],
            "percentunit",
            min_val=0,
            thresholds=steps(("green", None), ("red", t.efa_retransmit_ratio)),
            width=8,
        ).links([link_to(c, "efa", "EFA fabric")]),
        graph(
            "Lustre read latency",
            "Mean ost_read RPC latency per OST as the clients see it. Above "
            f"{t.lustre_ost_read_latency_seconds * 1000:g} ms an OST slows every dataloader striped on it "
            "(FmdiagLustreOstLatencyHigh).",
            [Q(lustre.ost_latency(c, s, RATE), "{{fs}} {{ost}}")],
            "s",
            min_val=0,
            thresholds=steps(("green", None), ("red", t.lustre_ost_read_latency_seconds)),
            width=8,
        ).links([link_to(c, "lustre", "Lustre client")]),
        graph(
            "Lustre throughput",
            "Bytes per second read and written through the Lustre clients, per filesystem. Checkpoints show "
            "as write bursts.",
            [
                Q(lustre.fs_rate(c, s, "fmdiag_lustre_llite_read_bytes_total", RATE), "read {{fs}}"),
                Q(lustre.fs_rate(c, s, "fmdiag_lustre_llite_write_bytes_total", RATE), "write {{fs}}"),
            ],
            "Bps",
            min_val=0,
            width=24,
        ),
    )
    b.row("Jobs")
    b.add(
        graph(
            "Step time (p50, p99)",
            "Median and 99th-percentile step time of every running job (recorded by fmdiag-recording). A "
            "rise without a code change is a regression: open the Training job dashboard.",
            [
                Q(st.recorded(c, s, st.quantile_record(0.5)), f"p50 {j}"),
                Q(st.recorded(c, s, st.quantile_record(0.99)), f"p99 {j}"),
            ],
            "s",
            min_val=0,
        ).links([link_to(c, "job", "Training job")]),
        graph(
            "Live bottleneck",
            "Fraction of each job's wall time lost to each bottleneck class (fmdiag's stall signal). The "
            "largest non-compute class is where the time goes.",
            [Q(st.recorded(c, s, st.STALL_RECORD, 'stall!="compute"'), f"{j} {{{{stall}}}}")],
            "percentunit",
            min_val=0,
            thresholds=steps(("green", None), ("orange", t.stall_fraction)),
        ).links([link_to(c, "job", "Training job")]),
    )
    return b.build()
