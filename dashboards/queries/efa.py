"""EFA queries: per node and per device, from fmdiag's EFA collector (hw_counters)."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries.scope import Scope, by


def device_labels(c: Config) -> tuple[str, ...]:
    return (c.cluster_label, c.node_label, "device")


def node_rate(c: Config, s: Scope, metric: str, window: str) -> str:
    return f"sum {by(c.cluster_label, c.node_label)} (rate({metric}{s.fmdiag(c)}[{window}]))"


def fleet_rate(c: Config, s: Scope, metric: str, window: str) -> str:
    return f"sum {by(c.cluster_label)} (rate({metric}{s.fmdiag(c)}[{window}]))"


def device_rate(c: Config, s: Scope, metric: str, window: str) -> str:
    return f"sum {by(*device_labels(c))} (rate({metric}{s.fmdiag(c)}[{window}]))"


def device_increase(c: Config, s: Scope, metric: str, window: str) -> str:
    return f"sum {by(*device_labels(c))} (increase({metric}{s.fmdiag(c)}[{window}]))"


def retransmit_ratio(c: Config, s: Scope, window: str) -> str:
    """SRD packets retransmitted per packet sent, per device (Nitro v4+ counters)."""
    retrans = device_rate(c, s, "fmdiag_efa_retrans_packets_total", window)
    sent = device_rate(c, s, "fmdiag_efa_tx_packets_total", window)
    return f"{retrans} / ({sent} > 0)"


def rx_drop_ratio(c: Config, s: Scope, window: str) -> str:
    drops = device_rate(c, s, "fmdiag_efa_rx_drops_total", window)
    received = device_rate(c, s, "fmdiag_efa_rx_packets_total", window)
    return f"{drops} / ({received} > 0)"


def port_not_active(c: Config, s: Scope) -> str:
    """Ports whose logical state is not ACTIVE (4); the value is the state."""
    return f"max {by(*device_labels(c), 'port')} (fmdiag_efa_port_state_id{s.fmdiag(c)}) != 4"


def port_state(c: Config, s: Scope) -> str:
    return f"max {by(*device_labels(c), 'port')} (fmdiag_efa_port_state_id{s.fmdiag(c)})"


def devices(c: Config, s: Scope) -> str:
    return f"max {by(c.cluster_label, c.node_label)} (fmdiag_efa_devices{s.fmdiag(c)})"


def utilisation(c: Config, s: Scope, window: str) -> str:
    """Transmit throughput as a fraction of the port's signalling rate, per device."""
    tx = device_rate(c, s, "fmdiag_efa_tx_bytes_total", window)
    rate = f"max {by(*device_labels(c))} (fmdiag_efa_port_rate_bytes_per_second{s.fmdiag(c)})"
    return f"{tx} / ({rate} > 0)"
