"""Per-step GPU time breakdown of one rank's Kineto trace (fmdiag's definitions).

The device timeline is cut into one window per step: a step's window starts at the first GPU
activity of the step and ends where the next step's window starts (the last step's ends with
its last activity). Which activity belongs to which step — by the host ``ProfilerStep#N`` span
holding its launch call, by GPU-side markers, by detected iterations or the whole trace, and
what is set apart (kernels launched before the profiling window) — is
:mod:`~fmdiag.analyzers.frames.kineto_windows`' job.
Inside a window every instant is exactly one of:

- ``compute_s``: a compute kernel runs;
- ``comm_exposed_s``: only communication runs (no compute kernel hides it);
- ``memory_s``: only memory copies/sets run (no compute or communication kernel);
- ``idle_s``: nothing runs, split by what ended the gap, that is by the activity after it:
  ``idle_host_wait_s`` when its launch call began after the gap began (the host was late),
  ``idle_kernel_wait_s`` when the gap is shorter than ``kernel_wait_us`` (launch latency between
  queued kernels), ``idle_other_s`` otherwise (waiting on events, synchronisation, ...).

So ``compute + comm_exposed + memory + idle == span`` per window. Host-wait idle is the GPU
waiting on the CPU side: ``loader_s`` is the DataLoader's own host time in the step (its
``enumerate(DataLoader)#…__next__`` spans; NaN when the trace has none, so data wait is then
unknown, not zero), and :func:`host_wait_ops` names the host ops that ran while the GPU waited.
``comm_s`` is all
communication time and ``comm_overlapped_s = comm_s - comm_exposed_s`` the part hidden under
compute. Unlike HTA (``hta_compat``), gaps are taken on the union of all streams, so a gap on one
stream while another computes is not idle, and the breakdown is per step, not per trace.

A trace with several GPUs gets one set of rows per device. The last step is flagged ``partial``
when its host span is under half the median of the others (the profiler stopped mid-step).
"""

from __future__ import annotations

import numpy as np

from fmdiag.analyzers.frames import columns
from fmdiag.analyzers.frames import intervals as iv
from fmdiag.analyzers.frames import kineto_windows as kw
from fmdiag.analyzers.readers import kineto_frame as kf

#: HTA's default ``consecutive_kernel_delay`` (µs): shorter gaps are launch latency.
KERNEL_WAIT_US = 30.0

#: Columns of the frame :func:`breakdown` returns (times in seconds) and their dtypes.
DTYPES: dict[str, str] = {
    "rank": "int64",
    "device": "int64",
    "step": "int64",
    "partial": "bool",
    "start_us": "float64",
    "span_s": "float64",
    "compute_s": "float64",
    "comm_s": "float64",
    "comm_overlapped_s": "float64",
    "comm_exposed_s": "float64",
    "memory_s": "float64",
    "idle_s": "float64",
    "idle_host_wait_s": "float64",
    "idle_kernel_wait_s": "float64",
    "idle_other_s": "float64",
    "loader_s": "float64",
    "gpu_events": "int64",
}
COLUMNS: tuple[str, ...] = tuple(DTYPES)
TIME_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c.endswith("_s"))


def breakdown(
    trace: kf.KinetoTrace, kernel_wait_us: float = KERNEL_WAIT_US, win: kw.Windows | None = None
) -> columns.Columns:
    """Columns with one row per (device, step) of the trace; empty for a CPU-only trace."""
    return breakdown_and_gaps(trace, kernel_wait_us, win)[0]


def breakdown_and_gaps(
    trace: kf.KinetoTrace, kernel_wait_us: float, win: kw.Windows | None
) -> tuple[columns.Columns, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The breakdown and the host-wait gaps (start, end, step) of every device."""
    if win is None:
        win = kw.windows(trace)
    g = trace.gpu
    active_rows = g["kind"] != kf.KIND_NONE
    loader = loader_per_step(trace, win)
    rows: list[dict[str, object]] = []
    gaps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for device in np.unique(g["device"][active_rows]):
        sel = active_rows & (g["device"] == device)
        got, host_gaps = _device_rows(
            trace, sel, win.step, win.launch, int(device), win.partial, kernel_wait_us, win.spans
        )
        for r in got:
            number = int(r["step"])  # type: ignore[call-overload]
            r["loader_s"] = loader.get(number, 0.0) if loader is not None else np.nan
        rows.extend(got)
        gaps.append(host_gaps)
    frame = {name: np.array([r[name] for r in rows], dtype=dtype) for name, dtype in DTYPES.items()}
    if gaps:
        merged = tuple(np.concatenate([x[i] for x in gaps]) for i in range(3))
    else:
        merged = (np.empty(0), np.empty(0), np.empty(0, np.int64))
    return frame, merged  # type: ignore[return-value]


def loader_kind(trace: kf.KinetoTrace) -> str:
    """``"none"`` (no DataLoader spans: data wait unknown), ``"in-process"`` (``num_workers=0``:
    the training process loads each batch itself) or ``"workers"``."""
    loader = trace.loader
    if not loader or loader["ts"].size == 0:
        return "none"
    return "in-process" if bool(np.any(loader["single_process"])) else "workers"


def loader_per_step(trace: kf.KinetoTrace, win: kw.Windows) -> dict[int, float] | None:
    """Seconds of DataLoader host spans per step (by where each span starts); None without any."""
    loader = trace.loader
    if not loader or loader["ts"].size == 0:
        return None
    step = kw.in_spans(win.spans, loader["ts"])
    ok = step >= 0
    out: dict[int, float] = {}
    for s, d in zip(step[ok], loader["dur"][ok], strict=True):
        out[int(s)] = out.get(int(s), 0.0) + float(d) / 1e6
    return out


#: How many host ops :func:`host_wait_ops` names per step.
TOP_HOST_OPS = 3


def top_level_ops(trace: kf.KinetoTrace) -> np.ndarray:
    """Indexes of host ops (``cpu_op``: ``aten::``, ``c10d::``, ...) not nested in another op of
    the same thread. ``record_function`` regions (``user_annotation``: ``ProfilerStep#N``,
    ``## forward ##``) are left out: they hold whole phases, and naming them says nothing about
    which op kept the host busy."""
    h = trace.host_ops
    if not h or h["ts"].size == 0:
        return np.empty(0, np.int64)
    keep = np.flatnonzero(~h["annotation"])
    order = keep[np.lexsort((-h["dur"][keep], h["ts"][keep], h["tid"][keep]))]
    ts, end, tid = h["ts"][order], h["ts"][order] + h["dur"][order], h["tid"][order]
    top = np.ones(order.size, dtype=bool)
    firsts = np.flatnonzero(np.r_[True, tid[1:] != tid[:-1]])
    for first, last in zip(firsts, np.r_[firsts[1:], order.size], strict=True):
        reach = np.maximum.accumulate(end[first:last])
        top[first + 1 : last] = ts[first + 1 : last] >= reach[:-1]
    out: np.ndarray = order[top]
    return out


def host_wait_ops(
    trace: kf.KinetoTrace, gaps: tuple[np.ndarray, np.ndarray, np.ndarray], top: int = TOP_HOST_OPS
) -> dict[int, list[tuple[str, float]]]:
    """Per step, the top-level host ops that ran while the GPU waited for the host (the
    host-wait gaps), with the seconds of each that fell inside those gaps, longest first."""
    g0, g1, gstep = gaps
    if g0.size == 0:
        return {}
    ops = top_level_ops(trace)
    if ops.size == 0:
        return {}
    order = np.argsort(g0, kind="stable")
    sg0, sg1, sstep = g0[order], g1[order], gstep[order]
    merged = iv.merge(sg0, sg1)
    h = trace.host_ops
    ts, end = h["ts"][ops], h["ts"][ops] + h["dur"][ops]
    inside = iv.covered_within(merged, ts, end)
    hit = inside > 0
    if not hit.any():
        return {}
    # the step of an op: the step of the gap it overlaps first
    first_gap = np.searchsorted(sg1, ts[hit], side="right")
    first_gap = np.minimum(first_gap, sg0.size - 1)
    steps = sstep[first_gap]
    names = trace.names
    per: dict[int, dict[str, float]] = {}
    for s, nid, sec in zip(steps, h["name"][ops][hit], inside[hit] / 1e6, strict=True):
        d = per.setdefault(int(s), {})
        name = names[int(nid)]
        d[name] = d.get(name, 0.0) + float(sec)
    return {s: sorted(d.items(), key=lambda kv: -kv[1])[:top] for s, d in per.items()}


def _device_rows(
    trace: kf.KinetoTrace,
    sel: np.ndarray,
    step: np.ndarray,
    launch: np.ndarray,
    device: int,
    partial: set[int],
    kernel_wait_us: float,
    spans: dict[str, np.ndarray],
) -> tuple[list[dict[str, object]], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    g = trace.gpu
    ts, end, kind = g["ts"][sel], g["ts"][sel] + g["dur"][sel], g["kind"][sel]
    st, la = step[sel], launch[sel]
    in_step = st >= 0
    if not in_step.any():
        return [], (np.empty(0), np.empty(0), np.empty(0, np.int64))
    numbers = np.unique(st[in_step])
    first = np.array([ts[in_step][st[in_step] == n].min() for n in numbers])
    order = np.argsort(first, kind="stable")
    numbers, first = numbers[order], first[order]
    lo = _window_starts(ts, end, first, _span_starts(spans, numbers))
    last_end = float(end[in_step][st[in_step] == numbers[-1]].max())
    hi = np.append(lo[1:], max(last_end, float(lo[-1])))
    everything = iv.merge(ts, end)
    compute = iv.merge(ts[kind == kf.KIND_COMPUTE], end[kind == kf.KIND_COMPUTE])
    comm = iv.merge(ts[kind == kf.KIND_COMM], end[kind == kf.KIND_COMM])
    cc = iv.union(compute, comm)
    busy = iv.covered_within(everything, lo, hi)
    compute_w = iv.covered_within(compute, lo, hi)
    comm_w = iv.covered_within(comm, lo, hi)
    cc_w = iv.covered_within(cc, lo, hi)
    overlapped = compute_w + comm_w - cc_w
    span = hi - lo
    idle = span - busy
    host, kwait, other, host_gaps = _idle_split(everything, ts, la, lo, hi, kernel_wait_us)
    counts = {int(n): int(c) for n, c in zip(*np.unique(st[in_step], return_counts=True), strict=True)}
    out = []
    for i, n in enumerate(numbers):
        out.append(
            {
                "rank": trace.rank,
                "device": device,
                "step": int(n),
                "partial": int(n) in partial,
                "start_us": float(lo[i]),
                "span_s": span[i] / 1e6,
                "compute_s": compute_w[i] / 1e6,
                "comm_s": comm_w[i] / 1e6,
                "comm_overlapped_s": overlapped[i] / 1e6,
                "comm_exposed_s": (comm_w[i] - overlapped[i]) / 1e6,
                "memory_s": (busy[i] - cc_w[i]) / 1e6,
                "idle_s": idle[i] / 1e6,
                "idle_host_wait_s": host[i] / 1e6,
                "idle_kernel_wait_s": kwait[i] / 1e6,
                "idle_other_s": other[i] / 1e6,
                "gpu_events": counts.get(int(n), 0),
            }
        )
    g0, g1, window = host_gaps
    return out, (g0, g1, numbers[window].astype(np.int64))


def _span_starts(spans: dict[str, np.ndarray], numbers: np.ndarray) -> np.ndarray:
    """The start of each step's span (host ProfilerStep, GPU marker, iteration); NaN if none."""
    out = np.full(numbers.size, np.nan)
    if spans["step"].size:
        order = np.argsort(spans["step"], kind="stable")
        keys, starts = spans["step"][order], spans["ts"][order]
        i = np.clip(np.searchsorted(keys, numbers), 0, keys.size - 1)
        hit = keys[i] == numbers
        out[hit] = starts[i[hit]]
    return out


def _window_starts(ts: np.ndarray, end: np.ndarray, first: np.ndarray, span_start: np.ndarray) -> np.ndarray:
    """Where each step's window starts: at its first activity, unless the GPU sat idle before
    it — then the idle time up to the step's own start (its span) is the previous step's (the
    host still finishing it), and from there on this step's (the host already in it: loading its
    batch, running Python before the first launch): ``min(first, max(span start, end of
    everything that started before first))``."""
    order = np.argsort(ts, kind="stable")
    reach = np.maximum.accumulate(end[order])
    before = np.searchsorted(ts[order], first, side="left") - 1
    prev_end = np.where(before >= 0, reach[np.maximum(before, 0)], -np.inf)
    start = np.where(np.isnan(span_start), first, span_start)
    out: np.ndarray = np.minimum(first, np.maximum(start, prev_end))
    return out


def _with_leading_gap(
    everything: tuple[np.ndarray, np.ndarray], lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The holes between activities, and the one from the first window's start to the first
    activity (a step whose host started before its first kernel waits there)."""
    g0, g1 = iv.gaps(everything)
    s = everything[0]
    if s.size and lo.size and lo[0] < s[0]:
        g0, g1 = np.r_[lo[0], g0], np.r_[s[0], g1]
    return g0, g1


def _split_at(g0: np.ndarray, g1: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gaps cut at every window start inside one, so each piece lies in one window."""
    if g0.size == 0 or cuts.size == 0:
        return g0, g1
    j = np.searchsorted(g0, cuts, side="right") - 1
    inside = (j >= 0) & (cuts > g0[np.maximum(j, 0)]) & (cuts < g1[np.maximum(j, 0)])
    if not inside.any():
        return g0, g1
    starts = np.concatenate([g0, cuts[inside]])
    owner = np.concatenate([np.arange(g0.size), j[inside]])
    order = np.lexsort((starts, owner))
    starts, owner = starts[order], owner[order]
    ends = g1[owner].copy()
    same = owner[1:] == owner[:-1]
    ends[:-1][same] = starts[1:][same]
    return starts, ends


def _idle_split(
    everything: tuple[np.ndarray, np.ndarray],
    ts: np.ndarray,
    launch: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    kernel_wait_us: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Idle time per window, split into host wait, kernel wait and other (see the module
    docstring); and the host-wait gaps themselves (start, end, window index)."""
    g0, g1 = _split_at(*_with_leading_gap(everything, lo), lo)
    zero = np.zeros(lo.size)
    if g0.size == 0:
        return zero, zero.copy(), zero.copy(), (np.empty(0), np.empty(0), np.empty(0, np.int64))
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    nxt = order[np.searchsorted(sorted_ts, g1, side="left")]  # the first activity starting at g1
    nxt_launch = launch[nxt]
    is_host = nxt_launch > g0  # NaN (launch unknown) compares False
    is_kernel = ~is_host & (g1 - g0 < kernel_wait_us)
    window = np.searchsorted(lo, g0, side="right") - 1
    inside = (window >= 0) & (g1 <= hi[np.maximum(window, 0)])
    length = g1 - g0
    split = []
    for mask in (is_host, is_kernel, ~is_host & ~is_kernel):
        m = mask & inside
        split.append(np.bincount(window[m], weights=length[m], minlength=lo.size)[: lo.size])
    host = is_host & inside
    return split[0], split[1], split[2], (g0[host], g1[host], window[host])
