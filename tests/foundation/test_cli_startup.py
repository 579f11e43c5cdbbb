"""`fmdiag --help`, `fmdiag exporter --help` and `fmdiag --version` load nothing heavy, and a
Kineto-only `fmdiag analyze` nothing beyond what it reads traces with.

Each runs in a fresh interpreter whose imports are watched (support.imports), because in this
process pytest and other tests have already imported numpy and friends. No timings here:
benchmarks/cli_startup.py measures them.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from analyze import kineto_builder as kb
from support.imports import cli_code, probe

from fmdiag.cli import SUBCOMMANDS, cli


@pytest.mark.parametrize("args", [["--help"], ["exporter", "--help"], ["--version"]], ids=" ".join)
def test_cli_start_up_imports_nothing_heavy(args: list[str]) -> None:
    run = probe(cli_code(*args))
    assert run.returncode == 0, run.stderr
    assert not run.heavy, f"fmdiag {' '.join(args)} loaded {run.heavy_report()}"


def test_group_help_lists_subcommands_without_importing_them() -> None:
    run = probe(cli_code("--help"))
    assert run.returncode == 0, run.stderr
    modules = {sub.target.partition(":")[0] for sub in SUBCOMMANDS.values()}
    assert not modules & set(run.new_modules), "fmdiag --help imported a subcommand's module"
    for name, sub in SUBCOMMANDS.items():
        assert f"  {name} " in run.stdout
        assert sub.summary[:20] in run.stdout


def test_group_help_matches_what_click_would_print() -> None:
    """The lazy listing is click's own listing, only without the imports."""

    class Eager(click.Group):
        pass

    # click caches a command's help option on first use (another test may have run `cli`):
    # build the eager twin from the same settings, without a cached help option in its params.
    params = [p for p in cli.params if p.name != "help"]
    eager = Eager(name="fmdiag", params=params, help=cli.help, context_settings=cli.context_settings)
    for name in SUBCOMMANDS:
        command = cli.get_command(click.Context(cli), name)
        assert command is not None
        eager.add_command(command, name)
    for width in (60, 80, 120):
        settings = {"info_name": "fmdiag", "terminal_width": width, **cli.context_settings}
        lazy_text = cli.get_help(click.Context(cli, **settings))
        eager_text = eager.get_help(click.Context(eager, **settings))
        assert lazy_text == eager_text


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_table_summary_is_the_commands_own_short_help(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    own = command.get_short_help_str(limit=10_000)
    assert SUBCOMMANDS[name].summary == own, f"set SUBCOMMANDS[{name!r}].summary to {own!r}"


def test_a_kineto_only_analysis_loads_only_what_it_reads_with(tmp_path: Path) -> None:
    """Start-up is most of a small analysis' time: numpy, msgspec and click, and none of the
    other extras' stacks, no process pool (one rank is read in this process) and no
    importlib.resources (the kernel table is read beside its module)."""
    dump = tmp_path / "dump"
    kb.write(dump / "kineto" / "rank0.json.gz", kb.build(kb.Options(steps=2)))
    run = probe(cli_code("analyze", str(dump), "--json", "--hta-compatible"))
    assert run.returncode == 0, run.stderr
    loaded = {m.partition(".")[0] for m in run.new_modules}
    assert {"numpy", "msgspec", "click"} <= loaded
    unwanted = {
        "pandas",
        "pyarrow",
        "plotly",
        "prometheus_client",
        "yaml",
        "grpc",
        "multiprocessing",
        "concurrent",
    }
    assert not loaded & unwanted, f"loaded {sorted(loaded & unwanted)}: {run.heavy_report()}"
    assert "importlib.resources" not in run.new_modules
