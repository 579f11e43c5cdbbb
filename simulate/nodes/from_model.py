"""The model's signals at one instant, as the NodeState snapshots the tree writers render.

Only assembly happens here: every number comes from :mod:`fmdiag.simulate.cluster.signals`, so a
node tree, its GPU state file and a metric dump of the same instant agree exactly.
"""

from __future__ import annotations

import numpy as np

from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState
from fmdiag.simulate.cluster.instruments import (
    EFA_SRD_COUNTERS,
    FB_RESERVED_MIB,
    FB_TOTAL_MIB,
    LLITE_OPS,
    MDC_OPS,
    MIB,
    OSC_OPS,
    POWER_LIMIT_MW,
    PROCESS_OVERHEAD_MIB,
    RSS_BYTES,
)
from fmdiag.simulate.cluster.signals import (
    CPU_MODES,
    EFA_DEVICE_FILES,
    EFA_PORT_FILES,
    Signals,
    SignalSamples,
    op_bounds,
)
from fmdiag.simulate.nodes.readings import (
    EfaDeviceState,
    HostState,
    LustreFsState,
    LustreTargetState,
    NodeState,
    OpStat,
    ProcessState,
)

#: read_ahead_stats reasons besides hits/misses, as Lustre spells them.
_READ_AHEAD = {
    "readpage_not_consecutive": "readpage not consecutive",
    "miss_inside_window": "miss inside window",
}


def _i(x: float | np.floating) -> int:
    return int(np.floor(float(x)))


def _unit(unit: str, version: str) -> str:
    return "usec" if unit == "usecs" and version == "2.10" else unit


def _op(
    stats: dict[str, np.ndarray],
    key: str,
    idx: tuple[int, ...],
    unit: str,
    version: str,
    has_sums: bool = True,
) -> OpStat:
    """One stats line from the ``<op>.<field>`` arrays at ``idx``."""
    count = _i(stats[f"{key}.count"][idx])
    if not has_sums:
        return OpStat(count=count, unit="regs")
    total = _i(stats[f"{key}.sum"][idx])
    mean = total / count if count else 0.0
    sumsq_arr = stats.get(f"{key}.sumsq")
    sumsq = _i(sumsq_arr[idx]) if sumsq_arr is not None else _i(count * mean * mean * 1.3)
    lo, hi = op_bounds(stats, key)
    if count == 0:
        total = sumsq = 0
    return OpStat(
        count=count,
        unit=_unit(unit, version),
        min=_i(lo[idx]),
        max=_i(hi[idx]),
        sum=total,
        sumsq=max(sumsq, 0),
    )


def node_states(sig: Signals, snap: SignalSamples, start_ns: int, i: int = 0) -> list[NodeState]:
    """Every node's state at the snapshot's ``i``-th instant (``start_ns``: the job's Unix start)."""
    return [node_state(sig, snap, start_ns, node, i) for node in range(sig.N)]


def node_state(sig: Signals, snap: SignalSamples, start_ns: int, node: int, i: int = 0) -> NodeState:
    m = sig.model
    hw, topo, wl = m.hw, m.topo, m.wl
    time_s = (start_ns + int(snap.t_ns[i])) / 1e9
    host = topo.hostnames[node]
    g = snap.gpu
    gpus = []
    for info in topo.gpus(node):
        k = (i, node, info.index)
        gpus.append(
            GpuState(
                index=info.index,
                uuid=info.uuid,
                pci_bus_id=info.pci_bus_id,
                name=hw.gpu_name,
                sm_clock_mhz=_i(g["sm_clock"][k]),
                mem_clock_mhz=_i(g["mem_clock"][k]),
                max_sm_clock_mhz=hw.sm_clock_mhz,
                temperature_c=_i(g["temp"][k]),
                memory_temperature_c=_i(g["mem_temp"][k]),
                power_mw=_i(g["power_w"][k] * 1000),
                power_limit_mw=POWER_LIMIT_MW,
                energy_mj=_i(g["energy_mj"][k]),
                util_gpu_pct=_i(g["util_gpu"][k]),
                util_mem_pct=_i(g["util_mem"][k]),
                fb_total_mib=FB_TOTAL_MIB,
                fb_used_mib=_i(g["fb_used"][k]),
                fb_reserved_mib=FB_RESERVED_MIB,
                clocks_event_reasons=_i(g["reasons"][k]),
                sm_active=float(g["sm_active"][k]),
                sm_occupancy=float(g["sm_occupancy"][k]),
                tensor_active=float(g["tensor_active"][k]),
                dram_active=float(g["dram_active"][k]),
                pcie_tx_bytes_per_s=float(g["pcie_tx"][k]),
                pcie_rx_bytes_per_s=float(g["pcie_rx"][k]),
                nvlink_tx_bytes_per_s=float(g["nvlink_tx"][k]),
                nvlink_rx_bytes_per_s=float(g["nvlink_rx"][k]),
                power_violation_us=_i(g["power_violation_us"][k]),
                thermal_violation_us=_i(g["thermal_violation_us"][k]),
                processes=[
                    GpuProcess(topo.pid(info.index), _i(g["fb_used"][k] - PROCESS_OVERHEAD_MIB) * MIB)
                ],
                numa_node=info.numa_node,
            )
        )

    efa = []
    for dev in topo.efa(node):
        k = (i, node, dev.index)
        port_files = EFA_PORT_FILES + (EFA_SRD_COUNTERS if hw.efa_srd_counters else ())
        efa.append(
            EfaDeviceState(
                name=dev.name,
                pci_address=dev.pci_address,
                numa_node=dev.numa_node,
                node_guid=dev.node_guid,
                fw_ver="0.0.0.0",
                port_counters={f: _i(snap.efa[f][k]) for f in port_files},
                device_counters={f: _i(snap.efa[f][k]) for f in EFA_DEVICE_FILES},
                srd_counters=hw.efa_srd_counters,
                rate_gbps=round(hw.efa_node_gbps / hw.efa_devices),
            )
        )

    lustre = []
    ver = hw.lustre_version
    for fs in topo.filesystems:
        osc, lli, mdc = snap.osc[fs.index], snap.llite[fs.index], snap.mdc[fs.index]
        osts = []
        for o in range(fs.osts):
            k3 = (i, node, o)
            osts.append(
                LustreTargetState(
                    index=o,
                    stats={op: _op(osc, op, k3, unit, ver) for op, unit in OSC_OPS.items()},
                    read_rpcs_in_flight=_i(osc["read_rpcs_in_flight"][k3]),
                    write_rpcs_in_flight=_i(osc["write_rpcs_in_flight"][k3]),
                    pending_read_pages=_i(osc["pending_read_pages"][k3]),
                    pending_write_pages=_i(osc["pending_write_pages"][k3]),
                    read_pages_per_rpc={wl.read_rpc_bytes // 4096: _i(osc["read_pages_per_rpc"][k3])},
                    write_pages_per_rpc={wl.write_rpc_bytes // 4096: _i(osc["write_pages_per_rpc"][k3])},
                )
            )
        k2 = (i, node)
        llite = {}
        for op in LLITE_OPS:
            if op in ("read", "write") and ver == "2.10":
                continue
            if op.endswith("_bytes"):
                llite[op] = _op(lli, op, k2, "bytes", ver)
            else:
                llite[op] = _op(lli, op, k2, "usecs", ver, has_sums=ver != "2.10")
        ra = {"hits": _i(lli["read_ahead.hits"][k2]), "misses": _i(lli["read_ahead.misses"][k2])}
        for key, spelled in _READ_AHEAD.items():
            ra[spelled] = _i(lli[f"read_ahead.{key}"][k2])
        lustre.append(
            LustreFsState(
                fsname=fs.fsname,
                sbid=topo.superblock_id(node, fs.index),
                version=ver,
                llite=llite,
                read_ahead=ra,
                osts=osts,
                mdts=[
                    LustreTargetState(
                        index=0, stats={op: _op(mdc, op, k2, unit, ver) for op, unit in MDC_OPS.items()}
                    )
                ],
            )
        )

    h = snap.host
    k2 = (i, node)
    cpu = {mode: float(h[mode][k2]) for mode in CPU_MODES}
    pressure = {
        res: {kind: _i(h[f"pressure.{res}.{kind}"][k2]) for kind in ("some", "full")}
        for res in ("cpu", "memory", "io")
    }
    procs = []
    start_s = start_ns / 1e9 - 90.0
    for lr in range(hw.gpus_per_node):
        k3 = (i, node, lr)
        p = snap.proc
        procs.append(
            ProcessState(
                pid=topo.pid(lr),
                name="python3",
                cmdline=["python3", "-u", "train.py", f"--local-rank={lr}"],
                cpu_user_s=float(p["user"][k3]),
                cpu_system_s=float(p["system"][k3]),
                cpu_iowait_s=float(p["iowait"][k3]),
                rss_bytes=RSS_BYTES + 7919 * 4096 * lr,
                read_bytes=_i(p["read_bytes"][k3]),
                write_bytes=_i(p["write_bytes"][k3]),
                threads=64 + wl.loader_workers,
                start_time_s=start_s,
            )
        )
    return NodeState(
        hostname=host,
        time_s=time_s,
        gpus=gpus,
        efa=efa,
        lustre=lustre,
        host=HostState(cpu_seconds=cpu, ncpus=hw.ncpus, pressure_us=pressure, processes=procs),
    )
