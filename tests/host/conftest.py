"""Helpers for the host collector tests: run a collector once and index its samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fmdiag.exporters.collector import CollectorContext, ErrorReporter, GpuProcessProvider, Paths
from fmdiag.exporters.collectors import host

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "host"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def make(procfs: Path, gpu_users: GpuProcessProvider | None = None, **options: str) -> host.HostCollector:
    """A host collector on ``procfs``; ``gpu_users`` stands for the GPU collector's process list."""
    ctx = CollectorContext(paths=Paths(procfs=procfs), options=dict(options), errors=ErrorReporter())
    ctx.gpu_processes.provider = gpu_users
    return host.HostCollector(ctx)


def scrape(collector: host.HostCollector) -> Samples:
    out: Samples = {}
    for fam in collector.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pick(samples: Samples, metric: str, /, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    want = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == metric and want <= set(lab)}


def one(samples: Samples, metric: str, /, **labels: str) -> float:
    found = pick(samples, metric, **labels)
    assert len(found) == 1, f"{metric}{labels}: {found}"
    return next(iter(found.values()))


def pids(samples: Samples) -> set[int]:
    return {int(dict(lab)["pid"]) for lab in pick(samples, "fmdiag_process_threads")}


@pytest.fixture
def proc_tree(tmp_path: Path) -> Path:
    """A writable copy of tests/fixtures/host/proc for fault injection."""
    dest = tmp_path / "proc"
    shutil.copytree(FIXTURES / "proc", dest)
    return dest
