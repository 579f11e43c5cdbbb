"""`fmdiag steps check`: validate step-record files before trusting an analysis of them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fmdiag.steprecord import (
    MAX_LINE_BYTES,
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
