"""PyTorch-profiler (Kineto) Chrome traces of simulated ranks, consistent with their step records.

Why so detailed: the peers (Holistic Trace Analysis, torch-tb-profiler) and fmdiag's own reader
must meet what a real H100 DDP/FSDP job writes, not a tidy abstraction of it. Per step:

- the main thread: ``ProfilerStep#N`` (spanning the step record), the dataloader's
  ``enumerate(DataLoader)#...``, the batch's ``Memcpy HtoD`` ending as forward begins,
  ``## forward ##`` > ``DistributedDataParallel.forward`` > nested ``aten::`` ops
  (``aten::linear`` > ``aten::matmul`` > ``aten::mm`` > ``cudaLaunchKernelExC``) per
  transformer block, ``## backward ##`` while the autograd thread works, the optimizer
  (``Optimizer.step#AdamW.step``), zero_grad's ``Memset``, then ``cudaStreamSynchronize`` until
  the GPU is done (a compute-bound job's CPU runs far ahead of its GPU);
- the autograd thread: ``autograd::engine::evaluate_function: *Backward0`` ops, each joined to
  its forward op by a ``fwdbwd`` flow (same ``Sequence number``), the DDP reducer's bucket
  ``Memcpy DtoD``;
- the GPU: compute kernels and memory ops that tile the forward, backward and optimizer phases
  of the step record exactly (first starts at the phase's start, last ends at its end, with
  the ~1 µs launch gaps of a saturated stream between them), ``gpu_user_annotation`` spans
  over them, and one NCCL kernel per collective of ``ClusterModel.collectives`` on the
  communication streams (20, and 21, ... when collectives overlap each other), concurrent
  with compute, each launched inside ``nccl:*`` > ``record_param_comms`` (Collective name,
  message sizes, Process Group Ranks, ...) after ``cudaEventRecord`` on the compute stream and
  ``cudaStreamWaitEvent`` on the NCCL stream; consumers wait back with
  ``cudaStreamWaitEvent`` (all-gathers right away, gradient reductions before the optimizer).

Every GPU event has its launching runtime call with the same ``correlation`` and an ``ac2g``
flow pair. The file is laid out as Kineto writes it (``"rank": N`` with the space, one key per
line group, ``ts``/``dur`` as ``µs.nnn`` relative to ``baseTimeNanoseconds``, the ``Trace`` span,
``Iteration Start`` and ``Record Window End`` framing, ``traceName`` last). The step after the
traced range is cut in its backward pass, as a profiler stopping mid-step leaves it. Bytes
depend only on the model, the seed and the options.
"""

from __future__ import annotations

import bisect
import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from fmdiag import dumpformat
from fmdiag.simulate.cluster import kineto_ops as ko
from fmdiag.simulate.cluster.kineto_ops import CBID, Kernel, Leaf, Op, json_safe, nccl_kernel_name
from fmdiag.simulate.cluster.model import EP_DESC, TP_DESC, Chunk, ClusterModel, Collective

COMPUTE_STREAM, COMM_STREAM = 7, 20
#: Tensor-parallel all-reduces run on their own communicator's stream.
TP_STREAM = 16
NCCL_NAMINGS = ("new", "old")
#: Transformer blocks drawn per step: full gives hundreds of kernels a step, compact a few dozen.
DETAIL_LAYERS = {"full": 4, "compact": 1}
#: Each detail's transformer block (forward, backward).
BLOCKS = {
    "full": (ko.LAYER_FORWARD, ko.LAYER_BACKWARD),
    "compact": (ko.COMPACT_LAYER_FORWARD, ko.COMPACT_LAYER_BACKWARD),
}
#: Offset of the autograd thread's id from the main thread's (= the process id).
_AUTOGRAD_TID_OFFSET = 113
_H2D_BYTES_PER_S = 25e9
#: Host cost (ns) of entering / leaving an op, of each runtime call, and of Python between ops.
_ENTER_NS, _EXIT_NS, _PY_NS = 1_800, 700, 6_000
_CALL_NS = {
    "cudaLaunchKernel": 4_200,
    "cudaLaunchKernelExC": 5_600,
    "cudaMemcpyAsync": 6_500,
    "cudaMemsetAsync": 4_800,
    "cudaEventRecord": 1_600,
    "cudaStreamWaitEvent": 1_300,
    "cudaStreamIsCapturing": 600,
    "cudaFuncSetAttribute": 1_100,
    "cudaDeviceGetAttribute": 400,
}
#: Launch gaps between back-to-back kernels on a busy stream: lognormal median (ns), sigma, and
#: the most of a phase they may take.
_GAP_MEDIAN_NS, _GAP_SIGMA, _GAP_MAX_SHARE = 1_300, 0.6, 0.004
#: Memory-bound kernels take at most this share of a phase (short --step-seconds runs).
_FIXED_MAX_SHARE = 0.3


@dataclass(frozen=True)
class KinetoOptions:
    ranks: tuple[int, ...]
    first_step: int = 0
    #: Steps traced whole: [first_step, last_step); the next one (if any) is cut mid-step.
    last_step: int | None = None
    #: NCCL kernel names of the whole job: ``new`` (ncclDevKernel_*, NCCL >= 2.19) or ``old``.
    nccl_naming: str = "new"
    #: ``full``: every block of the model's layers drawn (hundreds of kernels a step);
    #: ``compact``: one block, and back-to-back collectives of one kind drawn as one kernel.
    detail: str = "full"
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.nccl_naming not in NCCL_NAMINGS:
            raise ValueError(f"kineto nccl naming {self.nccl_naming!r}: expected new or old")
        if self.detail not in DETAIL_LAYERS:
            raise ValueError(f"kineto detail {self.detail!r}: expected one of {', '.join(DETAIL_LAYERS)}")


def _t(ns: int) -> str:
    """Kineto's time format: integer microseconds, a dot, three digits of nanoseconds."""
    return f"{ns // 1000}.{ns % 1000:03d}"


def _device_properties(model: ClusterModel) -> str:
    name = json_safe(model.hw.gpu_name)
    return ",".join(
        f"""
    {{
      "id": {i}, "name": "{name}", "totalGlobalMem": 85045870592,
      "computeMajor": 9, "computeMinor": 0,
      "maxThreadsPerBlock": 1024, "maxThreadsPerMultiprocessor": 2048,
      "regsPerBlock": 65536, "regsPerMultiprocessor": 65536, "warpSize": 32,
      "sharedMemPerBlock": 49152, "sharedMemPerMultiprocessor": 233472,
      "numSms": 132, "sharedMemPerBlockOptin": 232448
    }}"""
        for i in range(model.hw.gpus_per_node)
    )


def merge_contiguous(colls: Sequence[Collective]) -> list[Collective]:
    """Runs of same-kind collectives that follow each other without a gap, as one collective each.

    The compact detail draws these as one kernel: the communication time, its overlap with
    compute and the bytes moved stay exactly those of the run.
    """
    out: list[Collective] = []
    for c in colls:
        same = out and out[-1].kind == c.kind and out[-1].dtype == c.dtype and out[-1].pg_name == c.pg_name
        if same and out[-1].end_ns >= c.start_ns:
            p = out[-1]
            out[-1] = replace(
                p,
                end_ns=max(p.end_ns, c.end_ns),
                nbytes=p.nbytes + c.nbytes,
                in_nelems=p.in_nelems + c.in_nelems,
                out_nelems=p.out_nelems + c.out_nelems,
            )
        else:
            out.append(c)
    return out


def tile_kernels(
    p0: int, p1: int, kernels: Sequence[Kernel], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """GPU intervals for ``kernels`` run back to back from ``p0`` to exactly ``p1``.

    Memory-bound kernels get their nominal time (jittered, capped to a share of the phase),
    the others share the rest by weight, and small launch gaps separate consecutive kernels.
    Integer nanoseconds that add up exactly to the phase.
    """
    n = len(kernels)
    total = p1 - p0
    if n == 0:
        return []
    if total <= 0:
        return [(p0, p0)] * n
    gaps = np.zeros(n, np.int64)
    if n > 1:
        g = _GAP_MEDIAN_NS * np.exp(_GAP_SIGMA * rng.standard_normal(n - 1))
        g *= min(1.0, _GAP_MAX_SHARE * total / max(float(g.sum()), 1.0))
        gaps[1:] = g.astype(np.int64)
    avail = total - int(gaps.sum())
    weight = np.array([k.weight for k in kernels])
    fixed = np.array([k.fixed_us for k in kernels]) * 1000.0 * (1 + 0.03 * rng.standard_normal(n))
    fixed = np.where(weight > 0, 0.0, np.maximum(fixed, 500.0))
    if fixed.sum() > _FIXED_MAX_SHARE * avail or weight.sum() == 0:
        share = _FIXED_MAX_SHARE if weight.sum() > 0 else 1.0
        fixed *= share * avail / max(float(fixed.sum()), 1.0)
    rest = avail - float(fixed.sum())
    wsum = float(weight.sum())
    durs = fixed + (rest * weight / wsum if wsum > 0 else 0.0)
    d = np.floor(durs).astype(np.int64)
    # The remainder goes to the longest kernel, so the phase is filled to the nanosecond.
    d[int(np.argmax(d))] += avail - int(d.sum())
    starts = p0 + np.cumsum(gaps) + np.concatenate([[0], np.cumsum(d)[:-1]])
    return [(int(s), int(s + x)) for s, x in zip(starts, d, strict=True)]


def compute_segments(p0: int, p1: int, gates: Sequence[int]) -> list[tuple[int, int]]:
    """The compute stream's busy intervals in a phase of units gated by all-gathers.

    The model (:mod:`.overlap`) runs a phase's compute as ``len(gates)`` units of equal length
    (the last takes the remainder); unit k starts when the previous one ends and its gate (its
    parameters' all-gather, or the phase start) has passed. The phase ends with the last unit,
    so the total compute time is the one that reproduces ``p1``: found by bisection. Without
    gates (DDP, the optimizer) the phase is one interval.
    """
    if len(gates) <= 1 and (not gates or gates[0] <= p0):
        return [(p0, p1)]
    k = len(gates)

    def run(total: int) -> list[tuple[int, int]]:
        u = total // k
        out, free = [], p0
        for j, g in enumerate(gates):
            start = max(free, g)
            free = start + (total - u * (k - 1) if j == k - 1 else u)
            out.append((start, free))
        return out

    lo, hi = 0, max(p1 - p0, 0)
    while lo < hi:
        mid = (lo + hi) // 2
        if run(mid)[-1][1] < p1:
            lo = mid + 1
        else:
            hi = mid
    # The last unit's end moves by a nanosecond or so either way with the rounding of the
    # unit length: of the totals near the bisection's that end exactly at p1, take the largest.
    exact = [t for t in range(max(0, lo - 2 * k), lo + 2 * k + 1) if run(t)[-1][1] == p1]
    segs = run(exact[-1] if exact else lo)
    last0 = min(segs[-1][0], p1)
    segs[-1] = (last0, p1)  # to the nanosecond, whatever the rounding
    return [(a, min(b, p1)) for a, b in segs]


def unit_gates(colls: Sequence[Collective], f1: int, b1: int) -> tuple[list[int], list[int]]:
    """When each forward and backward compute unit may start, from the step's all-gathers.

    FSDP (:mod:`.overlap`): forward unit k waits for its parameters' all-gather, issued during
    forward; in backward the last unit still holds its parameters (it starts with backward at
    ``f1``) and each other unit waits for its all-gather, issued during backward. DDP issues no
    all-gather: one unit each.
    """
    fwd = sorted(c.end_ns for c in colls if c.kind == "all_gather" and c.start_ns < f1)
    bwd = sorted(c.end_ns for c in colls if c.kind == "all_gather" and f1 <= c.start_ns < b1)
    return fwd, [f1, *bwd]


def carve_tp(
    segs: Sequence[tuple[int, int]], tp_ns: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """A phase's compute segments with their tensor-parallel all-reduces cut off their ends.

    The model counts a phase's TP all-reduces (``tp_fwd_ns`` / ``tp_bwd_ns``) inside its units;
    each segment ends with its share of them, in proportion to its length (the last takes the
    remainder). Returns (compute intervals, all-reduce intervals), integer ns.
    """
    if tp_ns <= 0 or not segs:
        return list(segs), []
    total = max(sum(b - a for a, b in segs), 1)
    compute: list[tuple[int, int]] = []
    comm: list[tuple[int, int]] = []
    left = tp_ns
    for j, (a, b) in enumerate(segs):
        t = left if j == len(segs) - 1 else tp_ns * (b - a) // total
        t = min(t, b - a, left)
        left -= t
        compute.append((a, b - t))
        if t > 0:
            comm.append((b - t, b))
    return compute, comm


def phase_segments(
    model: ClusterModel, chunk: Chunk, index: int, rank: int, colls: Sequence[Collective], shift: int = 0
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """Forward compute, backward compute and tensor-parallel all-reduce intervals of a data-
    parallel rank's step (``shift`` added to the chunk ns, with ``colls`` already shifted)."""
    dw1, f1, b1 = (int(getattr(chunk, k)[index, rank]) + shift for k in ("dw_end", "fwd_end", "arrive"))
    gates_f, gates_b = unit_gates(colls, f1, b1)
    idle_f, idle_b = int(chunk.idle_fwd_ns[index, rank]), int(chunk.idle_bwd_ns[index, rank])
    # A tensor-parallel job's units end in their all-reduces, a mixture of experts' in their
    # all-to-alls (a job has one or the other).
    crit_f = int(chunk.tp_fwd_ns[index, rank] + chunk.a2a_fwd_ns[index, rank])
    crit_b = int(chunk.tp_bwd_ns[index, rank] + chunk.a2a_bwd_ns[index, rank])
    fwd, tp_f = carve_tp(compute_segments(dw1 + idle_f, f1, gates_f), crit_f)
    bwd, tp_b = carve_tp(compute_segments(f1 + idle_b, b1, gates_b), crit_b)
    return fwd, bwd, tp_f + tp_b


def tp_collectives(model: ClusterModel, rank: int, windows: Sequence[tuple[int, int]]) -> list[Collective]:
    """The rank's tensor-parallel all-reduces of activations, or expert-parallel all-to-alls of
    tokens, at ``windows`` (one per unit and phase), on its tensor- or expert-parallel group."""
    name, desc, ranks = model.tp_group(rank)
    wl = model.wl
    moe = desc == EP_DESC
    kind = "all_to_all" if moe else "all_reduce"
    elems = int(wl.a2a_bytes // 2) if moe else int(wl.samples_per_rank * wl.tokens_per_sample * model.hidden)
    return [
        Collective(
            kind, a, b, 2 * elems, elems, elems, len(ranks), pg_name=name, pg_desc=desc, group_ranks=ranks
        )
        for a, b in windows
    ]


def compute_windows(model: ClusterModel, chunk: Chunk, index: int, rank: int) -> list[tuple[int, int]]:
    """The intervals (chunk ns) a rank's compute stream is busy in a step, by the model.

    Forward, backward and optimizer, less the time FSDP units wait for their all-gathers: what
    the trace's compute kernels cover (but for the launch gaps and the memory copies between
    them), so a reader of the trace can be checked against the simulator's own numbers.
    """
    if model.plan is not None:
        # Imported here: the pipeline writer builds on this module's writer.
        from fmdiag.simulate.cluster.kineto_pipeline import pipeline_windows  # noqa: PLC0415

        return pipeline_windows(model, chunk, index, rank)[0]
    c1, o1 = int(chunk.coll_end[index, rank]), int(chunk.opt_end[index, rank])
    fwd, bwd, _ = phase_segments(model, chunk, index, rank, model.collectives(chunk, index, rank))
    return [*fwd, *bwd, (c1, o1)]


def comm_windows(model: ClusterModel, chunk: Chunk, index: int, rank: int) -> list[tuple[int, int]]:
    """The intervals (chunk ns) a rank's NCCL kernels run in a step: its collectives, and in a
    pipeline its receives and sends too (each as long as the wait for its peer)."""
    if model.plan is not None:
        from fmdiag.simulate.cluster.kineto_pipeline import pipeline_windows  # noqa: PLC0415

        return pipeline_windows(model, chunk, index, rank)[1]
    colls = model.collectives(chunk, index, rank)
    return [(c.start_ns, c.end_ns) for c in colls] + phase_segments(model, chunk, index, rank, colls)[2]


def tile_phase(
    segs: Sequence[tuple[int, int]], kernels: Sequence[Kernel], rng: np.random.Generator
) -> list[tuple[int, int]]:
    """GPU intervals for a phase's kernels: tiled over its compute segments, which they fill
    exactly; the kernels are split among the segments in order, at least one each."""
    if len(segs) == 1:
        return tile_kernels(segs[0][0], segs[0][1], kernels, rng)
    n = len(kernels)
    virtual = tile_kernels(0, sum(b - a for a, b in segs), kernels, rng)
    vstarts = [a for a, _ in virtual]
    out: list[tuple[int, int]] = []
    lo, acc = 0, 0
    for j, (a, b) in enumerate(segs):
        if j == len(segs) - 1:
            hi = n
        else:
            acc += b - a
            hi = bisect.bisect_left(vstarts, acc)
            hi = min(max(hi, lo + 1), n - (len(segs) - 1 - j))
        out.extend(tile_kernels(a, b, kernels[lo:hi], rng))
        lo = hi
    return out


@dataclass
class CpuEv:
    """A host event with times relative to the step's launch origin (scaled later)."""

    tid: int
    cat: str
    name: str
    t0: int
    t1: int = 0
    ext: int = 0
    meta: str = ""
    flow: tuple[str, int] | None = None  # fwdbwd ("s"|"f", id)
    seq: int = 0


@dataclass
class _Rt:
    """A runtime call; ``gpu`` indexes the GPU event it launches (-1: none)."""

    tid: int
    name: str
    t0: int
    t1: int
    ext: int
    corr: int
    gpu: int = -1


@dataclass
class _Gpu:
    """A GPU event (absolute ns); ``args`` is its CUPTI metadata after the correlation."""

    stream: int
    cat: str
    name: str
    g0: int
    g1: int
    ext: int
    corr: int
    args: str


#: Runtime and driver API calls a training step makes (what CUPTI's correlation counter advances).
CALLS_PER_STEP = 40_000


class RankWriter:
    """Builds one rank's events step by step; External ids and flows count from 1.

    Correlation ids are CUPTI's, which counts every runtime and driver call since CUDA started
    in the process: a window taken after ``first_step`` steps starts far from 1 (about
    ``CALLS_PER_STEP`` calls a step before it). Peers rely on that: HTA 0.6.1 stores
    correlation ids below 32,768 as int16 and then fails on traces of more events than that.
    """

    def __init__(self, model: ClusterModel, rank: int, opts: KinetoOptions, base: int) -> None:
        self.model, self.rank, self.opts, self.base = model, rank, opts, base
        _, local = model.topo.place(rank)
        self.local = local
        self.pid = model.topo.pid(local)
        self.autograd_tid = self.pid + _AUTOGRAD_TID_OFFSET
        self.layers = DETAIL_LAYERS[opts.detail]
        self.ext = 0
        self.corr = CALLS_PER_STEP * (opts.first_step + 1)
        self.seq = 0
        self.flow_id = 0
        self.ev_idx = 0
        self.out: list[str] = []
        self.streams: set[int] = {COMPUTE_STREAM}
        world = model.hw.world_size
        self.world = world
        self.group_ranks = "[" + ", ".join(str(r) for r in range(world)) + "]"
        self.last_ns = base
        # Per-step state (reset by step()): the host clock relative to the step's launch origin,
        # the host events, runtime calls and GPU events, the step's random draws.
        self.clock = 0
        self.cpu: list[CpuEv] = []
        self.rts: list[_Rt] = []
        self.gpu: list[_Gpu] = []
        self.gann: list[tuple[int, str, int, int, int]] = []
        self.reduce_waits: list[int] = []
        self.rng = np.random.default_rng(0)
        self.copy_bytes = 0

    # --- per-step construction (relative host clock) ---------------------------------------

    def _begin(self, tid: int, cat: str, name: str, meta: str = "") -> CpuEv:
        self.ext += 1
        self.ev_idx += 1
        ev = CpuEv(tid, cat, name, self.clock + _ENTER_NS // 2, ext=self.ext, meta=meta)
        self.cpu.append(ev)
        self.clock += _ENTER_NS
        return ev

    def _end(self, ev: CpuEv) -> None:
        self.clock += _EXIT_NS
        ev.t1 = self.clock

    def _rec_meta(self, extra: str = "") -> str:
        return f',"Record function id": 0{extra}, "Ev Idx": {self.ev_idx}'

    def _runtime(self, tid: int, call: str, ext: int, gpu: _Gpu | None = None) -> None:
        self.corr += 1
        t0 = self.clock + 300
        self.clock = t0 + _CALL_NS[call]
        idx = -1
        if gpu is not None:
            gpu.ext, gpu.corr = ext, self.corr
            self.gpu.append(gpu)
            idx = len(self.gpu) - 1
        self.rts.append(_Rt(tid, call, t0, self.clock, ext, self.corr, idx))

    def _leaf(self, tid: int, leaf: Leaf, parent_ext: int, timing: Iterable[tuple[int, int]]) -> None:
        opened = [self._begin(tid, "cpu_op", name, self._rec_meta()) for name in leaf.path]
        k = leaf.kernel
        if k is not None:
            g0, g1 = next(iter(timing))
            ext = opened[-1].ext if opened else parent_ext
            if k.pre is not None:
                self._runtime(tid, k.pre, ext)
            args = self._gpu_args(k, g1 - g0)
            self._runtime(tid, k.launch, ext, _Gpu(COMPUTE_STREAM, k.cat, k.name, g0, g1, 0, 0, args))
        for ev in reversed(opened):
            self._end(ev)

    def _gpu_args(self, k: Kernel, dur_ns: int) -> str:
        if k.cat == "kernel":
            regs, smem, bps, wps, grid, block, occ = k.shape
            return (
                f'"registers per thread": {regs},\n      "shared memory": {smem},\n'
                f'      "blocks per SM": {bps:.6f},\n      "warps per SM": {wps:.6f},\n'
                f'      "grid": [{grid}, 1, 1],\n      "block": [{block}, 1, 1],\n'
                f'      "est. achieved occupancy %": {occ}'
            )
        nbytes = self.copy_bytes if k is ko.H2D else int(1.6e12 * max(dur_ns, 1) / 1e9)
        bw = nbytes / max(dur_ns, 1)
        return f'"bytes": {nbytes}, "memory bandwidth (GB/s)": {bw:.6f}'

    def _op(
        self, tid: int, op: Op, timing: Iterable[tuple[int, int]], block: dict[str, list[CpuEv]]
    ) -> CpuEv:
        """One top-level op, its nested ops and launches; links forward and backward by ``fwdbwd``."""
        self.clock += _PY_NS + int(self.rng.integers(0, 4_000))
        meta = ""
        flow: tuple[str, int] | None = None
        if op.autograd:
            self.seq += 1
            meta = f', "Sequence number": {self.seq}, "Fwd thread id": 0'
        elif op.twin is not None:
            twins = block.get(op.twin)
            if twins:
                fwd = twins.pop()
                self.flow_id += 1
                fwd.flow = ("s", self.flow_id)
                flow = ("f", self.flow_id)
                meta = f', "Sequence number": {fwd.seq}, "Fwd thread id": 1'
        ev = self._begin(tid, "cpu_op", op.name, self._rec_meta(meta))
        ev.flow = flow
        if op.autograd:
            ev.seq = self.seq
            block.setdefault(op.name, []).append(ev)
        it = iter(timing)
        for leaf in op.leaves:
            self._leaf(tid, leaf, ev.ext, it)
        self._end(ev)
        return ev

    def _collective(self, tid: int, c: Collective, stream: int) -> int:
        """``nccl:*`` > ``record_param_comms`` and its runtime calls; returns the op's External id."""
        coll_name, title = ko.COLLECTIVE_NAMES[c.kind]
        ranks = (
            self.group_ranks if not c.group_ranks else "[" + ", ".join(str(r) for r in c.group_ranks) + "]"
        )
        first = c.group_ranks[0] if c.group_ranks else 0
        stride = c.group_ranks[1] - c.group_ranks[0] if len(c.group_ranks) > 1 else 1
        group = (
            f'"Process Group Name": "{c.pg_name}", "Process Group Description": "{json_safe(c.pg_desc)}", '
            f'"Process Group Ranks": "{ranks}"'
        )
        self.clock += _PY_NS
        ann = self._begin(tid, "user_annotation", title, self._rec_meta())
        info = (
            f'"Collective name": "{coll_name}", "dtype": "{c.dtype}", "In msg nelems": {c.in_nelems}, '
            f'"Out msg nelems": {c.out_nelems}, "In split size": "[]", "Out split size": "[]", '
            f'"Global rank start": {first}, "Global rank stride": {stride}, "Group size": {c.group_size}, '
            + group
        )
        rpc = self._begin(
            tid, "cpu_op", "record_param_comms", self._rec_meta(", " + info + f', "Rank": {self.rank}')
        )
        full = self.opts.detail == "full"
        if full:
            self._runtime(tid, "cudaStreamIsCapturing", rpc.ext)
        self._runtime(tid, "cudaEventRecord", rpc.ext)  # on the compute stream: the inputs are ready
        self._runtime(tid, "cudaStreamWaitEvent", rpc.ext)  # the NCCL stream waits for it
        name = nccl_kernel_name(self.opts.nccl_naming, c.kind, c.dtype, c.nbytes)
        args = (
            '"registers per thread": 96,\n      "shared memory": 0,\n'
            '      "blocks per SM": 0.121212,\n      "warps per SM": 2.060606,\n'
            '      "grid": [16, 1, 1],\n      "block": [544, 1, 1],\n'
            '      "est. achieved occupancy %": 3, '
            f'"Collective name": "{coll_name}", "In msg nelems": {c.in_nelems}, '
            f'"Out msg nelems": {c.out_nelems}, "Group size": {c.group_size}, "dtype": "{c.dtype}", '
            '"In split size": "[]", "Out split size": "[]", ' + group
        )
        gpu = _Gpu(stream, "kernel", name, c.start_ns, c.end_ns, 0, 0, args)
        self._runtime(tid, "cudaLaunchKernelExC", rpc.ext, gpu)
        if full:
            self._runtime(tid, "cudaEventRecord", rpc.ext)  # on the NCCL stream: the work's end
        self._end(rpc)
        self._end(ann)
        self.gann.append((stream, title, c.start_ns, c.end_ns, ann.ext))
        self.streams.add(stream)
        return rpc.ext

    def step(self, chunk: Chunk, i: int, start_ns: int, cut: int | None) -> None:
        model, opts = self.model, self.opts
        r = self.rank
        s0, dw1, f1, b1, c1, o1, e1 = (
            int(getattr(chunk, k)[i, r]) + start_ns
            for k in ("start", "dw_end", "fwd_end", "arrive", "coll_end", "opt_end", "end")
        )
        step_no = int(chunk.steps[i])
        self.rng = np.random.default_rng([model.seed, 0x4B1E70, r, step_no])
        colls = [
            replace(c, start_ns=c.start_ns + start_ns, end_ns=c.end_ns + start_ns)
            for c in model.collectives(chunk, i, r)
        ]
        wl = model.wl
        dp_colls = list(colls)
        gates_f, gates_b = unit_gates(colls, f1, b1)
        if opts.detail == "compact":
            colls = merge_contiguous(colls)  # drawn merged; the units still wait for each gather
        layer_f, layer_b = BLOCKS[opts.detail]
        # Enough blocks that every FSDP unit's compute gets at least one kernel.
        units = max(len(gates_f), len(gates_b) - 1)
        per_block = sum(1 for op in layer_f for lf in op.leaves if lf.kernel is not None)
        L = max(self.layers, -(-units // per_block))
        fwd_ops = list(ko.HEAD_FORWARD) + list(layer_f) * L + list(ko.TAIL_FORWARD)
        bwd_ops = list(ko.TAIL_BACKWARD) + list(layer_b) * L + list(ko.HEAD_BACKWARD)
        opt_ops = ([*ko.CLIP] if opts.detail == "full" else []) + [ko.ADAMW, ko.ZERO_GRAD]

        def kernels(ops: Sequence[Op]) -> list[Kernel]:
            return [lf.kernel for op in ops for lf in op.leaves if lf.kernel is not None]

        # GPU intervals: the batch copy ends as forward begins; each phase tiled exactly.
        dw = dw1 - s0
        self.copy_bytes = wl.samples_per_rank * wl.sample_bytes
        copy = max(min(int(self.copy_bytes / _H2D_BYTES_PER_S * 1e9), (dw - 40_000) // 2), 1_000)
        # A rank that waited for its host (late launches, a GC pause) starts its kernels late; each
        # unit of a tensor-parallel job ends in its all-reduce of activations.
        seg_f, seg_b, tp_windows = phase_segments(model, chunk, i, r, dp_colls, start_ns)
        t_fwd = tile_phase(seg_f, kernels(fwd_ops), self.rng)
        t_bwd = tile_phase(seg_b, kernels([ko.SEED_GRAD, *bwd_ops]), self.rng)
        colls += tp_collectives(model, r, tp_windows)
        t_opt = tile_kernels(c1, o1, kernels(opt_ops), self.rng)

        # Streams: a collective takes the first communication stream free when it starts.
        free: dict[int, int] = {}
        placed: list[tuple[Collective, int]] = []
        for c in colls:
            if c.pg_desc in (TP_DESC, EP_DESC):  # one after another on the critical path, on their own stream
                placed.append((c, TP_STREAM))
                continue
            stream = next((s for s in sorted(free) if free[s] <= c.start_ns), COMM_STREAM + len(free))
            free[stream] = c.end_ns
            placed.append((c, stream))
        # Each collective is launched by the thread running the phase its kernel starts in,
        # right after the last op whose first kernel starts no later than it.
        segs: dict[str, list[tuple[int, Collective, int]]] = {"fwd": [], "bwd": [], "opt": []}
        starts = {
            "fwd": [t[0] for t in t_fwd],
            "bwd": [t[0] for t in t_bwd[1:]],  # the autograd thread's kernels (after the seed)
            "opt": [t[0] for t in t_opt],
        }
        for c, stream in placed:
            seg = "fwd" if c.start_ns < f1 else ("bwd" if c.start_ns < c1 else "opt")
            segs[seg].append((bisect.bisect_right(starts[seg], c.start_ns), c, stream))

        self.cpu, self.rts, self.gpu, self.gann, self.reduce_waits = [], [], [], [], []
        self.clock = 0
        main, ag = self.pid, self.autograd_tid
        nh, nl, nt = len(ko.HEAD_FORWARD), len(layer_f), len(ko.TAIL_BACKWARD)
        fwd_blocks = [0, *(nh + nl * b for b in range(L + 1))]
        bwd_blocks = [0, *(nt + len(layer_b) * b for b in range(L + 1))]
        # Forward, on the main thread: the batch copy first, then the model.
        fwd_ann = self._begin(main, "user_annotation", "## forward ##", self._rec_meta())
        self._op(main, ko.BATCH_COPY, [(dw1 - copy, dw1)], {})
        ddp = self._begin(main, "user_annotation", "DistributedDataParallel.forward", self._rec_meta())
        fwd_records = self._run_blocks(main, fwd_ops, t_fwd, segs["fwd"], fwd_blocks, pairs=None)
        self._end(ddp)
        self._end(fwd_ann)
        # Backward: the main thread seeds the gradient and waits; the autograd thread runs it,
        # and at its end (DDP's finalize) the compute stream waits for the gradient reductions.
        bwd_ann = self._begin(main, "user_annotation", "## backward ##", self._rec_meta())
        self._op(main, ko.SEED_GRAD, t_bwd[:1], {})
        self._run_blocks(ag, bwd_ops, t_bwd[1:], segs["bwd"], bwd_blocks, pairs=fwd_records)
        for _ in self.reduce_waits:
            self._runtime(ag, "cudaStreamWaitEvent", 0)
        self.reduce_waits = []
        self._end(bwd_ann)
        # Optimizer on the main thread, then zero_grad's memset.
        opt_ann = self._begin(main, "user_annotation", "Optimizer.step#AdamW.step", self._rec_meta())
        self._run_blocks(main, opt_ops[:-1], t_opt[:-1], segs["opt"], [0], pairs=None)
        for _ in self.reduce_waits:
            self._runtime(main, "cudaStreamWaitEvent", 0)
        self._end(opt_ann)
        zero_ann = self._begin(
            main, "user_annotation", "Optimizer.zero_grad#AdamW.zero_grad", self._rec_meta()
        )
        self._op(main, ko.ZERO_GRAD, t_opt[-1:], {})
        self._end(zero_ann)

        # The host starts launching 20 µs before the first GPU work of the step (the batch
        # copy, or an earlier collective); its clock is compressed, if need be, so every launch
        # ends before its GPU work starts (the CPU of a compute-bound job runs ahead).
        first_gpu = min([dw1 - copy, *(c.start_ns for c in colls)])
        t0 = max(s0 + 2_000, first_gpu - 20_000)
        f = 1.0
        for rt in self.rts:
            if rt.gpu >= 0:
                room = self.gpu[rt.gpu].g0 - t0
                if room < rt.t1 * f:
                    f = max(room, 1) / rt.t1
        self._emit_step(step_no, s0, t0, f, o1, e1, cut, fwd_ann, bwd_ann, opt_ann, ddp, t_fwd, t_bwd, t_opt)

    def _run_blocks(
        self,
        tid: int,
        ops: Sequence[Op],
        timing: Sequence[tuple[int, int]],
        pending_in: list[tuple[int, Collective, int]],
        blocks: list[int],
        *,
        pairs: list[dict[str, list[CpuEv]]] | None,
    ) -> list[dict[str, list[CpuEv]]]:
        """``ops`` in order on thread ``tid``, with the segment's collectives launched in between.

        ``blocks`` are the op indices where a model block (head, transformer layer, tail) begins.
        Forward runs (``pairs`` None) return each block's autograd ops by name; a backward run
        pops each op's twin from the matching forward block (backward runs the blocks last to
        first), so ``fwdbwd`` flows join an op to its own layer's forward op.
        """
        pending = sorted(pending_in, key=lambda x: (x[0], x[1].start_ns))
        recorded: list[dict[str, list[CpuEv]]] = []
        block: dict[str, list[CpuEv]] = {}
        starts = {j: b for b, j in enumerate(blocks)}
        k = 0
        for j, op in enumerate(ops):
            b = starts.get(j)
            if b is not None:
                if pairs is None:
                    block = {}
                    recorded.append(block)
                else:
                    block = pairs[len(pairs) - 1 - b] if b < len(pairs) else {}
            nk = sum(1 for lf in op.leaves if lf.kernel is not None)
            while pending and pending[0][0] <= k:
                self._launch_collective(tid, pending.pop(0))
            self._op(tid, op, timing[k : k + nk], block)
            k += nk
        while pending:
            self._launch_collective(tid, pending.pop(0))
        return recorded

    def _launch_collective(self, tid: int, item: tuple[int, Collective, int]) -> None:
        """A collective's launch; an all-gather's consumer (the next block) waits for it at once,
        a gradient reduction's (the optimizer) at the end of backward."""
        _, c, stream = item
        ext = self._collective(tid, c, stream)
        if c.kind == "all_gather" or c.pg_desc in (TP_DESC, EP_DESC):
            self._runtime(tid, "cudaStreamWaitEvent", 0)
        else:
            self.reduce_waits.append(ext)

    # --- formatting -------------------------------------------------------------------------

    def _emit_step(
        self,
        step_no: int,
        s0: int,
        t0: int,
        f: float,
        o1: int,
        e1: int,
        cut: int | None,
        fwd_ann: CpuEv,
        bwd_ann: CpuEv,
        opt_ann: CpuEv,
        ddp: CpuEv,
        t_fwd: list[tuple[int, int]],
        t_bwd: list[tuple[int, int]],
        t_opt: list[tuple[int, int]],
    ) -> None:
        out, base, pid = self.out, self.base, self.pid

        def ab(rel: int) -> int:
            return t0 + int(rel * f)

        def keep(end: int) -> bool:
            return cut is None or end <= cut

        def x_event(cat: str, name: str, p: int | str, tid: int | str, a: int, b: int, args: str) -> None:
            out.append(
                f'\n  {{\n    "ph": "X", "cat": "{cat}", "name": "{name}", "pid": {p}, "tid": {tid},\n'
                f'    "ts": {_t(a - base)}, "dur": {_t(b - a)},\n    "args": {{\n      {args}\n    }}\n  }}'
            )

        def flow(ph: str, fid: int, p: int, tid: int, a: int, cat: str) -> None:
            bp = ', "bp": "e"' if ph == "f" else ""
            out.append(
                f'\n  {{\n    "ph": "{ph}", "id": {fid}, "pid": {p}, "tid": {tid}, "ts": {_t(a - base)},\n'
                f'    "cat": "{cat}", "name": "{cat}"{bp}\n  }}'
            )

        self.ext += 1
        step_ext = self.ext
        end = e1 if cut is None else cut
        x_event(
            "user_annotation",
            f"ProfilerStep#{step_no}",
            pid,
            pid,
            s0,
            end,
            f'"External id": {step_ext},"Record function id": 0, "Ev Idx": {self.ev_idx}',
        )
        self.ext += 1
        self.ev_idx += 1
        t_dl = max(t0 - 3_000, s0 + 1_000)
        if keep(t_dl):
            x_event(
                "user_annotation",
                "enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__",
                pid,
                pid,
                s0 + 500,
                t_dl,
                f'"External id": {self.ext},"Record function id": 0, "Ev Idx": {self.ev_idx}',
            )
        # Forward-backward flows need both ends kept.
        kept_flow: dict[int, int] = {}
        for ev in self.cpu:
            if ev.flow is not None and keep(ab(ev.t1)):
                kept_flow[ev.flow[1]] = kept_flow.get(ev.flow[1], 0) + 1
        for ev in self.cpu:
            a, b = ab(ev.t0), ab(ev.t1)
            if not keep(b):
                continue
            x_event(ev.cat, ev.name, pid, ev.tid, a, b, f'"External id": {ev.ext}{ev.meta}')
            if ev.flow is not None and kept_flow.get(ev.flow[1]) == 2:
                flow(ev.flow[0], ev.flow[1], pid, ev.tid, a, "fwdbwd")
        gpu_kept = [False] * len(self.gpu)
        for rt in self.rts:
            a, b = ab(rt.t0), ab(rt.t1)
            if not keep(b):
                continue
            g = self.gpu[rt.gpu] if rt.gpu >= 0 else None
            if g is not None and not keep(g.g1):
                continue
            # Kineto writes no External id for a call made outside any op.
            ext_arg = f'"External id": {rt.ext},' if rt.ext else ""
            x_event(
                "cuda_runtime", rt.name, pid, rt.tid, a, b,
                f'{ext_arg}"cbid": {CBID[rt.name]}, "correlation": {rt.corr}',
            )  # fmt: skip
            if g is not None:
                gpu_kept[rt.gpu] = True
                flow("s", rt.corr, pid, rt.tid, a, "ac2g")
        # The host blocks until the GPU is done (loss.item()), then checkpoints on checkpoint steps.
        sync0 = ab(max((rt.t1 for rt in self.rts), default=0)) + 2_000
        self.corr += 1
        if keep(o1) and sync0 < o1:
            sync_args = f'"cbid": {CBID["cudaStreamSynchronize"]}, "correlation": {self.corr}'
            x_event(
                "cuda_runtime", "cudaStreamSynchronize", pid, pid, sync0, o1,
                f'"External id": {step_ext},{sync_args}',
            )  # fmt: skip
        if e1 > o1 and keep(e1):
            self.ext += 1
            x_event(
                "cpu_op", "torch.distributed.checkpoint.save", pid, pid, o1, e1,
                f'"External id": {self.ext},"Record function id": 0, "Ev Idx": {self.ev_idx}',
            )  # fmt: skip
        dev = self.local
        for idx, g in enumerate(self.gpu):
            if not gpu_kept[idx]:
                continue
            x_event(
                g.cat, g.name, dev, g.stream, g.g0, g.g1,
                f'"External id": {g.ext},\n      "queued": 0, "device": {dev}, "context": 1,\n'
                f'      "stream": {g.stream}, "correlation": {g.corr},\n      {g.args}'
                if g.cat == "kernel"
                else f'"External id": {g.ext},\n      "device": {dev}, "context": 1,\n'
                f'      "stream": {g.stream}, "correlation": {g.corr},\n      {g.args}',
            )  # fmt: skip
            flow("f", g.corr, dev, g.stream, g.g0, "ac2g")
        # GPU user annotations span the kernels their host annotation launched (Kineto widens
        # them by a nanosecond each side so they enclose the kernels in viewers).
        spans = [
            (COMPUTE_STREAM, ddp.name, t_fwd, ddp.ext),
            (COMPUTE_STREAM, bwd_ann.name, t_bwd, bwd_ann.ext),
            (COMPUTE_STREAM, opt_ann.name, t_opt[:-1], opt_ann.ext),
        ]
        for stream, name, ts, ext in spans:
            if ts and keep(ts[-1][1]):
                x_event(
                    "gpu_user_annotation",
                    name,
                    dev,
                    stream,
                    ts[0][0] - 1,
                    ts[-1][1] + 1,
                    f'"External id": {ext}',
                )
        for stream, name, a, b, ext in self.gann:
            if keep(b):
                x_event("gpu_user_annotation", name, dev, stream, a - 1, b + 1, f'"External id": {ext}')
        self.last_ns = max(self.last_ns, end)


def rank_trace_text(model: ClusterModel, chunk: Chunk, rank: int, start_ns: int, opts: KinetoOptions) -> str:
    """The Kineto document for one rank, as the text PyTorch's profiler writes."""
    first = max(0, opts.first_step - int(chunk.steps[0]))
    last = chunk.nsteps if opts.last_step is None else min(chunk.nsteps, opts.last_step - int(chunk.steps[0]))
    if last <= first:
        raise ValueError(f"kineto steps {opts.first_step}:{opts.last_step} select no simulated step")
    node, local = model.topo.place(rank)
    host = model.topo.hostnames[node]
    base = int(chunk.start[first, rank]) + start_ns - 1_000_000
    if model.plan is not None:
        # Imported here: the pipeline writer builds on this module's writer.
        from fmdiag.simulate.cluster.kineto_pipeline import PipelineRankWriter  # noqa: PLC0415

        w: RankWriter = PipelineRankWriter(model, rank, opts, base)
    else:
        w = RankWriter(model, rank, opts, base)
    stop = min(last + 1, chunk.nsteps)
    for i in range(first, stop):
        f1, b1 = int(chunk.fwd_end[i, rank]) + start_ns, int(chunk.arrive[i, rank]) + start_ns
        # The profiler stops in the middle of the step after the traced range.
        cut = f1 + (b1 - f1) // 2 if i == last else None
        w.step(chunk, i, start_ns, cut)
    world = model.hw.world_size
    groups = [("0", "default_pg", tuple(range(world))), *model.process_groups(rank)]
    dist = json.dumps(
        {
            "backend": "nccl",
            "rank": rank,
            "world_size": world,
            "pg_count": len(groups),
            "pg_config": [
                {
                    "pg_name": name,
                    "pg_desc": desc,
                    "backend_config": "cuda:nccl",
                    "pg_size": len(ranks),
                    "ranks": list(ranks),
                }
                for name, desc, ranks in groups
            ],
            "nccl_version": ko.NCCL_VERSIONS[opts.nccl_naming],
        }
    )
    pid = w.pid
    begin = _t(1_000_000 - 500_000)
    span_end = w.last_ns - base
    trace_id = json_safe(f"{host}_{pid}")
    meta = [
        _meta("process_name", pid, 0, begin, '"name": "python3"'),
        _meta("process_labels", pid, 0, begin, '"labels": "CPU"'),
        _meta("process_sort_index", pid, 0, begin, f'"sort_index": {pid}'),
        _meta("process_name", local, 0, begin, f'"name": "GPU {local}"'),
        _meta("process_labels", local, 0, begin, f'"labels": "GPU {local}"'),
        _meta("process_sort_index", local, 0, begin, f'"sort_index": {5000000 + local}'),
        _meta("thread_name", pid, pid, begin, f'"name": "thread {pid} (python3)"'),
        _meta("thread_sort_index", pid, pid, begin, f'"sort_index": {pid}'),
        _meta(
            "thread_name", pid, w.autograd_tid, begin, f'"name": "thread {w.autograd_tid} (pt_autograd_0)"'
        ),
        _meta("thread_sort_index", pid, w.autograd_tid, begin, f'"sort_index": {w.autograd_tid}'),
    ]
    for s in sorted(w.streams):
        meta.append(_meta("thread_name", local, s, begin, f'"name": "stream {s}"'))
        meta.append(_meta("thread_sort_index", local, s, begin, f'"sort_index": {s}'))
    meta.append(
        f'\n  {{\n    "ph": "X", "cat": "Trace", "ts": {begin}, "dur": {_t(span_end - 500_000)},\n'
        f'    "pid": "Spans", "tid": "PyTorch Profiler",\n    "name": "PyTorch Profiler (0)",\n'
        f'    "args": {{\n      "Op count": 0\n    }}\n  }},\n  {{\n'
        f'    "name": "process_sort_index", "ph": "M", "ts": {begin},\n    "pid": "Spans", "tid": 0,\n'
        f'    "args": {{\n      "sort_index": 536870912\n    }}\n  }},\n  {{\n'
        f'    "name": "Iteration Start: PyTorch Profiler", "ph": "i", "s": "g",\n'
        f'    "pid": "Traces", "tid": "Trace PyTorch Profiler", "ts": {begin}\n  }}'
    )
    header = (
        f'{{\n  "schemaVersion": 1,\n  "deviceProperties": [{_device_properties(model)}\n  ],'
        f'\n  "cupti_version": 22,\n  "cuda_runtime_version": 12040,\n  "cuda_driver_version": 12040,'
        f'\n  "trace_id": "{trace_id}",\n  "distributedInfo": {dist},'
        f'\n  "displayTimeUnit": "ms",\n  "baseTimeNanoseconds": {base},\n  "traceEvents": ['
    )
    name = dumpformat.kineto_file_name(rank, gzip=opts.gzip)
    tail = (
        f'\n  {{\n    "name": "Record Window End", "ph": "i", "s": "g",\n    "pid": "", "tid": "", '
        f'"ts": {_t(span_end + 1_000)}\n  }}\n  ],\n  "traceName": "kineto/{name}"\n}}\n'
    )
    return header + ",".join(meta + w.out) + "," + tail


def _meta(kind: str, pid: int, tid: int, ts: str, args: str) -> str:
    return (
        f'\n  {{\n    "name": "{kind}", "ph": "M", "ts": {ts}, "pid": {pid}, "tid": {tid},\n'
        f'    "args": {{\n      {args}\n    }}\n  }}'
    )


def rank_trace(
    model: ClusterModel, chunk: Chunk, rank: int, start_ns: int, opts: KinetoOptions
) -> dict[str, Any]:
    """The Kineto document for one rank, parsed (for callers that want the events)."""
    doc = json.loads(rank_trace_text(model, chunk, rank, start_ns, opts))
    assert isinstance(doc, dict)
    return doc


def write_kineto(
    out: Path, model: ClusterModel, chunk: Chunk, start_ns: int, opts: KinetoOptions
) -> list[Path]:
    """One trace file per requested rank: ``rank<r>.json`` or ``rank<r>.json.gz``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank in opts.ranks:
        if not 0 <= rank < model.hw.world_size:
            raise ValueError(f"kineto rank {rank} is outside the job's ranks 0..{model.hw.world_size - 1}")
        data = rank_trace_text(model, chunk, rank, start_ns, opts).encode()
        path = out / dumpformat.kineto_file_name(rank, gzip=opts.gzip)
        if opts.gzip:
            # mtime=0 and no file name in the header: the same trace gives the same bytes.
            path.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
        else:
            path.write_bytes(data)
        paths.append(path)
    return paths


def parse_ranks(text: str, world_size: int) -> tuple[int, ...]:
    """``"0,5"``, ``"0-3,8"`` or ``"all"`` as sorted rank numbers."""
    if text.strip() == "all":
        return tuple(range(world_size))
    ranks: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                ranks.update(range(lo, hi + 1))
            else:
                ranks.add(int(part))
        except ValueError:
            raise ValueError(f"--kineto {text!r}: {part!r} is not a rank, a range a-b or 'all'") from None
    bad = sorted(r for r in ranks if not 0 <= r < world_size)
    if bad:
        raise ValueError(f"--kineto {text!r}: rank(s) {bad} outside 0..{world_size - 1}")
    if not ranks:
        raise ValueError(f"--kineto {text!r}: no rank given")
    return tuple(sorted(ranks))
