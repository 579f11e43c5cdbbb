"""Exporter health: are the node exporters up, are their collectors succeeding, and what do they cost?"""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards.boards import variables
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.panels import RATE, Board, Q, graph, listing, steps
from fmdiag.dashboards.queries import exporter
from fmdiag.dashboards.queries.scope import Scope

KEY = "exporter"
TITLE = "fmdiag / Exporter health"


def build(c: Config) -> Dashboard:
    s = Scope(cluster="$cluster", node="$node")
    n = f"{{{{{c.node_label}}}}}"
    b = Board(
        c,
        KEY,
        TITLE,
        "Can the other dashboards be trusted? Scrape success, collector success and the exporter's own cost.",
    )
    variables.cluster(b)
    variables.node(b)
    b.row("Scrapes")
    b.add(
        graph(
            "Targets up",
            "1 while Prometheus scrapes the node's exporter. 0 for 5 minutes: FmdiagExporterDown.",
            [Q(exporter.up(c, s), n)],
            "short",
            min_val=0,
            max_val=1,
            width=8,
        ),
        graph(
            "Scrape duration",
            "How long each scrape took. Keep it below the scrape timeout; a slow collector shows in the next "
            "panel.",
            [Q(exporter.scrape_duration(c, s), n)],
            "s",
            min_val=0,
            width=8,
        ),
        graph(
            "Collector success",
            "1 when the collector's last scrape finished without error and within its deadline. 0 for 10 "
            "minutes: FmdiagCollectorFailing.",
            [Q(exporter.collector_success(c, s), f"{n} {{{{collector}}}}")],
            "short",
            min_val=0,
            max_val=1,
            thresholds=steps(("red", None), ("green", 1)),
            width=8,
        ),
        graph(
            "Collector duration",
            "How long each collector's last scrape took. Lustre via lctl and debugfs is the usual slow one.",
            [Q(exporter.collector_duration(c, s), f"{n} {{{{collector}}}}")],
            "s",
            min_val=0,
        ),
        graph(
            "Parse errors and timeouts",
            "Source lines or files skipped per second, and missed deadlines per second. The exporter log "
            "names each file.",
            [
                Q(
                    exporter.collector_counter_rate(
                        c, s, "fmdiag_exporter_collector_parse_errors_total", RATE
                    ),
                    f"parse errors {n} {{{{collector}}}}",
                ),
                Q(
                    exporter.collector_counter_rate(c, s, "fmdiag_exporter_collector_timeouts_total", RATE),
                    f"timeouts {n} {{{{collector}}}}",
                ),
            ],
            "short",
            min_val=0,
        ),
    )
    b.row("Cost")
    b.add(
        graph(
            "Exporter memory",
            "Resident memory of each exporter. A line that keeps growing is a leak (dcgm-exporter's known "
            "failure).",
            [Q(exporter.resident_memory(c, s), n)],
            "bytes",
            min_val=0,
        ),
        graph(
            "Exporter CPU",
            "CPU seconds per second used by each exporter.",
            [Q(exporter.cpu_rate(c, s, RATE), n)],
            "percentunit",
            min_val=0,
        ),
        listing(
            "Versions",
            "Exporters per fmdiag and Python version: mixed versions after a rollout show here.",
            [Q(exporter.versions(c, s), instant=True)],
            "short",
            width=24,
        ),
    )
    return b.build()
