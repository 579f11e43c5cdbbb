"""Host and training-process queries (fmdiag's host collector: CPU by mode summed over CPUs, PSI)."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries.scope import Scope, by


def cpu_mode_fraction(c: Config, s: Scope, window: str, mode: str) -> str:
    """Fraction of the node's CPUs in ``mode`` (a regex): the summed counter over the CPU count."""
    labels = by(c.cluster_label, c.node_label)
    m = f'mode=~"{mode}"'
    seconds = f"sum {labels} (rate(fmdiag_host_cpu_seconds_total{s.fmdiag(c, m)}[{window}]))"
    return f"{seconds} / max {labels} (fmdiag_host_cpus{s.fmdiag(c)})"


def cpu_busy(c: Config, s: Scope, window: str) -> str:
    return f"1 - ({cpu_mode_fraction(c, s, window, 'idle|iowait')})"


def pressure(c: Config, s: Scope, window: str) -> str:
    """PSI stall time per second by resource and kind (``some`` io near 1: tasks always waiting)."""
    return (
        f"sum {by(c.cluster_label, c.node_label, 'resource', 'kind')} "
        f"(rate(fmdiag_host_pressure_stall_seconds_total{s.fmdiag(c)}[{window}]))"
    )


def process_cpu(c: Config, s: Scope, window: str) -> str:
    return (
        f"sum {by(c.cluster_label, c.node_label, 'pid', 'name', 'gpu')} "
        f"(rate(fmdiag_process_cpu_seconds_total{s.fmdiag(c)}[{window}]))"
    )


def process_memory(c: Config, s: Scope) -> str:
    return (
        f"max {by(c.cluster_label, c.node_label, 'pid', 'name', 'gpu')} "
        f"(fmdiag_process_resident_memory_bytes{s.fmdiag(c)})"
    )


def process_read_rate(c: Config, s: Scope, window: str) -> str:
    return (
        f"sum {by(c.cluster_label, c.node_label, 'pid', 'name', 'gpu')} "
        f"(rate(fmdiag_process_read_bytes_total{s.fmdiag(c)}[{window}]))"
    )


def training_processes(c: Config, s: Scope) -> str:
    return f"max {by(c.cluster_label, c.node_label)} (fmdiag_host_training_processes{s.fmdiag(c)})"
