"""``fmdiag exporter``: flags in Prometheus' conventions, wired to collectors, scraper and server.

The ``--collector.<name>`` switches and ``--collector.<name>.<option>`` flags are built from
the collector registry at import time, so a new collector file gets its flags for free: each
option flag, its ``--help`` line and its validation come from the collector's
:class:`~fmdiag.exporters.options.Option` declarations.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import click

from fmdiag import __version__
from fmdiag.durations import parse_duration
from fmdiag.exporters.collector import REGISTRY, Collector, CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors import discover
from fmdiag.exporters.options import Option, OptionError
from fmdiag.exporters.scrape import Scraper
from fmdiag.exporters.server import DEFAULT_MAX_CONNECTIONS, ExporterServer, parse_listen_address, serve
from fmdiag.exporters.webconfig import WebConfigError, WebConfigSource

log = logging.getLogger("fmdiag.exporter")

#: Not used by node_exporter (9100), dcgm-exporter (9400), the Lustre exporters (9169, 32221)
#: or anything in Prometheus' default-port allocation list.
DEFAULT_LISTEN_ADDRESS = ":9847"
DEFAULT_SCRAPE_TIMEOUT = "5s"


class DurationType(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.4
    """A duration flag (``5s``, ``500ms``, ``1m``, or seconds), as seconds: one parser for every flag."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class OptionType(click.ParamType):  # type: ignore[type-arg]
    """A collector option's text, checked by its declaration's parser when the flags are read.

    The text is what travels on (``CollectorContext.options``), so the collector parses it
    with the same declaration; checking here too refuses a bad value before anything starts,
    for disabled collectors as well, in click's words naming the flag (exit status 2).
    """

    def __init__(self, option: Option[Any]) -> None:
        self.option = option
        self.name = option.metavar.lower() or "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            self.option.parse(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text


def _option_param(collector: str, option: str) -> str:
    return f"opt__{collector}__{option}".replace("-", "_").replace(".", "_")


def build_paths(sysfs: str | None, procfs: str | None, debugfs: str | None, rootfs: str) -> Paths:
    """Explicit paths win; otherwise they sit under ``--path.rootfs`` (``/host/sys`` when rootfs is /host)."""
    root = Path(rootfs)
    return Paths(
        sysfs=Path(sysfs) if sysfs else root / "sys",
        procfs=Path(procfs) if procfs else root / "proc",
        debugfs=Path(debugfs) if debugfs else root / "sys/kernel/debug",
        rootfs=root,
    )


def enabled_collectors(params: dict[str, Any], ctx: click.Context) -> list[str]:
    """Collectors switched on: each one's default, or only explicit ``--collector.X`` with
    ``--collector.disable-defaults`` (node_exporter's semantics)."""
    disable_defaults = bool(params.get("collector_disable_defaults"))
    names = []
    for name in sorted(REGISTRY):
        key = f"collector__{name}"
        value = bool(params.get(key))
        if disable_defaults:
            source = ctx.get_parameter_source(key)
            value = value and source is click.core.ParameterSource.COMMANDLINE
        if value:
            names.append(name)
    return names


def option_texts(collector: str, declared: tuple[Option[Any], ...], params: dict[str, Any]) -> dict[str, str]:
    """The ``--collector.<collector>.*`` flags given, as the text the collector parses."""
    texts = {}
    for option in declared:
        value = params.get(_option_param(collector, option.name))
        if value is not None:
            texts[option.name] = ("on" if value else "off") if option.switch else str(value)
    return texts


def _option_flag(collector: str, option: Option[Any]) -> click.Option:
    flag = option.flag(collector)
    shown = f"  [default: {option.default_text}]" if option.default_text else ""
    if option.switch:
        return click.Option(
            [_option_param(collector, option.name), f"{flag}/--no-{flag.removeprefix('--')}"],
            default=None,
            help=option.help + shown,
        )
    return click.Option(
        [_option_param(collector, option.name), flag],
        default=None,
        type=OptionType(option),
        metavar=option.metavar,
        help=option.help + shown,
    )


def _run(**params: Any) -> None:
    ctx = click.get_current_context()
    try:
        host, port = parse_listen_address(params["listen_address"])
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    telemetry_path = params["telemetry_path"]
    if not telemetry_path.startswith("/") or telemetry_path in ("/", "/healthz"):
        raise click.BadParameter(
            f"{telemetry_path!r}: must start with / and not be / or /healthz",
            param_hint="--web.telemetry-path",
        )
    config_file = params.get("web_config_file")
    try:
        web_config = WebConfigSource(Path(config_file) if config_file else None)
    except WebConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--web.config.file") from None

    paths = build_paths(
        params["path_sysfs"], params["path_procfs"], params["path_debugfs"], params["path_rootfs"]
    )
    # One context for the whole exporter: every collector gets a copy with its own options,
    # sharing the error sink, the NVML implementation and the collector-to-collector links.
    shared = CollectorContext(
        paths=paths, errors=ErrorReporter(), hostname=os.environ.get("NODE_NAME") or socket.gethostname()
    )
    collectors: list[Collector] = []
    for name in enabled_collectors(params, ctx):
        cls = REGISTRY[name]
        options = option_texts(name, cls.options, params)
        try:
            collectors.append(cls(dataclasses.replace(shared, options=options)))
        except OptionError as exc:
            raise click.UsageError(str(exc)) from None
        except (ValueError, OSError) as exc:
            raise click.BadParameter(f"collector {name}: {exc}", param_hint=f"--collector.{name}.*") from None
        except Exception as exc:
            log.exception("collector %s could not start", name)
            raise click.ClickException(
                f"collector {name} could not start ({type(exc).__name__}: {exc}); "
                f"--no-collector.{name} runs the exporter without it"
            ) from None

    scraper = Scraper(collectors, shared.errors, params["scrape_timeout"])
    names = [c.name for c in collectors]
    try:
        server = ExporterServer(
            params["listen_address"], scraper, telemetry_path, web_config, names, params["max_connections"]
        )
    except OSError as exc:
        scraper.close()
        raise click.ClickException(f"cannot listen on {host or '*'}:{port}: {exc}") from None

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: shutting down", signal.Signals(signum).name)
        stop.set()

    # Everything imported so far lives as long as the process: keep it out of the cyclic
    # collector's scans, and collect young objects less often (a scrape allocates a few
    # thousand short-lived, acyclic samples that reference counting frees anyway).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "fmdiag exporter %s listening on %s%s (%s), collectors: %s, sysfs=%s procfs=%s debugfs=%s",
        __version__,
        "https://" if web_config.tls_enabled else "http://",
        server.bound,
        telemetry_path,
        ", ".join(names) or "none",
        paths.sysfs,
        paths.procfs,
        paths.debugfs,
    )
    scraper.check_sources()  # a bad --path.* mount is in the log from the start
    try:
        serve(server, stop)
    finally:
        scraper.close()


def _build() -> click.Command:
    discover()
    params: list[click.Parameter] = [
        click.Option(
            ["listen_address", "--web.listen-address"],
            default=DEFAULT_LISTEN_ADDRESS,
            show_default=True,
            help="Address to listen on: host:port, :port (all interfaces) or [ipv6]:port.",
        ),
        click.Option(
            ["telemetry_path", "--web.telemetry-path"],
            default="/metrics",
            show_default=True,
            help="Path under which metrics are served.",
        ),
        click.Option(
            ["web_config_file", "--web.config.file"],
            default=None,
            type=click.Path(dir_okay=False),
            help="exporter-toolkit web config (TLS, basic auth with bcrypt hashes); re-read when it changes.",
        ),
        click.Option(
            ["max_connections", "--web.max-connections"],
            default=DEFAULT_MAX_CONNECTIONS,
            type=click.IntRange(min=0),
            show_default=True,
            help="Most connections served at once (each holds a thread while open); more are "
            "answered 503. 0: no limit.",
        ),
        click.Option(
            ["path_rootfs", "--path.rootfs"],
            default="/",
            show_default=True,
            help="Where the host's root is mounted (containers: /host); the other paths default under it.",
        ),
        click.Option(
            ["path_sysfs", "--path.sysfs"], default=None, help="sysfs mount point [default: <rootfs>/sys]."
        ),
        click.Option(
            ["path_procfs", "--path.procfs"],
            default=None,
            help="procfs mount point [default: <rootfs>/proc].",
        ),
        click.Option(
            ["path_debugfs", "--path.debugfs"],
            default=None,
            help="debugfs mount point [default: <rootfs>/sys/kernel/debug].",
        ),
        click.Option(
            ["scrape_timeout", "--scrape.timeout"],
            default=DEFAULT_SCRAPE_TIMEOUT,
            type=DurationType(),
            metavar="DURATION",
            show_default=True,
            help="Per-scrape deadline; a collector still running then is reported failed "
            "(keep it below Prometheus' scrape_timeout).",
        ),
        click.Option(
            ["collector_disable_defaults", "--collector.disable-defaults"],
            is_flag=True,
            default=False,
            help="Enable only the collectors named with --collector.<name>.",
        ),
    ]
    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        summary = doc[0] if doc else ""
        params.append(
            click.Option(
                [f"collector__{name}", f"--collector.{name}/--no-collector.{name}"],
                default=cls.default_enabled,
                show_default="enabled" if cls.default_enabled else "disabled",
                help=f"Enable the {name} collector. {summary}",
            )
        )
        params.extend(_option_flag(name, option) for option in sorted(cls.options, key=lambda o: o.name))
    return click.Command(
        "exporter",
        params=params,
        callback=_run,
        help="Serve this node's GPU, EFA, Lustre, host and step-time metrics to Prometheus.",
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    )


exporter = _build()
