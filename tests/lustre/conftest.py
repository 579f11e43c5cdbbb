"""Fixtures shared by the Lustre collector tests: a collector over a node tree, and its samples."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.core import Metric

from fmdiag.exporters.collector import CollectorContext, ErrorReporter, Paths
from fmdiag.exporters.collectors.lustre import LustreCollector

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lustre"

Key = tuple[str, frozenset[tuple[str, str]]]


def samples_of(families: Iterable[Metric]) -> dict[Key, float]:
    """Every sample by (sample name, labels); a duplicate series is a bug and fails here."""
    out: dict[Key, float] = {}
    for fam in families:
        for s in fam.samples:
            k = (s.name, frozenset(s.labels.items()))
            assert k not in out, f"duplicate series {k}"
            out[k] = s.value
    return out


@dataclass
class Node:
    """A collector over a tree laid out like a host (<root>/proc, <root>/sys, debugfs in sys)."""

    root: Path
    collector: LustreCollector
    errors: ErrorReporter

    def scrape(self) -> dict[Key, float]:
        return samples_of(self.collector.collect())

    @property
    def error_count(self) -> int:
        return self.errors.count("lustre")


def node_paths(root: Path) -> Paths:
    return Paths(
        sysfs=root / "sys", procfs=root / "proc", debugfs=root / "sys" / "kernel" / "debug", rootfs=root
    )


@pytest.fixture
def make_node() -> Callable[..., Node]:
    def make(root: Path, **options: str) -> Node:
        errors = ErrorReporter()
        ctx = CollectorContext(paths=node_paths(root), options=dict(options), errors=errors)
        return Node(root, LustreCollector(ctx), errors)

    return make


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
