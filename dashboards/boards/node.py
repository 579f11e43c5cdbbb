"""Node: one node's GPUs, EFA devices, Lustre client, host and training processes."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards.boards import variables
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.panels import RATE, Board, Q, graph, listing, steps
from fmdiag.dashboards.queries import efa, gpu, host, lustre
from fmdiag.dashboards.queries.scope import Scope

KEY = "node"
TITLE = "fmdiag / Node"


def build(c: Config) -> Dashboard:
    s = Scope(cluster="$cluster", node="$node", gpu_index="$gpu")
    t = c.thresholds
    g = "GPU {{gpu}}"
    b = Board(
        c,
        KEY,
        TITLE,
        "One node: is a GPU, an EFA device, the Lustre client or the host the reason its ranks are slow?",
    )
    variables.cluster(b)
    variables.node(b, multi=False)
    variables.gpu(b)
    b.row("GPUs")
    b.add(
        graph(
            "SM activity",
            "Per-GPU SM activity. One GPU lower than its neighbours while the job runs is idle or waiting; "
            "one that is busy but slower (see clocks) is the straggler.",
            [Q(gpu.per_gpu(c, s, "DCGM_FI_PROF_SM_ACTIVE"), g)],
            "percentunit",
            min_val=0,
            max_val=1,
            width=8,
        ),
        graph(
            "SM clock / max",
            "SM clock as a fraction of its maximum. Well below 1 under load means throttling: see the "
            "clock-event bits.",
            [Q(gpu.clock_fraction(c, s), g)],
            "percentunit",
            min_val=0,
            max_val=1.05,
            width=8,
        ),
        graph(
            "HW slowdown bits",
            "1 while the GPU has HW thermal slowdown (0x40) or HW power brake (0x80) set: sustained, its "
            "rank is a straggler (FmdiagGpuHwThermalSlowdown / PowerBrake). SW power cap and SW thermal are "
            "normal under load.",
            [
                Q(gpu.clock_event_bit(c, s, gpu.HW_THERMAL), f"thermal {g}"),
                Q(gpu.clock_event_bit(c, s, gpu.HW_POWER_BRAKE), f"power brake {g}"),
            ],
            "short",
            min_val=0,
            max_val=1,
            width=8,
        ),
        graph(
            "Temperature",
            f"GPU temperature. Above {t.gpu_temp_celsius:g} °C H100s start HW thermal slowdown: check the "
            "node's cooling.",
            [Q(gpu.per_gpu(c, s, "DCGM_FI_DEV_GPU_TEMP"), g)],
            "celsius",
            thresholds=steps(("green", None), ("red", t.gpu_temp_celsius)),
            width=8,
        ),
        graph(
            "Power",
            "Power draw per GPU. A GPU far below its neighbours under the same job is idle or clock-limited.",
            [Q(gpu.per_gpu(c, s, "DCGM_FI_DEV_POWER_USAGE"), g)],
            "watt",
            min_val=0,
            width=8,
        ),
        graph(
            "Memory used",
            "Framebuffer used / (used + free). Near 1 the job risks out-of-memory errors.",
            [Q(gpu.memory_used_ratio(c, s), g)],
            "percentunit",
            min_val=0,
            max_val=1,
            width=8,
        ),
        graph(
            "NVLink and PCIe errors",
            "NVLink CRC/replay/recovery errors and PCIe replays per second. Rising counts mean a degrading "
            "link (FmdiagGpuNvlinkErrors, FmdiagGpuPcieReplays).",
            [
                Q(gpu.nvlink_error_rate(c, s, RATE), f"NVLink {g}"),
                Q(gpu.counter_rate(c, s, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", RATE), f"PCIe {g}"),
            ],
            "short",
            min_val=0,
        ),
        graph(
            "NVLink and PCIe traffic",
            "Bytes per second over NVLink and PCIe per GPU (profiling counters).",
            [
                Q(gpu.per_gpu(c, s, "DCGM_FI_PROF_NVLINK_TX_BYTES"), f"NVLink tx {g}"),
                Q(gpu.per_gpu(c, s, "DCGM_FI_PROF_PCIE_RX_BYTES"), f"PCIe rx {g}"),
            ],
            "Bps",
            min_val=0,
        ),
    )
    b.row("EFA")
    n = Scope(cluster="$cluster", node="$node")
    b.add(
        graph(
            "EFA throughput per device",
            "Bytes per second sent per EFA device. One device far below the others carries less of the "
            "all-reduce: check its retransmits and port state.",
            [Q(efa.device_rate(c, n, "fmdiag_efa_tx_bytes_total", RATE), "tx {{device}}")],
            "Bps",
            min_val=0,
        ),
        graph(
            "EFA retransmits and impaired connections",
            "SRD retransmitted packets per packet sent, and impaired-connection events per second, per "
            "device.",
            [
                Q(efa.retransmit_ratio(c, n, RATE), "retransmit ratio {{device}}"),
                Q(
                    efa.device_rate(c, n, "fmdiag_efa_impaired_remote_conn_events_total", RATE),
                    "impaired/s {{device}}",
                ),
            ],
            "short",
            min_val=0,
        ),
    )
    b.row("Lustre and host")
    b.add(
        graph(
            "Lustre reads",
            "Bytes per second this node reads from each Lustre filesystem.",
            [Q(lustre.fs_rate(c, n, "fmdiag_lustre_llite_read_bytes_total", RATE, per_node=True), "{{fs}}")],
            "Bps",
            min_val=0,
            width=8,
        ),
        graph(
            "OST read latency from this node",
            "Mean ost_read latency per OST from this node's clients.",
            [Q(lustre.ost_latency(c, n, RATE, per_node=True), "{{ost}}")],
            "s",
            min_val=0,
            thresholds=steps(("green", None), ("red", t.lustre_ost_read_latency_seconds)),
            width=8,
        ),
        graph(
            "RPCs in flight",
            "OST RPCs in flight from this node. Pinned at the client's limit (max_rpcs_in_flight) with high "
            "latency: the OST is the bottleneck.",
            [Q(lustre.rpcs_in_flight(c, n), "{{ost}} {{direction}}")],
            "short",
            min_val=0,
            width=8,
        ),
        graph(
            "CPU",
            "Share of the node's CPUs busy and in iowait. Busy near 100% with GPUs idle: the dataloader is "
            "CPU-bound (host). High iowait: it waits for storage (io).",
            [Q(host.cpu_busy(c, n, RATE), "busy"), Q(host.cpu_mode_fraction(c, n, RATE, "iowait"), "iowait")],
            "percentunit",
            min_val=0,
            max_val=1,
            width=8,
        ),
        graph(
            "Pressure stall",
            "Seconds per second tasks stalled on CPU, memory or I/O (PSI). io 'some' near 1: processes "
            "always waiting for storage.",
            [Q(host.pressure(c, n, RATE), "{{resource}} {{kind}}")],
            "percentunit",
            min_val=0,
            width=8,
        ),
        graph(
            "Training processes' CPU",
            "CPU seconds per second of each training process (one core per rank is normal; dataloader "
            "workers add more).",
            [Q(host.process_cpu(c, n, RATE), "{{name}} {{pid}}")],
            "short",
            min_val=0,
            width=8,
        ),
        graph(
            "Training processes' storage reads",
            "Bytes per second each training process reads from storage (dataloaders). Low while data_wait "
            "is high: the reads are slow (storage), not too few.",
            [Q(host.process_read_rate(c, n, RATE), "{{name}} {{pid}}")],
            "Bps",
            min_val=0,
        ),
        graph(
            "Training processes found",
            "Training processes the exporter found on this node (GPU users and process-pattern matches). "
            "Fewer than the node's ranks: a rank exited.",
            [Q(host.training_processes(c, n), "processes")],
            "short",
            min_val=0,
        ),
        listing(
            "Training processes",
            "Training processes on this node: resident memory and GPU.",
            [Q(host.process_memory(c, n), instant=True)],
            "bytes",
            width=24,
        ),
    )
    return b.build()
