"""GPU queries read the node label under both spellings dcgm-exporter has used (``hostname`` after
4.5.3, ``Hostname`` before); promtool (tests/alerts) and the history test run them for real."""

from __future__ import annotations

import re
from dataclasses import replace

from fmdiag.dashboards.config import DEFAULT
from fmdiag.dashboards.queries import gpu as q
from fmdiag.dashboards.queries.scope import RULES, Scope
from fmdiag.dashboards.rules.render import groups

COPY = 'label_replace({}, "hostname", "$1", "Hostname", "(.+)")'


def test_rules_copy_the_legacy_spelling_before_aggregating() -> None:
    expr = q.per_gpu(DEFAULT, RULES, "DCGM_FI_DEV_GPU_TEMP")
    inner = COPY.format('DCGM_FI_DEV_GPU_TEMP{job=~"fmdiag.*|.*dcgm.*"}')
    assert expr == f"max by (cluster, hostname, gpu, UUID) ({inner})"


def test_a_node_filter_selects_each_spelling_apart() -> None:
    expr = q.per_gpu(DEFAULT, Scope(cluster="$cluster", node="$node"), "DCGM_FI_DEV_GPU_TEMP")
    new = 'DCGM_FI_DEV_GPU_TEMP{job=~"fmdiag.*|.*dcgm.*",cluster=~"$cluster",hostname=~"$node"}'
    old = 'DCGM_FI_DEV_GPU_TEMP{job=~"fmdiag.*|.*dcgm.*",cluster=~"$cluster",Hostname=~"$node"}'
    assert f"({new} or {COPY.format(old)})" in expr


def test_range_functions_are_copied_after_the_range() -> None:
    expr = q.counter_rate(DEFAULT, RULES, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "5m")
    assert COPY.format('rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{job=~"fmdiag.*|.*dcgm.*"}[5m])') in expr


def test_without_a_legacy_spelling_queries_stay_plain() -> None:
    c = replace(DEFAULT, gpu_node_label_legacy="")
    assert q.per_gpu(c, RULES, "DCGM_FI_DEV_GPU_TEMP") == (
        'max by (cluster, hostname, gpu, UUID) (DCGM_FI_DEV_GPU_TEMP{job=~"fmdiag.*|.*dcgm.*"})'
    )
    old = replace(DEFAULT, gpu_node_label="Hostname", gpu_node_label_legacy="hostname")
    assert 'label_replace(DCGM_FI_DEV_GPU_TEMP{job=~"fmdiag.*|.*dcgm.*"}, "Hostname", "$1", "hostname"' in (
        q.per_gpu(old, RULES, "DCGM_FI_DEV_GPU_TEMP")
    )


def test_every_gpu_selector_of_the_rules_reads_both_spellings() -> None:
    gpu = next(g for g in groups(DEFAULT) if g.name == "fmdiag-gpu")
    for alert in gpu.alerts:
        if alert.name == "FmdiagGpuMissing":
            continue  # fmdiag_gpu_devices: per target (instance), no GPU label
        selectors = re.findall(r"(?:DCGM_\w+|fmdiag_gpu_\w+)\{[^}]*\}", alert.expr)
        assert selectors, alert.name
        assert alert.expr.count('"Hostname", "(.+)")') >= len(selectors), alert.name
        assert "{{ $labels.hostname }}" in alert.summary + alert.description, alert.name
