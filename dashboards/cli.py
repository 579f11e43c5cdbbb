"""`fmdiag dashboards build`: render the dashboards (and, on request, the rule files) of a config.

The committed files are this command's output with the default config:
``fmdiag dashboards build --out dashboards/generated --alerts-out alerts``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from fmdiag.dashboards import build as builder
from fmdiag.dashboards.config import DEFAULT, Config


def _config(
    datasource: str | None, cluster_label: str | None, runbook_url: str | None, selectors: tuple[str, ...]
) -> Config:
    c = DEFAULT
    if datasource:
        c = replace(c, datasource=datasource)
    if cluster_label:
        c = replace(c, cluster_label=cluster_label)
    if runbook_url:
        c = replace(c, runbook_url=runbook_url)
    for item in selectors:
        name, sep, matcher = item.partition("=")
        if not sep:
            raise click.BadParameter(
                f"{item!r}: expected NAME=MATCHER, e.g. fmdiag='job=\"fmdiag\"'", param_hint="--selector"
            )
        c = c.with_selector(name, matcher)
    return c


@click.group()
def dashboards() -> None:
    """Grafana dashboards (and the Prometheus rules) built from one config."""


@dashboards.command()
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the dashboard JSON files.",
)
@click.option(
    "--alerts-out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write rules/ and tests/ (promtool) here.",
)
@click.option("--datasource", help=f"Default Prometheus datasource name [default: {DEFAULT.datasource}].")
@click.option("--cluster-label", help=f"Label that tells clusters apart [default: {DEFAULT.cluster_label}].")
@click.option("--runbook-url", help="Where docs/runbook.md is published (alerts link <url>#<alert>).")
@click.option(
    "--selector",
    "selectors",
    multiple=True,
    metavar="NAME=MATCHER",
    help="Replace a selector: fmdiag (the exporter's targets) or gpu (GPU series), e.g. gpu='job=\"dcgm\"'.",
)
def build(
    out: Path,
    alerts_out: Path | None,
    datasource: str | None,
    cluster_label: str | None,
    runbook_url: str | None,
    selectors: tuple[str, ...],
) -> None:
    """Write the dashboards as Grafana JSON (and the rule files with --alerts-out)."""
    try:
        c = _config(datasource, cluster_label, runbook_url, selectors)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    written = builder.write(builder.dashboard_files(c), out)
    if alerts_out is not None:
        written += builder.write(builder.rule_files(c), alerts_out)
    for path in written:
        click.echo(str(path))
