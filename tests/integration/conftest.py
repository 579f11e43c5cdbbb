"""Fixtures for tests against the real Prometheus server (Debian `prometheus`).

``support.prom`` (Prometheus start/stop/query) and ``support.exporter_proc`` (an exporter
subprocess) are shared with the other test areas.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import prom


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
