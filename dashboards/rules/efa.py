"""Rule group ``fmdiag-efa``: ports down, devices gone, SRD retransmits, impaired and
unresponsive remotes, receive drops — the fabric alerts no public rule set has."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import efa as q
from fmdiag.dashboards.queries.scope import RULES
from fmdiag.dashboards.rules.model import Alert, Case, Group, count_drop_cases, series

FILE = "fmdiag-efa.yaml"
_DEV = {"job": "fmdiag", "cluster": "c1", "instance": "node-1", "device": "rdmap79s0", "port": "1"}
_OUT = {"cluster": "c1", "instance": "node-1", "device": "rdmap79s0"}
_WHERE = "EFA {{ $labels.device }} on {{ $labels.instance }}"


def _event_alert(c: Config, name: str, metric: str, what: str, todo: str) -> Alert:
    """An alert on any new event of an SRD event counter in the last 5 minutes."""
    return Alert(
        name=name,
        expr=f"{q.device_increase(c, RULES, metric, '5m')} > 0",
        severity="warning",
        summary=f"{_WHERE}: {what}.",
        description=f"{_WHERE} counted {what} in the last 5 minutes. {todo}",
        cases=(
            Case("events", (series(metric, "0 0 0 2 4 6", **_DEV),), "5m", (_OUT,)),
            Case("no new events", (series(metric, "7+0x20", **_DEV),), "20m"),
        ),
    )


def group(c: Config) -> Group:
    t = c.thresholds
    impaired = _event_alert(
        c,
        "FmdiagEfaImpairedRemote",
        "fmdiag_efa_impaired_remote_conn_events_total",
        "impaired remote connections",
        "SRD limited the throughput of connections to a peer: the collective is network-bound; find the peer "
        "with the same alert or retransmits.",
    )
    unresponsive = _event_alert(
        c,
        "FmdiagEfaUnresponsiveRemote",
        "fmdiag_efa_unresponsive_remote_events_total",
        "unresponsive remote peers",
        "A remote peer stopped answering: its node may be hung or its EFA down; check that node's "
        "FmdiagEfaPortDown and exporter.",
    )
    return Group(
        name="fmdiag-efa",
        file=FILE,
        rules=(
            Alert(
                name="FmdiagEfaPortDown",
                expr=q.port_not_active(c, RULES),
                for_="2m",
                severity="critical",
                summary=f"{_WHERE} port {{{{ $labels.port }}}} is not ACTIVE.",
                description=f"The logical state of {_WHERE} port {{{{ $labels.port }}}} is not ACTIVE (4): "
                "traffic moves to the node's other devices or the job fails. Check the device "
                "with `fi_info -p efa` and the driver log.",
                cases=(
                    Case(
                        "down",
                        (series("fmdiag_efa_port_state_id", "4 4 1 1 1 1", **_DEV),),
                        "5m",
                        ({**_OUT, "port": "1"},),
                    ),
                    Case("active", (series("fmdiag_efa_port_state_id", "4x10", **_DEV),), "9m"),
                ),
            ),
            Alert(
                name="FmdiagEfaDeviceMissing",
                expr=(
                    f"{q.devices(c, RULES)} < max by ({c.cluster_label}, {c.node_label})"
                    f" (max_over_time(fmdiag_efa_devices{RULES.fmdiag(c)}[1d]))"
                ),
                for_="5m",
                severity="warning",
                summary="{{ $labels.instance }} has fewer EFA devices than usual.",
                description="{{ $labels.instance }} lists fewer Amazon EFA devices than it did in the last "
                "day (hot-unplug or driver unload): NCCL runs on fewer rails. Reload the efa "
                "driver or replace the node.",
                cases=count_drop_cases("fmdiag_efa_devices", 32, "one gone"),
            ),
            Alert(
                name="FmdiagEfaRetransmits",
                expr=f"{q.retransmit_ratio(c, RULES, '5m')} > {t.efa_retransmit_ratio:g}",
                for_="5m",
                severity="warning",
                summary=f"{_WHERE} retransmits more than {t.efa_retransmit_ratio:.0%} of its packets.",
                description=f"SRD on {_WHERE} has retransmitted more than {t.efa_retransmit_ratio:.0%} of "
                "the packets it sent for 5 minutes: the fabric path is congested or degraded, "
                "and collectives slow down. If every node shows it, the fabric is congested; if "
                "one device does, drain its node.",
                cases=(
                    Case(
                        "5% retransmitted",
                        (
                            series("fmdiag_efa_tx_packets_total", "0+6000x20", **_DEV),
                            series("fmdiag_efa_retrans_packets_total", "0+300x20", **_DEV),
                        ),
                        "15m",
                        (_OUT,),
                    ),
                    Case(
                        "0.1% retransmitted",
                        (
                            series("fmdiag_efa_tx_packets_total", "0+6000x20", **_DEV),
                            series("fmdiag_efa_retrans_packets_total", "0+6x20", **_DEV),
                        ),
                        "15m",
                    ),
                ),
            ),
            impaired,
            unresponsive,
            Alert(
                name="FmdiagEfaRxDrops",
                expr=f"{q.rx_drop_ratio(c, RULES, '5m')} > {t.efa_rx_drop_ratio:g}",
                for_="10m",
                severity="warning",
                summary=f"{_WHERE} drops received packets.",
                description=f"{_WHERE} dropped more than {t.efa_rx_drop_ratio:.1%} of the packets it "
                "received for 10 minutes: receive queues overflow (a slow consumer or too many "
                "flows).",
                cases=(
                    Case(
                        "drops",
                        (
                            series("fmdiag_efa_rx_packets_total", "0+6000x20", **_DEV),
                            series("fmdiag_efa_rx_drops_total", "0+60x20", **_DEV),
                        ),
                        "20m",
                        (_OUT,),
                    ),
                    Case(
                        "clean",
                        (
                            series("fmdiag_efa_rx_packets_total", "0+6000x20", **_DEV),
                            series("fmdiag_efa_rx_drops_total", "0+0x20", **_DEV),
                        ),
                        "20m",
                    ),
                ),
            ),
        ),
    )
