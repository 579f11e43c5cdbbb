"""What a node's instruments report beyond the model: fixed capacities and the stats lines each
Lustre target kind prints.

The metric dump and the node trees both render them, so they live with the cluster model and
the node emulator reads them from here (the emulator depends on the model, never the reverse).
"""

from __future__ import annotations

MIB = 1 << 20
FB_TOTAL_MIB = 81_559
FB_RESERVED_MIB = 555
POWER_LIMIT_MW = 700_000
RSS_BYTES = 28 * (1 << 30)
#: Framebuffer the driver and context keep beyond what the rank's process allocates.
PROCESS_OVERHEAD_MIB = 420
#: Lustre stats lines per target kind: name -> unit (2.14 spelling; 2.10 says "usec").
OSC_OPS = {
    "req_waittime": "usecs",
    "req_active": "reqs",
    "read_bytes": "bytes",
    "write_bytes": "bytes",
    "ost_read": "usecs",
    "ost_write": "usecs",
    "ost_punch": "usecs",
}
MDC_OPS = {
    "req_waittime": "usecs",
    "req_active": "reqs",
    "mds_getattr": "usecs",
    "mds_close": "usecs",
    "ldlm_ibits_enqueue": "usecs",
}
LLITE_OPS = (
    "read_bytes",
    "write_bytes",
    "read",
    "write",
    "open",
    "close",
    "getattr",
    "inode_permission",
    "statfs",
)
#: ``RDMA_HW_STATS_DEFAULT_LIFESPAN`` in ms: how long the rdma core caches hw_counters.
HW_COUNTERS_LIFESPAN_MS = 10
#: The port hw_counters (of catalog.EFA_PORT_COUNTERS) only Nitro v4+ devices have: SRD's network counters.
EFA_SRD_COUNTERS: tuple[str, ...] = (
    "retrans_bytes",
    "retrans_pkts",
    "retrans_timeout_events",
    "unresponsive_remote_events",
    "impaired_remote_conn_events",
)
