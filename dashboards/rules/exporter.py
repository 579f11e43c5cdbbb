"""Rule group ``fmdiag-exporter``: a node's exporter unreachable, or one of its collectors failing."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import exporter as q
from fmdiag.dashboards.queries.scope import RULES
from fmdiag.dashboards.rules.model import Alert, Case, Group, series

FILE = "fmdiag-exporter.yaml"
_T = {"job": "fmdiag", "cluster": "c1", "instance": "node-1"}


def group(c: Config) -> Group:
    return Group(
        name="fmdiag-exporter",
        file=FILE,
        rules=(
            Alert(
                name="FmdiagExporterDown",
                expr=q.targets_down(c, RULES),
                for_="5m",
                severity="warning",
                summary="fmdiag exporter on {{ $labels.instance }} is down.",
                description="Prometheus could not scrape fmdiag's exporter on {{ $labels.instance }} for 5 "
                "minutes: that node's GPU, EFA, Lustre and step alerts are blind. Check the "
                "DaemonSet pod or systemd unit (`journalctl -u fmdiag-exporter`).",
                cases=(
                    Case(
                        "down",
                        (series("up", "1 1 0x10", **_T),),
                        "10m",
                        ({"cluster": "c1", "instance": "node-1"},),
                    ),
                    Case("up", (series("up", "1x10", **_T),), "10m"),
                ),
            ),
            Alert(
                name="FmdiagCollectorFailing",
                expr=q.collector_failing(c, RULES),
                for_="10m",
                severity="warning",
                summary="fmdiag collector {{ $labels.collector }} fails on {{ $labels.instance }}.",
                description="The {{ $labels.collector }} collector on {{ $labels.instance }} has failed or "
                "missed its deadline on every scrape for 10 minutes; its metrics are missing. "
                "The exporter's log names the cause (a hung Lustre mount shows as timeouts).",
                cases=(
                    Case(
                        "failing",
                        (series("fmdiag_exporter_collector_success", "1 0x15", **_T, collector="lustre"),),
                        "15m",
                        ({"cluster": "c1", "instance": "node-1", "collector": "lustre"},),
                    ),
                    Case(
                        "one bad scrape",
                        (series("fmdiag_exporter_collector_success", "1 0 1x15", **_T, collector="lustre"),),
                        "15m",
                    ),
                ),
            ),
        ),
    )
