"""Against the real Prometheus holding every scenario's simulated history (conftest
``simulated_history``): every panel query returns data, and each fault scenario raises exactly
its alerts while the healthy scenario (with its normal checkpoints) raises none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fmdiag.dashboards.config import DEFAULT
from fmdiag.dashboards.rules.render import groups

pytestmark = pytest.mark.integration

ALERTS = {a.name: a for g in groups(DEFAULT) for a in g.alerts}

#: What each scenario must raise, no more, no less (the simulator's faults, docs/simulate.md).
EXPECTED: dict[str, set[str]] = {
    "healthy": set(),
    "network-degraded": {"FmdiagEfaRetransmits", "FmdiagEfaImpairedRemote", "FmdiagEfaRxDrops"},
    "network-node": {
        "FmdiagEfaRetransmits",
        "FmdiagEfaImpairedRemote",
        "FmdiagEfaUnresponsiveRemote",
        "FmdiagEfaRxDrops",
    },
    "io-lustre": {"FmdiagLustreOstLatencyHigh", "FmdiagTrainingJobBottleneck"},
    "checkpoint-stall": {"FmdiagTrainingJobBottleneck"},
    "host-dataloader": {"FmdiagTrainingJobBottleneck"},
    "straggler-thermal": {"FmdiagGpuHwThermalSlowdown", "FmdiagStragglerRank"},
    "straggler-power": {"FmdiagGpuHwPowerBrake", "FmdiagStragglerRank"},
    # The thermal straggler's GPUs as a stock dcgm-exporter serves them (no fmdiag exporter),
    # labelled Hostname (up to 4.5.3) and hostname (after).
    "dcgm-straggler-thermal": {"FmdiagGpuHwThermalSlowdown"},
    "dcgm4-straggler-thermal": {"FmdiagGpuHwThermalSlowdown"},
}
STALL_CLASS = {"io-lustre": "io", "checkpoint-stall": "io", "host-dataloader": "host"}


@pytest.fixture(scope="module")
def fired(simulated_history: Any, history_module: Any) -> dict[str, dict[str, set[str]]]:
    """alert -> cluster (scenario) -> the label sets it fired with."""
    return {name: history_module.firing(simulated_history, a.expr, a.for_) for name, a in ALERTS.items()}


def test_every_panel_query_returns_data(
    simulated_history: Any, panel_queries: list[Any], promql: Any
) -> None:
    empty = []
    for board, title, expr in panel_queries:
        if not simulated_history.query_range(promql.substitute(expr)):
            empty.append(f"{board} / {title}: {expr}")
    assert not empty, "panels without data on simulated history:\n" + "\n".join(empty)


def test_every_scenario_raises_exactly_its_alerts(fired: dict[str, dict[str, set[str]]]) -> None:
    got = {
        scenario: {a for a, by_cluster in fired.items() if scenario in by_cluster} for scenario in EXPECTED
    }
    assert got == EXPECTED


def test_the_healthy_scenario_with_checkpoints_pages_nobody(
    fired: dict[str, dict[str, set[str]]], simulated_history: Any
) -> None:
    assert [a for a, by_cluster in fired.items() if "healthy" in by_cluster] == []
    # ... while it does checkpoint (else the no-page claim would be empty).
    ckpt = simulated_history.query_range(
        'rank:fmdiag_step_phase_seconds:rate5m{cluster="healthy",phase="checkpoint"} > 0'
    )
    assert ckpt


def test_alerts_name_the_culprit_the_simulator_injected(
    fired: dict[str, dict[str, set[str]]], simulated_history: Any
) -> None:
    for scenario in ("straggler-thermal", "straggler-power"):
        truth = json.loads((_dump(simulated_history, scenario) / "truth.json").read_text())
        culprit = truth["faults"][0]["culprit"]
        (rank,) = fired["FmdiagStragglerRank"][scenario]
        assert f"rank={culprit['rank']}" in rank and f"instance={culprit['node']}" in rank
        gpu_alert = (
            "FmdiagGpuHwThermalSlowdown" if scenario == "straggler-thermal" else "FmdiagGpuHwPowerBrake"
        )
        (gpu,) = fired[gpu_alert][scenario]
        assert f"UUID={culprit['gpu_uuid']}" in gpu and f"hostname={culprit['node']}" in gpu
        # the same GPU from a stock dcgm-exporter, either spelling of its node label
        for stock in ("dcgm-straggler-thermal", "dcgm4-straggler-thermal"):
            if scenario == "straggler-thermal":
                assert fired[gpu_alert][stock] == {gpu}, stock
    for scenario, stall in STALL_CLASS.items():
        assert {f"stall={stall}" in s for s in fired["FmdiagTrainingJobBottleneck"][scenario]} == {True}, (
            scenario
        )


def _dump(history: Any, scenario: str) -> Path:
    return Path(history.work) / "dumps" / scenario


@pytest.mark.parametrize("stock", ["STOCK_DCGM_CLUSTER", "STOCK_DCGM4_CLUSTER"])
def test_gpu_panels_work_from_a_stock_dcgm_exporter(
    simulated_history: Any, panel_queries: list[Any], promql: Any, history_module: Any, stock: str
) -> None:
    """On a cluster whose GPU series come only from dcgm-exporter (its job, its pod as
    ``instance``, ``Hostname`` up to 4.5.3 or ``hostname`` after naming the node), every GPU panel
    not marked fmdiag-only has data, also narrowed to one node by the ``$node`` variable."""
    cluster = getattr(history_module, stock)
    gpu_panels = [
        (board, title, expr)
        for board, title, expr in panel_queries
        if (names := promql.metric_names(promql.substitute(expr)))
        and all(n.startswith("DCGM_") for n in names)
    ]
    assert len(gpu_panels) >= 10
    empty = [
        f"{board} / {title}"
        for board, title, expr in gpu_panels
        if not simulated_history.query_range(promql.substitute(expr, cluster=cluster, node="node-001"))
    ]
    assert not empty, f"GPU panels without data from a stock dcgm-exporter: {empty}"
