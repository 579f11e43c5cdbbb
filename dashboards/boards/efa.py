"""EFA fabric: throughput, utilisation, retransmits, impaired and unresponsive remotes, drops and
port state, per node and device — the panels no public dashboard has."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards.boards import variables
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.panels import RATE, Board, Q, graph, listing, steps
from fmdiag.dashboards.queries import efa
from fmdiag.dashboards.queries.scope import Scope

KEY = "efa"
TITLE = "fmdiag / EFA fabric"


def build(c: Config) -> Dashboard:
    s = Scope(cluster="$cluster", node="$node")
    t = c.thresholds
    n = f"{{{{{c.node_label}}}}}"
    b = Board(
        c,
        KEY,
        TITLE,
        "Is the fabric the bottleneck? Throughput, SRD retransmits and impaired connections per node and EFA "
        "device.",
    )
    variables.cluster(b)
    variables.node(b)
    b.row("Throughput")
    b.add(
        graph(
            "Transmit per node",
            "Bytes per second each node sends over all its EFA devices (p5: 32 x 100 Gb/s = 400 GB/s line "
            "rate).",
            [Q(efa.node_rate(c, s, "fmdiag_efa_tx_bytes_total", RATE), n)],
            "Bps",
            min_val=0,
        ),
        graph(
            "Receive per node",
            "Bytes per second each node receives over EFA.",
            [Q(efa.node_rate(c, s, "fmdiag_efa_rx_bytes_total", RATE), n)],
            "Bps",
            min_val=0,
        ),
        graph(
            "Utilisation per device",
            "Transmit throughput over the port rate. Collectives burst near 70-80% of line rate; a device "
            "pinned near 100% makes the job network-bound by volume.",
            [Q(efa.utilisation(c, s, RATE), f"{n} {{{{device}}}}")],
            "percentunit",
            min_val=0,
            max_val=1,
        ),
        graph(
            "RDMA write and send traffic",
            "Bytes per second moved by RDMA writes and by sends: NCCL over EFA uses mostly RDMA writes.",
            [
                Q(efa.node_rate(c, s, "fmdiag_efa_rdma_write_bytes_total", RATE), f"rdma write {n}"),
                Q(efa.node_rate(c, s, "fmdiag_efa_send_bytes_total", RATE), f"send {n}"),
            ],
            "Bps",
            min_val=0,
        ),
    )
    b.row("Errors")
    b.add(
        graph(
            "Retransmit ratio",
            f"SRD packets retransmitted per packet sent. Above {t.efa_retransmit_ratio:.0%} "
            "(FmdiagEfaRetransmits): fabric-wide means congestion, one device means a bad path.",
            [Q(efa.retransmit_ratio(c, s, RATE), f"{n} {{{{device}}}}")],
            "percentunit",
            min_val=0,
            thresholds=steps(("green", None), ("red", t.efa_retransmit_ratio)),
            width=8,
        ),
        graph(
            "Impaired and unresponsive remotes",
            "Events per second: a connection was impaired (throughput limited) or a remote stopped "
            "answering. Any sustained rate is an alert.",
            [
                Q(
                    efa.device_rate(c, s, "fmdiag_efa_impaired_remote_conn_events_total", RATE),
                    f"impaired {n} {{{{device}}}}",
                ),
                Q(
                    efa.device_rate(c, s, "fmdiag_efa_unresponsive_remote_events_total", RATE),
                    f"unresponsive {n} {{{{device}}}}",
                ),
            ],
            "short",
            min_val=0,
            width=8,
        ),
        graph(
            "Receive drops",
            f"Received packets dropped per packet received. Above {t.efa_rx_drop_ratio:.1%}: receive queues "
            "overflow.",
            [Q(efa.rx_drop_ratio(c, s, RATE), f"{n} {{{{device}}}}")],
            "percentunit",
            min_val=0,
            width=8,
        ),
        graph(
            "Work-request errors",
            "RDMA read/write work requests that failed, per second: application-visible EFA errors.",
            [
                Q(
                    efa.device_rate(c, s, "fmdiag_efa_rdma_write_wr_errors_total", RATE),
                    f"write {n} {{{{device}}}}",
                ),
                Q(
                    efa.device_rate(c, s, "fmdiag_efa_rdma_read_wr_errors_total", RATE),
                    f"read {n} {{{{device}}}}",
                ),
            ],
            "short",
            min_val=0,
        ),
        listing(
            "Port state",
            "Logical port state per device (4 = ACTIVE). Anything else: FmdiagEfaPortDown.",
            [Q(efa.port_state(c, s), instant=True)],
            "short",
        ),
        graph(
            "EFA devices per node",
            "Amazon EFA devices found per node. A drop: a device was unplugged or its driver unloaded "
            "(FmdiagEfaDeviceMissing).",
            [Q(efa.devices(c, s), n)],
            "short",
            min_val=0,
            width=24,
        ),
    )
    return b.build()
