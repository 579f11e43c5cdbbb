"""Snapshots of one simulated node at one instant: the contract between the cluster model and
the writers that render it (sysfs/procfs/debugfs trees and the GPU state file).

Every counter here is cumulative since the node booted, exactly as the real source reports
it, so an exporter reading successive snapshots computes real rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fmdiag.exporters.gpu_state_file import GpuState


@dataclass
class EfaDeviceState:
    name: str  # e.g. "rdmap79s0"
    pci_address: str  # e.g. "0000:4f:00.0"
    numa_node: int
    node_guid: str  # e.g. "0ab1:23ff:fe45:6789"
    fw_ver: str
    #: Keys are sysfs file names under ports/1/hw_counters (see catalog.EFA_PORT_COUNTERS).
    port_counters: dict[str, int] = field(default_factory=dict)
    #: Keys are sysfs file names under hw_counters (see catalog.EFA_DEVICE_COUNTERS).
    device_counters: dict[str, int] = field(default_factory=dict)
    #: False on pre-Nitro-v4 hardware: the retrans_* / *_remote_* files do not exist.
    srd_counters: bool = True
    state: int = 4  # 4: ACTIVE
    phys_state: int = 5  # 5: LinkUp
    rate_gbps: int = 100
    vendor: str = "0x1d0f"


@dataclass
class OpStat:
    """One line of a Lustre stats file: `<name> <count> samples [<unit>] <min> <max> <sum> <sumsq>`."""

    count: int = 0
    unit: str = "usecs"  # "usecs", "usec", "bytes", "reqs", "regs"
    min: int = 0
    max: int = 0
    sum: int = 0
    sumsq: int = 0


@dataclass
class LustreTargetState:
    """A client's view of one OST (osc) or MDT (mdc)."""

    index: int
    stats: dict[str, OpStat] = field(
        default_factory=dict
    )  # ost_read, ost_write, req_waittime, read_bytes, ...
    read_rpcs_in_flight: int = 0
    write_rpcs_in_flight: int = 0
    pending_read_pages: int = 0
    pending_write_pages: int = 0
    #: rpc_stats "pages per rpc" rows: pages (1, 2, 4, ... 1024) -> cumulative RPC count.
    read_pages_per_rpc: dict[int, int] = field(default_factory=dict)
    write_pages_per_rpc: dict[int, int] = field(default_factory=dict)


@dataclass
class LustreFsState:
    fsname: str  # e.g. "lustrefs"
    sbid: str  # hex superblock id, e.g. "ffff88105db50000"
    version: str  # "2.10" (/proc layout) or "2.14" (debugfs + /sys/fs/lustre layout)
    llite: dict[str, OpStat] = field(default_factory=dict)
    read_ahead: dict[str, int] = field(default_factory=dict)  # "hits", "misses", other reasons
    osts: list[LustreTargetState] = field(default_factory=list)
    mdts: list[LustreTargetState] = field(default_factory=list)


@dataclass
class ProcessState:
    pid: int
    name: str
    cmdline: list[str]
    cpu_user_s: float
    cpu_system_s: float
    cpu_iowait_s: float
    rss_bytes: int
    read_bytes: int
    write_bytes: int
    threads: int
    start_time_s: float


@dataclass
class HostState:
    #: /proc/stat "cpu" line modes, in seconds summed over CPUs.
    cpu_seconds: dict[str, float] = field(
        default_factory=dict
    )  # user nice system idle iowait irq softirq steal
    ncpus: int = 192
    #: /proc/pressure/<resource> "some"/"full" total= values, microseconds.
    pressure_us: dict[str, dict[str, int]] = field(default_factory=dict)
    processes: list[ProcessState] = field(default_factory=list)


@dataclass
class NodeState:
    hostname: str
    time_s: float  # Unix seconds of this snapshot
    gpus: list[GpuState] = field(default_factory=list)
    efa: list[EfaDeviceState] = field(default_factory=list)
    lustre: list[LustreFsState] = field(default_factory=list)
    host: HostState = field(default_factory=HostState)
