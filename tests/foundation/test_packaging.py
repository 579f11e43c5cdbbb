"""The one import name, the console script and the CLI's list of built subcommands."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

import fmdiag
from fmdiag.cli import SUBCOMMANDS, cli

REPO = Path(__file__).resolve().parents[2]


def test_subpackages_import_under_one_name_from_anywhere(tmp_path: Path) -> None:
    code = "import fmdiag.exporters, fmdiag.analyzers, fmdiag.dashboards; print(fmdiag.exporters.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert Path(out.stdout.strip()).parent == REPO / "exporters"


def test_no_generic_top_level_package_is_installed(tmp_path: Path) -> None:
    names = "('exporters', 'analyzers', 'dashboards')"
    code = f"import importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_console_script_prints_version_and_lists_built_subcommands() -> None:
    exe = shutil.which("fmdiag", path=str(Path(sys.executable).parent))
    assert exe, "the fmdiag console script is installed next to the interpreter"
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert fmdiag.__version__ in version
    helptext = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert f"  {name} " in helptext


def test_every_listed_subcommand_loads_and_has_help() -> None:
    runner = CliRunner()
    for name in SUBCOMMANDS:
        command = cli.get_command(click.Context(cli), name)
        assert isinstance(command, click.Command)
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "not implemented" not in result.output.lower()


def test_unknown_subcommand_is_an_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_catalog_command_prints_names_and_json() -> None:
    runner = CliRunner()
    names = runner.invoke(cli, ["catalog", "--subsystem", "efa"]).output.split()
    assert "fmdiag_efa_tx_bytes_total" in names and not any(n.startswith("DCGM") for n in names)
    assert '"name": "DCGM_FI_DEV_GPU_UTIL"' in runner.invoke(cli, ["catalog", "--format", "json"]).output


def test_steps_check_reports_bad_lines_and_exit_status(tmp_path: Path) -> None:
    good = '{"v":1,"job":"j","rank":0,"node":"n","step":0,"start_ns":1,"end_ns":2}'
    (tmp_path / "a.jsonl").write_text(good + "\n")
    runner = CliRunner()
    ok = runner.invoke(cli, ["steps", "check", str(tmp_path)])
    assert ok.exit_code == 0 and "1 records, 0 bad lines" in ok.output
    (tmp_path / "b.jsonl").write_text(good + "\n" + good.replace('"rank":0', '"rank":-2') + "\n")
    bad = runner.invoke(cli, ["steps", "check", str(tmp_path)])
    assert bad.exit_code == 1
    assert f"{tmp_path / 'b.jsonl'}:2: field 'rank'" in bad.output
