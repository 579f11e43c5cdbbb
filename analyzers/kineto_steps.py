"""Per-step rows for the verdicts from Kineto traces, for a dump that has traces but no step records.

The verdict rules read per rank and step: the step time, compute, exposed communication, data
wait and the rank's node and GPU. A trace gives the GPU's view of the first four — the step
window (``span_s``), compute kernels, communication no compute hides, and idle time the host
caused (``idle_host_wait_s``: the GPU waited for a launch that came late, which is how a
starved input pipeline looks from the device) — but not where the rank runs: Kineto's
``distributedInfo`` holds the rank, not the host. So a straggler found from traces cannot be
checked against its GPU's clock-event reasons, and the verdict says so instead of guessing.
Partial steps (the profiler stopped mid-step) are left out.
"""

from __future__ import annotations

import numpy as np

from fmdiag.analyzers import columns


def step_frame(kb: columns.Columns) -> columns.Columns:
    """The merged-step-records columns ``verdicts.step_features`` reads, from the Kineto breakdown
    (numpy only: a Kineto-only analysis stays at numpy's footprint)."""
    done = columns.select(kb, ~kb["partial"])
    start_us = np.asarray(done["start_us"], dtype=np.float64)
    span = np.asarray(done["span_s"], dtype=np.float64)
    n = len(span)
    return {
        "rank": np.asarray(done["rank"], dtype=np.int64),
        "node": np.full(n, "", dtype=object),
        "local_rank": np.full(len(span), -1, dtype=np.int64),
        "step": np.asarray(done["step"], dtype=np.int64),
        "end_ns": ((start_us + span * 1e6) * 1e3).astype(np.int64),
        "duration_s": span,
        "data_wait": np.asarray(done["idle_host_wait_s"], dtype=np.float64),
        "forward": np.asarray(done["compute_s"], dtype=np.float64),
        "backward": np.zeros(len(span)),
        "comm_exposed": np.asarray(done["comm_exposed_s"], dtype=np.float64),
        "checkpoint": np.zeros(len(span)),
    }
