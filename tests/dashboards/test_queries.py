"""Every panel query and rule expression parses and selects only catalogued metrics, recorded
series of fmdiag's own recording rules, or Prometheus' own series; GPU panels work from a stock
dcgm-exporter."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fmdiag import catalog
from fmdiag.dashboards.config import DEFAULT
from fmdiag.dashboards.rules.render import groups

#: Series Prometheus itself writes.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "ALERTS", "ALERTS_FOR_STATE"}
RECORDED = {r.record for g in groups(DEFAULT) for r in g.records}
ALERT_EXPRS = [(a.name, a.expr) for g in groups(DEFAULT) for a in g.alerts]
RECORD_EXPRS = [(r.record, r.expr) for g in groups(DEFAULT) for r in g.records]


def _exposed_names() -> set[str]:
    names = set()
    for m in catalog.CATALOG:
        names.add(m.name)
        if m.type is catalog.MetricType.HISTOGRAM:
            names |= {m.name + s for s in ("_bucket", "_count", "_sum")}
    return names


EXPOSED = _exposed_names()


def _unknown(names: set[str], *, recorded_ok: bool = True) -> set[str]:
    return names - EXPOSED - PROMETHEUS_OWN - (RECORDED if recorded_ok else set())


def test_every_panel_query_parses_and_uses_known_series(panel_queries: list[Any], promql: Any) -> None:
    assert len(panel_queries) > 60
    for board, title, expr in panel_queries:
        names = promql.metric_names(promql.substitute(expr))
        assert names, f"{board} / {title}: selects no metric: {expr}"
        assert not _unknown(names), f"{board} / {title}: unknown series {_unknown(names)}"


@pytest.mark.parametrize(
    ("name", "expr"), ALERT_EXPRS + RECORD_EXPRS, ids=[n for n, _ in ALERT_EXPRS + RECORD_EXPRS]
)
def test_every_rule_expression_parses_and_uses_known_series(name: str, expr: str, promql: Any) -> None:
    names = promql.metric_names(expr)
    # Recording rules read raw series only (one backfill pass computes them all).
    unknown = _unknown(names, recorded_ok=not name.count(":"))
    assert names and not unknown, f"{name}: unknown series {unknown} in {expr}"


def test_every_recorded_series_is_read_by_a_panel_or_an_alert(panel_queries: list[Any], promql: Any) -> None:
    read = set()
    for _, _, expr in panel_queries:
        read |= promql.metric_names(promql.substitute(expr))
    for _, expr in ALERT_EXPRS:
        read |= promql.metric_names(expr)
    assert RECORDED - read == set()


def test_recorded_series_follow_level_metric_operation() -> None:
    for name in RECORDED:
        level, metric, operation = name.split(":")
        assert level in {"rank", "training_job"}, name
        assert metric.startswith("fmdiag_") and operation, name


def test_a_misspelled_metric_is_caught(promql: Any) -> None:
    """The check above can fail: a name missing from the catalog is reported."""
    names = promql.metric_names(
        promql.substitute('rate(fmdiag_efa_tx_byte_total{cluster=~"$cluster"}[$__rate_interval])')
    )
    assert _unknown(names) == {"fmdiag_efa_tx_byte_total"}


def test_template_variables_are_all_substituted(panel_queries: list[Any], promql: Any) -> None:
    for board, title, expr in panel_queries:
        assert "$" not in promql.substitute(expr), f"{board} / {title}"


def test_queries_use_the_training_job_label_not_job(panel_queries: list[Any]) -> None:
    """Prometheus owns ``job`` (the scrape job); the training job is the catalog's step label."""
    assert DEFAULT.job_label == (
        "exported_job" if catalog.STEP_LABELS[0] == "job" else catalog.STEP_LABELS[0]
    )
    for _, _, expr in panel_queries + [("", "", e) for _, e in ALERT_EXPRS + RECORD_EXPRS]:
        assert not re.search(r"\bby \([^)]*\bjob\b", expr), expr


def test_gpu_panels_need_only_dcgm_exporter_names(panel_queries: list[Any], promql: Any) -> None:
    """Every GPU series a dashboard reads is dcgm-exporter's, except fmdiag's own GPU health
    series, which only their own panels read (a stock dcgm-exporter leaves those empty)."""
    fmdiag_only = {"fmdiag_gpu_lost", "fmdiag_gpu_devices", "fmdiag_gpu_xid_errors_total"}
    for board, title, expr in panel_queries:
        gpu = {
            n
            for n in promql.metric_names(promql.substitute(expr))
            if n in catalog.BY_NAME and catalog.BY_NAME[n].subsystem == "gpu"
        }
        assert all(catalog.BY_NAME[n].dcgm or n in fmdiag_only for n in gpu), f"{board} / {title}: {gpu}"
        if gpu & fmdiag_only:
            assert title in {"GPUs lost", "XIDs (1h)"}, f"{board} / {title} needs fmdiag's exporter"


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [q for p in board["panels"] for q in (p, *p.get("panels", []))]


def test_panels_are_complete(boards: dict[str, dict[str, Any]]) -> None:
    """What the SDK does not check: ids, ref ids, datasource, a description saying what bad means."""
    uids = set()
    for name, board in boards.items():
        uids.add(board["uid"])
        ids = [p["id"] for p in _panels(board)]
        assert len(ids) == len(set(ids)) and 0 not in ids, name
        variables = {v["name"] for v in board["templating"]["list"]}
        assert {"datasource", "cluster"} <= variables, name
        assert any(link.get("tags") == ["fmdiag"] for link in board["links"]), (
            f"{name}: no link to the other dashboards"
        )
        for p in _panels(board):
            if p["type"] == "row":
                continue
            assert len(p.get("description", "")) > 30, (
                f"{name} / {p['title']}: describe what a bad value means"
            )
            assert p["datasource"]["uid"] == "${datasource}", f"{name} / {p['title']}"
            assert p["fieldConfig"]["defaults"].get("unit"), f"{name} / {p['title']}: no unit"
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), f"{name} / {p['title']}"
    assert len(uids) == len(boards) == 6


def test_variable_queries_parse(boards: dict[str, dict[str, Any]], promql: Any) -> None:
    pattern = re.compile(r"^label_values\((.+), (\w+)\)$")
    for name, board in boards.items():
        for v in board["templating"]["list"]:
            if v["type"] != "query":
                continue
            m = pattern.match(v["query"])
            assert m, f"{name}: variable {v['name']}: {v['query']}"
            assert not _unknown(promql.metric_names(promql.substitute(m[1]))), v["query"]


def test_panel_links_lead_to_existing_dashboards(boards: dict[str, dict[str, Any]]) -> None:
    uids = {board["uid"] for board in boards.values()}
    links = [link for board in boards.values() for p in _panels(board) for link in p.get("links", [])]
    assert len(links) >= 9
    for link in links:
        m = re.match(r"^/d/([\w-]+)\?\$\{__url_time_range\}&var-cluster=\$\{cluster\}$", link["url"])
        assert m and m[1] in uids, link
