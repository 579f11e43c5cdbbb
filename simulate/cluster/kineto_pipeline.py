"""Kineto traces of pipeline-parallel ranks: the step's 1F1B schedule as a real profiler records it.

Why a writer of its own: in a pipeline, forward and backward interleave micro-batch by
micro-batch, and between them a rank waits in NCCL receives for its neighbour stages, so the
one-forward-one-backward shape of :class:`~.kineto.RankWriter` does not apply. Per step, from
the schedule the model ran (:meth:`~.model.ClusterModel.pipeline`, the same numbers as the step
records):

- per micro-batch op: the receive (``nccl:recv`` > ``record_param_comms`` launching
  ``ncclDevKernel_SendRecv`` / ``ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t`` on a p2p stream,
  from when the rank posted it until the neighbour's data arrived: mostly waiting), the
  micro-batch's compute kernels tiled exactly over its interval (forward on the main thread,
  backward on the autograd thread, joined by ``fwdbwd`` flows; the first stage adds the
  embedding, the last the output head and loss), then the send of its result, whose kernel runs
  until the neighbour has posted its receive and the transfer is done;
- after the flush, the stage's gradient all-reduce (its data-parallel process group) and the
  gradient norm's (its pipeline's group), then the optimizer.

Every kernel has its launching runtime call and correlation id, as in the data-parallel writer,
whose formatting this reuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from fmdiag.simulate.cluster import kineto_ops as ko
from fmdiag.simulate.cluster.kineto import (
    BLOCKS,
    COMM_STREAM,
    COMPUTE_STREAM,
    CpuEv,
    RankWriter,
    tile_kernels,
)
from fmdiag.simulate.cluster.kineto_ops import Kernel, Op
from fmdiag.simulate.cluster.model import Chunk, ClusterModel, Collective
from fmdiag.simulate.cluster.pipeline import FORWARD

#: First stream number of the point-to-point transfers (PyTorch gives each peer pair its own
#: NCCL communicator, hence its own stream, beside the collectives' stream).
P2P_STREAM = 24


def _kernels(ops: Sequence[Op]) -> list[Kernel]:
    return [lf.kernel for op in ops for lf in op.leaves if lf.kernel is not None]


def op_windows(model: ClusterModel, chunk: Chunk, index: int, rank: int) -> list[tuple[int, int, int, int]]:
    """Per 1F1B op of the rank, in its order (chunk ns): when its kernels start (after the host
    waits spread over the micro-batches) and end, and its receive's post and end (equal where
    it receives nothing)."""
    plan = model.plan
    assert plan is not None
    stage, rep = divmod(rank, model.dp_ranks)
    times = model.pipeline(chunk, index)
    out = []
    for k, (kind, _) in enumerate(plan.ops[stage]):
        a, b = int(times.start[stage, k, rep]), int(times.end[stage, k, rep])
        idle = chunk.idle_fwd_ns[index, rank] if kind == FORWARD else chunk.idle_bwd_ns[index, rank]
        out.append((min(a + int(idle) // plan.microbatches, b), b, int(times.recv_post[stage, k, rep]), a))
    return out


def pipeline_windows(
    model: ClusterModel, chunk: Chunk, index: int, rank: int
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The intervals (chunk ns) a pipeline rank's compute stream is busy in a step (micro-batch
    kernels and the optimizer), and those its NCCL kernels run (receives, sends, the gradient
    and norm all-reduces): what a reader of its trace can be checked against."""
    plan = model.plan
    assert plan is not None
    stage, rep = divmod(rank, model.dp_ranks)
    times = model.pipeline(chunk, index)
    compute, comm = [], []
    windows = op_windows(model, chunk, index, rank)
    for k, (kind, mb) in enumerate(plan.ops[stage]):
        g0, g1, post, start = windows[k]
        compute.append((g0, g1))
        if plan.dependency(stage, kind, mb) is not None:
            comm.append((post, start))
        if (kind == FORWARD and stage < plan.stages - 1) or (kind != FORWARD and stage > 0):
            comm.append((int(times.send_a[stage, k, rep]), int(times.send_b[stage, k, rep])))
    comm += [(c.start_ns, c.end_ns) for c in model.collectives(chunk, index, rank)]
    compute.append((int(chunk.coll_end[index, rank]), int(chunk.opt_end[index, rank])))
    return compute, comm


class PipelineRankWriter(RankWriter):
    """One pipeline rank's events, step by step (see the module docstring)."""

    def step(self, chunk: Chunk, i: int, start_ns: int, cut: int | None) -> None:
        model, opts, r = self.model, self.opts, self.rank
        plan = model.plan
        assert plan is not None
        s0, dw1, c1, o1, e1 = (
            int(getattr(chunk, k)[i, r]) + start_ns for k in ("start", "dw_end", "coll_end", "opt_end", "end")
        )
        step_no = int(chunk.steps[i])
        self.rng = np.random.default_rng([model.seed, 0x4B1E70, r, step_no])
        stage, rep = divmod(r, model.dp_ranks)
        last = plan.stages - 1
        times = model.pipeline(chunk, i)
        _, (pp_name, pp_desc, pp_ranks) = model.process_groups(r)
        p2p_bytes = int(model.wl.p2p_bytes)
        layer_f, layer_b = BLOCKS[opts.detail]
        blocks = self.layers
        fwd_ops = (list(ko.HEAD_FORWARD) if stage == 0 else []) + list(layer_f) * blocks
        fwd_ops += list(ko.TAIL_FORWARD) if stage == last else []
        bwd_ops = (list(ko.TAIL_BACKWARD) if stage == last else []) + list(layer_b) * blocks
        bwd_ops += list(ko.HEAD_BACKWARD) if stage == 0 else []
        opt_ops = ([*ko.CLIP] if opts.detail == "full" else []) + [ko.ADAMW, ko.ZERO_GRAD]

        def p2p(kind: str, a: int, b: int) -> Collective:
            return Collective(
                kind,
                a + start_ns,
                b + start_ns,
                p2p_bytes,
                p2p_bytes // 2,
                p2p_bytes // 2,
                len(pp_ranks),
                pg_name=pp_name,
                pg_desc=pp_desc,
                group_ranks=pp_ranks,
            )

        self.cpu, self.rts, self.gpu, self.gann, self.reduce_waits = [], [], [], [], []
        self.clock = 0
        main, ag = self.pid, self.autograd_tid
        free: dict[int, int] = {}  # p2p stream -> when its last kernel ends

        def launch(c: Collective) -> None:
            stream = next((st for st in sorted(free) if free[st] <= c.start_ns), P2P_STREAM + len(free))
            free[stream] = c.end_ns
            self._collective(main, c, stream)

        records: dict[int, dict[str, list[CpuEv]]] = {}
        first_gpu = dw1
        windows = op_windows(model, chunk, i, r)
        for k, (kind, mb) in enumerate(plan.ops[stage]):
            g0, g1, post, begin = windows[k]
            a, b = g0 + start_ns, g1 + start_ns
            if plan.dependency(stage, kind, mb) is not None:
                launch(p2p("recv", post, begin))
                first_gpu = min(first_gpu, post + start_ns)
            if kind == FORWARD:
                ann = self._begin(main, "user_annotation", f"forward_step#{mb}", self._rec_meta())
                block: dict[str, list[CpuEv]] = {}
                records[mb] = block
                ops, tid = fwd_ops, main
            else:
                ann = self._begin(main, "user_annotation", f"backward_step#{mb}", self._rec_meta())
                block = records.get(mb, {})
                ops, tid = bwd_ops, ag
                if stage == last:
                    ops = [ko.SEED_GRAD, *ops]
            # Host waits (late launches, a GC pause) come before the micro-batch's kernels.
            timing = tile_kernels(a, b, _kernels(ops), self.rng)
            n = 0
            for op in ops:
                nk = sum(1 for lf in op.leaves if lf.kernel is not None)
                self._op(main if op is ko.SEED_GRAD else tid, op, timing[n : n + nk], block)
                n += nk
            self._end(ann)
            self.gann.append(
                (COMPUTE_STREAM, ann.name, int(times.start[stage, k, rep]) + start_ns, b, ann.ext)
            )
            sa, sb = int(times.send_a[stage, k, rep]), int(times.send_b[stage, k, rep])
            if (kind == FORWARD and stage < last) or (kind != FORWARD and stage > 0):
                launch(p2p("send", sa, sb))
        # The stage's gradients, then the gradient norm, on the collectives' stream.
        for c in model.collectives(chunk, i, r):
            shifted = replace(c, start_ns=c.start_ns + start_ns, end_ns=c.end_ns + start_ns)
            self._collective(main, shifted, COMM_STREAM)
            self._runtime(main, "cudaStreamWaitEvent", 0)
        t_opt = tile_kernels(c1, o1, _kernels(opt_ops), self.rng)
        opt_ann = self._begin(main, "user_annotation", "Optimizer.step#AdamW.step", self._rec_meta())
        self._run_blocks(main, opt_ops[:-1], t_opt[:-1], [], [0], pairs=None)
        self._end(opt_ann)
        zero_ann = self._begin(
            main, "user_annotation", "Optimizer.zero_grad#AdamW.zero_grad", self._rec_meta()
        )
        self._op(main, ko.ZERO_GRAD, t_opt[-1:], {})
        self._end(zero_ann)
        # The host runs ahead of the GPU: launches compressed to end before their GPU work.
        t0 = max(s0 + 2_000, first_gpu - 20_000)
        f = 1.0
        for rt in self.rts:
            if rt.gpu >= 0:
                room = self.gpu[rt.gpu].g0 - t0
                if room < rt.t1 * f:
                    f = max(room, 1) / rt.t1
        self._emit_step(step_no, s0, t0, f, o1, e1, cut, opt_ann, opt_ann, opt_ann, opt_ann, [], [], t_opt)
