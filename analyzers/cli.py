"""``fmdiag analyze`` and ``fmdiag collect``: option parsing wired to the pipeline, nothing more."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fmdiag import durations
from fmdiag.analyzers import pipeline
from fmdiag.analyzers.errors import InputError
from fmdiag.analyzers.readers import prometheus_source
from fmdiag.analyzers.readers.timeparse import parse_time
from fmdiag.analyzers.reports import report_json, report_text
from fmdiag.dumpformat import DumpLayout

if TYPE_CHECKING:
    import pandas as pd

# pandas and pyarrow load only where a command needs them (step records, metrics): a Kineto-only
# analysis then stays at numpy's footprint, a fraction of HTA's.


class _Time(click.ParamType):  # type: ignore[type-arg]
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Duration(click.ParamType):  # type: ignore[type-arg]
    name = "DURATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return durations.parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


#: Fewer files than this read too fast for a progress bar to help.
PROGRESS_MIN_FILES = 64


def _check_regex(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bad ``--rank-from`` fails at the command line, naming the option, not in a worker."""
    if value is None:
        return None
    import re  # noqa: PLC0415

    try:
        re.compile(value)
    except re.error as exc:
        raise click.BadParameter(f"not a regular expression: {exc}") from None
    return value


def _check_writable(path: Path) -> None:
    """``--html`` to a path that cannot be written fails before the analysis, not after it."""
    import os  # noqa: PLC0415

    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory", param_hint="--html")
    if not parent.is_dir():
        raise click.BadParameter(f"{parent}: no such directory", param_hint="--html")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"{path}: not writable", param_hint="--html")


def _progress_bar(label: str, total: int) -> Callable[[int], None] | None:
    """A bar on stderr (a terminal only: the caller checks) for long per-file reads."""
    if total < PROGRESS_MIN_FILES:
        return None
    done = 0
    width = 30

    def advance(n: int) -> None:
        nonlocal done
        done += n
        filled = width * done // total
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r  {label:<13} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
        sys.stderr.flush()

    return advance


TIME = _Time()
DURATION = _Duration()


def _live_metrics(
    url: str, job: str | None, start: float | None, end: float | None, step: float, a_dump: Path
) -> tuple[dict[str, pd.DataFrame], str]:
    """Node metrics for the dump's job from a live Prometheus, in the dump's frame shape."""
    from fmdiag.analyzers import collect as collect_mod  # noqa: PLC0415
    from fmdiag.analyzers.readers import metrics_reader, steps_reader  # noqa: PLC0415 - loaded only when needed

    if job is None or start is None or end is None:
        parts = [steps_reader.read_file(p) for p in DumpLayout(a_dump).step_files()]
        frame, cov = steps_reader.merge(parts)
        if frame.empty:
            raise click.UsageError(
                "--prometheus needs --job, --start and --end when the dump has no step records"
            )
        job = job or cov.jobs[0]
        start = start if start is not None else float(frame["start_ns"].min()) / 1e9
        end = end if end is not None else float(frame["end_ns"].max()) / 1e9
    client = prometheus_source.Client(url)
    instances = collect_mod.require_job_instances(client, job, start, end)
    frames = {
        sub: metrics_reader.frame_from_columns(collect_mod.long_form(series, sub))
        for sub, series in collect_mod.job_series(client, job, instances, start, end, step)
    }
    return frames, f"prometheus {url}"


@click.command("analyze")
@click.argument("dump", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--json", "as_json", is_flag=True, help="Write the versioned JSON document (docs/analyze.md) to stdout."
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="FILE",
    help="Also write a self-contained HTML report with figures (opens offline) to FILE.",
)
@click.option(
    "--hta-compatible",
    is_flag=True,
    help="Also report Holistic Trace Analysis' per-rank numbers by its definitions.",
)
@click.option(
    "--keep-going", is_flag=True, help="Skip unreadable files and bad lines, listing them in the output."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Local worker processes (default: one per CPU).",
)
@click.option(
    "--scheduler", metavar="tcp://HOST:PORT", default=None, help="Run per-rank work on this Dask scheduler."
)
@click.option(
    "--kernel-wait-us",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Gaps between kernels shorter than this are kernel wait (launch latency).",
)
@click.option(
    "--rank-from",
    metavar="REGEX",
    default=None,
    callback=_check_regex,
    help="For traces that state no rank: a regex whose first group (or whole match) in the file name"
    " is the rank, e.g. 'worker(\\d+)'. Without it such a trace is rank 0.",
)
@click.option(
    "--prometheus",
    metavar="URL",
    default=None,
    help="Read node metrics from this Prometheus instead of metrics/.",
)
@click.option("--job", default=None, help="Training job for --prometheus (default: the step records').")
@click.option(
    "--start", type=TIME, default=None, help="Start of the --prometheus range (default: first step)."
)
@click.option("--end", type=TIME, default=None, help="End of the --prometheus range (default: last step).")
@click.option(
    "--step",
    "query_step",
    type=DURATION,
    default="15s",
    show_default=True,
    help="--prometheus query resolution.",
)
def analyze(
    dump: Path,
    as_json: bool,
    html_out: Path | None,
    hta_compatible: bool,
    keep_going: bool,
    workers: int | None,
    scheduler: str | None,
    kernel_wait_us: float,
    rank_from: str | None,
    prometheus: str | None,
    job: str | None,
    start: float | None,
    end: float | None,
    query_step: float,
) -> None:
    """Per-step, per-rank time breakdown of a trace dump: step records, Kineto traces, node metrics.

    DUMP is a directory with steps/, kineto/ and/or metrics/ (docs/formats.md).
    """
    options = pipeline.Options(
        hta_compatible=hta_compatible,
        keep_going=keep_going,
        workers=workers,
        scheduler=scheduler,
        kernel_wait_us=kernel_wait_us,
        rank_from=rank_from,
        progress=_progress_bar if sys.stderr.isatty() else None,
    )
    if html_out is not None:
        _check_writable(html_out)
    try:
        metrics: dict[str, pd.DataFrame] | None = None
        source: str | None = None
        if prometheus:
            metrics, source = _live_metrics(prometheus, job, start, end, query_step, dump)
        result = pipeline.run(dump, options, metrics=metrics, metrics_source=source)
    except (InputError, prometheus_source.PrometheusError) as exc:
        raise click.ClickException(str(exc)) from None
    except (OSError, TimeoutError) as exc:
        if scheduler is None:
            raise
        # distributed raises these when the scheduler is gone: one line, not its traceback
        raise click.ClickException(f"cannot use the Dask scheduler at {scheduler}: {exc}") from None
    if as_json:
        report_json.write(result, sys.stdout)
    else:
        sys.stdout.write(report_text.render(result))
    if html_out is not None:
        from fmdiag.analyzers.reports import report_html  # noqa: PLC0415 - loaded only when needed

        try:
            html_out.write_text(report_html.render(result, report_json.document(result)), encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"{html_out}: cannot write: {exc.strerror or exc}") from None
        click.echo(f"wrote {html_out}", err=True)


@click.command("collect")
@click.option("--prometheus", metavar="URL", required=True, help="Prometheus base URL (http://host:9090).")
@click.option("--job", required=True, help="Training job id (the step series' training_job label).")
@click.option("--start", type=TIME, required=True, help="Start: Unix seconds or RFC 3339.")
@click.option("--end", type=TIME, required=True, help="End: Unix seconds or RFC 3339.")
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Dump directory to write."
)
@click.option(
    "--step", "query_step", type=DURATION, default="15s", show_default=True, help="Query resolution."
)
@click.option(
    "--max-series",
    type=click.IntRange(min=1),
    default=prometheus_source.DEFAULT_MAX_SERIES,
    show_default=True,
    help="Most series one request may return.",
)
@click.option(
    "--max-points",
    type=click.IntRange(min=1, max=11_000),
    default=prometheus_source.DEFAULT_MAX_POINTS,
    show_default=True,
    help="Most points per series one request may return.",
)
@click.option(
    "--steps-from",
    "steps_from",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    multiple=True,
    metavar="SPOOL",
    help="Also copy the job's step files from this spool directory into steps/; repeat it for a "
    "spool per node (node-local disks).",
)
def collect(
    prometheus: str,
    job: str,
    start: float,
    end: float,
    out: Path,
    query_step: float,
    max_series: int,
    max_points: int,
    steps_from: tuple[Path, ...],
) -> None:
    """Copy a training job's node metrics from Prometheus (and its step records) into a trace dump.

    Metrics go to metrics/; with --steps-from, the job's step files go to steps/. Offline
    analysis (fmdiag analyze OUT) then needs no Prometheus. Prometheus holds step times at
    scrape resolution only, so the per-step records come from the job's spool.
    """
    if end < start:
        raise click.BadParameter(f"--end {end} is before --start {start}", param_hint="--end")
    from fmdiag.analyzers import collect as collect_mod  # noqa: PLC0415

    client = prometheus_source.Client(prometheus)
    try:
        result = collect_mod.collect(client, job, start, end, out, query_step, max_series, max_points)
    except prometheus_source.PrometheusError as exc:
        raise click.ClickException(str(exc)) from None
    for sub in sorted(result.files):
        click.echo(f"{result.files[sub]}: {result.series[sub]} series, {result.rows[sub]} rows")
    click.echo(f"{len(result.instances)} nodes, {result.requests} requests")
    if steps_from:
        copied = collect_mod.copy_step_files_from(steps_from, job, out)
        for problem in copied.problems[:10]:
            click.echo(f"warning: {problem}", err=True)
        if not copied.files:
            spools = ", ".join(map(str, steps_from))
            raise click.ClickException(f"{spools}: no step files of job {job!r}")
        click.echo(f"{out / 'steps'}: {len(copied.files)} step files, {copied.records} records")
