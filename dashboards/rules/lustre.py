"""Rule group ``fmdiag-lustre``: slow OSTs as the clients see them, and RPCs stuck in flight."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import lustre as q
from fmdiag.dashboards.queries.scope import RULES
from fmdiag.dashboards.rules.model import Alert, Case, Group, series

FILE = "fmdiag-lustre.yaml"
_OSC = {
    "job": "fmdiag",
    "cluster": "c1",
    "instance": "node-1",
    "fs": "lustrefs",
    "ost": "OST0003",
    "mount_id": "ffff88",
}


def group(c: Config) -> Group:
    t = c.thresholds
    ms = t.lustre_ost_read_latency_seconds * 1000
    stuck = f"{t.lustre_stuck_rpc_minutes}m"
    lat, ops = "fmdiag_lustre_osc_operation_latency_seconds_total", "fmdiag_lustre_osc_operations_total"
    return Group(
        name="fmdiag-lustre",
        file=FILE,
        rules=(
            Alert(
                name="FmdiagLustreOstLatencyHigh",
                expr=f"{q.ost_latency(c, RULES, '5m')} > {t.lustre_ost_read_latency_seconds:g}",
                for_="5m",
                severity="warning",
                summary="Reads from {{ $labels.fs }} {{ $labels.ost }} take more than " + f"{ms:g} ms.",
                description=(
                    "The mean ost_read RPC latency the clients see from {{ $labels.fs }} {{ $labels.ost }} "
                    "has been above "
                    f"{ms:g} ms for 5 minutes: dataloaders reading stripes on that OST stall (data_wait "
                    "grows). "
                    "Check the OSS's load and disks (FSx for Lustre: throughput capacity), and restripe hot "
                    "files."
                ),
                cases=(
                    # 100 RPCs a minute taking 20 s in all: 200 ms each.
                    Case(
                        "slow OST",
                        (
                            series(ops, "0+100x20", **_OSC, operation="ost_read"),
                            series(lat, "0+20x20", **_OSC, operation="ost_read"),
                        ),
                        "15m",
                        ({"cluster": "c1", "fs": "lustrefs", "ost": "OST0003"},),
                    ),
                    Case(
                        "fast OST",
                        (
                            series(ops, "0+100x20", **_OSC, operation="ost_read"),
                            series(lat, "0+0.5x20", **_OSC, operation="ost_read"),
                        ),
                        "15m",
                    ),
                ),
            ),
            Alert(
                name="FmdiagLustreRpcsStuck",
                expr=q.stuck_rpcs(c, RULES, stuck),
                for_="5m",
                severity="critical",
                summary="RPCs to {{ $labels.fs }} {{ $labels.ost }} are stuck on {{ $labels.instance }}.",
                description=(
                    "{{ $labels.instance }} has had RPCs in flight to {{ $labels.fs }} {{ $labels.ost }} for "
                    f"{t.lustre_stuck_rpc_minutes} minutes without completing one: the OST is unreachable or "
                    "hung, and "
                    "every process reading from it blocks. Check `lctl get_param osc.*.state` and the OSS."
                ),
                cases=(
                    Case(
                        "in flight, none done",
                        (
                            series("fmdiag_lustre_osc_rpcs_in_flight", "8x30", **_OSC, direction="read"),
                            series(ops, "500+0x30", **_OSC, operation="ost_read"),
                        ),
                        "20m",
                        ({"cluster": "c1", "instance": "node-1", "fs": "lustrefs", "ost": "OST0003"},),
                    ),
                    Case(
                        "busy but moving",
                        (
                            series("fmdiag_lustre_osc_rpcs_in_flight", "8x30", **_OSC, direction="read"),
                            series(ops, "0+50x30", **_OSC, operation="ost_read"),
                        ),
                        "20m",
                    ),
                ),
            ),
        ),
    )
