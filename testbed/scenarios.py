"""The test bed's scenarios as data: the job's shape and the faults injected into it.

A fault names a real mechanism (:mod:`fmdiag.testbed.faults` applies it), the verdict class it
is by construction, what it hits, and when (fractions of the run's steps, optionally coming and
going). Conditions of the job itself (uneven sequence lengths, a pipeline stage with more
layers) are not injected from outside: they are the job, and the truth records them as causes
active over the whole run.

Classes follow the simulator's so both test beds are scored alike: a persistently late rank or
pipeline stage is a ``straggler`` whatever its cause; imbalance that moves from rank to rank has
no culprit and no fault to fix, so its steps are ``compute`` (with the imbalance named as the
cause); a normal checkpoint is no cause.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Kind:
    """Fault mechanisms (values are the truth's ``faults[].kind``)."""

    #: One rank's process limited to a fraction of a CPU (cgroup cpu quota): a straggler with
    #: no hardware signal, like a noisy neighbour or a slow host.
    RANK_CPU = "rank-cpu-throttle"
    #: One node's link rate-limited both ways (tbf): a degraded NIC or link.
    NODE_BANDWIDTH = "node-bandwidth"
    #: Every node's link rate-limited: a congested or degraded fabric.
    FABRIC_BANDWIDTH = "fabric-bandwidth"
    #: Reads of the input files throttled at the disk (cgroup blkio), page cache bypassed.
    INPUT_READ = "input-read-throttle"
    #: Every rank's loader worker processes limited to a sliver of CPU.
    LOADER_CPU = "loader-cpu-throttle"
    #: Checkpoint writes throttled at the disk.
    CHECKPOINT_WRITE = "checkpoint-write-throttle"
    #: Conditions of the job (not injected): sequence lengths vary per rank and step; the last
    #: pipeline stage holds more layers than the others.
    DATA_IMBALANCE = "data-imbalance"
    STAGE_IMBALANCE = "stage-imbalance"


#: Verdict class of each kind.
KIND_CLASS: Mapping[str, str] = MappingProxyType(
    {
        Kind.RANK_CPU: "straggler",
        Kind.NODE_BANDWIDTH: "network",
        Kind.FABRIC_BANDWIDTH: "network",
        Kind.INPUT_READ: "io",
        Kind.LOADER_CPU: "host",
        Kind.CHECKPOINT_WRITE: "io",
        Kind.DATA_IMBALANCE: "compute",
        Kind.STAGE_IMBALANCE: "compute",
    }
)
#: Kinds that are the job's own shape, present from the first step to the last.
JOB_CONDITIONS = frozenset({Kind.DATA_IMBALANCE, Kind.STAGE_IMBALANCE})


@dataclass(frozen=True)
class Fault:
    kind: str
    #: Active from this fraction of the run's steps up to (not including) ``end``.
    start: float = 0.0
    end: float = 1.0
    #: Intermittent: on for ``on_steps``, off for ``off_steps``, repeating (0: steady).
    on_steps: int = 0
    off_steps: int = 0
    #: Mechanism settings: ``cpus`` (CPU quota), ``mbit`` (link rate), ``bytes_per_s`` (disk).
    params: Mapping[str, float] = field(default_factory=dict)

    @property
    def verdict_class(self) -> str:
        return KIND_CLASS[self.kind]

    def windows(self, steps: int) -> list[tuple[int, int]]:
        """[first, end) step windows in which the fault is on."""
        first, last = round(self.start * steps), round(self.end * steps)
        if self.on_steps <= 0:
            return [(first, last)] if last > first else []
        out, at = [], first
        while at < last:
            out.append((at, min(at + self.on_steps, last)))
            at += self.on_steps + self.off_steps
        return out


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: tuple[Fault, ...] = ()
    #: Worker settings this scenario changes (see ``WorkerConfig``), e.g. ``seq_buckets``.
    job: Mapping[str, Any] = field(default_factory=dict)
    #: Pipeline stages (1: data parallel only; 2: stages on different nodes).
    pp: int = 1
    #: Layers per stage when pp > 1.
    stage_layers: tuple[int, ...] = ()
    checkpoint_every: int = 0
    min_nodes: int = 1


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "healthy",
            "No fault; a normal checkpoint every 10 steps (never a cause by itself).",
            checkpoint_every=10,
        ),
        Scenario(
            "straggler-cpu",
            "One rank's process limited to 0.15 CPU by a cgroup quota for the whole run: it computes "
            "late and every other rank waits for it in the all-reduce. No hardware signal at all.",
            faults=(Fault(Kind.RANK_CPU, params={"cpus": 0.15}),),
        ),
        Scenario(
            "straggler-cpu-onset",
            "The same CPU quota on one rank from 40% of the run: a straggler that starts mid-run.",
            faults=(Fault(Kind.RANK_CPU, start=0.4, params={"cpus": 0.15}),),
        ),
        Scenario(
            "network-node",
            "One node's link limited to 40 Mbit/s each way: every all-reduce crossing it is slow.",
            faults=(Fault(Kind.NODE_BANDWIDTH, params={"mbit": 40}),),
            min_nodes=2,
        ),
        Scenario(
            "network-fabric",
            "Every node's link limited to 40 Mbit/s each way: the whole fabric is slow.",
            faults=(Fault(Kind.FABRIC_BANDWIDTH, params={"mbit": 40}),),
            min_nodes=2,
        ),
        Scenario(
            "network-intermittent",
            "One node's link limited to 40 Mbit/s for 5 steps, then free for 5, over and over, from "
            "20% of the run: a flapping link.",
            faults=(Fault(Kind.NODE_BANDWIDTH, start=0.2, on_steps=5, off_steps=5, params={"mbit": 40}),),
            min_nodes=2,
        ),
        Scenario(
            "io-read",
            "Reads of the input files throttled to 1 MB/s at the disk for every rank's loader from "
            "30% of the run (the page cache bypassed): the loaders cannot keep up.",
            faults=(Fault(Kind.INPUT_READ, start=0.3, params={"bytes_per_s": 1_000_000}),),
        ),
        Scenario(
            "host-loader",
            "Every rank's loader worker processes limited to 0.04 CPU together from 30% of the run: "
            "decoding starves, with no storage pressure.",
            faults=(Fault(Kind.LOADER_CPU, start=0.3, params={"cpus": 0.04}),),
        ),
        Scenario(
            "checkpoint-stall",
            "A checkpoint every 10 steps, its writes throttled to 8 MB/s at the disk (all ranks "
            "together): the checkpoint steps stall, the others are healthy.",
            faults=(Fault(Kind.CHECKPOINT_WRITE, params={"bytes_per_s": 8_000_000}),),
            checkpoint_every=10,
        ),
        Scenario(
            "imbalance-seq",
            "Sequence lengths drawn per data-parallel rank and step (32 to 128 tokens): the slowest rank "
            "moves from step to step. Real lost time, but no rank, node or device to blame.",
            faults=(Fault(Kind.DATA_IMBALANCE),),
            job={"seq_buckets": [32, 64, 96, 128]},
        ),
        Scenario(
            "pipeline-balanced",
            "Two pipeline stages on different nodes (1F1B, 4 micro-batches), layers split evenly: the "
            "bubble and p2p waits of a healthy pipeline.",
            pp=2,
            stage_layers=(2, 2),
            job={"micro_batches": 4},
            min_nodes=2,
        ),
        Scenario(
            "pipeline-imbalance",
            "Two pipeline stages, the last holding 3 of 4 layers plus the head and loss: stage 0 waits "
            "in its p2p receives every step.",
            faults=(Fault(Kind.STAGE_IMBALANCE),),
            pp=2,
            stage_layers=(1, 3),
            job={"micro_batches": 4},
            min_nodes=2,
        ),
    )
}
