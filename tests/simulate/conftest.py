"""Small simulated runs shared by the simulator tests (kept tiny: these run on 2 shared cores)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fmdiag.simulate.cluster.physics import DEFAULT_JOB, get_job
from fmdiag.simulate.cluster.scenarios import SCENARIOS
from fmdiag.simulate.dump import DumpResult, SimOptions, write_dump


def small(scenario: str, **kw: Any) -> SimOptions:
    """A 3-node x 2-GPU cluster with 2 EFA devices and 2 OSTs: every code path, little data."""
    base: dict[str, Any] = {
        "scenario": scenario,
        "nodes": 3,
        "gpus": 2,
        "efa_devices": 2,
        "osts": 2,
        "steps": 24,
        "seed": 3,
        "scrape_interval_s": 5.0,
    }
    base.update(kw)
    job = get_job(SCENARIOS[scenario].job or DEFAULT_JOB)
    if (base["nodes"] * base["gpus"]) % job.pp:
        # A pipeline needs a multiple of its stages: 4 GPUs a node (stages then straddle nodes).
        base["gpus"] = 4
    if base["gpus"] % job.ep:
        # Expert parallelism spans a node's GPUs: a whole group a node.
        base["gpus"] = job.ep
    return SimOptions(**base)


@pytest.fixture(scope="session")
def dump_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, DumpResult]]:
    """Write (once per session and argument set) a small dump; returns its folder and result."""
    cache: dict[str, tuple[Path, DumpResult]] = {}

    def make(scenario: str, **kw: Any) -> tuple[Path, DumpResult]:
        key = repr((scenario, sorted(kw.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(scenario)
            cache[key] = (out, write_dump(small(scenario, **kw), out))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def small_opts() -> Callable[..., SimOptions]:
    return small
