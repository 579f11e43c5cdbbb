"""``--hta-compatible``: Holistic Trace Analysis' per-rank numbers, by HTA's own definitions.

Reproduces ``traceinsight`` 0.6.1 (import ``hta``) — ``get_temporal_breakdown``,
``get_idle_time_breakdown`` and ``get_comm_comp_overlap`` — from fmdiag's frames, so results
compare number for number on the same files. What HTA does, and so what this does:

1. Times are rounded the way HTA rounds fractional µs: ``ts = ceil(ts)``, ``end = floor(ts + dur)``,
   ``dur = end - ts`` (so a sub-µs kernel can get a zero or negative duration).
2. A *GPU kernel* is any event with ``args.stream >= 0`` and ``args.correlation >= 0``; every
   other complete event is a *CPU event*.
3. When the traces hold at least two distinct ``ProfilerStep#N`` names, the last step is dropped:
   CPU events are kept when they start before the last ``ProfilerStep`` starts, and a GPU kernel
   is kept once per kept CPU event with its correlation (none: dropped). A rank without any
   ``ProfilerStep`` then keeps no kernel at all (HTA compares with its earliest CPU event, and
   0.6.1's temporal breakdown then fails with an IndexError; here that rank reports zeros).
4. Kernel types by name (HTA's patterns): communication ``^nccl|^hip|^hccl|ncclKernel``;
   memory ``^(hip)?Memcpy|^(hip)?Memset|^dma``; compute: none of HTA's "not compute" prefixes;
   anything else "other".
5. Temporal breakdown: ``kernel_time`` = last kernel end - first kernel start; ``idle`` =
   kernel_time - |union of kernels|; ``compute`` = |union of compute kernels|; ``non_compute`` =
   the rest.
6. Comm/comp overlap: |union(comm) ∩ union(compute)| / |union(comm)|.
7. Idle breakdown, per stream, over kernel/memcpy/memset events sorted by start: the gap before
   each kernel is *host wait* when its launch call started after the previous kernel ended,
   *kernel wait* when shorter than ``consecutive_kernel_delay`` (30 µs), else *other*.

Differences that remain, by design: HTA reads the rank with a regex that needs ``"rank": N``
with a space (compact JSON makes every file rank 0) and defaults the idle breakdown to rank 0;
here ranks come from ``distributedInfo`` and every rank is reported. Host-side ``cpu_op`` events
that carry a ``correlation`` (none in PyTorch's traces) are not kept by the reader.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from fmdiag.analyzers import intervals as iv
from fmdiag.analyzers import kineto_frame as kf

CONSECUTIVE_KERNEL_DELAY_US = 30
_COMM = re.compile(r"(^nccl.*)|(^hip)|(^hccl)|(.*ncclKernel.*)")
_MEMORY = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")
_NOT_COMPUTE = re.compile(
    r"(^nccl)|(.*Memcpy)|(.*Memset)|(.*dma)|(^.*Sync)|(^Stream Wait Event)|(cuda.*LaunchKernel)"
    r"|(^runFunction)|(^hip)|(^job_exe)|(^packet)|(^pe_exe)|(^cpum_exe_subgraph)|(^hccl)|(^collective_subgraph_execution)"
)
TYPE_COMPUTE, TYPE_COMM, TYPE_MEMORY, TYPE_OTHER = 0, 1, 2, 3


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


def drops_last_step(traces: Sequence[kf.KinetoTrace]) -> bool:
    """HTA filters the last step only when its symbol table has two or more ProfilerStep names."""
    names: set[int] = set()
    for t in traces:
        names.update(int(n) for n in t.steps["step"])
    return len(names) >= 2


def kept_kernels(trace: kf.KinetoTrace, filter_last_step: bool) -> dict[str, np.ndarray]:
    """HTA's GPU kernels after its last-step filter: rounded ``ts``/``end``, stream, type, cat, launch ts."""
    g = trace.gpu
    is_gpu = (g["stream"] >= 0) & (g["corr"] >= 0)
    ts, end = _round(g["ts"][is_gpu], g["dur"][is_gpu])
    corr = g["corr"][is_gpu]
    # CPU events with a correlation: host launches, and device-side rows failing the GPU rule
    cpu_corr = np.concatenate([trace.launch["corr"], g["corr"][~is_gpu]])
    cpu_ts = np.ceil(np.concatenate([trace.launch["ts"], g["ts"][~is_gpu]]))
    cpu_file_order = np.concatenate([np.arange(trace.launch["corr"].size), np.full((~is_gpu).sum(), -1)])
    if filter_last_step and cpu_ts.size:
        # HTA keeps CPU events before the last ProfilerStep; in a rank without one it compares
        # with the earliest CPU event, which keeps none (and so no kernel): copied as it is
        last_start = float(np.ceil(trace.steps["ts"]).max()) if trace.steps["ts"].size else -np.inf
        keep = cpu_ts < last_start
        cpu_corr, cpu_ts, cpu_file_order = cpu_corr[keep], cpu_ts[keep], cpu_file_order[keep]
        uniq, counts = np.unique(cpu_corr, return_counts=True)
        if uniq.size:
            pos = np.minimum(np.searchsorted(uniq, corr), uniq.size - 1)
            times = np.where(uniq[pos] == corr, counts[pos], 0)
        else:
            times = np.zeros(corr.size, dtype=np.int64)
    else:
        times = np.ones(corr.size, dtype=np.int64)
    # launch ts: the last CPU event in file order with the kernel's correlation (HTA's index join)
    order = np.lexsort((cpu_file_order, cpu_corr))
    sc, sts = cpu_corr[order], cpu_ts[order]
    i = np.searchsorted(sc, corr, side="right") - 1
    has = i >= 0
    has[has] = sc[i[has]] == corr[has]
    launch = np.full(corr.size, np.nan)
    launch[has] = sts[i[has]]
    types = (
        np.array([kernel_type(n) for n in trace.names], dtype=np.int8)[g["name"][is_gpu]]
        if trace.names
        else np.zeros(0, np.int8)
    )
    rep = np.asarray(times, dtype=np.int64)
    return {
        "ts": np.repeat(ts, rep),
        "end": np.repeat(end, rep),
        "stream": np.repeat(g["stream"][is_gpu], rep),
        "type": np.repeat(types, rep),
        "cat": np.repeat(g["cat"][is_gpu], rep),
        "launch": np.repeat(launch, rep),
    }


def temporal(k: dict[str, np.ndarray]) -> dict[str, float]:
    """HTA's temporal breakdown of one rank (µs, and percentages rounded to 2 places as HTA does)."""
    if k["ts"].size == 0:
        return {
            "idle_time_us": 0.0,
            "compute_time_us": 0.0,
            "non_compute_time_us": 0.0,
            "kernel_time_us": 0.0,
        }
    allk = iv.merge(k["ts"], k["end"])
    kernel_time = float(allk[1][-1] - allk[0][0]) if allk[0].size else 0.0
    idle = kernel_time - iv.total(allk)
    comp = k["type"] == TYPE_COMPUTE
    compute = iv.total(iv.merge(k["ts"][comp], k["end"][comp]))
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
    """HTA's communication/computation overlap ratio (NaN without communication kernels)."""
    comp = k["type"] == TYPE_COMPUTE
    comm = k["type"] == TYPE_COMM
    c = iv.merge(k["ts"][comp], k["end"][comp])
    m = iv.merge(k["ts"][comm], k["end"][comm])
    comm_total = iv.total(m)
    if comm_total == 0:
        return float("nan")
    return iv.total(iv.intersect(c, m)) / comm_total


def idle_breakdown(
    k: dict[str, np.ndarray], delay_us: float = CONSECUTIVE_KERNEL_DELAY_US
) -> list[dict[str, Any]]:
    """HTA's idle time breakdown: one row per (stream, category) present, µs and ratio per stream."""
    sel = k["cat"] != kf.CAT_OTHER
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


def analyze(traces: Sequence[kf.KinetoTrace]) -> list[dict[str, Any]]:
    """Per rank: HTA's temporal breakdown, comm/comp overlap and idle breakdown."""
    drop = drops_last_step(traces)
    out = []
    for t in sorted(traces, key=lambda t: t.rank):
        k = kept_kernels(t, drop)
        overlap = comm_comp_overlap(k)
        out.append(
            {
                "rank": t.rank,
                "temporal": temporal(k),
                "comm_comp_overlap_ratio": None if np.isnan(overlap) else overlap,
                "comm_comp_overlap_pctg": None if np.isnan(overlap) else round(100 * overlap, 2),
                "idle": idle_breakdown(k),
            }
        )
    return out
