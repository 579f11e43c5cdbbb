"""Lustre client queries: llite (filesystem), osc (per OST) and mdc (per MDT) statistics."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries.scope import Scope, by


def fs_rate(c: Config, s: Scope, metric: str, window: str, *, per_node: bool = False) -> str:
    node = c.node_label if per_node else ""
    return f"sum {by(c.cluster_label, node, 'fs')} (rate({metric}{s.fmdiag(c)}[{window}]))"


def ost_latency(
    c: Config, s: Scope, window: str, operation: str = "ost_read", *, per_node: bool = False
) -> str:
    """Mean latency of one OST RPC kind, per OST (over the nodes in scope): the osc stats' usec sums
    divided by their sample counts."""
    node = c.node_label if per_node else ""
    labels = by(c.cluster_label, node, "fs", "ost")
    op = f'operation="{operation}"'
    latency = (
        f"sum {labels} (rate(fmdiag_lustre_osc_operation_latency_seconds_total{s.fmdiag(c, op)}[{window}]))"
    )
    count = f"sum {labels} (rate(fmdiag_lustre_osc_operations_total{s.fmdiag(c, op)}[{window}]))"
    return f"{latency} / ({count} > 0)"


def ost_read_rate(c: Config, s: Scope, window: str) -> str:
    return (
        f"sum {by(c.cluster_label, 'fs', 'ost')} "
        f"(rate(fmdiag_lustre_osc_read_bytes_total{s.fmdiag(c)}[{window}]))"
    )


def rpcs_in_flight(c: Config, s: Scope, *, per_node: bool = True) -> str:
    node = c.node_label if per_node else ""
    return (
        f"sum {by(c.cluster_label, node, 'fs', 'ost', 'direction')} "
        f"(fmdiag_lustre_osc_rpcs_in_flight{s.fmdiag(c)})"
    )


def pending_pages(c: Config, s: Scope) -> str:
    return (
        f"sum {by(c.cluster_label, c.node_label, 'fs', 'ost', 'direction')} "
        f"(fmdiag_lustre_osc_pending_pages{s.fmdiag(c)})"
    )


def ost_operations_rate(c: Config, s: Scope, window: str) -> str:
    """OST RPCs completed per second (reads and writes), per node and OST."""
    ops = 'operation=~"ost_read|ost_write"'
    return (
        f"sum {by(c.cluster_label, c.node_label, 'fs', 'ost')} "
        f"(rate(fmdiag_lustre_osc_operations_total{s.fmdiag(c, ops)}[{window}]))"
    )


def stuck_rpcs(c: Config, s: Scope, window: str) -> str:
    """OSTs with RPCs in flight for all of ``window`` while no OST RPC completed in it."""
    labels = by(c.cluster_label, c.node_label, "fs", "ost")
    in_flight = f"sum {labels} (min_over_time(fmdiag_lustre_osc_rpcs_in_flight{s.fmdiag(c)}[{window}])) > 0"
    ops = 'operation=~"ost_read|ost_write"'
    done = f"sum {labels} (increase(fmdiag_lustre_osc_operations_total{s.fmdiag(c, ops)}[{window}])) == 0"
    return f"{in_flight} and {done}"


def llite_latency(c: Config, s: Scope, window: str) -> str:
    """Mean latency of client filesystem operations (open, getattr, ...), Lustre 2.14+ only."""
    labels = by(c.cluster_label, "fs", "operation")
    latency = (
        f"sum {labels} (rate(fmdiag_lustre_llite_operation_latency_seconds_total{s.fmdiag(c)}[{window}]))"
    )
    count = f"sum {labels} (rate(fmdiag_lustre_llite_operations_total{s.fmdiag(c)}[{window}]))"
    return f"{latency} / ({count} > 0)"


def mdc_rate(c: Config, s: Scope, window: str) -> str:
    return (
        f"sum {by(c.cluster_label, 'fs', 'operation')} "
        f"(rate(fmdiag_lustre_mdc_operations_total{s.fmdiag(c)}[{window}]))"
    )


def read_ahead_hit_ratio(c: Config, s: Scope, window: str) -> str:
    labels = by(c.cluster_label, c.node_label, "fs")
    hits = f"sum {labels} (rate(fmdiag_lustre_llite_read_ahead_hits_total{s.fmdiag(c)}[{window}]))"
    misses = f"sum {labels} (rate(fmdiag_lustre_llite_read_ahead_misses_total{s.fmdiag(c)}[{window}]))"
    return f"{hits} / (({hits} + {misses}) > 0)"
