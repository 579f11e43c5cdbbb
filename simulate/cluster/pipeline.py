"""Pipeline parallelism: the 1F1B schedule of one step, for every pipeline replica at once.

Layout (Megatron's rank order with the pipeline outermost, tensor parallelism 1): ``pp`` stages
of ``D = world / pp`` consecutive ranks; rank ``s * D + d`` is stage ``s`` of data-parallel
replica ``d``. Each replica's ``pp`` ranks form one pipeline; each stage's ``D`` ranks form one
data-parallel group that all-reduces its gradients after the pipeline flush.

1F1B (PipeDream-flush, Megatron's default): stage ``s`` of ``p`` runs ``min(p - s - 1, m)``
warm-up forwards, then alternates one forward and one backward, then the cool-down backwards.
A forward of micro-batch ``j`` on stage ``s > 0`` needs its activations from stage ``s - 1``;
a backward on stage ``s < p - 1`` needs its gradients from stage ``s + 1``. The receiver posts
its receive when its previous op ends and NCCL's send/receive is a rendezvous: the transfer
starts when both the sender's result and the receiver's receive are there, and takes ``p2p``.
So a receive's duration is mostly waiting for the neighbour stage, the bubble emerges from
the dependencies (``(p - 1) / (m + p - 1)`` of the step on even stages) and a slow stage or
rank makes its neighbours wait, never because a parameter says so. Sends run on the
communication stream and do not hold the sender's compute. All times are int64 ns.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]

FORWARD, BACKWARD = 0, 1


@dataclass(frozen=True)
class Plan:
    """The 1F1B op order of every stage and an order that respects all dependencies."""

    stages: int
    microbatches: int

    @cached_property
    def ops(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per stage: its ops in execution order, as (FORWARD | BACKWARD, micro-batch)."""
        p, m = self.stages, self.microbatches
        out = []
        for s in range(p):
            warm = min(p - s - 1, m)
            seq = [(FORWARD, j) for j in range(warm)]
            for i in range(m - warm):
                seq += [(FORWARD, warm + i), (BACKWARD, i)]
            seq += [(BACKWARD, j) for j in range(m - warm, m)]
            out.append(tuple(seq))
        return tuple(out)

    @cached_property
    def order(self) -> tuple[tuple[int, int], ...]:
        """(stage, op index) pairs such that every op comes after its dependencies."""
        p = self.stages
        done: set[tuple[int, int, int]] = set()  # (stage, kind, micro-batch)
        ptr = [0] * p
        out: list[tuple[int, int]] = []
        total = sum(len(o) for o in self.ops)
        while len(out) < total:
            progressed = False
            for s in range(p):
                while ptr[s] < len(self.ops[s]):
                    kind, j = self.ops[s][ptr[s]]
                    dep = self.dependency(s, kind, j)
                    if dep is not None and dep not in done:
                        break
                    done.add((s, kind, j))
                    out.append((s, ptr[s]))
                    ptr[s] += 1
                    progressed = True
            if not progressed:  # 1F1B never deadlocks; a broken plan must not loop forever
                raise RuntimeError(f"1F1B plan for {p} stages deadlocks")
        return tuple(out)

    def dependency(self, stage: int, kind: int, mb: int) -> tuple[int, int, int] | None:
        """The op on a neighbour stage whose result this op receives (None: no receive)."""
        if kind == FORWARD:
            return (stage - 1, FORWARD, mb) if stage > 0 else None
        return (stage + 1, BACKWARD, mb) if stage < self.stages - 1 else None

    def index(self, stage: int, kind: int, mb: int) -> int:
        return self.ops[stage].index((kind, mb))


@dataclass
class PipelineTimes:
    """One step's pipeline for every rank: ``[p, 2m, D]`` arrays indexed by (stage, op index,
    replica); ``recv_post`` is when the op's receive was posted (= ``start`` without a receive)."""

    start: I64
    end: I64
    recv_post: I64
    #: When each op's result went out to the neighbour (the send kernel's start), and when that
    #: transfer completed (the send kernel's end); equal where the op sends nothing.
    send_a: I64
    send_b: I64

    def last_end(self) -> I64:
        """[p, D] when each rank's last backward ends (its gradients are ready)."""
        return np.asarray(self.end[:, -1, :], dtype=np.int64)


def run(plan: Plan, t0: I64, fwd: I64, bwd: I64, p2p: int) -> PipelineTimes:
    """The step's ops from ``t0`` [p, D] with per-micro-batch ``fwd``/``bwd`` [p, D] ns of compute."""
    p, m = plan.stages, plan.microbatches
    D = t0.shape[1]
    n = 2 * m
    start = np.zeros((p, n, D), np.int64)
    end = np.zeros((p, n, D), np.int64)
    post = np.zeros((p, n, D), np.int64)
    send_a = np.zeros((p, n, D), np.int64)
    send_b = np.zeros((p, n, D), np.int64)
    sent = np.zeros((p, n), bool)
    where = {(s, kind, j): k for s in range(p) for k, (kind, j) in enumerate(plan.ops[s])}
    for s, k in plan.order:
        kind, j = plan.ops[s][k]
        prev = t0[s] if k == 0 else end[s, k - 1]
        post[s, k] = prev
        dep = plan.dependency(s, kind, j)
        if dep is None:
            begin = prev
        else:
            ds, dkind, dj = dep
            dk = where[(ds, dkind, dj)]
            ready = end[ds, dk]
            # Rendezvous: the transfer starts when both sides are there.
            begin = np.maximum(ready, prev) + p2p
            send_a[ds, dk] = ready
            send_b[ds, dk] = begin
            sent[ds, dk] = True
        start[s, k] = begin
        end[s, k] = begin + (fwd[s] if kind == FORWARD else bwd[s])
    # Ops whose result nobody receives (the last stage's forwards, the first's backwards).
    unsent = ~sent
    send_a[unsent] = end[unsent]
    send_b[unsent] = end[unsent]
    return PipelineTimes(start, end, post, send_a, send_b)
