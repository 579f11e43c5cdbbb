"""Render every dashboard and rule file of one config: the single step behind
``fmdiag dashboards build`` and the committed files the staleness test compares."""

from __future__ import annotations

from pathlib import Path

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards import kubernetes
from fmdiag.dashboards.boards import cluster, efa, exporter, job, lustre, node
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.rules import render

BOARD_MODULES = (cluster, node, job, efa, lustre, exporter)
REPO_DASHBOARDS = Path(__file__).resolve().parent / "generated"


def dashboards(c: Config) -> dict[str, Dashboard]:
    """File name (``<key>.json``) -> dashboard model."""
    return {f"{m.KEY}.json": m.build(c) for m in BOARD_MODULES}


def dashboard_json(board: Dashboard) -> str:
    text: str = JSONEncoder(sort_keys=True, indent=2).encode(board)
    return text + "\n"


def dashboard_files(c: Config) -> dict[str, str]:
    """``<key>.json`` per dashboard, and ``kubernetes/grafana-dashboards.yaml`` holding them all."""
    files = {name: dashboard_json(board) for name, board in dashboards(c).items()}
    files["kubernetes/grafana-dashboards.yaml"] = kubernetes.dump(kubernetes.dashboards_configmap(files))
    return files


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write ``files`` (relative path -> text) under ``out``; returns the paths written."""
    written = []
    for rel, text in sorted(files.items()):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def rule_files(c: Config) -> dict[str, str]:
    """``rules/*.yaml``, ``tests/*.yaml`` (promtool) and ``kubernetes/prometheusrule.yaml``."""
    files = render.render(c)
    files["kubernetes/prometheusrule.yaml"] = kubernetes.dump(kubernetes.prometheus_rule(c))
    return files
