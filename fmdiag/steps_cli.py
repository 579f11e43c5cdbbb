"""`fmdiag steps check`: validate step-record files before trusting an analysis of them."""

from __future__ import annotations

import sys

import click

from fmdiag.steprecord import read_file, step_files


@click.group("steps")
def steps() -> None:
    """Work with step-record files (the steptrace spool or a dump's steps/ folder)."""


@steps.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--max-errors", default=20, show_default=True, help="Errors to print per file.")
def check(paths: tuple[str, ...], max_errors: int) -> None:
    """Validate files or folders of step records; exit 1 when any line is bad."""
    files = [f for p in paths for f in step_files(p)]
    if not files:
        raise click.ClickException(f"no *.jsonl step files under {', '.join(paths)}")
    bad = 0
    for path in files:
        result = read_file(path)
        bad += len(result.errors)
        tail = " (last line still being written)" if result.partial_tail else ""
        click.echo(f"{path}: {len(result.records)} records, {len(result.errors)} bad lines{tail}")
        for error in result.errors[:max_errors]:
            click.echo(f"  {error}", err=True)
        if len(result.errors) > max_errors:
            click.echo(f"  ... {len(result.errors) - max_errors} more", err=True)
    click.echo(f"{len(files)} files, {bad} bad lines")
    if bad:
        sys.exit(1)
