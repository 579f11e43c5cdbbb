"""Applying and removing a scenario's faults on the running job, and remembering when.

The orchestrator calls :meth:`Injector.apply` and :meth:`Injector.remove` at step boundaries;
every call is logged with its wall-clock time, which is what the truth is built from (a step is
the fault's when the fault was on for most of it), so the truth is what really happened, not
what was planned. :meth:`Injector.close` removes every throttle still in place.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fmdiag.testbed import cgroups, shaping
from fmdiag.testbed.fabric import Node
from fmdiag.testbed.scenarios import JOB_CONDITIONS, Fault, Kind


@dataclass(frozen=True)
class RankProcess:
    rank: int
    node: str
    local_rank: int
    pp_rank: int
    dp_rank: int
    pid: int
    loader_pids: tuple[int, ...]


@dataclass
class Target:
    """What a fault hits: one rank, one node, a pipeline stage, or everything (all None)."""

    rank: int | None = None
    node: str | None = None
    pp_rank: int | None = None


@dataclass
class Injector:
    nodes: Sequence[Node]
    faults: Sequence[Fault]
    targets: Sequence[Target]
    #: The disk holding the input files and checkpoints (``MAJ:MIN``), for disk throttles.
    disk: str | None = None
    ranks: list[RankProcess] = field(default_factory=list)
    #: (fault index, "on"/"off", Unix ns) in the order they happened.
    events: list[tuple[int, str, int]] = field(default_factory=list)
    _active: dict[int, Any] = field(default_factory=dict)

    def apply(self, index: int) -> None:
        fault = self.faults[index]
        if index in self._active or fault.kind in JOB_CONDITIONS:
            return
        self._active[index] = self._apply(index, fault, self.targets[index])
        self.events.append((index, "on", time.time_ns()))

    def remove(self, index: int) -> None:
        handle = self._active.pop(index, None)
        if handle is None:
            return
        self._undo(self.faults[index], handle)
        self.events.append((index, "off", time.time_ns()))

    def close(self) -> None:
        for index in list(self._active):
            self.remove(index)

    def _node(self, name: str | None) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def _apply(self, index: int, fault: Fault, target: Target) -> Any:
        p = fault.params
        name = f"f{index}"
        if fault.kind == Kind.RANK_CPU:
            rank = next(r for r in self.ranks if r.rank == target.rank)
            return cgroups.cpu_quota(name, p["cpus"], [rank.pid])
        if fault.kind == Kind.LOADER_CPU:
            return cgroups.cpu_quota(name, p["cpus"], [pid for r in self.ranks for pid in r.loader_pids])
        if fault.kind == Kind.INPUT_READ:
            pids = [pid for r in self.ranks for pid in r.loader_pids]
            return cgroups.disk_bandwidth(name, self._disk(), pids, read_bps=int(p["bytes_per_s"]))
        if fault.kind == Kind.CHECKPOINT_WRITE:
            pids = [r.pid for r in self.ranks]
            return cgroups.disk_bandwidth(name, self._disk(), pids, write_bps=int(p["bytes_per_s"]))
        if fault.kind == Kind.NODE_BANDWIDTH:
            node = self._node(target.node)
            shaping.limit(node, p["mbit"])
            return [node]
        if fault.kind == Kind.FABRIC_BANDWIDTH:
            for node in self.nodes:
                shaping.limit(node, p["mbit"])
            return list(self.nodes)
        raise ValueError(f"no mechanism for fault kind {fault.kind!r}")

    def _undo(self, fault: Fault, handle: Any) -> None:
        if isinstance(handle, cgroups.Group):
            handle.remove()
        else:
            for node in handle:
                shaping.unlimit(node)

    def _disk(self) -> str:
        if self.disk is None:
            raise cgroups.CgroupError("no disk known for a disk throttle")
        return self.disk


def pick_targets(
    faults: Sequence[Fault], ranks: Sequence[Mapping[str, Any]], nodes: Sequence[str], rng_seed: int
) -> list[Target]:
    """Which rank or node each fault hits, chosen by the seed (never rank 0 alone: a culprit
    that is always rank 0 would reward an analyzer that blames rank 0 by default)."""
    rng = random.Random(rng_seed)
    out: list[Target] = []
    for fault in faults:
        if fault.kind == Kind.RANK_CPU:
            rank = rng.choice([r for r in ranks if r["rank"] != 0] or list(ranks))
            out.append(Target(rank=rank["rank"], node=rank["node"]))
        elif fault.kind == Kind.NODE_BANDWIDTH:
            out.append(Target(node=rng.choice(list(nodes))))
        elif fault.kind == Kind.STAGE_IMBALANCE:
            last = max(r["pp_rank"] for r in ranks)
            stage_nodes = sorted({r["node"] for r in ranks if r["pp_rank"] == last})
            out.append(Target(pp_rank=last, node=stage_nodes[0] if len(stage_nodes) == 1 else None))
        else:
            out.append(Target())
    return out
