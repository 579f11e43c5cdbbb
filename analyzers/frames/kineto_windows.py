"""Which step each GPU activity of a Kineto trace belongs to, whatever markers the trace has.

PyTorch defines a step as the host span ``ProfilerStep#N`` that ``profiler.step()`` draws; the
GPU work of step N is what the host *launched* inside that span, whenever it ran. So, in order
of preference, the steps of a trace come from:

1. **host** ``ProfilerStep#N`` spans (``user_annotation``, old ``cpu_op``/``Operator``): an
   activity belongs to the step whose span holds its launching runtime call (found by
   ``correlation``; the kernels of one ``cudaGraphLaunch`` share it). An activity whose launch
   call is not in the trace at all was launched before the profiling window opened: it is set
   apart and counted (:attr:`Windows.before_window`), never given to the step its start time
   falls in — a kernel queued before the window would otherwise stretch the first step by its
   whole queue. One launched outside every step span is counted as outside (``outside``).
   Traces that record no runtime calls at all fall back to the activity's own start time;
2. **GPU-side** ``ProfilerStep#N`` spans (``gpu_user_annotation``) when the host ones are
   missing: by the activity's start time;
3. **detected iterations** when the trace has no step marker (inference, custom loops, CUDA
   graphs replayed in a loop): the compute kernels of the busiest stream, in time order, are
   searched for the shortest block of kernel names that repeats back to back, identically, over
   most of the trace (:func:`detect_iterations`); each repetition is a step, numbered from 0;
4. otherwise **the whole trace** is one window, step 0.

HTA cuts at the GPU-side marker where it has one (its ``--hta-compatible`` numbers follow HTA,
see :mod:`~fmdiag.analyzers.frames.hta_compat`); fmdiag's breakdown uses the host span and
correlations, which is PyTorch's own definition, and says which source it used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmdiag.analyzers.readers import kineto_frame as kf

HOST, GPU, DETECTED, WHOLE = "host ProfilerStep", "GPU ProfilerStep", "detected iterations", "whole trace"
#: A repeated block must hold at least this many kernels, and its repetitions at least this
#: share of the stream's compute kernels, to be called an iteration.
MIN_ITERATION_KERNELS = 4
MIN_ITERATION_COVERAGE = 0.6


@dataclass
class Windows:
    """The step of every GPU row (-1: none), where the steps came from, and what was set apart."""

    source: str
    step: np.ndarray
    #: Per GPU row: the start of its launching host call (NaN when the trace lacks it).
    launch: np.ndarray
    #: Per GPU row: launched before the profiling window (its launch call is not in the trace).
    before_window: np.ndarray
    #: The steps' host spans (or GPU spans) as ``step``, ``ts``, ``dur``: loader spans and host
    #: ops are placed in steps by these.
    spans: dict[str, np.ndarray]
    partial: set[int]


def launch_times(trace: kf.KinetoTrace) -> np.ndarray:
    """For each GPU row, the start of its launching host call (NaN when the trace lacks it)."""
    corr = trace.gpu["corr"]
    l_corr, l_ts = trace.launch["corr"], trace.launch["ts"]
    out = np.full(corr.shape, np.nan)
    if l_corr.size == 0 or corr.size == 0:
        return out
    order = np.argsort(l_corr, kind="stable")
    sc, sts = l_corr[order], l_ts[order]
    # the last launch with a given correlation wins (searchsorted right - 1)
    i = np.searchsorted(sc, corr, side="right") - 1
    ok = (i >= 0) & (corr >= 0)
    ok[ok] = sc[i[ok]] == corr[ok]
    out[ok] = sts[i[ok]]
    return out


def in_spans(spans: dict[str, np.ndarray], at: np.ndarray) -> np.ndarray:
    """The step number whose span holds each time in ``at``; -1 outside every span (and for NaN)."""
    s_ts, s_dur, s_num = spans["ts"], spans["dur"], spans["step"]
    out = np.full(at.shape, -1, dtype=np.int64)
    if s_ts.size == 0:
        return out
    i = np.searchsorted(s_ts, at, side="right") - 1
    ok = (i >= 0) & ~np.isnan(at)
    ok[ok] = at[ok] < s_ts[i[ok]] + s_dur[i[ok]]
    out[ok] = s_num[i[ok]]
    return out


def partial_of(spans: dict[str, np.ndarray]) -> set[int]:
    """The last step when it is much shorter than the others (the profiler stopped inside it)."""
    dur, num = spans["dur"], spans["step"]
    if num.size < 2:
        return set()
    last = int(np.argmax(num))
    others = np.delete(dur, last)
    return {int(num[last])} if dur[last] < 0.5 * float(np.median(others)) else set()


def detect_iterations(seq: np.ndarray) -> np.ndarray | None:
    """Start indexes of the shortest block of ``seq`` (kernel name ids in time order) that repeats
    back to back, identically, over at least :data:`MIN_ITERATION_COVERAGE` of it; None if none.

    Candidates are the names that occur at a constant spacing: the block starting at one
    occurrence must equal every other (so a layer that repeats inside an iteration, separated
    differently across iterations, does not pass), and the shortest passing block is the
    iteration (a multiple of it would also repeat)."""
    n = int(seq.size)
    if n < 2 * MIN_ITERATION_KERNELS:
        return None
    order = np.argsort(seq, kind="stable")
    sorted_names = seq[order]
    cuts = np.flatnonzero(np.diff(sorted_names)) + 1
    best: np.ndarray | None = None
    best_period = n + 1
    for positions in np.split(order, cuts):
        c = positions.size
        if c < 2:
            continue
        gaps = np.diff(positions)
        period = int(gaps[0])
        if period < MIN_ITERATION_KERNELS or period >= best_period or not np.all(gaps == period):
            continue
        start = int(positions[0])
        if start + c * period > n or c * period < MIN_ITERATION_COVERAGE * n:
            continue
        blocks = seq[start : start + c * period].reshape(c, period)
        if np.all(blocks == blocks[0]):
            best, best_period = positions, period
    return best


def _detected(trace: kf.KinetoTrace, active: np.ndarray) -> dict[str, np.ndarray] | None:
    """Iteration windows (as spans) detected on the busiest stream's compute kernels."""
    g = trace.gpu
    compute = active & (g["kind"] == kf.KIND_COMPUTE)
    if not compute.any():
        return None
    keys = g["device"][compute] * 1_000_003 + g["stream"][compute]
    uniq, counts = np.unique(keys, return_counts=True)
    busiest = uniq[int(np.argmax(counts))]
    rows = np.flatnonzero(compute)[keys == busiest]
    rows = rows[np.argsort(g["ts"][rows], kind="stable")]
    starts = detect_iterations(g["name"][rows])
    if starts is None:
        return None
    period = int(starts[1] - starts[0]) if starts.size > 1 else rows.size
    ts = g["ts"][rows[starts]]
    last_rows = rows[int(starts[-1]) : int(starts[-1]) + period]
    last_end = float(np.max(g["ts"][last_rows] + g["dur"][last_rows]))
    ends = np.append(ts[1:], last_end)
    return {"step": np.arange(ts.size, dtype=np.int64), "ts": ts, "dur": ends - ts}


def windows(trace: kf.KinetoTrace) -> Windows:
    """Assign every GPU row of ``trace`` to a step (see the module docstring for the order)."""
    g = trace.gpu
    n = g["ts"].size
    launch = launch_times(trace)
    active = g["kind"] != kf.KIND_NONE
    none = np.zeros(n, dtype=bool)
    if trace.steps["step"].size:
        if trace.launch["corr"].size:
            before = active & np.isnan(launch)
            at = launch
        else:  # no runtime calls recorded: the activity's own start is all there is
            before, at = none, g["ts"]
        step = in_spans(trace.steps, at)
        step[before] = -1
        return Windows(HOST, step, launch, before, trace.steps, partial_of(trace.steps))
    gpu_steps = trace.gpu_steps
    if gpu_steps and gpu_steps["step"].size:
        step = in_spans(gpu_steps, g["ts"])
        return Windows(GPU, step, launch, none, gpu_steps, partial_of(gpu_steps))
    spans = _detected(trace, active)
    if spans is not None:
        # each iteration runs until the next starts: a kernel is in the window its start falls in
        step = in_spans(spans, g["ts"])
        return Windows(DETECTED, step, launch, none, spans, set())
    step = np.where(active, 0, -1).astype(np.int64)
    if active.any():
        t0 = float(g["ts"][active].min())
        t1 = float((g["ts"] + g["dur"])[active].max())
    else:
        t0 = t1 = 0.0
    whole = {"step": np.zeros(1, np.int64), "ts": np.array([t0]), "dur": np.array([t1 - t0])}
    return Windows(WHOLE, step, launch, none, whole, set())
