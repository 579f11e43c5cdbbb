"""`fmdiag alerts check [DIR]`: lint and unit-test Prometheus rules with the real promtool.

Without DIR it checks the rules fmdiag ships, rendered from the default config into a temporary
folder (so it works from any install, with no data files to find); with DIR it checks a
user's folder: every YAML file with ``groups:`` goes to ``promtool check rules``, every one with
``rule_files:`` to ``promtool test rules`` (run from the test file's folder, as promtool
resolves rule paths relative to it). Needs only the base install and promtool on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import click
import yaml

from fmdiag.dashboards.config import DEFAULT
from fmdiag.dashboards.rules.render import render


def classify(folder: Path) -> tuple[list[Path], list[Path]]:
    """(rule files, promtool test files) under ``folder``, by their top-level keys."""
    rules, tests = [], []
    for path in sorted([*folder.rglob("*.yaml"), *folder.rglob("*.yml")]):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise click.ClickException(f"{path}: not YAML: {exc}") from None
        if isinstance(doc, dict) and "rule_files" in doc:
            tests.append(path)
        elif isinstance(doc, dict) and "groups" in doc:
            rules.append(path)
    return rules, tests


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise click.ClickException("promtool is not on PATH (Debian/Ubuntu: apt-get install prometheus)")
    return found


def _run(args: list[str], cwd: Path) -> bool:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    click.echo((done.stdout + done.stderr).rstrip())
    return done.returncode == 0


def check_folder(folder: Path) -> bool:
    promtool = _promtool()
    folder = folder.resolve()
    rules, tests = classify(folder)
    if not rules:
        raise click.ClickException(f"{folder}: no rule files (YAML with 'groups:') found")
    ok = _run([promtool, "check", "rules", *map(str, rules)], folder)
    for test in tests:
        ok = _run([promtool, "test", "rules", test.name], test.parent) and ok
    click.echo(f"{len(rules)} rule files, {len(tests)} test files: {'OK' if ok else 'FAILED'}")
    return ok


@click.group()
def alerts() -> None:
    """Prometheus alert and recording rules: check them with promtool."""


@alerts.command()
@click.argument("folder", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
def check(folder: Path | None) -> None:
    """Run promtool's rule check and unit tests on FOLDER (default: fmdiag's own rules)."""
    if folder is not None:
        ok = check_folder(folder)
    else:
        with tempfile.TemporaryDirectory(prefix="fmdiag-alerts-") as tmp:
            for rel, text in render(DEFAULT).items():
                path = Path(tmp) / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            ok = check_folder(Path(tmp))
    if not ok:
        raise SystemExit(1)
