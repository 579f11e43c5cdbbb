"""The rules pass `promtool check rules` and their unit tests (`promtool test rules`, one test file
per rule group), through `fmdiag alerts check`; every alert has a firing and a silent case and a
runbook entry."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fmdiag.dashboards.alerts_cli import alerts as group
from fmdiag.dashboards.config import DEFAULT
from fmdiag.dashboards.rules.model import Alert, Case, expand, series
from fmdiag.dashboards.rules.render import groups, runbook

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
ALL_ALERTS = [a for g in groups(DEFAULT) for a in g.alerts]

pytestmark = pytest.mark.integration


def test_shipped_rules_pass_promtool() -> None:
    result = CliRunner().invoke(group, ["check"])
    assert result.exit_code == 0, result.output
    assert "6 rule files, 6 test files: OK" in result.output
    assert result.output.count("SUCCESS") == 12


def test_a_user_folder_is_checked_and_a_failing_test_fails(tmp_path: Path) -> None:
    shutil.copytree(ALERTS, tmp_path / "alerts")
    ok = CliRunner().invoke(group, ["check", str(tmp_path / "alerts")])
    assert ok.exit_code == 0, ok.output
    test = tmp_path / "alerts" / "tests" / "fmdiag-lustre.yaml"
    test.write_text(test.read_text().replace("ost: OST0003", "ost: OST0004", 1))
    bad = CliRunner().invoke(group, ["check", str(tmp_path / "alerts")])
    assert bad.exit_code == 1 and "FAILED" in bad.output, bad.output


def test_a_broken_rule_file_fails(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "groups:\n- name: x\n  rules:\n  - alert: X\n    expr: rate(foo[5m]\n"
    )
    result = CliRunner().invoke(group, ["check", str(tmp_path)])
    assert result.exit_code == 1 and "FAILED" in result.output, result.output


def test_one_test_file_per_rule_group() -> None:
    rules = sorted(p.name for p in (ALERTS / "rules").glob("*.yaml"))
    tests = sorted(p.name for p in (ALERTS / "tests").glob("*.yaml"))
    assert rules == tests == sorted(g.file for g in groups(DEFAULT))
    for path in (ALERTS / "tests").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        group = next(g for g in groups(DEFAULT) if g.file == path.name)
        alerts = {t["alert_rule_test"][0]["alertname"] for t in doc["tests"] if "alert_rule_test" in t}
        assert alerts == {a.name for a in group.alerts}, path.name


@pytest.mark.parametrize("alert", ALL_ALERTS, ids=[a.name for a in ALL_ALERTS])
def test_every_alert_has_a_firing_and_a_silent_case_severity_and_runbook(alert: Alert) -> None:
    assert any(c.fires for c in alert.cases) and any(not c.fires for c in alert.cases)
    assert alert.severity in {"critical", "warning", "info"}
    runbook_text = (REPO / "docs" / "runbook.md").read_text()
    assert f"\n## {alert.name}\n" in runbook_text, f"docs/runbook.md needs a '## {alert.name}' entry"
    assert runbook(DEFAULT, alert).endswith(f"runbook.md#{alert.name.lower()}")


def test_runbook_has_no_entries_for_unknown_alerts() -> None:
    headings = set(re.findall(r"^## (Fmdiag\w+)$", (REPO / "docs" / "runbook.md").read_text(), re.M))
    assert headings == {a.name for a in ALL_ALERTS}


def test_an_alert_without_a_silent_case_is_refused() -> None:
    fire = Case("fires", (series("up", "0x5", job="x"),), "5m", ({"job": "x"},))
    with pytest.raises(ValueError, match="one firing and one silent"):
        Alert("X", "up == 0", "warning", "s", "d", (fire,))


def test_annotations_may_only_use_labels() -> None:
    assert expand("{{ $labels.instance }} is down", {"instance": "n1"}) == "n1 is down"
    with pytest.raises(ValueError, match="only"):
        expand("{{ $value | humanize }}", {})


def test_alerts_check_needs_only_the_base_install() -> None:
    """`fmdiag alerts check` runs where grafana-foundation-sdk (the dashboards extra) is missing;
    `fmdiag dashboards` then says which extra to install."""
    from support.imports import cli_code, probe

    run = probe(cli_code("alerts", "check"), block=True)
    assert run.returncode == 0, run.stderr
    assert "6 rule files, 6 test files: OK" in run.stdout
    assert not run.heavy, run.heavy_report()
    build = probe(cli_code("dashboards", "build", "--help"), block=True)
    assert build.returncode == 1
    assert "needs the 'dashboards' extra" in build.stderr
