"""Per-step GPU time breakdown of one rank's Kineto trace (fmdiag's definitions).

The device timeline is cut into one window per ``ProfilerStep#N``: a step's window starts at the
first GPU activity launched inside the step (a kernel belongs to the step whose host span holds
its launching runtime call, found by ``correlation``; kernels of a ``cudaGraphLaunch`` share one)
and ends where the next step's window starts (the last step's ends with its last activity).
Inside a window every instant is exactly one of:

- ``compute_s``: a compute kernel runs;
- ``comm_exposed_s``: only communication runs (no compute kernel hides it);
- ``memory_s``: only memory copies/sets run (no compute or communication kernel);
- ``idle_s``: nothing runs, split by what ended the gap, that is by the activity after it:
  ``idle_host_wait_s`` when its launch call began after the gap began (the host was late),
  ``idle_kernel_wait_s`` when the gap is shorter than ``kernel_wait_us`` (launch latency between
  queued kernels), ``idle_other_s`` otherwise (waiting on events, synchronisation, ...).

So ``compute + comm_exposed + memory + idle == span`` per window. ``comm_s`` is all
communication time and ``comm_overlapped_s = comm_s - comm_exposed_s`` the part hidden under
compute. Unlike HTA (``hta_compat``), gaps are taken on the union of all streams, so a gap on one
stream while another computes is not idle, and the breakdown is per step, not per trace.

A trace with several GPUs gets one set of rows per device. The last step is flagged ``partial``
when its host span is under half the median of the others (the profiler stopped mid-step).
"""

from __future__ import annotations

import numpy as np

from fmdiag.analyzers import columns
from fmdiag.analyzers import intervals as iv
from fmdiag.analyzers import kineto_frame as kf

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
    "gpu_events": "int64",
}
COLUMNS: tuple[str, ...] = tuple(DTYPES)
TIME_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c.endswith("_s"))


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


def step_of(trace: kf.KinetoTrace, at: np.ndarray) -> np.ndarray:
    """The ``ProfilerStep`` number whose host span holds each time in ``at``; -1 outside every step."""
    s_ts, s_dur, s_num = trace.steps["ts"], trace.steps["dur"], trace.steps["step"]
    out = np.full(at.shape, -1, dtype=np.int64)
    if s_ts.size == 0:
        return out
    i = np.searchsorted(s_ts, at, side="right") - 1
    ok = (i >= 0) & ~np.isnan(at)
    ok[ok] = at[ok] < s_ts[i[ok]] + s_dur[i[ok]]
    out[ok] = s_num[i[ok]]
    return out


def partial_steps(trace: kf.KinetoTrace) -> set[int]:
    """The last step when it is much shorter than the others (the profiler stopped inside it)."""
    dur, num = trace.steps["dur"], trace.steps["step"]
    if num.size < 2:
        return set()
    last = int(np.argmax(num))
    others = np.delete(dur, last)
    return {int(num[last])} if dur[last] < 0.5 * float(np.median(others)) else set()


def breakdown(trace: kf.KinetoTrace, kernel_wait_us: float = KERNEL_WAIT_US) -> columns.Columns:
    """Columns with one row per (device, step) of the trace; empty for a CPU-only trace."""
    g = trace.gpu
    active_rows = g["kind"] != kf.KIND_NONE
    launch = launch_times(trace)
    step = step_of(trace, np.where(np.isnan(launch), g["ts"], launch))
    partial = partial_steps(trace)
    rows: list[dict[str, object]] = []
    for device in np.unique(g["device"][active_rows]):
        sel = active_rows & (g["device"] == device)
        rows.extend(_device_rows(trace, sel, step, launch, int(device), partial, kernel_wait_us))
    return {name: np.array([r[name] for r in rows], dtype=dtype) for name, dtype in DTYPES.items()}


def _device_rows(
    trace: kf.KinetoTrace,
    sel: np.ndarray,
    step: np.ndarray,
    launch: np.ndarray,
    device: int,
    partial: set[int],
    kernel_wait_us: float,
) -> list[dict[str, object]]:
    g = trace.gpu
    ts, end, kind = g["ts"][sel], g["ts"][sel] + g["dur"][sel], g["kind"][sel]
    st, la = step[sel], launch[sel]
    in_step = st >= 0
    if not in_step.any():
        return []
    numbers = np.unique(st[in_step])
    lo = np.array([ts[in_step][st[in_step] == n].min() for n in numbers])
    order = np.argsort(lo, kind="stable")
    numbers, lo = numbers[order], lo[order]
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
    host, kwait, other = _idle_split(everything, ts, la, lo, hi, kernel_wait_us)
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
    return out


def _idle_split(
    everything: tuple[np.ndarray, np.ndarray],
    ts: np.ndarray,
    launch: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    kernel_wait_us: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Idle time per window, split into host wait, kernel wait and other (see the module docstring)."""
    g0, g1 = iv.gaps(everything)
    zero = np.zeros(lo.size)
    if g0.size == 0:
        return zero, zero.copy(), zero.copy()
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
    return split[0], split[1], split[2]
