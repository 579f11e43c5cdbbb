"""The `fmdiag` command: a click group that only wires subcommands to their modules.

Subcommands are imported lazily, so `fmdiag --help` stays fast and a subcommand's heavy
dependencies (pandas, plotly, NVML) load only when that subcommand runs. A subcommand is
listed here only once it is built.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from fmdiag import __version__

#: name -> "module:attribute" of a click command.
SUBCOMMANDS: dict[str, str] = {
    "catalog": "fmdiag.catalog_cli:catalog",
    "exporter": "fmdiag.exporters.cli:exporter",
    "simulate": "fmdiag.simulate.cli:simulate",
    "steps": "fmdiag.steps_cli:steps",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fmdiag")
@click.option(
    "--log.level",
    "log_level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warn", "error"]),
    help="Log verbosity.",
)
def cli(log_level: str) -> None:
    """Observability and bottleneck diagnosis for foundation-model training clusters."""
    level = {"warn": "WARNING"}.get(log_level, log_level.upper())
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    cli()
