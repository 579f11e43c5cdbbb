"""How communication overlaps compute inside one step, for every rank at once.

A collective runs on the communication stream, in issue order, and completes for everyone
only when every rank has joined it: it starts at the latest of the ranks' issue times and of
the end of the previous collective, and takes its transfer time. Compute waits where the
parallelism needs the collective's result:

- **DDP** issues one all-reduce per gradient bucket as soon as backward has produced it, and
  nothing waits for them until the optimizer: only what is left after backward is exposed.
- **FSDP** all-gathers a unit's parameters before its forward (prefetched one unit ahead),
  again before its backward (prefetched as the next unit's backward starts), and
  reduce-scatters its gradients after its backward; a unit's compute waits for its gather.

Exposed communication is not a parameter: it is whatever the overlap leaves uncovered, so it
grows when the network slows down and when one rank joins late. All times are int64 ns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Slot:
    """One collective of the step, in communication-stream order."""

    kind: str  # "all_reduce" | "all_gather" | "reduce_scatter"
    unit: int
    #: Ring phases: an all-reduce is a reduce-scatter then an all-gather.
    phases: int


def schedule(parallelism: str, units: int) -> tuple[Slot, ...]:
    """The step's collectives in the order the communication stream runs them."""
    if parallelism == "ddp":
        return tuple(Slot("all_reduce", k, 2) for k in range(units))
    slots = [Slot("all_gather", k, 1) for k in range(units)]
    # Backward runs the units in reverse: unit K-1 still holds its gathered parameters.
    for k in range(units - 1, -1, -1):
        if k >= 1:
            slots.append(Slot("all_gather", k - 1, 1))
        slots.append(Slot("reduce_scatter", k, 1))
    return tuple(slots)


@dataclass
class StepTimes:
    fwd_end: I64  # [R]
    arrive: I64  # [R] backward compute done
    coll_end: int  # the last collective's end, for every rank
    issue: I64  # [R, C] when each rank joined each collective
    a: I64  # [C] when each collective ran, for everyone
    b: I64  # [C]


def step_times(
    slots: tuple[Slot, ...], units: int, parallelism: str, t0: I64, fwd: I64, bwd: I64, dur: I64
) -> StepTimes:
    """Forward from ``t0`` [R] with ``fwd``/``bwd`` [R] ns of compute, collectives of ``dur`` [C] ns."""
    R, C = len(t0), len(slots)
    issue = np.empty((R, C), np.int64)
    a = np.empty(C, np.int64)
    b = np.empty(C, np.int64)
    stream_free = np.int64(np.iinfo(np.int64).min)

    def run(c: int, joined: I64) -> int:
        nonlocal stream_free
        start = max(int(joined.max()), int(stream_free))
        a[c], b[c] = start, start + int(dur[c])
        issue[:, c] = np.maximum(joined, stream_free)
        stream_free = b[c]
        return int(b[c])

    if parallelism == "ddp":
        fwd_end = t0 + fwd
        for c in range(C):
            ready = fwd_end + (bwd * (c + 1)) // units
            run(c, ready)
        arrive = fwd_end + bwd
        return StepTimes(fwd_end, arrive, int(b[-1]), issue, a, b)

    fwd_u, bwd_u = fwd // units, bwd // units
    fwd_last, bwd_last = fwd - fwd_u * (units - 1), bwd - bwd_u * (units - 1)
    c = 0
    free = t0.copy()  # compute stream free
    prev_start = t0
    for k in range(units):
        gathered = run(c, t0 if k == 0 else prev_start)
        c += 1
        prev_start = np.maximum(free, gathered)
        free = prev_start + (fwd_last if k == units - 1 else fwd_u)
    fwd_end = free
    start_k = fwd_end
    for k in range(units - 1, -1, -1):
        gather_next = run(c, start_k) if k >= 1 else None
        c += 1 if k >= 1 else 0
        end_k = start_k + (bwd_last if k == 0 else bwd_u)
        run(c, end_k)
        c += 1
        if gather_next is not None:
            start_k = np.maximum(end_k, gather_next)
        arrive = end_k
    return StepTimes(fwd_end, arrive, int(b[-1]), issue, a, b)
