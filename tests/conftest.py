"""Shared test configuration."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from support import exporter_proc

# CI machines are shared and slow: no per-example deadlines, a fixed profile everywhere.
settings.register_profile(
    "fmdiag", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
# HYPOTHESIS_PROFILE=thorough digs ten times deeper, to flush out rare cases before CI meets them.
settings.register_profile("thorough", parent=settings.get_profile("fmdiag"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fmdiag"))


@pytest.fixture
def helpers() -> ModuleType:
    """support.exporter_proc: ExporterProcess, samples(), value(), cpu_seconds()."""
    return exporter_proc


@pytest.fixture
def start_exporter() -> Iterator[Callable[..., Any]]:
    """Start `python -m fmdiag exporter ARGS...` on 127.0.0.1:<free>; stopped after the test."""
    started: list[Any] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Any:
        proc = exporter_proc.ExporterProcess(list(args), env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
