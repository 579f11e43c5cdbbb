"""The exporter's own health: scrape success, per-collector success, cost and parse errors."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries.scope import Scope, by


def up(c: Config, s: Scope) -> str:
    return f"max {by(c.cluster_label, c.node_label)} (up{s.fmdiag(c)})"


def targets_down(c: Config, s: Scope) -> str:
    return f"{up(c, s)} == 0"


def targets_down_count(c: Config, s: Scope) -> str:
    return f"count {by(c.cluster_label)} ({targets_down(c, s)}) or vector(0)"


def collector_success(c: Config, s: Scope) -> str:
    return (
        f"max {by(c.cluster_label, c.node_label, 'collector')} "
        f"(fmdiag_exporter_collector_success{s.fmdiag(c)})"
    )


def collector_failing(c: Config, s: Scope) -> str:
    return f"{collector_success(c, s)} == 0"


def collector_duration(c: Config, s: Scope) -> str:
    return (
        f"max {by(c.cluster_label, c.node_label, 'collector')} "
        f"(fmdiag_exporter_collector_duration_seconds{s.fmdiag(c)})"
    )


def collector_counter_rate(c: Config, s: Scope, metric: str, window: str) -> str:
    return f"sum {by(c.cluster_label, c.node_label, 'collector')} (rate({metric}{s.fmdiag(c)}[{window}]))"


def resident_memory(c: Config, s: Scope) -> str:
    return f"max {by(c.cluster_label, c.node_label)} (fmdiag_exporter_resident_memory_bytes{s.fmdiag(c)})"


def cpu_rate(c: Config, s: Scope, window: str) -> str:
    return (
        f"sum {by(c.cluster_label, c.node_label)} "
        f"(rate(fmdiag_exporter_cpu_seconds_total{s.fmdiag(c)}[{window}]))"
    )


def scrape_duration(c: Config, s: Scope) -> str:
    return f"max {by(c.cluster_label, c.node_label)} (scrape_duration_seconds{s.fmdiag(c)})"


def versions(c: Config, s: Scope) -> str:
    return (
        f"count {by(c.cluster_label, 'version', 'python_version')} (fmdiag_exporter_build_info{s.fmdiag(c)})"
    )
