"""Read one Kineto trace file into a :class:`~fmdiag.analyzers.readers.kineto_frame.KinetoTrace`.

Tolerates what real traces vary in (DOMAIN.md, "What real Kineto traces contain"):

- categories old and new: ``Kernel``/``Runtime``/``Memcpy``/``Memset`` as well as
  ``kernel``/``cuda_runtime``/``cuda_driver``/``gpu_memcpy``/``gpu_memset``;
- kernels classed by name with the table ``kernel_classes.toml`` (docs/kernel-classes.md):
  NCCL/RCCL old and new names, DeepEP, NVSHMEM, PyTorch symmetric memory, ... as communication;
  a kernel no entry matches is compute (and listed as unclassified by the pipeline);
- no ``distributedInfo`` (single-process traces, HTA's test traces): the rank comes from a
  ``--rank-from`` pattern when given, else ``rank<N>`` in the file name, else it is rank 0 — as
  HTA reads such files — with a one-line note; the world size from ``distributedInfo.world_size``
  (or the number of ranks in its ``pg_config``), so ranks missing from a dump can be named;
- ``ProfilerStep#N`` on the host (``user_annotation``/``cpu_op``/``Operator``) and, in recent
  PyTorch, also on the GPU timeline (``gpu_user_annotation``): both kept, in separate tables;
- the DataLoader's own host spans (``enumerate(DataLoader)#…__next__``), kept to measure data
  wait, and the host ops (``cpu_op``/``Operator``/``user_annotation``: name, thread, span), kept
  to name the host work the GPU waited for;
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

from fmdiag.analyzers.errors import InputError
from fmdiag.analyzers.readers import kernel_classes
from fmdiag.analyzers.readers import kineto_frame as kf
from fmdiag.analyzers.readers.kineto_json import TraceStream

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
#: Host-side runtime/driver calls: launches whatever their ``args`` (ROCm's carry a ``stream``
#: string such as ``"0x0"``, which must not make them device activity).
_LAUNCH_CATS = frozenset({"cuda_runtime", "cuda_driver", "Runtime", "Driver"})
#: Host-side categories whose events are never launches: their ``args`` are not inspected.
_HOST_ONLY_CATS = frozenset({"cpu_op", "python_function", "user_annotation", "Trace", "Operator"})
PROFILER_STEP = re.compile(r"^ProfilerStep\s*#\s*(\d+)$")
RANK_IN_NAME = re.compile(r"rank[-_]?(\d+)", re.IGNORECASE)
#: The DataLoader's span around each batch it hands out (PyTorch's ``_BaseDataLoaderIter``).
LOADER_PREFIX = "enumerate(DataLoader)"
#: Host op categories whose spans are kept (``python_function`` stacks are left out: they
#: double the bulk of a trace and name Python frames, not the ops the GPU waited for).
_HOST_OP_CATS = frozenset({"cpu_op", "user_annotation", "Operator"})
#: Where :attr:`KinetoTrace.rank` came from when the trace does not say.
RANK_ASSUMED = "assumed (single-process trace)"


_KIND_CODES = {"comm": kf.KIND_COMM, "memory": kf.KIND_MEMORY, "compute": kf.KIND_COMPUTE}


def kind_of(name: str, cat_code: int) -> int:
    """fmdiag's class of a device-side event: communication, memory copy/set, or compute.

    Memcpy/memset events are memory; otherwise the first entry of ``kernel_classes.toml`` whose
    pattern is in ``name`` decides (a compute entry only for kernels). A kernel no entry matches
    is compute; any other unmatched event (no kernel category) is no GPU activity of its own.
    """
    if cat_code in (kf.CAT_MEMCPY, kf.CAT_MEMSET):
        return kf.KIND_MEMORY
    cls = kernel_classes.classify(name)
    kind = kf.KIND_COMPUTE if cls is None else _KIND_CODES[cls[0]]
    if kind == kf.KIND_COMPUTE and cat_code != kf.CAT_KERNEL:
        return kf.KIND_NONE
    return kind


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


def rank_of(
    source: str, meta: dict[str, Any], warnings: list[str], rank_pattern: re.Pattern[str] | None = None
) -> tuple[int, str]:
    """The trace's rank and where it came from: ``distributedInfo.rank``; else the first group of
    ``rank_pattern`` (``--rank-from``) in the file name; else ``rank<N>`` in the file name; else
    rank 0, as for a single-process trace (HTA reads such files as rank 0 too). Every fallback
    leaves a one-line note in ``warnings``."""
    info = meta.get("distributedInfo")
    if isinstance(info, dict):
        rank = _int_or(info.get("rank"), -1)
        if rank >= 0:
            return rank, "distributedInfo"
    name = Path(source).name
    if rank_pattern is not None:
        m = rank_pattern.search(name)
        rank = _int_or(m.group(1) if m.groups() else m.group(0), -1) if m is not None else -1
        if rank >= 0:
            warnings.append(f"{source}: no distributedInfo.rank; rank {rank} from --rank-from")
            return rank, "--rank-from"
    m = RANK_IN_NAME.search(name)
    if m is not None:
        warnings.append(f"{source}: no distributedInfo.rank; rank {m.group(1)} taken from the file name")
        return int(m.group(1)), "file name"
    warnings.append(
        f"{source}: no distributedInfo.rank and no rank in the file name: read as rank 0 (a single-process"
        " trace); give --rank-from REGEX to take ranks from file names"
    )
    return 0, RANK_ASSUMED


def _host_columns(
    source: str, events: list[Any], index: list[int], names: list[str], name_ids: dict[str, int]
) -> tuple[
    dict[str, Any], tuple[list[int], list[float], list[float]], tuple[list[float], list[float], list[bool]]
]:
    """The host ops as columns (names interned into ``names``), and the ``ProfilerStep#N`` and
    DataLoader spans among them. Ops without a string name or numeric times are left out; a
    ``ProfilerStep`` with non-numeric times is an error naming its event."""
    number = (float, int)
    keep = [
        i
        for i, e in enumerate(events)
        if e.name.__class__ is str and e.ts.__class__ in number and e.dur.__class__ in number
    ]
    if len(keep) < len(events):
        for i, e in enumerate(events):
            if (
                e.name.__class__ is str
                and e.name.startswith("ProfilerStep")
                and e.ts is not None
                and e.dur is not None
                and (e.ts.__class__ not in number or e.dur.__class__ not in number)
            ):
                raise InputError(
                    source, f"'ts'/'dur' must be numbers, got {e.ts!r}/{e.dur!r}", f"event {index[i]}"
                )
        events = [events[i] for i in keep]
    ids = []
    steps: tuple[list[int], list[float], list[float]] = ([], [], [])
    loader: tuple[list[float], list[float], list[bool]] = ([], [], [])
    for e in events:
        name = e.name
        nid = name_ids.get(name)
        if nid is None:
            nid = name_ids[name] = len(names)
            names.append(name)
        ids.append(nid)
        if name.startswith("ProfilerStep"):
            m = PROFILER_STEP.match(name)
            if m is not None:
                steps[0].append(int(m.group(1)))
                steps[1].append(e.ts)
                steps[2].append(e.dur)
        elif name.startswith(LOADER_PREFIX):
            loader[0].append(e.ts)
            loader[1].append(e.dur)
            loader[2].append("SingleProcess" in name)
    tids = [e.tid if e.tid.__class__ is int else _int_or(e.tid, -1) for e in events]
    columns = {
        "ts": np.array([e.ts for e in events], dtype=np.float64),
        "dur": np.array([e.dur for e in events], dtype=np.float64),
        "tid": np.array(tids, dtype=np.int64),
        "name": np.array(ids, dtype=np.int32),
        "annotation": np.array([e.cat == "user_annotation" for e in events], dtype=bool),
    }
    return columns, steps, loader


def world_size_of(meta: dict[str, Any]) -> int | None:
    """The job's world size as the trace states it: ``distributedInfo.world_size``, else the
    largest rank list of its process groups (``pg_config``); None when it says nothing."""
    info = meta.get("distributedInfo")
    if not isinstance(info, dict):
        return None
    size = _int_or(info.get("world_size"), -1)
    if size > 0:
        return size
    groups = info.get("pg_config")
    best = -1
    if isinstance(groups, list):
        for g in groups:
            ranks = g.get("ranks") if isinstance(g, dict) else None
            if isinstance(ranks, list) and ranks:
                best = max(best, max(_int_or(r, -1) for r in ranks) + 1)
    return best if best > 0 else None


#: Process-group descriptions (``pg_config[].pg_desc``, set from ``group_desc`` by the framework)
#: naming one axis of the parallel layout: Megatron-LM's ``parallel_state`` and PyTorch's
#: DeviceMesh (``mesh_<dim>``, as torchtitan names its dimensions). A rank's coordinate on the
#: axis is its index in that group's rank list (the groups list ranks in axis order).
LAYOUT_GROUPS: dict[str, str] = {
    "TENSOR_MODEL_PARALLEL_GROUP": "tp_rank",
    "PIPELINE_MODEL_PARALLEL_GROUP": "pp_rank",
    "DATA_PARALLEL_GROUP": "dp_rank",
    "CONTEXT_PARALLEL_GROUP": "cp_rank",
    "EXPERT_MODEL_PARALLEL_GROUP": "ep_rank",
    "mesh_tp": "tp_rank",
    "mesh_pp": "pp_rank",
    "mesh_dp": "dp_rank",
    "mesh_cp": "cp_rank",
    "mesh_ep": "ep_rank",
}


def layout_of(meta: dict[str, Any], rank: int) -> dict[str, int]:
    """The rank's coordinates in the job's parallel layout (``tp_rank``, ``pp_rank``, ...) from the
    named process groups in ``distributedInfo.pg_config`` that hold it; empty when the trace names
    none (PyTorch before 2.3 writes ``"undefined"``). A DeviceMesh with replicate and shard
    dimensions (HSDP: ``mesh_dp_replicate``, ``mesh_dp_shard``) and no ``mesh_dp`` gives
    ``dp_rank`` = replicate index × shard size + shard index."""
    info = meta.get("distributedInfo")
    groups = info.get("pg_config") if isinstance(info, dict) else None
    if not isinstance(groups, list):
        return {}
    found: dict[str, int] = {}
    hsdp: dict[str, tuple[int, int]] = {}
    for g in groups:
        if not isinstance(g, dict) or not isinstance(g.get("ranks"), list):
            continue
        ranks = [_int_or(r, -1) for r in g["ranks"]]
        if rank not in ranks:
            continue
        desc = str(g.get("pg_desc", ""))
        axis = LAYOUT_GROUPS.get(desc)
        if axis is not None:
            found.setdefault(axis, ranks.index(rank))
        elif desc in ("mesh_dp_replicate", "mesh_dp_shard"):
            hsdp[desc] = (ranks.index(rank), len(ranks))
    if "dp_rank" not in found and hsdp:
        rep, _ = hsdp.get("mesh_dp_replicate", (0, 1))
        shard, size = hsdp.get("mesh_dp_shard", (0, 1))
        found["dp_rank"] = rep * size + shard
    return found


def read_trace(path: str | Path, rank_pattern: re.Pattern[str] | None = None) -> kf.KinetoTrace:
    """Parse ``path`` in one streaming pass; raise InputError naming file and offset on bad input.
    ``rank_pattern`` maps a file name to its rank when the trace does not state one."""
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
    gs_step: list[int] = []
    gs_ts: list[float] = []
    gs_dur: list[float] = []
    h_events: list[Any] = []
    h_index: list[int] = []
    host_ops_cats = _HOST_OP_CATS
    launch_cats = _LAUNCH_CATS
    other_phase = 0
    host_events = 0
    gpu_cats = GPU_CATS
    annotation_cats = GPU_ANNOTATION_CATS
    host_only = _HOST_ONLY_CATS
    hta_rows: list[tuple[Any, ...]] = []  # --hta-compatible only: see hta_streams()
    index = -1
    for batch in stream.batches():
        for ev in batch:
            index += 1
            if ev.ph != "X":
                other_phase += 1
                continue
            cat = ev.cat
            hta_args = ev.args  # --hta-compatible only: events with args.stream, see hta_streams()
            if hta_args is not None and hta_args.stream is not None and cat not in gpu_cats:
                hta_rows.append((ev.ts, ev.dur, hta_args.stream, hta_args.correlation, ev.name, cat))
            if cat in host_only:
                # the bulk of a trace: host ops are only collected here (one append each) and
                # turned into columns after the loop, ProfilerStep#N and the DataLoader's spans
                # picked out of them there (per-op work in this loop doubled the read time)
                host_events += 1
                if cat in host_ops_cats:
                    h_events.append(ev)
                    h_index.append(index)
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
            if code is None and cat in annotation_cats and name.startswith("ProfilerStep"):
                m = PROFILER_STEP.match(name)
                if m is not None:  # the GPU-side copy of the step marker (recent PyTorch)
                    gs_step.append(int(m.group(1)))
                    gs_ts.append(ts)
                    gs_dur.append(dur)
            args = ev.args
            if args is None:
                corr, stream_id, device = -1, None, None
            else:
                corr, stream_id, device = args.correlation, args.stream, args.device
                if corr.__class__ is not int:
                    corr = _int_or(corr, -1)
            if code is None and (cat in launch_cats or (stream_id is None and cat not in annotation_cats)):
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
    host_ops, (s_step, s_ts, s_dur), (d_ts, d_dur, d_single) = _host_columns(
        source, h_events, h_index, names, name_ids
    )
    del h_events, h_index
    warnings: list[str] = []
    rank, rank_from = rank_of(source, stream.meta, warnings, rank_pattern)
    base = stream.meta.get("baseTimeNanoseconds")
    base_ns = _int_or(base, -1) if base is not None else -1
    order = np.argsort(np.asarray(s_ts, dtype=np.float64), kind="stable")
    g_order = np.argsort(np.asarray(gs_ts, dtype=np.float64), kind="stable")
    d_order = np.argsort(np.asarray(d_ts, dtype=np.float64), kind="stable")
    trace = kf.KinetoTrace(
        source=source,
        rank=rank,
        rank_from=rank_from,
        world_size=world_size_of(stream.meta),
        layout=layout_of(stream.meta, rank),
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
        gpu_steps={
            "step": np.asarray(gs_step, dtype=np.int64)[g_order],
            "ts": np.asarray(gs_ts, dtype=np.float64)[g_order],
            "dur": np.asarray(gs_dur, dtype=np.float64)[g_order],
        },
        loader={
            "ts": np.asarray(d_ts, dtype=np.float64)[d_order],
            "dur": np.asarray(d_dur, dtype=np.float64)[d_order],
            "single_process": np.asarray(d_single, dtype=bool)[d_order],
        },
        host_ops=host_ops,
        counts={
            "events": stream.events_seen,
            "gpu": len(g_ts),
            "launch": len(l_ts),
            "host": host_events,
            "not_complete": other_phase,
            "steps": len(s_ts),
            "gpu_steps": len(gs_ts),
            "loader_spans": len(d_ts),
            "host_ops": len(host_ops["ts"]),
        },
        warnings=warnings,
    )
    trace.hta_streams = hta_streams(hta_rows)
    if trace.cpu_only:
        trace.warnings.append(
            f"{source}: CPU-only trace (no kernel, memcpy or memset events): no GPU breakdown for"
            f" rank {rank}; profile with ProfilerActivity.CUDA"
        )
    for message in trace.warnings:
        log.warning("%s", message)
    return trace


# -- --hta-compatible only ------------------------------------------------------------------------
# HTA 0.6.1 takes an event's stream from ``args.stream`` alone and counts every event that has one
# as GPU activity (Triton's ``cpu_op``, MTIA's ``mtia_ccp_events``, HIP runtime calls, ``cuda_sync``);
# the tables above place events by category and fall back to ``tid``. This one table keeps HTA's
# view for :mod:`fmdiag.analyzers.frames.hta_compat`; nothing else reads it.


def hta_streams(rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Events other than kernel/memcpy/memset that carry ``args.stream``, as read by HTA: ``ts``,
    ``dur`` (float64), ``stream``, ``corr`` (int64; -1 when not a number), ``name``, ``cat``
    (lists of str). Rows of ``(ts, dur, stream, correlation, name, cat)``; untimed ones are left out."""
    ok = [r for r in rows if r[0].__class__ in (float, int) and r[1].__class__ in (float, int)]
    return {
        "ts": np.asarray([r[0] for r in ok], dtype=np.float64),
        "dur": np.asarray([r[1] for r in ok], dtype=np.float64),
        "stream": np.asarray([_int_or(r[2], -1) for r in ok], dtype=np.int64),
        "corr": np.asarray([_int_or(r[3], -1) for r in ok], dtype=np.int64),
        "name": [r[4] if isinstance(r[4], str) else "" if r[4] is None else str(r[4]) for r in ok],
        "cat": [str(r[5]) for r in ok],
    }
