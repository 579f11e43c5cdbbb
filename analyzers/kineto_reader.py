"""Read one Kineto trace file into a :class:`~fmdiag.analyzers.kineto_frame.KinetoTrace`.

Tolerates what real traces vary in (DOMAIN.md, "What real Kineto traces contain"):

- categories old and new: ``Kernel``/``Runtime``/``Memcpy``/``Memset`` as well as
  ``kernel``/``cuda_runtime``/``cuda_driver``/``gpu_memcpy``/``gpu_memset``;
- communication kernels named ``nccl*``, ``ncclKernel_*``, ``ncclDevKernel_*`` (and kernels
  whose name merely contains ``ncclKernel``);
- no ``distributedInfo``: the rank comes from ``rank<N>`` in the file name, with a warning;
- ``baseTimeNanoseconds`` present or not, fractional microseconds, ``ProfilerStep#N`` as
  ``user_annotation`` (new) or ``cpu_op`` (old);
- kernels launched by ``cudaGraphLaunch`` (many kernels share one correlation id);
- several GPUs or streams in one file, events outside any step, a CPU-only trace.

Events without ``ph == "X"`` (metadata, instants, flows) carry no duration and are counted only.
An event whose ``ts``/``dur`` is not a number is an error naming the event's index.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from fmdiag.analyzers import kineto_frame as kf
from fmdiag.analyzers.errors import InputError
from fmdiag.analyzers.kineto_json import TraceStream

log = logging.getLogger(__name__)

#: Category -> the gpu table's ``cat`` code; anything else with a stream is ``CAT_OTHER``.
GPU_CATS: dict[str, int] = {
    "kernel": kf.CAT_KERNEL,
    "Kernel": kf.CAT_KERNEL,
    "gpu_memcpy": kf.CAT_MEMCPY,
    "Memcpy": kf.CAT_MEMCPY,
    "gpu_memset": kf.CAT_MEMSET,
    "Memset": kf.CAT_MEMSET,
}
#: Device-side categories that are not activity of their own (spans drawn over kernels).
GPU_ANNOTATION_CATS = frozenset({"gpu_user_annotation", "cuda_sync"})
#: Host-side categories whose events are never launches: their ``args`` are not inspected.
_HOST_ONLY_CATS = frozenset({"cpu_op", "python_function", "user_annotation", "Trace", "Operator"})
COMM_NAME = re.compile(r"^nccl|ncclKernel|ncclDevKernel|^hccl|^rccl")
MEMORY_NAME = re.compile(r"^(hip)?Mem(cpy|set)")
PROFILER_STEP = re.compile(r"^ProfilerStep\s*#\s*(\d+)$")
RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)


def kind_of(name: str, cat_code: int) -> int:
    """fmdiag's class of a device-side event: communication, memory copy/set, or compute."""
    if COMM_NAME.search(name):
        return kf.KIND_COMM
    if cat_code in (kf.CAT_MEMCPY, kf.CAT_MEMSET) or MEMORY_NAME.match(name):
        return kf.KIND_MEMORY
    if cat_code == kf.CAT_KERNEL:
        return kf.KIND_COMPUTE
    return kf.KIND_NONE


def _int_or(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return default
    return default


def rank_of(source: str, meta: dict[str, Any], warnings: list[str]) -> tuple[int, str]:
    """The trace's rank: ``distributedInfo.rank``, else ``rank<N>`` in the file name (warned)."""
    info = meta.get("distributedInfo")
    if isinstance(info, dict):
        rank = _int_or(info.get("rank"), -1)
        if rank >= 0:
            return rank, "distributedInfo"
    m = RANK_IN_NAME.search(Path(source).name)
    if m is None:
        raise InputError(source, "no distributedInfo.rank and no rank<N> in the file name: rank unknown")
    warnings.append(f"{source}: no distributedInfo.rank; rank {m.group(1)} taken from the file name")
    return int(m.group(1)), "file name"


def read_trace(path: str | Path) -> kf.KinetoTrace:
    """Parse ``path`` in one streaming pass; raise InputError naming file and offset on bad input."""
    source = str(path)
    stream = TraceStream(path)
    names: list[str] = []
    name_ids: dict[str, int] = {}
    kind_by_name: dict[tuple[int, int], int] = {}
    g_ts: list[float] = []
    g_dur: list[float] = []
    g_stream: list[int] = []
    g_dev: list[int] = []
    g_corr: list[int] = []
    g_name: list[int] = []
    g_cat: list[int] = []
    g_kind: list[int] = []
    l_corr: list[int] = []
    l_ts: list[float] = []
    l_dur: list[float] = []
    l_name: list[int] = []
    s_step: list[int] = []
    s_ts: list[float] = []
    s_dur: list[float] = []
    other_phase = 0
    host_events = 0
    gpu_cats = GPU_CATS
    annotation_cats = GPU_ANNOTATION_CATS
    host_only = _HOST_ONLY_CATS
    index = -1
    for batch in stream.batches():
        for ev in batch:
            index += 1
            if ev.ph != "X":
                other_phase += 1
                continue
            cat = ev.cat
            if cat in host_only:
                # the bulk of a trace (cpu_op, python_function, annotations): only ProfilerStep#N is kept
                name = ev.name
                if (
                    cat == "python_function"
                    or name.__class__ is not str
                    or not name.startswith("ProfilerStep")
                ):
                    host_events += 1
                    continue
            ts = ev.ts
            dur = ev.dur
            if ts.__class__ not in (float, int) or dur.__class__ not in (float, int):
                if ts is None or dur is None:
                    other_phase += 1  # a complete event without timing cannot be placed: counted, skipped
                    continue
                raise InputError(source, f"'ts'/'dur' must be numbers, got {ts!r}/{dur!r}", f"event {index}")
            name = ev.name
            if name.__class__ is not str:
                name = "" if name is None else str(name)
            code = gpu_cats.get(cat) if cat.__class__ is str else None
            if code is None and cat in host_only:
                host_events += 1
                if cat != "python_function" and name.startswith("ProfilerStep"):
                    m = PROFILER_STEP.match(name)
                    if m is not None:
                        s_step.append(int(m.group(1)))
                        s_ts.append(ts)
                        s_dur.append(dur)
                continue
            args = ev.args
            if args is None:
                corr, stream_id, device = -1, None, None
            else:
                corr, stream_id, device = args.correlation, args.stream, args.device
                if corr.__class__ is not int:
                    corr = _int_or(corr, -1)
            if code is None and stream_id is None and cat not in annotation_cats:
                host_events += 1  # host side: runtime/driver calls carry the correlation of their launch
                if corr >= 0:
                    nid = name_ids.get(name)
                    if nid is None:
                        nid = name_ids[name] = len(names)
                        names.append(name)
                    l_corr.append(corr)
                    l_ts.append(ts)
                    l_dur.append(dur)
                    l_name.append(nid)
                continue
            if stream_id.__class__ is not int:
                stream_id = _int_or(stream_id if stream_id is not None else ev.tid, -1)
            if device.__class__ is not int:
                device = _int_or(device if device is not None else ev.pid, -1)
            nid = name_ids.get(name)
            if nid is None:
                nid = name_ids[name] = len(names)
                names.append(name)
            cat_code = kf.CAT_OTHER if code is None else code
            key = (nid, cat_code)
            kind = kind_by_name.get(key)
            if kind is None:
                kind = kind_by_name[key] = kf.KIND_NONE if cat in annotation_cats else kind_of(name, cat_code)
            g_ts.append(ts)
            g_dur.append(dur)
            g_stream.append(stream_id)
            g_dev.append(device)
            g_corr.append(corr)
            g_name.append(nid)
            g_cat.append(cat_code)
            g_kind.append(kind)
    warnings: list[str] = []
    rank, rank_from = rank_of(source, stream.meta, warnings)
    base = stream.meta.get("baseTimeNanoseconds")
    base_ns = _int_or(base, -1) if base is not None else -1
    order = np.argsort(np.asarray(s_ts, dtype=np.float64), kind="stable")
    trace = kf.KinetoTrace(
        source=source,
        rank=rank,
        rank_from=rank_from,
        base_ns=base_ns if base_ns >= 0 else None,
        names=names,
        gpu={
            "ts": np.asarray(g_ts, dtype=np.float64),
            "dur": np.asarray(g_dur, dtype=np.float64),
            "stream": np.asarray(g_stream, dtype=np.int64),
            "device": np.asarray(g_dev, dtype=np.int64),
            "corr": np.asarray(g_corr, dtype=np.int64),
            "name": np.asarray(g_name, dtype=np.int32),
            "cat": np.asarray(g_cat, dtype=np.int8),
            "kind": np.asarray(g_kind, dtype=np.int8),
        },
        launch={
            "corr": np.asarray(l_corr, dtype=np.int64),
            "ts": np.asarray(l_ts, dtype=np.float64),
            "dur": np.asarray(l_dur, dtype=np.float64),
            "name": np.asarray(l_name, dtype=np.int32),
        },
        steps={
            "step": np.asarray(s_step, dtype=np.int64)[order],
            "ts": np.asarray(s_ts, dtype=np.float64)[order],
            "dur": np.asarray(s_dur, dtype=np.float64)[order],
        },
        counts={
            "events": stream.events_seen,
            "gpu": len(g_ts),
            "launch": len(l_ts),
            "host": host_events,
            "not_complete": other_phase,
            "steps": len(s_ts),
        },
        warnings=warnings,
    )
    if trace.cpu_only:
        trace.warnings.append(
            f"{source}: CPU-only trace (no kernel, memcpy or memset events): no GPU breakdown for"
            f" rank {rank}; profile with ProfilerActivity.CUDA"
        )
    for message in trace.warnings:
        log.warning("%s", message)
    return trace
