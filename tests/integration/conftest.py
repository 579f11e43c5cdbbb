"""Fixtures for tests against the real Prometheus server (Debian `prometheus`).

``prom.py`` (Prometheus start/stop/query) and ``exporter_proc.py`` (an exporter subprocess)
are plain modules; other test areas load them with the same path-based import as below.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _load(name: str) -> ModuleType:
    module_name = f"fmdiag_test_helpers_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


prom = _load("prom")
exporter_proc = _load("exporter_proc")


@pytest.fixture
def helpers() -> ModuleType:
    return exporter_proc


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start Prometheus scraping the given targets (own storage dir, 127.0.0.1, 1 s interval)."""
    started: list[Any] = []

    def start(targets: list[str], **kwargs: Any) -> Any:
        server = prom.Prometheus(tmp_path / f"prometheus-{len(started)}", targets, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., Any]]:
    started: list[Any] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Any:
        proc = exporter_proc.ExporterProcess(list(args), env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
