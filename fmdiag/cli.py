"""The `fmdiag` command: a click group that only wires subcommands to their modules.

Subcommands are imported lazily, and `fmdiag --help` lists them from the table below without
importing any, so it stays fast and a subcommand's heavy dependencies (pandas, pyarrow, NVML)
load only when that subcommand runs. A subcommand is listed here only once it is built.

fmdiag is installed in three places with different extras (a training image, every node, an
analysis workstation), so a subcommand may need an extra that is not installed; it then exits
with one line naming the extra instead of an ImportError traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from typing import IO, Any

import click

from fmdiag import __version__

#: extra (pyproject's optional-dependencies) -> the top-level modules its distributions provide.
#: A ModuleNotFoundError naming one of these means "install the extra", anything else is a bug.
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "analyze": frozenset({"numpy", "pandas", "pyarrow", "plotly", "msgspec"}),
    "dashboards": frozenset({"grafana_foundation_sdk"}),
    "dask": frozenset({"dask", "distributed"}),
}


@dataclass(frozen=True)
class Subcommand:
    #: "module:attribute" of a click command.
    target: str
    #: The command's short help, so the group's --help lists it without importing its module
    #: (a test keeps it equal to the command's own).
    summary: str
    #: The extra its module needs beyond the base install; None: the base is enough.
    extra: str | None = None


SUBCOMMANDS: dict[str, Subcommand] = {
    "alerts": Subcommand(
        "fmdiag.dashboards.alerts_cli:alerts",
        "Prometheus alert and recording rules: check them with promtool.",
    ),
    "analyze": Subcommand(
        "fmdiag.analyzers.cli:analyze",
        "Per-step, per-rank time breakdown of a trace dump: step records, Kineto traces, node metrics.",
        extra="analyze",
    ),
    "catalog": Subcommand(
        "fmdiag.catalog_cli:catalog", "Every metric fmdiag's exporters emit: name, type, unit, help, labels."
    ),
    "collect": Subcommand(
        "fmdiag.analyzers.cli:collect",
        "Copy a training job's node metrics from Prometheus (and its step records) into a trace dump.",
        extra="analyze",
    ),
    "dashboards": Subcommand(
        "fmdiag.dashboards.cli:dashboards",
        "Grafana dashboards (and the Prometheus rules) built from one config.",
        extra="dashboards",
    ),
    "exporter": Subcommand(
        "fmdiag.exporters.cli:exporter",
        "Serve this node's GPU, EFA, Lustre, host and step-time metrics to Prometheus.",
    ),
    "simulate": Subcommand(
        "fmdiag.simulate.cli:simulate",
        "Simulate a data- or pipeline-parallel training job on a virtual GPU/EFA/Lustre cluster with"
        " one injected bottleneck, and write what observability would see: step records, node metrics, Kineto"
        " traces, node trees, and the ground truth (truth.json).",
        extra="analyze",
    ),
    "steps": Subcommand(
        "fmdiag.steps_cli:steps",
        "Work with step-record files (the steptrace spool or a dump's steps/ folder).",
    ),
}


def extra_installed(extra: str) -> bool:
    """Whether every module of ``extra`` can be found, without importing any of them."""
    for name in EXTRA_MODULES[extra]:
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


class MissingExtra(click.ClickException):
    """A subcommand's extra is not installed: one line that says what to install, exit status 1."""

    def __init__(self, command_path: str, extra: str, module: str) -> None:
        super().__init__(
            f"{command_path}: needs the {extra!r} extra ({module} is not installed):"
            f" pip install 'fmdiag[{extra}]'"
        )

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.format_message(), file=file, err=file is None)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        sub = SUBCOMMANDS.get(cmd_name)
        if sub is None:
            return None
        module, _, attr = sub.target.partition(":")
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if sub.extra is None or missing not in EXTRA_MODULES[sub.extra]:
                raise
            raise MissingExtra(f"{ctx.command_path} {cmd_name}", sub.extra, missing) from None
        command = getattr(loaded, attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own listing imports every subcommand for its short help; this one reads the table.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            sub = SUBCOMMANDS[name]
            summary = sub.summary
            if sub.extra is not None and not extra_installed(sub.extra):
                summary = f"(needs fmdiag[{sub.extra}]) {summary}"
            # A stand-in command shortens the summary exactly as click shortens a command's help.
            rows.append((name, click.Command(name, help=summary).get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


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
