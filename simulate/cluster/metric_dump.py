"""The metric dump: what Prometheus would hold after scraping every node's exporter.

One Parquet file per subsystem (``metrics/<subsystem>.parquet``) in long form: columns
``timestamp`` (float64 Unix seconds), ``metric`` (the exposed sample name), ``value``
(float64) and one string column per label used in that file, ``""`` where a label does not
apply — the shape of a Prometheus ``query_range`` answer flattened, which ``fmdiag collect``
writes too. Names and labels are the catalog's, as the exporters emit them, plus
``instance`` (the node's host name). Rows are grouped by series, in time order within one.
String columns are dictionary-encoded (pandas reads them as categoricals).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from fmdiag import catalog, dumpformat
from fmdiag.catalog import CLOCK_EVENT_REASONS, EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS, STEP_DURATION_BUCKETS
from fmdiag.exporters.gpu_state_file import DEFAULT_DRIVER_VERSION
from fmdiag.simulate.cluster.instruments import (
    EFA_SRD_COUNTERS,
    FB_RESERVED_MIB,
    FB_TOTAL_MIB,
    HW_COUNTERS_LIFESPAN_MS,
    LLITE_OPS,
    MDC_OPS,
    MIB,
    OSC_OPS,
    POWER_LIMIT_MW,
    PROCESS_OVERHEAD_MIB,
    RSS_BYTES,
)
from fmdiag.simulate.cluster.model import NS, Chunk, ClusterModel
from fmdiag.simulate.cluster.signals import CPU_MODES, Signals, SignalSamples, op_bounds

F64 = npt.NDArray[np.float64]
#: Rows per Parquet row group, and per piece the table is built in.
ROW_GROUP_ROWS = 1 << 20

#: DCGM field -> the snapshot's GPU signal (or a constant).
_DCGM_SIGNALS: dict[str, str | float] = {
    "DCGM_FI_DEV_SM_CLOCK": "sm_clock",
    "DCGM_FI_DEV_MEM_CLOCK": "mem_clock",
    "DCGM_FI_DEV_GPU_TEMP": "temp",
    "DCGM_FI_DEV_MEMORY_TEMP": "mem_temp",
    "DCGM_FI_DEV_POWER_USAGE": "power_w",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": POWER_LIMIT_MW / 1000,
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "energy_mj",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0.0,
    "DCGM_FI_DEV_GPU_UTIL": "util_gpu",
    "DCGM_FI_DEV_MEM_COPY_UTIL": "util_mem",
    "DCGM_FI_DEV_ENC_UTIL": 0.0,
    "DCGM_FI_DEV_DEC_UTIL": 0.0,
    "DCGM_FI_DEV_XID_ERRORS": 0.0,
    "DCGM_FI_DEV_FB_FREE": "fb_free",
    "DCGM_FI_DEV_FB_USED": "fb_used",
    "DCGM_FI_DEV_FB_RESERVED": float(FB_RESERVED_MIB),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "gr_active",
    "DCGM_FI_PROF_SM_ACTIVE": "sm_active",
    "DCGM_FI_PROF_SM_OCCUPANCY": "sm_occupancy",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": "tensor_active",
    "DCGM_FI_PROF_DRAM_ACTIVE": "dram_active",
    "DCGM_FI_PROF_PCIE_TX_BYTES": "pcie_tx",
    "DCGM_FI_PROF_PCIE_RX_BYTES": "pcie_rx",
    "DCGM_FI_PROF_NVLINK_TX_BYTES": "nvlink_tx",
    "DCGM_FI_PROF_NVLINK_RX_BYTES": "nvlink_rx",
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": 0.0,
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": 0.0,
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL": 0.0,
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL": 0.0,
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 0.0,
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0.0,
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0.0,
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": "reasons",
    # in ns, as NVML, DCGM and fmdiag's exporter count them (the signals are in us)
    "DCGM_FI_DEV_POWER_VIOLATION": "power_violation_ns",
    "DCGM_FI_DEV_THERMAL_VIOLATION": "thermal_violation_ns",
    "DCGM_FI_DEV_SYNC_BOOST_VIOLATION": 0.0,
    "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION": 0.0,
    "DCGM_FI_DEV_LOW_UTIL_VIOLATION": 0.0,
    "DCGM_FI_DEV_RELIABILITY_VIOLATION": 0.0,
}
_BYTES_LINES = ("read_bytes", "write_bytes")
#: ptlrpc lines counted in requests, not time (the renderer prints them as [reqs]).
_COUNT_LINES = ("req_active", "ldlm_ibits_enqueue")
_PAGE_BOUNDS = tuple(1 << i for i in range(11))


class _Table:
    """Series of one subsystem: values [T, M] per block plus per-series labels."""

    def __init__(self, times_s: F64, instances: Sequence[str]) -> None:
        self.times = times_s
        self.instances = list(instances)
        self.blocks: list[tuple[str, F64, dict[str, Sequence[str]]]] = []

    def add(
        self, metric: str, values: F64, labels: Mapping[str, Sequence[str] | str], node_axis: bool = True
    ) -> None:
        """``values`` [T, N, ...]: one series per trailing index; ``labels`` per series or constant.

        Per-series label lists are in the flattened order of ``values.shape[1:]``.
        """
        spec = catalog.family_of(metric)
        if spec is None:
            raise ValueError(f"{metric} is not in fmdiag's catalog")
        T = len(self.times)
        v = np.asarray(values, dtype=np.float64).reshape(T, -1)
        M = v.shape[1]
        allowed = set(spec.all_labels) | {dumpformat.BUCKET_LABEL}
        per_series: dict[str, Sequence[str]] = {}
        for key, val in labels.items():
            if key not in allowed:
                raise ValueError(f"{metric}: label {key!r} is not catalogued")
            per_series[key] = [val] * M if isinstance(val, str) else list(val)
            if len(per_series[key]) != M:
                raise ValueError(f"{metric}: {len(per_series[key])} values for label {key}, {M} series")
        missing = [k for k in spec.labels if k not in per_series]
        if missing:
            raise ValueError(f"{metric}: labels {missing} missing")
        if node_axis:
            per_node = M // len(self.instances)
            per_series[dumpformat.INSTANCE.name] = [h for h in self.instances for _ in range(per_node)]
        self.blocks.append((metric, v, per_series))

    def to_arrow(self, max_rows: int = ROW_GROUP_ROWS) -> Iterator[pa.Table]:
        """The table in pieces of whole series, each at most about ``max_rows`` rows.

        Pieces keep every series whole and in time order (the documented layout) while the
        columns of a large dump are never all in memory at once.
        """
        T = len(self.times)
        keys: list[str] = [dumpformat.INSTANCE.name]
        for _, _, labels in self.blocks:
            keys += [k for k in labels if k not in keys]
        metrics = [m for m, v, _ in self.blocks for _ in range(v.shape[1])]
        values = np.concatenate([v for _, v, _ in self.blocks], axis=1)  # [T, M]
        label_cols = {
            key: [
                x
                for _, v, labels in self.blocks
                for x in (labels.get(key) or [dumpformat.NO_LABEL] * v.shape[1])
            ]
            for key in keys
        }
        M = values.shape[1]
        per_piece = max(1, max_rows // max(T, 1))
        for lo in range(0, M, per_piece):
            hi = min(M, lo + per_piece)
            part = values[:, lo:hi].T.ravel()
            keep = ~np.isnan(part)
            columns: dict[str, pa.Array] = {
                dumpformat.TIMESTAMP.name: pa.array(np.tile(self.times, hi - lo)[keep]),
                dumpformat.METRIC.name: _dict_column(metrics[lo:hi], T, keep),
                dumpformat.VALUE.name: pa.array(part[keep]),
            }
            for key in keys:
                columns[key] = _dict_column(label_cols[key][lo:hi], T, keep)
            yield pa.table(columns)


def _dict_column(per_series: Sequence[str], T: int, keep: npt.NDArray[np.bool_]) -> pa.Array:
    uniq, codes = np.unique(np.asarray(per_series, dtype=object), return_inverse=True)
    idx = np.repeat(codes.astype(np.int32), T)[keep]
    return pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(list(uniq), pa.string()))


def sample_times(chunk: Chunk, interval_s: float) -> npt.NDArray[np.int64]:
    """Scrape instants (ns from the job's start) from the start to just past the last step."""
    last = int(chunk.end.max())
    step = round(interval_s * NS)
    return np.arange(0, last + step, step, dtype=np.int64)


#: Most samples one dump's metrics/ may hold: the snapshot is evaluated in memory at once.
MAX_SAMPLES = 200_000_000


def check_size(model: ClusterModel, chunk: Chunk, interval_s: float) -> None:
    """Refuse, before anything is written, a metrics/ that would not fit in memory."""
    hw = model.hw
    per_node = 60 * hw.gpus_per_node + 45 * hw.efa_devices + 40 * hw.osts_per_fs * hw.lustre_filesystems + 100
    scrapes = int(chunk.end.max()) // round(interval_s * NS) + 2
    if scrapes * hw.nodes * per_node > MAX_SAMPLES:
        raise ValueError(
            f"metrics/ would hold about {scrapes * hw.nodes * per_node:.3g} samples ({scrapes} scrapes x "
            f"{hw.nodes} nodes x ~{per_node} series), more than {MAX_SAMPLES:.0e}: raise "
            "--scrape-interval, lower --steps or --nodes, or use --no-metrics"
        )


def write_metrics(
    out: Path,
    model: ClusterModel,
    chunk: Chunk,
    signals: Signals,
    start_ns: int,
    interval_s: float,
    job: str,
) -> dict[str, int]:
    """Write every subsystem's Parquet file; returns rows written per subsystem."""
    out.mkdir(parents=True, exist_ok=True)
    t = sample_times(chunk, interval_s)
    snap = signals.at(t)
    times_s = (start_ns + t) / 1e9
    hosts = model.topo.hostnames
    rows = {}
    builders = {
        "gpu": _gpu,
        "efa": _efa,
        "lustre": _lustre,
        "host": _host,
    }
    for name, build in builders.items():
        table = _Table(times_s, hosts)
        build(table, model, snap)
        rows[name] = _write(out, name, table)
    table = _Table(times_s, hosts)
    _steps(table, model, chunk, t, start_ns, job)
    rows["steps"] = _write(out, "steps", table)
    return rows


def _write(out: Path, subsystem: str, table: _Table) -> int:
    """Write one subsystem's file piece by piece, checked against the core's schema first."""
    path = out / f"{subsystem}{dumpformat.METRICS_SUFFIX}"
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        for piece in table.to_arrow():
            if writer is None:
                schema = {f.name: str(f.type) for f in piece.schema}
                dumpformat.check_metrics_schema(str(path), subsystem, schema)
                writer = pq.ParquetWriter(path, piece.schema, compression="zstd")
            writer.write_table(piece, row_group_size=ROW_GROUP_ROWS)
            rows += piece.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _gpu(table: _Table, model: ClusterModel, snap: SignalSamples) -> None:
    topo, hw = model.topo, model.hw
    labels: dict[str, list[str]] = {k: [] for k in catalog.GPU_LABELS}
    for node, host in enumerate(topo.hostnames):
        for g in topo.gpus(node):
            labels["gpu"].append(str(g.index))
            labels["UUID"].append(g.uuid)
            labels["pci_bus_id"].append(g.pci_bus_id)
            labels["device"].append(f"nvidia{g.index}")
            labels["modelName"].append(hw.gpu_name)
            labels["Hostname"].append(host)
    shape = snap.gpu["sm_clock"].shape
    gs = dict(snap.gpu)
    gs["fb_free"] = FB_TOTAL_MIB - FB_RESERVED_MIB - gs["fb_used"]
    gs["power_violation_ns"] = gs["power_violation_us"] * 1000.0
    gs["thermal_violation_ns"] = gs["thermal_violation_us"] * 1000.0
    for name, src in _DCGM_SIGNALS.items():
        values = np.full(shape, src) if isinstance(src, float) else gs[src]
        table.add(name, values, dict(labels))
    table.add("DCGM_FI_DEV_MAX_SM_CLOCK", np.full(shape, float(hw.sm_clock_mhz)), dict(labels))
    reasons = gs["reasons"].astype(np.int64)
    for bit, reason in CLOCK_EVENT_REASONS.items():
        active = ((reasons & bit) != 0).astype(float)
        table.add("fmdiag_gpu_clocks_event_active", active, {**labels, "reason": reason})
    table.add("fmdiag_gpu_devices", np.full(shape[:2], float(hw.gpus_per_node)), {})
    numa = {(n, g.index): str(g.numa_node) for n in range(hw.nodes) for g in topo.gpus(n)}
    info = {
        **labels,
        "driver_version": DEFAULT_DRIVER_VERSION,
        "vbios_version": "",
        "numa_node": [numa[(n, g)] for n in range(hw.nodes) for g in range(hw.gpus_per_node)],
        "pci_switch": "",
    }
    table.add("fmdiag_gpu_info", np.ones(shape), info)
    lost = {k: labels[k] for k in ("gpu", "UUID", "pci_bus_id", "Hostname")}
    table.add("fmdiag_gpu_lost", np.zeros(shape), lost)
    pids = [str(topo.pid(int(g))) for g in labels["gpu"]]
    proc_mem = np.floor(gs["fb_used"] - PROCESS_OVERHEAD_MIB) * MIB
    table.add(
        "fmdiag_gpu_process_memory_bytes",
        proc_mem,
        {"gpu": labels["gpu"], "UUID": labels["UUID"], "pid": pids},
    )


def _efa(table: _Table, model: ClusterModel, snap: SignalSamples) -> None:
    topo, hw = model.topo, model.hw
    devs = [d for node in range(hw.nodes) for d in topo.efa(node)]
    dev_names = [d.name for d in devs]
    port = {"device": dev_names, "port": "1"}
    for f, (metric, _) in EFA_PORT_COUNTERS.items():
        if f in EFA_SRD_COUNTERS and not hw.efa_srd_counters:
            continue
        table.add(metric, np.floor(snap.efa[f]), port)
    for f, (metric, _) in EFA_DEVICE_COUNTERS.items():
        table.add(metric, np.floor(snap.efa[f]), {"device": dev_names})
    shape = snap.efa["tx_bytes"].shape
    table.add("fmdiag_efa_port_state_id", np.full(shape, 4.0), port)
    table.add("fmdiag_efa_port_physical_state_id", np.full(shape, 5.0), port)
    rate = round(hw.efa_node_gbps / hw.efa_devices) * 1e9 / 8
    table.add("fmdiag_efa_port_rate_bytes_per_second", np.full(shape, rate), port)
    lifespan = HW_COUNTERS_LIFESPAN_MS / 1000
    table.add("fmdiag_efa_hw_counters_lifespan_seconds", np.full(shape, lifespan), port)
    table.add(
        "fmdiag_efa_info",
        np.ones(shape),
        {
            "device": dev_names,
            "fw_ver": "0.0.0.0",
            "node_guid": [d.node_guid for d in devs],
            "pci_address": [d.pci_address for d in devs],
            "numa_node": [str(d.numa_node) for d in devs],
            "link_layer": "Unknown",  # what the EFA driver's ports/1/link_layer says
        },
    )
    table.add("fmdiag_efa_devices", np.full(shape[:2], float(hw.efa_devices)), {})


def _lustre(table: _Table, model: ClusterModel, snap: SignalSamples) -> None:
    topo, hw = model.topo, model.hw
    ver = hw.lustre_version
    N = hw.nodes
    layout = "proc" if ver == "2.10" else "debugfs"
    for fs in topo.filesystems:
        mounts = [topo.superblock_id(n, fs.index) for n in range(N)]
        base = {"fs": fs.fsname, "mount_id": mounts}
        osc_lab = {
            "fs": fs.fsname,
            "mount_id": [m for m in mounts for _ in range(fs.osts)],
            "ost": [f"OST{o:04X}" for _ in range(N) for o in range(fs.osts)],
        }
        osc = snap.osc[fs.index]
        _stats(table, "osc", osc, tuple(OSC_OPS), osc_lab)
        for direction in ("read", "write"):
            lab = {**osc_lab, "direction": direction}
            table.add("fmdiag_lustre_osc_rpcs_in_flight", osc[f"{direction}_rpcs_in_flight"], lab)
            table.add("fmdiag_lustre_osc_pending_pages", osc[f"pending_{direction}_pages"], lab)
            count = np.floor(osc[f"{direction}_pages_per_rpc"])
            pages = (model.wl.read_rpc_bytes if direction == "read" else model.wl.write_rpc_bytes) // 4096
            for bound in _PAGE_BOUNDS:
                table.add(
                    "fmdiag_lustre_osc_pages_per_rpc_bucket",
                    count * (bound >= pages),
                    {**lab, "le": repr(float(bound))},
                )
            table.add("fmdiag_lustre_osc_pages_per_rpc_bucket", count, {**lab, "le": "+Inf"})
            table.add("fmdiag_lustre_osc_pages_per_rpc_count", count, lab)
        lli = snap.llite[fs.index]
        lines = tuple(x for x in LLITE_OPS if not (ver == "2.10" and x in ("read", "write")))
        _stats(table, "llite", lli, lines, base, counts_only=ver == "2.10")
        table.add("fmdiag_lustre_llite_read_ahead_hits_total", lli["read_ahead.hits"], base)
        table.add("fmdiag_lustre_llite_read_ahead_misses_total", lli["read_ahead.misses"], base)
        for reason in ("readpage_not_consecutive", "miss_inside_window"):
            table.add(
                "fmdiag_lustre_llite_read_ahead_events_total",
                lli[f"read_ahead.{reason}"],
                {**base, "reason": reason},
            )
        table.add("fmdiag_lustre_client_info", np.ones((len(table.times), N)), {**base, "layout": layout})
        mdc_lab = {**base, "mdt": "MDT0000"}
        _stats(table, "mdc", snap.mdc[fs.index], tuple(MDC_OPS), mdc_lab)
    table.add("fmdiag_lustre_filesystems", np.full((len(table.times), N), float(len(topo.filesystems))), {})


def _stats(
    table: _Table,
    kind: str,
    stats: dict[str, F64],
    lines: Sequence[str],
    labels: dict[str, Sequence[str] | str],
    counts_only: bool = False,
) -> None:
    """A stats file's families, as the Lustre collector derives them from each line."""
    prefix = f"fmdiag_lustre_{kind}_"
    for line in lines:
        op = {**labels, "operation": line}
        table.add(prefix + "operations_total", np.floor(stats[f"{line}.count"]), op)
        if line in _BYTES_LINES:
            table.add(prefix + line + "_total", np.floor(stats[f"{line}.sum"]), labels)
        elif line not in _COUNT_LINES and not counts_only:
            table.add(prefix + "operation_latency_seconds_total", np.floor(stats[f"{line}.sum"]) / 1e6, op)
            lo, hi = op_bounds(stats, line)
            table.add(prefix + "operation_latency_max_seconds", hi / 1e6, op)
            table.add(prefix + "operation_latency_min_seconds", lo / 1e6, op)


def _host(table: _Table, model: ClusterModel, snap: SignalSamples) -> None:
    hw, topo = model.hw, model.topo
    T, N, G = len(table.times), hw.nodes, hw.gpus_per_node
    h = snap.host
    for mode in CPU_MODES:
        table.add("fmdiag_host_cpu_seconds_total", h[mode], {"mode": mode})
    table.add("fmdiag_host_cpus", np.full((T, N), float(hw.ncpus)), {})
    for res in ("cpu", "memory", "io"):
        for kind in ("some", "full"):
            table.add(
                "fmdiag_host_pressure_stall_seconds_total",
                np.floor(h[f"pressure.{res}.{kind}"]) / 1e6,
                {"resource": res, "kind": kind},
            )
    table.add("fmdiag_host_training_processes", np.full((T, N), float(G)), {})
    proc = {
        "pid": [str(topo.pid(lr)) for _ in range(N) for lr in range(G)],
        "name": "python3",
        "gpu": [str(lr) for _ in range(N) for lr in range(G)],
    }
    p = snap.proc
    for mode in ("user", "system", "iowait"):
        table.add("fmdiag_process_cpu_seconds_total", p[mode], {**proc, "mode": mode})
    rss = np.array([RSS_BYTES + 7919 * 4096 * lr for lr in range(G)], float)
    table.add("fmdiag_process_resident_memory_bytes", np.broadcast_to(rss, (T, N, G)), proc)
    table.add("fmdiag_process_read_bytes_total", np.floor(p["read_bytes"]), proc)
    table.add("fmdiag_process_write_bytes_total", np.floor(p["write_bytes"]), proc)
    table.add("fmdiag_process_threads", np.full((T, N, G), 64.0 + model.wl.loader_workers), proc)
    # The processes started 90 s before the first step; the first scrape is at that step.
    table.add("fmdiag_process_start_time_seconds", np.full((T, N, G), float(table.times[0]) - 90.0), proc)


def _steps(
    table: _Table, model: ClusterModel, c: Chunk, t: npt.NDArray[np.int64], start_ns: int, job: str
) -> None:
    """What the steps collector exports from the step records completed by each scrape."""
    hw = model.hw
    T, R, S = len(t), hw.world_size, c.nsteps
    # done[T, R]: steps each rank has completed at each scrape.
    done = np.empty((T, R), np.int64)
    for r in range(R):
        done[:, r] = np.searchsorted(c.end[:, r], t, side="right")
    cols = np.arange(R)[None, :]
    last = np.clip(done - 1, 0, S - 1)
    has = done > 0
    dur = (c.end - c.start) / NS  # [S, R]
    ranks = [str(r) for r in range(R)]
    job_label, rank_label = catalog.STEP_LABELS
    lab = {job_label: job, rank_label: ranks}

    def cum(x: F64) -> F64:
        return np.concatenate([np.zeros((1, R)), np.cumsum(x, axis=0)])[done, cols]

    nan = np.nan
    table.add("fmdiag_step_last", np.where(has, c.steps[last].astype(float), nan), lab)
    table.add("fmdiag_step_last_duration_seconds", np.where(has, dur[last, cols], nan), lab)
    table.add(
        "fmdiag_step_last_end_timestamp_seconds",
        np.where(has, (start_ns + c.end[last, cols]) / 1e9, nan),
        lab,
    )
    for phase, ns in c.phases().items():
        table.add("fmdiag_step_phase_seconds_total", cum(ns / NS), {**lab, "phase": phase})
    wl = model.wl
    per_step = np.ones((S, R))
    table.add("fmdiag_step_tokens_total", cum(per_step * wl.samples_per_rank * wl.tokens_per_sample), lab)
    table.add("fmdiag_step_samples_total", cum(per_step * wl.samples_per_rank), lab)
    table.add("fmdiag_step_records_dropped_total", np.zeros((T, R)), lab)
    for bound in STEP_DURATION_BUCKETS:
        table.add(
            "fmdiag_step_duration_seconds_bucket",
            cum((dur <= bound).astype(float)),
            {**lab, "le": repr(float(bound))},
        )
    table.add("fmdiag_step_duration_seconds_bucket", done.astype(float), {**lab, "le": "+Inf"})
    table.add("fmdiag_step_duration_seconds_count", done.astype(float), lab)
    table.add("fmdiag_step_duration_seconds_sum", cum(dur), lab)
    N = hw.nodes
    table.add("fmdiag_step_spool_files", np.full((T, N), float(hw.gpus_per_node)), {})
    table.add("fmdiag_step_series_dropped_total", np.zeros((T, N)), {})
