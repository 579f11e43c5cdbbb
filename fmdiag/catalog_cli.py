"""`fmdiag catalog`: print the metric catalog for docs, dashboards and review."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from fmdiag import catalog as cat


@click.command("catalog")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "json", "names"]),
    default="names",
    show_default=True,
    help="names: one per line; markdown: docs/metrics.md; json: every field.",
)
@click.option("--subsystem", type=click.Choice(list(cat.SUBSYSTEMS)), help="Only this subsystem.")
def catalog(fmt: str, subsystem: str | None) -> None:
    """Every metric fmdiag's exporters emit: name, type, unit, help, labels."""
    metrics = [m for m in cat.CATALOG if subsystem is None or m.subsystem == subsystem]
    if fmt == "markdown":
        click.echo(cat.to_markdown())
    elif fmt == "json":
        click.echo(json.dumps([asdict(m) for m in metrics], indent=1))
    else:
        for m in metrics:
            click.echo(m.name)
