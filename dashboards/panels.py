"""Shared panel defaults and the board skeleton, so every dashboard looks and links the same.

Every panel gets the ``$datasource`` variable, a description (what a bad value means and what
to do), an id and a ref id per target: grafana-foundation-sdk validates none of that, so it is
done here once. Links between the fmdiag dashboards (a tag dropdown that keeps the time range
and variables) are added here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common, dashboard, heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.common import GraphThresholdsStyleMode, StackingMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from fmdiag.dashboards.config import Config

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Rate window of every panel: Grafana's, at least four scrape intervals.
RATE = "$__rate_interval"
TAG = "fmdiag"


@dataclass(frozen=True)
class Q:
    """One panel query: PromQL, legend, and whether Grafana asks for one instant."""

    expr: str
    legend: str = ""
    instant: bool = False


def _target(q: Q, ref: str, fmt: PromQueryFormat | None = None) -> prometheus.Dataquery:
    t = prometheus.Dataquery().expr(q.expr).ref_id(ref).datasource(DATASOURCE)
    if q.legend:
        t = t.legend_format(q.legend)
    t = t.instant() if q.instant else t.range()
    if fmt is not None:
        t = t.format(fmt)
    return t


def _refs(queries: Sequence[Q], fmt: PromQueryFormat | None = None) -> list[cogbuilder.Builder[object]]:
    return [_target(q, chr(ord("A") + i), fmt) for i, q in enumerate(queries)]  # type: ignore[misc]


def steps(*points: tuple[str, float | None]) -> dashboard.ThresholdsConfig:
    """Absolute thresholds: ``("green", None), ("red", 0.8)``."""
    return (
        dashboard.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(color=color, value=value) for color, value in points])
    )


def graph(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    *,
    min_val: float | None = None,
    max_val: float | None = None,
    thresholds: dashboard.ThresholdsConfig | None = None,
    stack: bool = False,
    width: int = 12,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_refs(queries))  # type: ignore[arg-type]
        .unit(unit)
        .span(width)
        .height(8)
    )
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if thresholds is not None:
        p = p.thresholds(thresholds).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.DASHED)
        )
    if stack:
        p = p.stacking(common.StackingConfig().mode(StackingMode.NORMAL)).fill_opacity(40)
    return p


def single(
    title: str,
    description: str,
    queries: Sequence[Q],
    unit: str,
    *,
    thresholds: dashboard.ThresholdsConfig | None = None,
    width: int = 4,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_refs(queries))  # type: ignore[arg-type]
        .unit(unit)
        .span(width)
        .height(4)
    )
    if thresholds is not None:
        p = p.thresholds(thresholds)
    return p


def listing(title: str, description: str, queries: Sequence[Q], unit: str, *, width: int = 12) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_refs(queries))  # type: ignore[arg-type]
        .unit(unit)
        .span(width)
        .height(8)
    )


def heat(
    title: str, description: str, query: Q, unit: str, *, buckets: bool, width: int = 12
) -> heatmap.Panel:
    """A heatmap of histogram buckets (``buckets``) or of one row per series (per-rank step time)."""
    fmt = PromQueryFormat.HEATMAP if buckets else PromQueryFormat.TIME_SERIES
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_refs([query], fmt))  # type: ignore[arg-type]
        .calculate(False)
        .unit(unit)
        .span(width)
        .height(8)
    )


def link_to(c: Config, key: str, title: str) -> dashboard.DashboardLink:
    """A panel link to another fmdiag dashboard, keeping the time range and the cluster."""
    return (
        dashboard.DashboardLink(title)
        .type(model.DashboardLinkType.LINK)
        .url(f"/d/{c.uid_prefix}-{key}?${{__url_time_range}}&var-cluster=${{cluster}}")
    )


class Board:
    """A dashboard under construction: numbers panels, adds rows, variables and the shared links."""

    def __init__(self, c: Config, key: str, title: str, description: str) -> None:
        self.c = c
        self._id = 0
        self.dash = (
            dashboard.Dashboard(title)
            .uid(f"{c.uid_prefix}-{key}")
            .description(description)
            .tags([TAG, key])
            .editable()
            .refresh("1m")
            .time("now-3h", "now")
            .timezone("utc")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(
                dashboard.DashboardLink("fmdiag dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(
                dashboard.DatasourceVariable("datasource")
                .label("Data source")
                .type("prometheus")
                .current(model.VariableOption(selected=True, text=c.datasource, value=c.datasource))
            )
        )

    def _next(self) -> int:
        self._id += 1
        return self._id

    def variable(self, name: str, label: str, query: str, *, multi: bool = True) -> Board:
        """A query variable; ``query`` is Grafana's ``label_values(...)`` form."""
        self.dash = self.dash.with_variable(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(query)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(multi)
            .include_all(multi)
            .current(
                model.VariableOption(
                    selected=True, text="All" if multi else "", value="$__all" if multi else ""
                )
            )
        )
        return self

    def row(self, title: str) -> Board:
        self.dash = self.dash.with_row(dashboard.Row(title).id(self._next()))
        return self

    def add(self, *panels: cogbuilder.Builder[model.Panel]) -> Board:
        for p in panels:
            self.dash = self.dash.with_panel(p.id(self._next()))  # type: ignore[attr-defined]
        return self

    def build(self) -> model.Dashboard:
        return self.dash.build()
