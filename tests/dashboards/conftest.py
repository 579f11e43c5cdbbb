"""Fixtures for the dashboards and rules tests: the default config, every panel query and rule
expression, and (integration) a real Prometheus holding every scenario's simulated history."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fmdiag.dashboards.config import DEFAULT
from fmdiag.dashboards.rules.render import groups

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def load(stem: str) -> Any:
    """A helper module of this folder, loaded by path (``dashboards`` is not importable from tests:
    the name belongs to the package under test)."""
    name = f"fmdiag_tests_dashboards_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{stem}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def history_module() -> Any:
    """history.py: build(), firing()."""
    return load("history")


@pytest.fixture(scope="session")
def promql() -> Any:
    """promql.py: substitute(), metric_names()."""
    return load("promql")


@pytest.fixture(scope="session")
def boards() -> dict[str, dict[str, Any]]:
    """File name -> the dashboard as Grafana JSON (a dict), from the default config."""
    from fmdiag.dashboards import build

    return {
        name: json.loads(text)
        for name, text in build.dashboard_files(DEFAULT).items()
        if name.endswith(".json")
    }


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, rows' nested panels included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


@pytest.fixture(scope="session")
def panel_queries(boards: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every panel target."""
    return [
        (name, p["title"], t["expr"])
        for name, board in boards.items()
        for p in panels(board)
        for t in p.get("targets", [])
    ]


@pytest.fixture(scope="session")
def simulated_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Every scenario's history in one real Prometheus (see history.py), recording rules backfilled."""
    history = load("history")
    rules = [REPO / "alerts" / "rules" / f"{g.file}" for g in groups(DEFAULT) if g.records]
    yield from history.build(tmp_path_factory.mktemp("history"), rules)
