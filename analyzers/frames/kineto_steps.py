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
    layouts: Mapping[int, Mapping[str, int]] | None = None,
) -> columns.Columns:
    """The merged-step-records columns ``verdicts.step_features`` reads, from the Kineto breakdown
    (numpy only: a Kineto-only analysis stays at numpy's footprint). ``host_ops``: per rank and
    step, the host ops during the GPU's host wait; ``nodes``: rank -> (node, local rank);
    ``loaders``: rank -> the trace's loader kind; ``base_ns``: rank -> ``baseTimeNanoseconds``;
    ``layouts``: rank -> its ``pp_rank``, ``tp_rank``, ... from the trace's process groups (a
    coordinate some traced rank lacks is NaN there, as an absent record field is)."""
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
    axes = sorted({axis for lay in (layouts or {}).values() for axis in lay})
    layout = {
        axis: np.array([(layouts or {}).get(int(r), {}).get(axis, np.nan) for r in rank], dtype=np.float64)
        for axis in axes
    }
    return {
        **layout,
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


#: Columns of :func:`traced_steps`.
TRACED_COLUMNS: tuple[str, ...] = (
    "step",
    "ranks",
    "span_s",
    "compute_s",
    "comm_s",
    "comm_exposed_s",
    "comm_exposed_min_s",
)
#: A traced step shorter than this share of the record that holds it was cut by the profiler
#: (its window closed mid-step): left out.
WHOLE_STEP = 0.9


#: Columns of :func:`traced_rows`.
ROW_COLUMNS: tuple[str, ...] = ("rank", "step", "span_s", "compute_s", "comm_s", "comm_exposed_s")


def traced_rows(
    kb: columns.Columns,
    records: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    base_ns: Mapping[int, int] | None = None,
) -> columns.Columns:
    """The traced (rank, step) rows of whole steps, numbered as the step records are.

    A trace's ``ProfilerStep#N`` need not be the records' step N (the profiler counts from its own
    start): where a traced rank has records (``records``: rank -> (step, start_ns, end_ns)) and the
    trace has a ``baseTimeNanoseconds``, each traced step is renumbered as the record whose span
    holds the traced step's middle, and left out when it covers less than :data:`WHOLE_STEP` of
    that record; otherwise the numbers are taken as they are."""
    done = columns.select(kb, ~kb["partial"])
    if not columns.length(done):
        return {c: np.zeros(0, np.int64 if c in ("rank", "step") else np.float64) for c in ROW_COLUMNS}
    rank = np.asarray(done["rank"], dtype=np.int64)
    step = np.asarray(done["step"], dtype=np.int64).copy()
    span = np.asarray(done["span_s"], dtype=np.float64)
    keep = np.ones(len(step), dtype=bool)
    mid_us = np.asarray(done["start_us"], dtype=np.float64) + 0.5e6 * span
    for r in np.unique(rank):
        base = (base_ns or {}).get(int(r))
        rec = (records or {}).get(int(r))
        if base is None or rec is None or not len(rec[0]):
            continue
        rec_step, rec_start, rec_end = rec
        order = np.argsort(rec_start, kind="stable")
        mine = rank == r
        mid = base + (mid_us[mine] * 1e3).astype(np.int64)
        k = np.searchsorted(rec_start[order], mid, side="right") - 1
        inside = (k >= 0) & (mid <= rec_end[order][np.maximum(k, 0)])
        at = np.flatnonzero(mine)[inside]
        step[at] = rec_step[order][k[inside]]
        held = (rec_end[order][k[inside]] - rec_start[order][k[inside]]) / 1e9
        keep[at] = span[at] >= WHOLE_STEP * held
    out = {c: np.asarray(done[c], dtype=np.float64)[keep] for c in ROW_COLUMNS[2:]}
    return {"rank": rank[keep], "step": step[keep], **out}


def traced_steps(
    kb: columns.Columns,
    records: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    base_ns: Mapping[int, int] | None = None,
) -> columns.Columns:
    """Per step, the median over the traced ranks of the GPU's own view (the step window, compute
    kernels, communication kernels, the communication no compute hides) and the least exposed
    communication of a traced rank (the rank on the critical path waits least: what
    communication costs the step) — for dumps whose step records have phases too. Step records
    time phases on the host: under FSDP a rank's wait for a parameter all-gather lands in its
    ``forward``, so its ``comm_exposed`` shows a fraction of the time its GPU waits on the
    network; the trace shows all of it. Steps are matched to the records as
    :func:`traced_rows` says."""
    return per_step(traced_rows(kb, records, base_ns))


def per_step(rows: columns.Columns) -> columns.Columns:
    """:func:`traced_steps` from rows of :func:`traced_rows`."""
    rank, step = np.asarray(rows["rank"], np.int64), np.asarray(rows["step"], np.int64)
    out: dict[str, list[float]] = {c: [] for c in TRACED_COLUMNS}
    values = {c: np.asarray(rows[c], dtype=np.float64) for c in TRACED_COLUMNS[2:6]}
    exposed = np.asarray(rows["comm_exposed_s"], dtype=np.float64)
    for s in np.unique(step):
        here = step == s
        out["step"].append(float(s))
        out["ranks"].append(float(len(np.unique(rank[here]))))
        for c, v in values.items():
            out[c].append(float(np.median(v[here])))
        out["comm_exposed_min_s"].append(float(np.min(exposed[here])))
    cols = {c: np.asarray(v, dtype=np.float64) for c, v in out.items()}
    cols["step"] = cols["step"].astype(np.int64)
    cols["ranks"] = cols["ranks"].astype(np.int64)
    return cols
