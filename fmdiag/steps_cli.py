"""`fmdiag steps`: validate step-record files before trusting an analysis of them (`check`), and
make them from a training framework's own logs (`import-megatron`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fmdiag import megatron_timers
from fmdiag.dumpformat import DumpLayout
from fmdiag.steprecord import (
    MAX_LINE_BYTES,
    PHASES,
    StepRecordError,
    binary_content,
    iter_lines,
    problems,
    step_files,
    validate,
    warnings,
)


@click.group("steps")
def steps() -> None:
    """Work with step-record files (the steptrace spool or a dump's steps/ folder)."""


def _line_report(path: Path, number: int, raw: bytes) -> tuple[list[str], list[str]]:
    """(errors, warnings) of one line: every problem of a bad line, not just the first."""
    where = f"{path}:{number}"
    if len(raw) > MAX_LINE_BYTES:
        return [f"{where}: line is {len(raw)} bytes, over the {MAX_LINE_BYTES} limit"], []
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{where}: not valid JSON: {exc}"], []
    found = problems(obj, source=str(path), line=number)
    if found:
        return [str(e) for e in found], []
    try:
        record = validate(obj, source=str(path), line=number)
    except StepRecordError as exc:  # problems() found none, so this cannot happen; say so if it does
        return [str(exc)], []
    return [], [f"{where}: {w}" for w in warnings(record)]


@steps.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--max-errors", default=20, show_default=True, help="Errors to print per file.")
def check(paths: tuple[str, ...], max_errors: int) -> None:
    """Validate files or folders of step records; exit 1 when any line is bad.

    Every problem of a bad line is printed (all its fields, not the first one only); a binary
    file is an error; a phase longer than its step is a warning.
    """
    files = [f for p in paths for f in step_files(p)]
    if not files:
        raise click.ClickException(f"no *.jsonl step files under {', '.join(paths)}")
    bad = 0
    warned = 0
    for path in files:
        data = Path(path).read_bytes()
        binary = binary_content(data)
        if binary is not None:
            bad += 1
            click.echo(f"{path}: {binary}")
            continue
        records = 0
        bad_lines = 0
        messages: list[str] = []
        notes: list[str] = []
        for number, raw in iter_lines(data):
            errs, warns = _line_report(Path(path), number, raw)
            if errs:
                bad_lines += 1
                messages.extend(errs)
            else:
                records += 1
                notes.extend(warns)
        bad += bad_lines
        warned += len(notes)
        tail = " (last line still being written)" if data and not data.endswith(b"\n") else ""
        more = f", {len(notes)} warnings" if notes else ""
        click.echo(f"{path}: {records} records, {bad_lines} bad lines{more}{tail}")
        for message in messages[:max_errors]:
            click.echo(f"  {message}", err=True)
        if len(messages) > max_errors:
            click.echo(f"  ... {len(messages) - max_errors} more", err=True)
        for note in notes[:max_errors]:
            click.echo(f"  warning: {note}", err=True)
        if len(notes) > max_errors:
            click.echo(f"  ... {len(notes) - max_errors} more warnings", err=True)
    click.echo(f"{len(files)} files, {bad} bad lines" + (f", {warned} warnings" if warned else ""))
    if bad:
        sys.exit(1)


@steps.command("import-megatron")
@click.argument("logs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Trace dump to write into: one step file per rank in its steps/ folder.",
)
@click.option("--job", required=True, help="Job name for the records and their file names.")
@click.option("--tp", type=click.IntRange(min=1), required=True, help="--tensor-model-parallel-size.")
@click.option("--pp", type=click.IntRange(min=1), required=True, help="--pipeline-model-parallel-size.")
@click.option("--dp", type=click.IntRange(min=1), required=True, help="Data-parallel size.")
@click.option(
    "--cp", type=click.IntRange(min=1), default=1, show_default=True, help="--context-parallel-size."
)
@click.option(
    "--ep",
    type=click.IntRange(min=1),
    default=None,
    help="--expert-model-parallel-size: records get ep_rank (expert tensor parallel taken as --tp).",
)
@click.option(
    "--ranks-per-node",
    type=click.IntRange(min=1),
    required=True,
    help="Ranks per node: rank r runs on node-NNN = r // this, local rank r % this.",
)
@click.option(
    "--order",
    default=megatron_timers.DEFAULT_ORDER,
    show_default=True,
    help="Megatron's rank order, first fastest (tp-cp-ep-pp-dp with --use-tp-pp-dp-mapping).",
)
@click.option(
    "--start-time",
    default=None,
    help="RFC 3339 start of the first interval. Default: the first iteration line's time is the end"
    " of the first interval (UTC if it has no offset), else 2020-01-01T00:00:00Z its start.",
)
@click.option(
    "--keep-going", is_flag=True, help="Count bad lines and go on instead of stopping at the first."
)
@click.option("--force", is_flag=True, help="Replace this job's step files already in the dump.")
def import_megatron(
    logs: tuple[str, ...],
    out: str,
    job: str,
    tp: int,
    pp: int,
    dp: int,
    cp: int,
    ep: int | None,
    ranks_per_node: int,
    order: str,
    start_time: str | None,
    keep_going: bool,
    force: bool,
) -> None:
    """Megatron-LM (or NeMo) training logs into step records, one per rank per log interval.

    The logs must hold the timers of every rank: Megatron-LM run with --timing-log-level 2 and
    --timing-log-option all. LOGS are read in order (plain or gzip; torchrun and srun line
    prefixes are fine). The mapping of timers to phases is in docs/formats.md; then run
    `fmdiag analyze DUMP`.
    """
    try:
        layout = megatron_timers.Layout(
            tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, ranks_per_node=ranks_per_node, order=order
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    start_ns = None
    if start_time is not None:
        try:
            start_ns = megatron_timers.parse_timestamp(start_time)[0]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--start-time") from None
    writer = megatron_timers.StepFileWriter(DumpLayout(Path(out)).steps_dir, job)
    existing = writer.existing()
    if existing and not force:
        raise click.ClickException(
            f"{writer.directory} already holds {len(existing)} step files of job {job!r}: pass --force"
            " to replace them, or another --job"
        )
    stats = megatron_timers.ParseStats()
    intervals = megatron_timers.read_intervals(logs, lenient=keep_going, stats=stats)
    ranks: set[int] = set()
    steps_seen: list[int] = []
    phases: set[str] = set()
    try:
        for record in megatron_timers.to_records(
            intervals, job=job, layout=layout, start_ns=start_ns, stats=stats
        ):
            writer.add(record)
            ranks.add(record["rank"])
            if not steps_seen or steps_seen[-1] != record["step"]:
                steps_seen.append(record["step"])
            phases.update(name for name in record if name in PHASES)
        if not writer.records:
            megatron_timers.check_has_per_rank_times(stats, ", ".join(logs))
            raise megatron_timers.MegatronLogError("no step records in the logs", source=", ".join(logs))
        writer.commit()
    except (megatron_timers.MegatronLogError, StepRecordError, OSError) as exc:
        writer.discard()
        for error in stats.errors:  # the bad lines --keep-going passed over before this
            click.echo(f"  {error}", err=True)
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{writer.directory}: {writer.records} step records, {len(ranks)} ranks,"
        f" {len(steps_seen)} intervals (iterations {steps_seen[0]}-{steps_seen[-1]}) from"
        f" {stats.files} log(s), {stats.lines} lines"
    )
    if stats.bad_lines:
        click.echo(f"{stats.bad_lines} bad lines skipped:", err=True)
        for error in stats.errors:
            click.echo(f"  {error}", err=True)
        if stats.bad_lines > len(stats.errors):
            click.echo(f"  ... {stats.bad_lines - len(stats.errors)} more", err=True)
    if stats.first_iteration_logs:
        its = ", ".join(map(str, stats.first_iteration_logs))
        click.echo(
            f"note: left out the log after iteration {its}: Megatron-LM logs a run's first iteration"
            " with its timers divided by the log interval",
            err=True,
        )
    missing = [p for p in ("forward", "backward", "data_wait") if p not in phases]
    if missing:
        click.echo(
            f"note: no {', '.join(missing)} phase: those timers are logged at --timing-log-level 2",
            err=True,
        )
    click.echo(f"next: fmdiag analyze {out}")
