"""The committed dashboards and rule files are exactly what the code renders, and
`fmdiag dashboards build` writes them with the datasource and selectors a site chooses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmdiag.dashboards import build
from fmdiag.dashboards.cli import dashboards as group
from fmdiag.dashboards.config import DEFAULT, Config, Selectors

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "fmdiag dashboards build --out dashboards/generated --alerts-out alerts"


def _committed(folder: Path) -> dict[str, str]:
    """Relative path -> text of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): p.read_text(encoding="utf-8")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_committed_dashboards_are_up_to_date() -> None:
    assert _committed(REPO / "dashboards" / "generated") == build.dashboard_files(DEFAULT), (
        f"dashboards/generated is stale: run `{REGENERATE}`"
    )


def test_committed_rules_and_tests_are_up_to_date() -> None:
    assert _committed(REPO / "alerts") == build.rule_files(DEFAULT), f"alerts/ is stale: run `{REGENERATE}`"


def test_build_writes_every_dashboard_and_rule_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        group, ["build", "--out", str(tmp_path / "d"), "--alerts-out", str(tmp_path / "a")]
    )
    assert result.exit_code == 0, result.output
    assert _committed(tmp_path / "d") == build.dashboard_files(DEFAULT)
    assert _committed(tmp_path / "a") == build.rule_files(DEFAULT)
    assert len(result.output.splitlines()) == len(build.dashboard_files(DEFAULT)) + len(
        build.rule_files(DEFAULT)
    )


def test_build_takes_the_datasource_and_selectors(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        group,
        [
            "build",
            "--out",
            str(tmp_path),
            "--datasource",
            "Mimir",
            "--cluster-label",
            "k8s_cluster",
            "--selector",
            'gpu=job="dcgm-exporter"',
            "--selector",
            'fmdiag=job="node-agent"',
        ],
    )
    assert result.exit_code == 0, result.output
    node = json.loads((tmp_path / "node.json").read_text())
    text = json.dumps(node)
    assert 'DCGM_FI_PROF_SM_ACTIVE{job=\\"dcgm-exporter\\",k8s_cluster=~\\"$cluster\\"' in text
    assert 'job=\\"node-agent\\"' in text and "fmdiag.*" not in text
    (ds,) = [v for v in node["templating"]["list"] if v["name"] == "datasource"]
    assert ds["current"]["value"] == "Mimir"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--selector", "gpu"], "expected NAME=MATCHER"),
        (["--selector", 'nodes=job="x"'], "unknown selector 'nodes'"),
        (["--selector", "gpu="], "selector 'gpu' is required"),
    ],
)
def test_build_refuses_bad_selectors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(group, ["build", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_config_fails_loudly_on_a_missing_selector() -> None:
    with pytest.raises(ValueError, match="selector 'fmdiag' is required"):
        Config(selectors=Selectors(fmdiag=" "))
    with pytest.raises(ValueError, match="cluster_label is required"):
        Config(cluster_label="")


def test_every_query_follows_the_config() -> None:
    """No query hard-codes a selector or the cluster label: a different config changes them all."""
    other = Config(selectors=Selectors(fmdiag='job="A"', gpu='job="B"'), cluster_label="region")
    text = "".join(build.dashboard_files(other).values()) + "".join(build.rule_files(other).values())
    assert "fmdiag.*" not in text and "dcgm.*" not in text
    assert "cluster=~" not in text and "by (cluster" not in text


def test_kubernetes_forms_hold_exactly_the_generated_files() -> None:
    """The ConfigMap (Grafana's dashboard sidecar) and the PrometheusRule carry the same content
    as the plain files, and the ConfigMap passes the Kubernetes API schema."""
    import kubernetes_validate
    import yaml

    dashboards = build.dashboard_files(DEFAULT)
    configmap = yaml.safe_load(dashboards["kubernetes/grafana-dashboards.yaml"])
    kubernetes_validate.validate(configmap, "1.30.0", strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {k: v for k, v in dashboards.items() if k.endswith(".json")}
    rules = build.rule_files(DEFAULT)
    rule = yaml.safe_load(rules["kubernetes/prometheusrule.yaml"])
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    plain = [
        g
        for name, text in sorted(rules.items())
        if name.startswith("rules/")
        for g in yaml.safe_load(text)["groups"]
    ]
    assert sorted(rule["spec"]["groups"], key=lambda g: g["name"]) == sorted(plain, key=lambda g: g["name"])


def test_every_dashboards_subpackage_is_installed() -> None:
    """setuptools installs only listed packages: a subpackage missing from pyproject would be
    absent from a non-editable install (`fmdiag dashboards build` would fail to import)."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(("fmdiag", *p.parent.relative_to(REPO).parts))
        for p in (REPO / "dashboards").rglob("__init__.py")
    }
    assert folders <= listed, sorted(folders - listed)
