"""Lustre client: throughput, per-OST latency, RPCs in flight, pending pages, metadata and
read-ahead, as the training nodes see the filesystem."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards.boards import variables
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.panels import RATE, Board, Q, graph, steps
from fmdiag.dashboards.queries import lustre
from fmdiag.dashboards.queries.scope import Scope

KEY = "lustre"
TITLE = "fmdiag / Lustre client"


def build(c: Config) -> Dashboard:
    s = Scope(cluster="$cluster", node="$node")
    t = c.thresholds
    n = f"{{{{{c.node_label}}}}}"
    b = Board(c, KEY, TITLE, "Is storage the bottleneck? Client throughput, per-OST latency and RPC queues.")
    variables.cluster(b)
    variables.node(b)
    b.row("Throughput")
    b.add(
        graph(
            "Read and write per filesystem",
            "Bytes per second read and written through the clients in scope. Checkpoints show as write "
            "bursts; a read drop with data_wait rising points at the storage.",
            [
                Q(lustre.fs_rate(c, s, "fmdiag_lustre_llite_read_bytes_total", RATE), "read {{fs}}"),
                Q(lustre.fs_rate(c, s, "fmdiag_lustre_llite_write_bytes_total", RATE), "write {{fs}}"),
            ],
            "Bps",
            min_val=0,
        ),
        graph(
            "Read per OST",
            "Bytes per second read from each OST. An OST reading far less than its peers while latency rises "
            "is the slow one.",
            [Q(lustre.ost_read_rate(c, s, RATE), "{{fs}} {{ost}}")],
            "Bps",
            min_val=0,
        ),
    )
    b.row("Latency and queues")
    b.add(
        graph(
            "OST read latency",
            f"Mean ost_read RPC latency per OST. Above {t.lustre_ost_read_latency_seconds * 1000:g} ms: "
            "FmdiagLustreOstLatencyHigh.",
            [Q(lustre.ost_latency(c, s, RATE), "{{fs}} {{ost}}")],
            "s",
            min_val=0,
            thresholds=steps(("green", None), ("red", t.lustre_ost_read_latency_seconds)),
            width=8,
        ),
        graph(
            "OST write latency",
            "Mean ost_write RPC latency per OST (checkpoint writes).",
            [Q(lustre.ost_latency(c, s, RATE, "ost_write"), "{{fs}} {{ost}}")],
            "s",
            min_val=0,
            width=8,
        ),
        graph(
            "RPCs in flight",
            "OST RPCs in flight per node. At the client limit with high latency: the OST cannot keep up. In "
            "flight with nothing completing: stuck (FmdiagLustreRpcsStuck).",
            [Q(lustre.rpcs_in_flight(c, s), f"{n} {{{{ost}}}} {{{{direction}}}}")],
            "short",
            min_val=0,
            width=8,
        ),
        graph(
            "OST RPCs completed",
            "OST read and write RPCs completed per second, per node and OST. Near zero with RPCs in flight: "
            "stuck (FmdiagLustreRpcsStuck).",
            [Q(lustre.ost_operations_rate(c, s, RATE), f"{n} {{{{ost}}}}")],
            "reqps",
            min_val=0,
            width=8,
        ),
        graph(
            "Pending pages",
            "Pages waiting for an RPC slot per node and OST: a queue that keeps growing means the OST is the "
            "bottleneck.",
            [Q(lustre.pending_pages(c, s), f"{n} {{{{ost}}}} {{{{direction}}}}")],
            "short",
            min_val=0,
            width=8,
        ),
        graph(
            "Client operation latency",
            "Mean latency of llite operations (open, getattr, ...); Lustre 2.14+ clients only. Slow opens "
            "and getattrs point at the MDS.",
            [Q(lustre.llite_latency(c, s, RATE), "{{fs}} {{operation}}")],
            "s",
            min_val=0,
            width=8,
        ),
        graph(
            "Metadata operations",
            "MDC operations per second per filesystem: many small files make the MDS the bottleneck.",
            [Q(lustre.mdc_rate(c, s, RATE), "{{fs}} {{operation}}")],
            "ops",
            min_val=0,
            width=8,
        ),
        graph(
            "Read-ahead hit ratio",
            "Read-ahead hits over hits and misses. Low with sequential reads: read-ahead is too small for "
            "the dataloader's pattern.",
            [Q(lustre.read_ahead_hit_ratio(c, s, RATE), f"{n} {{{{fs}}}}")],
            "percentunit",
            min_val=0,
            max_val=1,
            width=24,
        ),
    )
    return b.build()
