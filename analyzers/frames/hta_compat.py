"""``--hta-compatible``: Holistic Trace Analysis' per-rank numbers, by HTA's own definitions.

Reproduces ``traceinsight`` 0.6.1 (import ``hta``) — ``get_temporal_breakdown``,
``get_idle_time_breakdown`` and ``get_comm_comp_overlap`` — from fmdiag's frames, so results
compare number for number on the same files (``benchmarks/analyze_vs_hta.py --real``: 0.000% on
every real trace HTA reads). What HTA does, and so what this does:

1. Times are rounded the way HTA rounds fractional µs: ``ts = ceil(ts)``, ``end = floor(ts + dur)``,
   ``dur = end - ts`` (so a sub-µs kernel can get a zero or negative duration).
2. An event's *stream* is ``args.stream`` and nothing else (-1 without one). A *GPU kernel* is
   any event with ``stream >= 0`` and ``args.correlation >= 0``, or named ``Event Sync`` /
   ``Context Sync``; every other event is a *CPU event* — a runtime call that carries a stream
   and a correlation (HIP's ``hipLaunchKernel`` in AMD traces) is a GPU kernel, a GPU-side
   annotation without a stream (``gpu_user_annotation``) a CPU event. The reader's
   :attr:`~fmdiag.analyzers.readers.kineto_frame.KinetoTrace.hta_streams` keeps the events other than
   kernel/memcpy/memset that carry ``args.stream`` for this.
3. What the breakdowns count as kernels is every event whose stream is not -1, kernel or not:
   a CPU event with a stream counts too (Triton's ``cpu_op`` with ``args.stream``, MTIA's
   ``event_wait`` without a correlation).
4. When the traces hold at least two distinct ``ProfilerStep#N`` names (HTA's symbol table:
   host markers and the GPU-side copies recent PyTorch writes, all ranks together), the last
   step is dropped: CPU events are kept when they start before the last ``ProfilerStep`` CPU
   event starts — the GPU-side marker included, which usually starts later than the host one —
   a GPU kernel is kept once per kept CPU event with its correlation (none: dropped), and a
   kept CPU event with a stream is counted as in 3. A rank without any ``ProfilerStep`` then
   keeps no kernel at all (HTA compares with its earliest CPU event, and 0.6.1's temporal
   breakdown then fails with an IndexError; here that rank reports zeros), while a rank with no
   CPU event at all (device events only) is left whole. With fewer than two names nothing is
   filtered (whatever steps fmdiag itself detects: :func:`step_names`).
5. Kernel types by name (HTA's patterns): communication ``^nccl|^hip|^hccl|ncclKernel``;
   memory ``^(hip)?Memcpy|^(hip)?Memset|^dma``; compute: none of HTA's "not compute" prefixes;
   anything else "other".
6. Intervals are merged as HTA's ``merge_kernel_intervals`` merges them (:func:`hta_merge`): an
   interval that rounding made negative is kept, and alone in its group takes its length off
   the run time.
7. Temporal breakdown: ``kernel_time`` = the last group's end - the first group's start;
   ``idle`` = kernel_time - the groups' total length; ``compute`` = the compute kernels' groups'
   total length; ``non_compute`` = the rest.
8. Comm/comp overlap: HTA's sweep over the merged groups of both kinds (|union(comm) ∩
   union(compute)| / |union(comm)| for positive groups; NaN without communication).
9. Idle breakdown, per stream, over the events of categories ``kernel``/``Kernel``,
   ``gpu_memcpy``/``Memcpy``, ``gpu_memset``/``Memset`` and ``mtia_ccp_events`` sorted by start:
   the gap before each is *host wait* when its launch call (the last CPU event in file order
   with its correlation) started after the previous event ended, *kernel wait* when shorter than
   ``consecutive_kernel_delay`` (30 µs), else *other*; per stream, the categories present.

Differences that remain: HTA reads the rank with a regex that needs ``"rank": N`` with a space
(compact JSON makes every file rank 0) and defaults the idle breakdown to rank 0; here ranks
come from ``distributedInfo`` and every rank is reported. HTA rounds only when the trace's
``ts`` column is fractional (integer ``ts`` with fractional ``dur`` stays unrounded; PyTorch
writes both alike); it also reads events of any phase that have a ``dur``, where fmdiag reads
complete (``X``) events; host ``cpu_op`` events with a correlation and no stream (none in
PyTorch's traces) are not kept by the reader; for a kernel with a correlation but no CPU event
HTA's launch lookup falls back to the trace's first event; its sorts are not stable (ties
between a negative interval and another start may merge either way); and MTIA traces with
ProfilerSteps get HTA's own MTIA filter, not reproduced here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmdiag.analyzers.readers import kineto_frame as kf

CONSECUTIVE_KERNEL_DELAY_US = 30
_COMM = re.compile(r"(^nccl.*)|(^hip)|(^hccl)|(.*ncclKernel.*)")
_MEMORY = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")
_NOT_COMPUTE = re.compile(
    r"(^nccl)|(.*Memcpy)|(.*Memset)|(.*dma)|(^.*Sync)|(^Stream Wait Event)|(cuda.*LaunchKernel)"
    r"|(^runFunction)|(^hip)|(^job_exe)|(^packet)|(^pe_exe)|(^cpum_exe_subgraph)|(^hccl)|(^collective_subgraph_execution)"
)
TYPE_COMPUTE, TYPE_COMM, TYPE_MEMORY, TYPE_OTHER = 0, 1, 2, 3
#: HTA's ProfilerStepGroupingPattern (a prefix match).
_STEP_NAME = re.compile(r"^ProfilerStep#(\d+)")
#: Device-level syncs HTA's GPUKernelFilter takes as GPU kernels whatever their stream/correlation.
_SYNC_KERNELS = frozenset({"Event Sync", "Context Sync"})
#: The categories of get_idle_time_breakdown's kernels.
_IDLE_CATS = frozenset(
    {"kernel", "Kernel", "gpu_memset", "Memset", "gpu_memcpy", "Memcpy", "mtia_ccp_events"}
)


def kernel_type(name: str) -> int:
    """HTA's ``get_kernel_type``: communication, then memory, then compute, else other."""
    if _COMM.match(name):
        return TYPE_COMM
    if _MEMORY.match(name):
        return TYPE_MEMORY
    if not _NOT_COMPUTE.match(name):
        return TYPE_COMPUTE
    return TYPE_OTHER


def _round(ts: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ceil(ts), np.floor(ts + dur)


def _step_rows(trace: kf.KinetoTrace) -> tuple[set[int], np.ndarray]:
    """HTA's ``ProfilerStep#N`` events that its filter takes as CPU events: the step numbers and
    the rounded starts. Host markers and the GPU-side copies recent PyTorch writes
    (``gpu_user_annotation``: no stream, no correlation, so a CPU event to HTA)."""
    ids = {i: int(m.group(1)) for i, n in enumerate(trace.names) if (m := _STEP_NAME.match(n))}
    numbers = {int(n) for n in trace.steps["step"]}
    starts = [np.ceil(np.asarray(trace.steps["ts"], dtype=np.float64))]
    if ids:
        g = trace.gpu
        on_gpu = np.isin(g["name"], list(ids)) & ~((g["stream"] >= 0) & (g["corr"] >= 0))
        numbers.update(ids[int(i)] for i in g["name"][on_gpu])
        starts.append(np.ceil(g["ts"][on_gpu]))
    s = trace.hta_streams
    for name, ts, stream, corr in zip(
        s.get("name", []), s.get("ts", []), s.get("stream", []), s.get("corr", []), strict=True
    ):
        m = _STEP_NAME.match(name)
        if m is not None and not (stream >= 0 and corr >= 0):
            numbers.add(int(m.group(1)))
            starts.append(np.ceil(np.asarray([ts], dtype=np.float64)))
    return numbers, np.concatenate(starts)


def step_names(trace: kf.KinetoTrace) -> set[int]:
    """The ``ProfilerStep#N`` numbers HTA's symbol table gets from this trace (host and GPU side)."""
    return _step_rows(trace)[0]


def drops_last_step(traces: Sequence[kf.KinetoTrace]) -> bool:
    """HTA filters the last step only when its symbol table has two or more ProfilerStep names."""
    names: set[int] = set()
    for t in traces:
        names |= step_names(t)
    return len(names) >= 2


def _device_rows(trace: kf.KinetoTrace) -> dict[str, np.ndarray]:
    """Every event HTA gives a stream: kernels, memcpy and memset, and the other events that carry
    ``args.stream`` (:attr:`~fmdiag.analyzers.readers.kineto_frame.KinetoTrace.hta_streams`)."""
    g = trace.gpu
    own = g["cat"] != kf.CAT_OTHER
    s = trace.hta_streams
    s_names: list[str] = s.get("name", [])
    if trace.names:
        types = np.array([kernel_type(n) for n in trace.names], dtype=np.int8)[g["name"][own]]
        sync = np.isin(g["name"][own], [i for i, n in enumerate(trace.names) if n in _SYNC_KERNELS])
    else:
        types, sync = np.zeros(0, np.int8), np.zeros(0, bool)
    empty_f, empty_i = np.zeros(0, np.float64), np.zeros(0, np.int64)
    return {
        "ts": np.concatenate([g["ts"][own], s.get("ts", empty_f)]),
        "dur": np.concatenate([g["dur"][own], s.get("dur", empty_f)]),
        "stream": np.concatenate([g["stream"][own], s.get("stream", empty_i)]),
        "corr": np.concatenate([g["corr"][own], s.get("corr", empty_i)]),
        "type": np.concatenate([types, np.array([kernel_type(n) for n in s_names], dtype=np.int8)]),
        "idle": np.concatenate([np.ones(int(own.sum()), bool), np.isin(s.get("cat", []), list(_IDLE_CATS))]),
        "sync": np.concatenate([sync, np.isin(s_names, list(_SYNC_KERNELS))]),
    }


def _launches(trace: kf.KinetoTrace) -> tuple[np.ndarray, np.ndarray]:
    """HTA's CPU events with a correlation: the launch table's runtime/driver calls, less those
    that carry ``args.stream`` (a GPU kernel to HTA when the stream is >= 0: HIP's calls)."""
    corr, ts = trace.launch["corr"], trace.launch["ts"]
    s = trace.hta_streams
    if corr.size and s.get("corr") is not None and s["corr"].size:
        streamed = set(zip(s["corr"].tolist(), s["ts"].tolist(), strict=True))
        candidates = np.flatnonzero(np.isin(corr, s["corr"]))
        drop = [i for i in candidates if (int(corr[i]), float(ts[i])) in streamed]
        if drop:
            keep = np.ones(corr.size, bool)
            keep[drop] = False
            corr, ts = corr[keep], ts[keep]
    return corr, ts


def kept_kernels(trace: kf.KinetoTrace, filter_last_step: bool) -> dict[str, np.ndarray]:
    """The events HTA's breakdowns take, after its last-step filter: rounded ``ts``/``end``,
    ``stream``, kernel ``type``, ``idle`` (kernel/memcpy/memset: in the idle breakdown), ``launch``."""
    d = _device_rows(trace)
    ts, end = _round(d["ts"], d["dur"])
    corr = d["corr"]
    is_gpu = ((d["stream"] >= 0) & (corr >= 0)) | d["sync"]
    l_corr, l_ts = _launches(trace)
    # CPU events with a correlation: host launches, and rows with a stream failing the GPU rule
    cpu_corr = np.concatenate([l_corr, corr[~is_gpu]])
    cpu_ts = np.concatenate([np.ceil(l_ts), ts[~is_gpu]])
    cpu_file_order = np.concatenate([np.arange(l_corr.size), np.full(int((~is_gpu).sum()), -1)])
    # HTA filters a rank only when it has CPU events (any: host ops, runtime calls, GPU-side
    # annotations); a trace of device events alone is kept whole
    has_cpu = (
        trace.counts.get("host", 1) > 0 or cpu_corr.size > 0 or bool(np.any(trace.gpu["cat"] == kf.CAT_OTHER))
    )
    if filter_last_step and has_cpu:
        # HTA keeps CPU events before the last ProfilerStep starts (host or GPU-side marker); in a
        # rank without one it compares with the earliest CPU event, which keeps none (and so no
        # kernel): copied as it is
        starts = _step_rows(trace)[1]
        last_start = float(starts.max()) if starts.size else -np.inf
        keep = cpu_ts < last_start
        cpu_corr, cpu_ts, cpu_file_order = cpu_corr[keep], cpu_ts[keep], cpu_file_order[keep]
        uniq, counts = np.unique(cpu_corr, return_counts=True)
        if uniq.size:
            pos = np.minimum(np.searchsorted(uniq, corr), uniq.size - 1)
            times = np.where(uniq[pos] == corr, counts[pos], 0)
        else:
            times = np.zeros(corr.size, dtype=np.int64)
        # a GPU kernel once per kept CPU event with its correlation; a CPU event with a stream
        # (a Triton cpu_op) is kept like any CPU event, and counted as a kernel all the same
        times = np.where(is_gpu, times, ts < last_start)
    else:
        times = np.ones(corr.size, dtype=np.int64)
    times = np.where(d["stream"] != -1, times, 0)
    # launch ts: the last CPU event in file order with the kernel's correlation (HTA's index join)
    order = np.lexsort((cpu_file_order, cpu_corr))
    sc, sts = cpu_corr[order], cpu_ts[order]
    i = np.searchsorted(sc, corr, side="right") - 1
    has = (i >= 0) & is_gpu
    has[has] = sc[i[has]] == corr[has]
    launch = np.full(corr.size, np.nan)
    launch[has] = sts[i[has]]
    rep = np.asarray(times, dtype=np.int64)
    return {
        "ts": np.repeat(ts, rep),
        "end": np.repeat(end, rep),
        "stream": np.repeat(d["stream"], rep),
        "type": np.repeat(d["type"], rep),
        "idle": np.repeat(d["idle"], rep),
        "launch": np.repeat(launch, rep),
    }


def hta_merge(ts: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HTA's ``merge_kernel_intervals``: sorted by start, a group begins where an interval starts
    after every earlier one has ended (touching ones join), and spans [min start, max end].

    Unlike :func:`fmdiag.analyzers.frames.intervals.merge` it keeps the intervals that rounding made
    empty or negative (a sub-µs kernel, ``ceil(ts) > floor(ts + dur)``): alone in a group, such
    an interval has a negative length that HTA subtracts from the kernels' run time. (HTA's sort
    is not stable; this one is, which matters only when such an interval ties with another's start.)
    """
    s = np.asarray(ts, dtype=np.float64)
    e = np.asarray(end, dtype=np.float64)
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > np.maximum.accumulate(e)[:-1]
    first = np.flatnonzero(new)
    return s[first], np.maximum.reduceat(e, first)


def temporal(k: dict[str, np.ndarray]) -> dict[str, float]:
    """HTA's temporal breakdown of one rank (µs, and percentages rounded to 2 places as HTA does)."""
    if k["ts"].size == 0:
        return {
            "idle_time_us": 0.0,
            "compute_time_us": 0.0,
            "non_compute_time_us": 0.0,
            "kernel_time_us": 0.0,
        }
    starts, ends = hta_merge(k["ts"], k["end"])
    kernel_time = float(ends[-1] - starts[0])
    idle = kernel_time - float(np.sum(ends - starts))
    comp = k["type"] == TYPE_COMPUTE
    c_starts, c_ends = hta_merge(k["ts"][comp], k["end"][comp])
    compute = float(np.sum(c_ends - c_starts))
    out = {
        "idle_time_us": idle,
        "compute_time_us": compute,
        "non_compute_time_us": kernel_time - compute - idle,
        "kernel_time_us": kernel_time,
    }
    for name in ("idle_time", "compute_time", "non_compute_time"):
        out[f"{name}_pctg"] = round(100 * out[f"{name}_us"] / kernel_time, 2) if kernel_time else 0.0
    return out


def comm_comp_overlap(k: dict[str, np.ndarray]) -> float:
    """HTA's communication/computation overlap ratio (NaN without communication kernels).

    HTA's sweep: the merged groups' starts and ends become +1/-1 (communication) and +2/-2
    (computation) sorted by time, and the time spent at a running sum of 3 is the overlap. For
    positive groups that is |comm ∩ comp|; a negative group (see :func:`hta_merge`) counts as
    HTA counts it."""
    comp = k["type"] == TYPE_COMPUTE
    comm = k["type"] == TYPE_COMM
    m_s, m_e = hta_merge(k["ts"][comm], k["end"][comm])
    if m_s.size == 0:
        return float("nan")
    c_s, c_e = hta_merge(k["ts"][comp], k["end"][comp])
    time = np.concatenate([m_s, m_e, c_s, c_e])
    status = np.concatenate(
        [np.full(m_s.size, 1), np.full(m_e.size, -1), np.full(c_s.size, 2), np.full(c_e.size, -2)]
    )
    order = np.argsort(time, kind="stable")
    time, running = time[order], np.cumsum(status[order])
    overlap = float(np.sum((time[1:] - time[:-1])[running[:-1] == 3]))
    comm_total = float(np.sum(m_e - m_s))
    if comm_total == 0:
        return float("nan") if overlap == 0 else math.copysign(math.inf, overlap)
    return overlap / comm_total


def idle_breakdown(
    k: dict[str, np.ndarray], delay_us: float = CONSECUTIVE_KERNEL_DELAY_US
) -> list[dict[str, Any]]:
    """HTA's idle time breakdown: one row per (stream, category) present, µs and ratio per stream."""
    sel = k["idle"]
    rows: list[dict[str, Any]] = []
    for stream in np.unique(k["stream"][sel]):
        on = sel & (k["stream"] == stream)
        order = np.argsort(k["ts"][on], kind="stable")
        ts, end, launch = k["ts"][on][order], k["end"][on][order], k["launch"][on][order]
        prev_end = np.concatenate(([np.nan], end[:-1]))
        gap = ts - prev_end
        host = launch > prev_end
        kernel = ~host & (gap < delay_us)
        other = ~host & ~kernel
        sums = {
            "host_wait": float(np.nansum(gap[host])),
            "kernel_wait": float(np.nansum(gap[kernel])),
            "other": float(np.nansum(gap[other])),
        }
        present = {"host_wait": host.any(), "kernel_wait": kernel.any(), "other": other.any()}
        total = sum(sums.values())
        for category, value in sums.items():
            if present[category]:
                ratio = round(value / total, 2) if total else float("nan")
                rows.append(
                    {
                        "stream": int(stream),
                        "idle_category": category,
                        "idle_time_us": round(value, 2),
                        "idle_time_ratio": ratio,
                    }
                )
    return rows


def rank_result(trace: kf.KinetoTrace, filter_last_step: bool) -> dict[str, Any]:
    """One rank's HTA numbers: temporal breakdown, comm/comp overlap and idle breakdown."""
    k = kept_kernels(trace, filter_last_step)
    overlap = comm_comp_overlap(k)
    return {
        "rank": trace.rank,
        "temporal": temporal(k),
        "comm_comp_overlap_ratio": None if np.isnan(overlap) else overlap,
        "comm_comp_overlap_pctg": None if np.isnan(overlap) else round(100 * overlap, 2),
        "idle": idle_breakdown(k),
    }


def analyze(traces: Sequence[kf.KinetoTrace]) -> list[dict[str, Any]]:
    """Per rank: HTA's temporal breakdown, comm/comp overlap and idle breakdown."""
    drop = drops_last_step(traces)
    return [rank_result(t, drop) for t in sorted(traces, key=lambda t: t.rank)]
