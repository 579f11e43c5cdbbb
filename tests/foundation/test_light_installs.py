"""The base install serves the exporter and steptrace; commands that need an extra say which.

fmdiag goes into a training image (steptrace: standard library only), onto every node (the
exporter: the base dependencies) and onto an analysis workstation (every extra). These tests run
code in fresh interpreters (support.imports) and, where an install without the analysis stack
matters, make numpy, pandas, pyarrow, plotly and grafana_foundation_sdk imports fail.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import click
import pytest
from support.imports import HEAVY, cli_code, probe

from fmdiag.cli import EXTRA_MODULES, SUBCOMMANDS, LazyGroup, Subcommand, cli

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: fmdiag.exporters, fmdiag.simulate, ...: the subpackages that live outside the core folder.
SUBPACKAGES = tuple(name for name in PYPROJECT["tool"]["setuptools"]["package-dir"] if name != "fmdiag")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _requirement(text: str) -> tuple[str, set[str]]:
    """(import-style name, extras) of a requirement string: 'dask[distributed]>=1' -> ('dask', {...})."""
    match = _REQUIREMENT.match(text)
    assert match, text
    extras = {e.strip() for e in (match[2] or "").split(",") if e.strip()}
    return match[1].lower().replace("-", "_").replace(".", "_"), extras


def test_a_command_whose_extra_is_missing_says_which_in_one_line() -> None:
    for args in (["simulate", "--help"], ["simulate", "--scenario", "healthy"]):
        run = probe(cli_code(*args), block=True)
        assert run.returncode == 1, run.stderr
        assert run.stderr.splitlines() == [
            "fmdiag simulate: needs the 'analyze' extra (numpy is not installed):"
            " pip install 'fmdiag[analyze]'"
        ], run.stderr
        assert run.stdout == ""


def test_base_commands_work_without_the_extras(tmp_path: Path) -> None:
    good = '{"v":1,"job":"j","rank":0,"node":"n","step":0,"start_ns":1,"end_ns":2}'
    (tmp_path / "a.jsonl").write_text(good + "\n")
    for args in (["--help"], ["exporter", "--help"], ["catalog"], ["steps", "check", str(tmp_path)]):
        run = probe(cli_code(*args), block=True)
        assert run.returncode == 0, f"fmdiag {' '.join(args)}: {run.stderr}"
        assert "Traceback" not in run.stderr


def test_group_help_marks_commands_whose_extra_is_missing() -> None:
    run = probe(cli_code("--help"), block=True)
    assert run.returncode == 0, run.stderr
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("  simulate ")]
    assert "(needs fmdiag[analyze])" in line
    for name, sub in SUBCOMMANDS.items():
        (row,) = [r for r in run.stdout.splitlines() if r.startswith(f"  {name} ")]
        assert ("(needs fmdiag[" in row) == (sub.extra is not None), row


def test_a_missing_module_outside_the_extra_is_a_bug_with_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(SUBCOMMANDS, "broken", Subcommand("fmdiag_no_such_module:x", "x.", extra="analyze"))
    with pytest.raises(ModuleNotFoundError, match="fmdiag_no_such_module"):
        LazyGroup().get_command(click.Context(cli), "broken")


#: Extras of the project's judges, not of a product: the real-process test bed (python -m
#: fmdiag.testbed) is installed by the tests (dev), never by `all`, which is a workstation's install.
JUDGE_EXTRAS = {"testbed"}


def test_extras_table_matches_pyproject() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    products = set(extras) - {"all", "dev"} - JUDGE_EXTRAS
    assert products == set(EXTRA_MODULES), "every extra has its modules in EXTRA_MODULES"
    for judge in JUDGE_EXTRAS:
        assert f"fmdiag[{judge}]" in extras["dev"], f"the tests need the {judge} extra"
    for extra, modules in EXTRA_MODULES.items():
        provided: set[str] = set()
        for req in extras[extra]:
            name, sub_extras = _requirement(req)
            provided |= {name} | sub_extras
        assert modules == provided, f"EXTRA_MODULES[{extra!r}] should be {sorted(provided)}"
    for name, sub in SUBCOMMANDS.items():
        assert sub.extra is None or sub.extra in EXTRA_MODULES, f"{name}: unknown extra {sub.extra!r}"
    # all = every extra; dev = all plus the test tools (the README and .ci/run install dev).
    (all_name, all_extras) = _requirement(extras["all"][0])
    assert all_name == "fmdiag" and all_extras == set(EXTRA_MODULES)
    assert "fmdiag[all]" in extras["dev"]
    base = {_requirement(req)[0] for req in PYPROJECT["project"]["dependencies"]}
    heavy_in_base = base & (set(HEAVY) | {m for ms in EXTRA_MODULES.values() for m in ms})
    assert not heavy_in_base, f"the base install pulls {sorted(heavy_in_base)}"


def _is_core(module: str) -> bool:
    return module == "fmdiag" or (
        module.startswith("fmdiag.")
        and not any(module == p or module.startswith(p + ".") for p in SUBPACKAGES)
    )


def test_steptrace_imports_only_the_standard_library_and_the_core(tmp_path: Path) -> None:
    code = f"""
from fmdiag import steptrace
with steptrace.StepTracer({str(tmp_path)!r}, job="j", rank=0, node="n") as tracer:
    with tracer.step(tokens=1) as step:
        with step.phase("forward"):
            pass
"""
    run = probe(code)
    assert run.returncode == 0, run.stderr
    outside = [
        m for m in run.new_modules if m.partition(".")[0] not in sys.stdlib_module_names and not _is_core(m)
    ]
    assert not outside, f"fmdiag.steptrace loaded {outside}"
    assert list(tmp_path.glob("*.jsonl")), "the probe recorded a step"


def test_exporter_module_graph_imports_nothing_heavy() -> None:
    code = """
import importlib, pkgutil
import fmdiag.exporters, fmdiag.exporters.cli
for info in pkgutil.walk_packages(fmdiag.exporters.__path__, "fmdiag.exporters."):
    importlib.import_module(info.name)
"""
    run = probe(code)
    assert run.returncode == 0, run.stderr
    assert "fmdiag.exporters.collectors.gpu" in run.new_modules, "the probe walked the collectors"
    assert not run.heavy, f"the exporter loaded {run.heavy_report()}"


def test_no_exporter_module_imports_a_heavy_module_even_lazily() -> None:
    """Imports inside functions (run only with some flag) escape the import probe; read the source."""
    offenders = []
    for path in sorted((REPO / "exporters").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} imports {n}"
                for n in names
                if n.partition(".")[0] in HEAVY or n.startswith("fmdiag.simulate")
            ]
    assert not offenders, offenders


def test_exporter_image_installs_the_base_from_every_package_folder() -> None:
    dockerfile = (REPO / "exporters" / "deploy" / "kubernetes" / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert installs and not [i for i in installs if "[" in i], f"the image installs an extra: {installs}"
    copied = {
        item for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M) for item in line.split()
    }
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert folders <= copied, f"the image build lacks {sorted(folders - copied)} (pip install . needs them)"
