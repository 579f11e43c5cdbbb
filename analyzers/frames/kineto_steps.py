"""Per-step rows for the verdicts from Kineto traces, for dumps whose step records lack phases.

The verdict rules read per rank and step: the step time, compute, exposed communication, data
wait, the host's own wait and the rank's node and GPU. A trace gives the GPU's view of them —
the step window (``span_s``), compute kernels, communication no compute hides — and, on the
host, the DataLoader's own spans: data wait is the loader's time in the step (``loader_s``),
never the GPU's idle time as such. GPU idle waiting for a launch that came late while the loader
was not the reason (``idle_host_wait_s - loader_s``) is the CPU side of the training loop
(Python, launch overhead, synchronisation): ``host_wait``, with the host ops that ran meanwhile
named in ``host_ops``. A trace without loader spans has an unknown data wait, counted as none
(``loader`` says which: ``none``, ``in-process`` for ``num_workers=0``, ``workers``).

A trace does not say where its rank runs (``distributedInfo`` holds the rank, not the host):
``nodes`` — from the dump's step records, when it has them — fills node and GPU; without them a
straggler found from traces cannot be checked against its GPU's clock-event reasons, and the
verdict says so instead of guessing. Partial steps (the profiler stopped mid-step) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fmdiag.analyzers.frames import columns


def _ops_text(ops: list[tuple[str, float]]) -> str:
    return ", ".join(f"{name[:60]} ({sec * 1e3:.1f} ms)" for name, sec in ops)


def step_frame(
    kb: columns.Columns,
    host_ops: Mapping[int, Mapping[int, list[tuple[str, float]]]] | None = None,
    nodes: Mapping[int, tuple[str, int]] | None = None,
    loaders: Mapping[int, str] | None = None,
    base_ns: Mapping[int, int] | None = None,
) -> columns.Columns:
    """The merged-step-records columns ``verdicts.step_features`` reads, from the Kineto breakdown
    (numpy only: a Kineto-only analysis stays at numpy's footprint). ``host_ops``: per rank and
    step, the host ops during the GPU's host wait; ``nodes``: rank -> (node, local rank);
    ``loaders``: rank -> the trace's loader kind; ``base_ns``: rank -> ``baseTimeNanoseconds``."""
    done = columns.select(kb, ~kb["partial"])
    start_us = np.asarray(done["start_us"], dtype=np.float64)
    span = np.asarray(done["span_s"], dtype=np.float64)
    rank = np.asarray(done["rank"], dtype=np.int64)
    step = np.asarray(done["step"], dtype=np.int64)
    n = len(span)
    loader = np.asarray(done["loader_s"], dtype=np.float64) if "loader_s" in done else np.full(n, np.nan)
    data_wait = np.nan_to_num(loader, nan=0.0)
    host_wait = np.maximum(np.asarray(done["idle_host_wait_s"], dtype=np.float64) - data_wait, 0.0)
    ops = host_ops or {}
    kinds = loaders or {}
    # step ends as Unix ns, so node metrics can be looked up at them: a trace's µs count from
    # its baseTimeNanoseconds when it has one (else they are Unix µs already)
    base = np.array([(base_ns or {}).get(int(r), 0) for r in rank], dtype=np.int64)
    where = nodes or {}
    return {
        "rank": rank,
        "node": np.array([where.get(int(r), ("", -1))[0] for r in rank], dtype=object),
        "local_rank": np.array([where.get(int(r), ("", -1))[1] for r in rank], dtype=np.int64),
        "step": step,
        "end_ns": base + ((start_us + span * 1e6) * 1e3).astype(np.int64),
        "duration_s": span,
        "data_wait": data_wait,
        "host_wait": host_wait,
        "host_ops": np.array(
            [_ops_text(ops.get(int(r), {}).get(int(s), [])) for r, s in zip(rank, step, strict=True)],
            dtype=object,
        ),
        "loader": np.array([kinds.get(int(r), "none") for r in rank], dtype=object),
        "forward": np.asarray(done["compute_s"], dtype=np.float64),
        "backward": np.zeros(n),
        "comm_exposed": np.asarray(done["comm_exposed_s"], dtype=np.float64),
        "checkpoint": np.zeros(n),
    }
