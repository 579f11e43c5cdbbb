"""The cluster model: a synchronous data-parallel job stepped through time, vectorised over ranks.

Per rank and step: wait for the dataloader's batch, forward, backward, optimizer, and on
checkpoint steps a shard write and a barrier. Communication runs on its own stream and
overlaps compute the way the job's parallelism does it (:mod:`.overlap`): DDP all-reduces
gradient buckets during backward; FSDP all-gathers each unit's parameters ahead of its forward
and backward and reduce-scatters its gradients after. A collective completes only when every
rank has joined it, so a slow rank makes every other rank wait; exposed communication is what
the overlap leaves uncovered, never a fixed number. Everything else — counters, gauges, step
records, Kineto kernels, the ground truth — is derived from the arrays produced here, so every
signal tells the same story.

- Data loading: each rank's loader keeps ``prefetch_batches`` batches ready; a batch takes
  ``max(I/O time, CPU time)`` where the node's reads are striped over all OSTs of the data
  filesystem (the slowest OST decides) and the CPU time is the per-sample cost spread over
  the loader's workers. The step waits only when the loader falls behind.
- Collectives (ring, trees beyond 64 ranks): each node moves ``(n-1)/n`` of the buffer per
  phase over its EFA devices, split across them, so the slowest device of any node sets the
  time; a latency per hop grows with the ring; inside a node NVLink carries the rest.
- A throttled GPU's compute time scales with its clock for the compute-bound part of its
  kernels only (memory-bound kernels barely notice a lower SM clock).
- Truth is counterfactual: the chunk is replayed with each fault removed (same random draws),
  and the time each removal gives back is that fault's cost per step.

All times are integer nanoseconds relative to the job's start, so phases derived as
differences add up exactly to the step.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fmdiag.simulate.cluster import pipeline
from fmdiag.simulate.cluster.config import Hardware, Workload
from fmdiag.simulate.cluster.overlap import Slot, StepTimes, schedule, step_times
from fmdiag.simulate.cluster.physics import COLLECTIVE_LAUNCH_S, JOBS, get_job, ring_latency_s
from fmdiag.simulate.cluster.scenarios import HOST_SIDE, Fault, FaultKind, Scenario
from fmdiag.simulate.cluster.topology import Topology

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
BOOL = npt.NDArray[np.bool_]

NS = 1_000_000_000
#: Retransmitted fraction of packets on a healthy fabric.
BASE_RETRANS_RATE = 2e-6
#: A step counts as slowed by a cause when the cause added this fraction of a healthy step.
TRUTH_THRESHOLD = 0.10
#: Columns of ``Chunk.truth_lost`` after the faults': communication made free, input loading made free.
LOST_COMM, LOST_DATA = 0, 1
LOST_EXTRA = 2
#: The process-group description Megatron gives its tensor-parallel groups.
TP_DESC = "TENSOR_MODEL_PARALLEL_GROUP"
EP_DESC = "EXPERT_MODEL_PARALLEL_GROUP"
#: Longest run the int64 nanosecond timestamps can hold with room for the job's Unix start.
MAX_RUN_NS = 1 << 62


@dataclass(frozen=True)
class Target:
    """What a fault hits; -1 / () where it does not apply."""

    node: int = -1
    gpu: int = -1
    efa: tuple[int, ...] = ()
    fs: int = -1
    ost: int = -1


@dataclass
class Chunk:
    """Consecutive simulated steps. Shapes: S steps, R ranks, N nodes, E EFA devices, O OSTs."""

    steps: I64  # [S] step numbers
    #: Rank phase boundaries [S, R], ns:
    #: start | data_wait | forward | backward | comm | optimizer | checkpoint | end.
    start: I64
    dw_end: I64
    fwd_end: I64
    arrive: I64
    coll_end: I64
    opt_end: I64
    end: I64
    coll_start: I64  # [S] when the last rank arrived: the transfer begins
    sm_clock: I32  # [S, R] MHz
    reasons: I32  # [S, R] clock event reasons while throttled
    thermal: BOOL  # [S, R] thermal violation active
    power: BOOL  # [S, R] power violation active
    #: Node loading windows [S, N] (ns): reads of the batch each node's ranks consume at step s.
    load_a: I64
    load_b: I64
    io_time: F64  # [S, N] seconds the node's reads for one batch take
    cpu_time: F64  # [S, N] seconds one rank's loader needs for one batch
    loader_cpu_s: F64  # [S, N] CPU seconds the node's loaders spend on one batch
    read_bytes: F64  # [S, N, O] data filesystem
    read_latency: F64  # [S, N, O] seconds per read RPC
    #: Checkpoint write windows [S, N] (ns; empty when no checkpoint) and volumes.
    ckpt_a: I64
    ckpt_b: I64
    write_bytes: F64  # [S, N, n_ost_ckpt] checkpoint filesystem
    write_latency: F64  # [S, N, n_ost_ckpt]
    efa_bytes: F64  # [S, N, E] sent (= received) per device
    retrans_rate: F64  # [S, N, E]
    impaired_events: I64  # [S, N, E]
    unresponsive_events: I64  # [S, N, E]
    #: Node step windows [S, N] ns (first rank start .. last rank end), for rate-like host signals.
    node_a: I64
    node_b: I64
    #: Each rank's forward + backward kernel time [S, R] ns: under FSDP the forward and backward
    #: phases also hold the stalls waiting for gathers, when the GPU computes nothing.
    compute_ns: I64
    #: Of each rank's forward and backward [S, R] ns, the time its GPU idled waiting for the host
    #: (late launches on a CPU-starved or reclaiming node, a garbage-collection pause): drawn
    #: as a gap before the phase's kernels.
    idle_fwd_ns: I64
    idle_bwd_ns: I64
    #: Of each rank's forward and backward [S, R] ns, the tensor-parallel all-reduces of
    #: activations over NVLink (on the critical path, not compute): drawn as NCCL kernels.
    tp_fwd_ns: I64
    tp_bwd_ns: I64
    #: Likewise a mixture-of-experts job's all-to-alls [S, R] ns: the transfers and the wait in
    #: them for the expert-parallel group's slowest expert (its most loaded or slowest rank).
    a2a_fwd_ns: I64
    a2a_bwd_ns: I64
    #: Every collective of each step, in communication-stream order (see ``ClusterModel.schedule``):
    #: when each rank joined it [S, R, C], and when it ran for everyone [S, C].
    coll_issue: I64
    coll_a: I64
    coll_b: I64
    #: Pipeline jobs: each step's stage-to-stage transfer time of one micro-batch [S] ns (0 without
    #: a pipeline); with the phase boundaries it replays the step's 1F1B schedule
    #: (:meth:`ClusterModel.pipeline`).
    p2p_ns: I64
    #: Host-side load besides the job [S, N]: CPUs a co-tenant keeps busy, and the extra share of
    #: time some task stalls on CPU and on memory (PSI "some").
    neighbour_cpus: F64
    psi_cpu_share: F64
    psi_mem_share: F64
    #: Seconds each cause cost each step [S, F + 1]: the step's duration minus its duration with
    #: that fault removed (columns per fault), and with communication free (last column).
    truth_lost: F64
    #: Ground truth per step: verdict class and index of the dominant fault (-1 none).
    truth_class: list[str] = field(default_factory=list)
    truth_fault: I64 = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def nsteps(self) -> int:
        return len(self.steps)

    def slice(self, lo: int, hi: int) -> Chunk:
        """Steps ``lo``..``hi - 1`` of this chunk (by position)."""
        arrays = {n: getattr(self, n)[lo:hi] for n in _CHUNK_ARRAYS}
        return Chunk(**arrays, truth_class=self.truth_class[lo:hi], truth_fault=self.truth_fault[lo:hi])

    def phases(self) -> dict[str, I64]:
        """Per-rank phase durations in ns [S, R], in step-record names, in the order they happen
        (the order the step records print them). In a pipeline forward and backward interleave:
        ``forward``/``backward`` are then the micro-batches' compute summed, and ``comm_exposed``
        everything else up to the gradient reduction's end (receives, bubble, all-reduce)."""
        return {
            "data_wait": self.dw_end - self.start,
            "forward": self.fwd_end - self.dw_end,
            "backward": self.arrive - self.fwd_end,
            "comm_exposed": self.coll_end - self.arrive,
            "optimizer": self.opt_end - self.coll_end,
            "checkpoint": self.end - self.opt_end,
        }


_CHUNK_ARRAYS = tuple(n for n in Chunk.__dataclass_fields__ if n not in ("truth_class", "truth_fault"))


@dataclass(frozen=True)
class Collective:
    """One collective as one rank's communication kernel sees it (the Kineto writer draws these).

    ``start_ns`` is when this rank's kernel starts (its data is ready and the stream is free),
    ``end_ns`` when the collective completes for everyone; the difference includes the wait for
    late ranks, as a real NCCL kernel's duration does.
    """

    kind: str  # "all_reduce" | "all_gather" | "reduce_scatter"
    start_ns: int
    end_ns: int
    #: Bytes of this rank's input buffer (``In msg nelems`` x element size).
    nbytes: int
    #: Elements of the input and output buffers, as PyTorch's record_param_comms reports them.
    in_nelems: int
    out_nelems: int
    group_size: int
    dtype: str = "BFloat16"
    #: The process group: name, description and ranks (empty: every rank, the default group).
    pg_name: str = "0"
    pg_desc: str = "default_pg"
    group_ranks: tuple[int, ...] = ()


def concat(chunks: list[Chunk]) -> Chunk:
    """One chunk holding the steps of several consecutive ones."""
    if len(chunks) == 1:
        return chunks[0]
    arrays = {n: np.concatenate([getattr(c, n) for c in chunks]) for n in _CHUNK_ARRAYS}
    return Chunk(
        **arrays,
        truth_class=[x for c in chunks for x in c.truth_class],
        truth_fault=np.concatenate([c.truth_fault for c in chunks]),
    )


@dataclass
class _State:
    """What the next chunk needs from the previous one."""

    next_step: int
    rank_end: I64  # [R]
    ready_prev: I64  # [R] when the loader finished its last batch
    consumed: I64  # [depth, R] when the last `depth` batches were taken, oldest first
    load_b: I64  # [N]
    node_b: I64  # [N]
    ckpt_b: I64  # [N]


class ClusterModel:
    """Steps a scenario through time; deterministic for a given seed and chunk sequence."""

    def __init__(self, hw: Hardware, wl: Workload, scenario: Scenario, seed: int, steps: int) -> None:
        hw.validate()
        wl.validate(hw)
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1")
        self.hw, self.wl, self.scenario, self.seed = hw, wl, scenario, seed
        #: Scenario length: fault windows are fractions of it (a live run repeats it).
        self.period = steps
        self.topo = Topology(hw)
        self.checkpoint_every = (
            wl.checkpoint_every if scenario.checkpoint_every is None else scenario.checkpoint_every
        )
        self.targets = [self._pick(f, i) for i, f in enumerate(scenario.faults)]
        #: The pipeline's 1F1B plan (None: no pipeline).
        self.plan = pipeline.Plan(wl.pp, wl.microbatches) if wl.pp > 1 else None
        if self.plan is None and any(f.kind is FaultKind.STAGE_IMBALANCE for f in scenario.faults):
            raise ValueError(f"scenario {scenario.name} splits a pipeline: choose a pipeline preset (pp > 1)")
        if wl.ep <= 1 and any(f.kind is FaultKind.EXPERT_IMBALANCE for f in scenario.faults):
            raise ValueError(
                f"scenario {scenario.name} loads an expert: choose a mixture-of-experts preset (ep > 1)"
            )
        #: The step's collectives in communication-stream order; in a pipeline, each stage's
        #: gradient all-reduce (slot = stage) and then the gradient norm's over each pipeline.
        self.schedule: tuple[Slot, ...] = (
            tuple(Slot("all_reduce", s, 2) for s in range(wl.pp + 1))
            if self.plan is not None
            else schedule(wl.parallelism, wl.units)
        )
        # Runs of different scenarios with the same seed are not paired copies of each other.
        self._rng = np.random.default_rng([seed, 0x5EED, _stable_hash(scenario.name)])
        N, E = hw.nodes, hw.efa_devices
        shares = 1.0 + 0.002 * self._rng.standard_normal((N, E))
        #: Each EFA device's fixed share of its node's traffic (NCCL channel placement).
        self.efa_share: F64 = shares / shares.sum(axis=1, keepdims=True)
        #: Persistent per-GPU speed (silicon lottery, cooling): a few percent apart.
        self.rank_speed: F64 = 1.0 + wl.gpu_speed_spread * self._rng.standard_normal(hw.world_size)
        self._state = self._initial_state()
        self._nominal_step = self._nominal_step_s()

    # --- set-up ----------------------------------------------------------------------------

    def _pick(self, fault: Fault, index: int) -> Target:
        rng = np.random.default_rng([self.seed, 1000 + index])
        hw = self.hw
        node = int(rng.integers(hw.nodes))
        if fault.kind in (
            FaultKind.GPU_THERMAL,
            FaultKind.GPU_POWER,
            FaultKind.PYTHON_GC,
            FaultKind.EXPERT_IMBALANCE,
        ):
            return Target(node=node, gpu=int(rng.integers(hw.gpus_per_node)))
        if fault.kind in HOST_SIDE:
            return Target(node=node)
        if fault.kind is FaultKind.EFA_NODE:
            k = min(fault.devices, hw.efa_devices)
            devs = tuple(sorted(int(x) for x in rng.choice(hw.efa_devices, k, replace=False)))
            return Target(node=node, efa=devs)
        if fault.kind is FaultKind.OST_SLOW:
            return Target(fs=self.topo.data_fs.index, ost=int(rng.integers(hw.osts_per_fs)))
        if fault.kind is FaultKind.CHECKPOINT_SLOW:
            return Target(fs=self.topo.checkpoint_fs.index)
        return Target()

    def _initial_state(self) -> _State:
        hw, wl = self.hw, self.wl
        R, N, depth = hw.world_size, hw.nodes, max(1, wl.prefetch_batches)
        # The loader filled its queue before the job's first step: batch i < depth is ready
        # at -(depth - 1 - i) batch-times, so step 0 finds its batch waiting.
        load0 = self._nominal_load_s()
        ready_prev = np.full(R, -int((depth + 1) * load0 * NS), np.int64)
        consumed = np.full((depth, R), -(10 * NS), np.int64)
        zero = np.zeros(N, np.int64)
        return _State(0, np.zeros(R, np.int64), ready_prev, consumed, zero - NS, zero, zero)

    def _nominal_load_s(self) -> float:
        hw, wl = self.hw, self.wl
        per_ost = hw.gpus_per_node * wl.samples_per_rank * wl.sample_bytes / hw.osts_per_fs
        client_bw = wl.ost_read_bytes_per_s / hw.nodes
        io = per_ost / client_bw + (
            per_ost / wl.read_rpc_bytes * wl.ost_rpc_latency_s / wl.max_rpcs_in_flight
        )
        cpu = wl.samples_per_rank * wl.loader_cpu_s_per_sample / wl.loader_workers
        return max(io, cpu)

    # --- communication volumes ---------------------------------------------------------------

    @property
    def dp_ranks(self) -> int:
        """Ranks in one data-parallel group (the collectives' ring)."""
        return self.hw.world_size // self.wl.tp // self.wl.pp

    def stage_of(self, rank: int) -> int:
        """The pipeline stage (``pp_rank``) of a rank: stages are blocks of consecutive ranks."""
        return rank // (self.hw.world_size // self.wl.pp)

    def layout(self, rank: int) -> dict[str, int]:
        """The rank's place in the parallel layout, in step-record names (tensor parallel ranks
        are consecutive, then data parallel, pipeline outermost: Megatron's order)."""
        tp = self.wl.tp
        out = {"dp_rank": (rank // tp) % self.dp_ranks, "pp_rank": self.stage_of(rank), "tp_rank": rank % tp}
        if self.wl.ep > 1:
            out["ep_rank"] = rank % self.wl.ep
        return out

    def _stage_nodes(self, stage: int) -> list[int]:
        G, D = self.hw.gpus_per_node, self.dp_ranks
        return sorted({r // G for r in range(stage * D, (stage + 1) * D)})

    def p2p_crosses_nodes(self) -> bool:
        """Whether stage-to-stage sends leave the node (some do whenever stages span nodes)."""
        return self.plan is not None and self.hw.nodes > 1

    def node_wire_bytes(self) -> F64:
        """Bytes each node sends (and receives) over EFA per step [N]: its stage's gradient
        all-reduce and, in a pipeline, the micro-batches' activations and gradients."""
        node, _ = self.slot_bytes()
        N = self.hw.nodes
        if self.plan is None:
            return np.full(N, float(node.sum()))
        out = np.zeros(N)
        wl, G, P = self.wl, self.hw.gpus_per_node, self.wl.pp
        for s in range(P):
            nodes = self._stage_nodes(s)
            if len(nodes) > 1:
                out[nodes] += node[s]
            if self.p2p_crosses_nodes():
                sends = (s < P - 1) + (s > 0)  # activations forward, gradients backward
                for n in nodes:
                    ranks = sum(1 for r in range(n * G, (n + 1) * G) if self.stage_of(r) == s)
                    out[n] += ranks * sends * wl.microbatches * wl.p2p_bytes
        return out

    def slot_bytes(self) -> tuple[F64, F64]:
        """Per collective: bytes each node moves over EFA, and bytes each rank sends in all."""
        n, wl = self.dp_ranks, self.wl
        if self.plan is not None:
            frac = (n - 1) / n if n > 1 else 0.0
            rank = np.array([2.0 * frac * wl.grad_bytes] * wl.pp + [8.0])  # the norm: one fp32 pair
            return rank.copy(), rank
        unit = wl.grad_bytes / wl.units
        frac = (n - 1) / n if n > 1 else 0.0
        phases = np.array([s.phases for s in self.schedule], dtype=np.float64)
        rank = frac * unit * phases
        # One ring per tensor-parallel rank crosses each node once in and once out.
        node = rank * wl.tp if self.hw.nodes > 1 else np.zeros_like(rank)
        return node, rank

    @property
    def wire_bytes_per_node(self) -> float:
        """Bytes each node sends (and receives) over EFA per step (0 on one node; the mean node's
        in a pipeline, where stages move different volumes)."""
        if self.plan is not None:
            return float(self.node_wire_bytes().mean()) if self.hw.nodes > 1 else 0.0
        return float(self.slot_bytes()[0].sum())

    @property
    def rank_ring_bytes(self) -> float:
        """Bytes each rank sends per step over its ring (NVLink and EFA together)."""
        if self.plan is not None:
            return float(self.slot_bytes()[1][0])
        return float(self.slot_bytes()[1].sum())

    def _tp_comm_s(self) -> float:
        """Tensor-parallel all-reduces of activations inside forward and backward (NVLink)."""
        wl = self.wl
        if wl.tp <= 1:
            return 0.0
        activation = wl.samples_per_rank * wl.tokens_per_sample * _hidden(wl.job) * 2.0
        per_layer = 4 * 2 * (wl.tp - 1) / wl.tp * activation / self.hw.nvlink_bytes_per_s
        return per_layer * _layers(wl.job)

    # --- nominal figures (the healthy baseline the truth is measured against) ---------------

    def nominal_comm_s(self) -> float:
        """The step's collectives back to back on a healthy fabric (what overlap must hide)."""
        return float(self._collective_s(np.ones((1, self.hw.nodes, self.hw.efa_devices)))[0].sum())

    def nominal_step_s(self) -> float:
        return self._nominal_step

    def _nominal_step_s(self) -> float:
        """A healthy, noise-free step at full clock, with its overlap, without a checkpoint."""
        hw, wl = self.hw, self.wl
        R = hw.world_size
        tp = self._tp_comm_s()
        a2a = self.a2a_transfer_s()
        fwd = np.full(R, _ns(wl.forward_s + tp / 3 + a2a))[0]
        bwd = np.full(R, _ns(wl.backward_s + 2 * tp / 3 + a2a))[0]
        dur = _ns(self._collective_s(np.ones((1, hw.nodes, hw.efa_devices)))[0])
        t0 = np.full(R, _ns(wl.base_data_wait_s + max(0.0, self._nominal_load_s() * 0)), np.int64)
        if self.plan is not None:  # the preset's own stage shapes, the head on the last stage
            w = np.repeat(np.asarray(wl.stage_weights), self.dp_ranks)
            M = wl.microbatches
            fwd_r = M * _ns((wl.forward_s + tp / 3) * w / M)
            bwd_r = M * _ns((wl.backward_s + 2 * tp / 3) * w / M)
            p2p = int(_ns(self.p2p_s(np.ones((1, hw.nodes, hw.efa_devices)))[0]))
            st = self._step_times(t0, fwd_r, bwd_r, dur, p2p)
        else:
            st = step_times(
                self.schedule, wl.units, wl.parallelism, t0, np.full(R, fwd), np.full(R, bwd), dur
            )
        return float(st.coll_end + int(_ns(wl.optimizer_s))) / NS

    def _step_times(self, t0: I64, fwd: I64, bwd: I64, dur: I64, p2p: int) -> StepTimes:
        """One step's compute and collectives for every rank from ``t0`` [R]: DDP/FSDP overlap
        (:mod:`.overlap`), or a pipeline's 1F1B schedule followed by each stage's gradient
        all-reduce and the gradient norm's. In a pipeline ``fwd_end``/``arrive`` are the compute
        sums (see :meth:`Chunk.phases`); the ranks' real last backward ends issue the reduction."""
        wl = self.wl
        if self.plan is None:
            return step_times(self.schedule, wl.units, wl.parallelism, t0, fwd, bwd, dur)
        P, D, M = wl.pp, self.dp_ranks, wl.microbatches
        times = pipeline.run(
            self.plan, t0.reshape(P, D), (fwd // M).reshape(P, D), (bwd // M).reshape(P, D), p2p
        )
        ready = times.last_end()  # [P, D]
        a = np.empty(P + 1, np.int64)
        b = np.empty(P + 1, np.int64)
        a[:P] = ready.max(axis=1)
        b[:P] = a[:P] + dur[:P]
        a[P] = b[:P].max()
        b[P] = a[P] + dur[P]
        issue = np.empty((P * D, P + 1), np.int64)
        issue[:, :P] = a[None, :P]
        issue[:, P] = np.repeat(b[:P], D)
        for st in range(P):
            issue[st * D : (st + 1) * D, st] = ready[st]
        fwd_end = t0 + fwd
        return StepTimes(fwd_end, fwd_end + bwd, int(b[P]), issue, a, b)

    def pipeline(self, chunk: Chunk, index: int) -> pipeline.PipelineTimes:
        """The 1F1B schedule every rank ran in the step at ``index`` of ``chunk`` (chunk ns),
        replayed from the step's data-wait ends and compute sums: what the Kineto writer draws."""
        if self.plan is None:
            raise ValueError("this job has no pipeline")
        P, D, M = self.wl.pp, self.dp_ranks, self.wl.microbatches
        t0 = chunk.dw_end[index]
        fwd = chunk.fwd_end[index] - t0
        bwd = chunk.arrive[index] - chunk.fwd_end[index]
        p2p = int(chunk.p2p_ns[index])
        return pipeline.run(
            self.plan, t0.reshape(P, D), (fwd // M).reshape(P, D), (bwd // M).reshape(P, D), p2p
        )

    def p2p_s(self, bw_factor: F64) -> F64:
        """Seconds one micro-batch's activations take to the next stage [S]: over the sending GPU's
        share of its node's EFA (the worst node sets the pace: every stage waits for the slowest
        link), over NVLink on one node."""
        hw, wl = self.hw, self.wl
        if self.plan is None:
            return np.zeros(len(bw_factor))
        if not self.p2p_crosses_nodes():
            return np.full(len(bw_factor), wl.p2p_bytes / hw.nvlink_bytes_per_s + COLLECTIVE_LAUNCH_S)
        per_gpu = hw.efa_node_gbps * 1e9 / 8 / hw.gpus_per_node * hw.efa_efficiency
        worst = bw_factor.mean(axis=2).min(axis=1)  # [S]
        return np.asarray(wl.p2p_bytes / (per_gpu * worst) + COLLECTIVE_LAUNCH_S, dtype=np.float64)

    def _collective_s(self, bw_factor: F64, nvl_factor: float = 1.0) -> F64:
        """Transfer + latency of each collective [S, C], given each device's bandwidth factor [S, N, E]."""
        hw = self.hw
        node, rank = self.slot_bytes()
        if self.plan is not None:
            return self._pipeline_collective_s(bw_factor, node, rank)
        lat = np.array([ring_latency_s(self.dp_ranks, s.phases) for s in self.schedule])
        t = (rank / (hw.nvlink_bytes_per_s * nvl_factor))[None, :]
        if hw.nodes > 1:
            dev_bw = hw.efa_device_bytes_per_s * hw.efa_efficiency * bw_factor  # [S, N, E]
            worst = (self.efa_share[None] / dev_bw).max(axis=(1, 2))  # [S]: seconds per node byte
            t = np.maximum(t, node[None, :] * worst[:, None])
        return np.asarray(t + lat[None, :], dtype=np.float64)

    def _pipeline_collective_s(self, bw_factor: F64, node: F64, rank: F64) -> F64:
        """Each stage's gradient all-reduce over its data-parallel ranks (EFA where the stage spans
        nodes, its slowest device deciding) and the gradient norm's over each pipeline [S, P + 1]."""
        hw, P = self.hw, self.wl.pp
        S = len(bw_factor)
        out = np.empty((S, P + 1))
        dev_bw = hw.efa_device_bytes_per_s * hw.efa_efficiency * bw_factor  # [S, N, E]
        per_byte = (self.efa_share[None] / dev_bw).max(axis=2)  # [S, N] seconds per node byte
        for s in range(P):
            t = np.full(S, rank[s] / hw.nvlink_bytes_per_s)
            nodes = self._stage_nodes(s)
            if len(nodes) > 1:
                t = np.maximum(t, node[s] * per_byte[:, nodes].max(axis=1))
            out[:, s] = t + ring_latency_s(self.dp_ranks, 2)
        out[:, P] = ring_latency_s(P, 2)
        return out

    # --- faults ------------------------------------------------------------------------------

    def collectives(self, chunk: Chunk, index: int, rank: int) -> list[Collective]:
        """The collectives rank ``rank`` runs in the step at position ``index`` of ``chunk``, in order.

        A rank's kernel starts when it joins (its data ready, the stream free) and ends when the
        collective completes for everyone, so it includes the wait for late ranks.
        """
        unit = int(self.wl.grad_bytes // self.wl.units)
        n = self.dp_ranks
        if self.plan is not None:
            return self._pipeline_collectives(chunk, index, rank, unit)
        out = []
        for c, slot in enumerate(self.schedule):
            elems = unit // 2
            in_n, out_n = {
                "all_reduce": (elems, elems),
                "all_gather": (elems // n, elems),
                "reduce_scatter": (elems, elems // n),
            }[slot.kind]
            out.append(
                Collective(
                    kind=slot.kind,
                    start_ns=int(chunk.coll_issue[index, rank, c]),
                    end_ns=int(chunk.coll_b[index, c]),
                    nbytes=in_n * 2,
                    in_nelems=in_n,
                    out_nelems=out_n,
                    group_size=n,
                )
            )
        return out

    def rank_slots(self, rank: int) -> list[int]:
        """The collectives of :attr:`schedule` ``rank`` takes part in, in its stream's order: all
        of them, or in a pipeline its stage's gradient all-reduce and the norm's."""
        if self.plan is None:
            return list(range(len(self.schedule)))
        return [self.stage_of(rank), self.wl.pp]

    @property
    def hidden(self) -> int:
        """The model's hidden size (activations per token)."""
        return _hidden(self.wl.job)

    def tp_group(self, rank: int) -> tuple[str, str, tuple[int, ...]]:
        """(name, description, ranks) of the rank's tensor-parallel group (consecutive ranks of one
        node), or of its expert-parallel group in a mixture-of-experts job, named after the
        data-parallel groups in creation order."""
        size, desc = (self.wl.ep, EP_DESC) if self.wl.ep > 1 else (self.wl.tp, TP_DESC)
        first = rank - rank % size
        name = str(1 + self.hw.world_size // self.dp_ranks + first // size)
        return (name, desc, tuple(range(first, first + size)))

    def process_groups(self, rank: int) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        """(name, description, ranks) of the process groups ``rank`` belongs to besides the
        default one: in a pipeline its stage's data-parallel group and its pipeline. Names count
        up in creation order as ``torch.distributed.new_group`` gives them (every data-parallel
        group first, then every pipeline, as Megatron creates them on every rank)."""
        if self.plan is None:
            return (self.tp_group(rank),) if self.wl.tp > 1 or self.wl.ep > 1 else ()
        P, D = self.wl.pp, self.dp_ranks
        s, d = divmod(rank, D)
        dp = (str(1 + s), "DATA_PARALLEL_GROUP", tuple(range(s * D, (s + 1) * D)))
        pp = (str(1 + P + d), "PIPELINE_MODEL_PARALLEL_GROUP", tuple(d + k * D for k in range(P)))
        return (dp, pp)

    def _pipeline_collectives(self, chunk: Chunk, index: int, rank: int, grad_bytes: int) -> list[Collective]:
        """A pipeline rank's gradient all-reduce over its stage and the gradient norm's over its
        pipeline (fp32), each on its own process group."""
        (dp_name, dp_desc, dp_ranks), (pp_name, pp_desc, pp_ranks) = self.process_groups(rank)
        s = self.stage_of(rank)
        elems = grad_bytes // 2
        P = self.wl.pp
        return [
            Collective(
                "all_reduce",
                int(chunk.coll_issue[index, rank, s]),
                int(chunk.coll_b[index, s]),
                elems * 2,
                elems,
                elems,
                len(dp_ranks),
                pg_name=dp_name,
                pg_desc=dp_desc,
                group_ranks=dp_ranks,
            ),
            Collective(
                "all_reduce",
                int(chunk.coll_issue[index, rank, P]),
                int(chunk.coll_b[index, P]),
                4,
                1,
                1,
                len(pp_ranks),
                dtype="Float",
                pg_name=pp_name,
                pg_desc=pp_desc,
                group_ranks=pp_ranks,
            ),
        ]

    def active(self, steps: I64) -> list[BOOL]:
        """For each fault, whether it is active at each of ``steps``."""
        frac = (steps % self.period) / self.period
        out = []
        for f in self.scenario.faults:
            on = (frac >= f.start) & (frac < f.end)
            if f.on_steps > 0 and f.off_steps > 0:  # intermittent: on/off in a fixed rhythm
                on &= (steps % (f.on_steps + f.off_steps)) < f.on_steps
            out.append(on)
        return out

    def severity(self, steps: I64, index: int) -> F64:
        """How far fault ``index`` has developed at each step, 0..1 (a ramp, then full)."""
        f = self.scenario.faults[index]
        if f.ramp <= 0:
            return np.ones(len(steps))
        frac = (steps % self.period) / self.period
        return np.clip((frac - f.start) / f.ramp, 0.0, 1.0)

    # --- stepping ----------------------------------------------------------------------------

    def run(self, nsteps: int) -> Chunk:
        """The next ``nsteps`` steps (the first call starts at step 0), with their truth."""
        st = self._state
        steps = np.arange(st.next_step, st.next_step + nsteps, dtype=np.int64)
        active = self.active(steps)
        draws = self._draws(steps)
        env = self._environment(steps, active, draws)
        chunk, new_state = self._timeline(steps, env, st)
        # Counterfactual replays from the same state with the same draws: each fault removed,
        # then communication made free and input loading made free (what volume alone costs:
        # a job whose collectives or reads outgrow the fabric or the OSTs is bound by them
        # with no fault to blame).
        duration = self._durations(chunk, st)

        def replay(acts: list[BOOL], free_comm: bool = False, free_data: bool = False) -> F64:
            e = self._environment(steps, acts, draws)
            if free_comm:
                e["coll_ns"] = np.zeros_like(e["coll_ns"])
                e["p2p_ns"] = np.zeros_like(e["p2p_ns"])
            if free_data:
                e["load_ns"] = np.zeros_like(e["load_ns"])
            return self._durations(self._timeline(steps, e, st, full=False)[0], st)

        F = len(active)
        none = [np.zeros_like(a) for a in active]
        lost = np.zeros((nsteps, F + LOST_EXTRA))
        live = [j for j in range(F) if active[j].any()]
        for j in live:
            lost[:, j] = duration - replay([a if k != j else none[k] for k, a in enumerate(active)])
        lost[:, F + LOST_COMM] = duration - replay(active, free_comm=True)
        lost[:, F + LOST_DATA] = duration - replay(active, free_data=True)
        # Where causes overlap so that removing either alone gives back little (the other still
        # binds: two faults, or a fault and reads that outgrow the OSTs at scale), each cause's
        # cost is what it adds on its own to a step free of faults and of loading waits.
        threshold = TRUTH_THRESHOLD * self.nominal_step_s() * NS  # lost is in ns here
        candidates = lost.max(axis=1) < threshold
        if live and candidates.any():
            ideal = replay(none, free_data=True)
            joint = duration - ideal
            masked = candidates & (joint >= threshold)
            if masked.any():
                for j in live:
                    alone = replay([a if k == j else none[k] for k, a in enumerate(active)], free_data=True)
                    lost[masked, j] = np.minimum(alone - ideal, joint)[masked]
                lost[masked, F + LOST_DATA] = np.minimum(replay(none) - ideal, joint)[masked]
        chunk.truth_lost = lost / NS
        chunk.truth_class, chunk.truth_fault = self._truth(chunk.truth_lost)
        self._state = new_state
        return chunk

    @staticmethod
    def _durations(chunk: Chunk, st: _State) -> F64:
        """Each step's duration: from the previous step's last rank done to this one's."""
        ends = chunk.end.max(axis=1)
        prev = np.concatenate([[int(st.rank_end.max())], ends[:-1]])
        return np.asarray(ends - prev, dtype=np.float64)

    def _draws(self, steps: I64) -> dict[str, F64]:
        """Every random number the chunk needs, drawn once so replays see the same cluster."""
        hw, wl, rng = self.hw, self.wl, self._rng
        S, R, N, E, C = len(steps), hw.world_size, hw.nodes, hw.efa_devices, len(self.schedule)
        n_ost, n_ckpt = hw.osts_per_fs, self.topo.checkpoint_fs.osts
        noise = wl.noise

        def jitter(shape: tuple[int, ...], scale: float = 1.0) -> F64:
            return np.clip(1.0 + noise * scale * rng.standard_normal(shape), 0.5, 1.5)

        d: dict[str, F64] = {
            "fwd": jitter((S, R)),
            "bwd": jitter((S, R)),
            "opt": jitter((S, R)),
            "dw": jitter((S, R), 5.0),
            # OST latency varies a lot from RPC to RPC; a lognormal keeps it positive.
            "read_lat": rng.lognormal(0.0, 0.25, (S, N, n_ost)),
            "cpu": jitter((S, N)),
            "efa": jitter((S, N), 0.2),
            "coll": jitter((S, C), 0.5),
            "write_lat": rng.lognormal(0.0, 0.25, (S, N, n_ckpt)),
            "impaired_u": rng.random((S, N, E)),
            "sw_bits": rng.random((S, R)),
        }
        # Heavy-tailed collectives: now and then one collective of a step is several times slower.
        tail = np.ones((S, C))
        slow = rng.random(S) < wl.slow_collective_p
        which = rng.integers(0, C, S)
        tail[slow, which[slow]] = 1.0 + (wl.slow_collective_factor - 1.0) * rng.pareto(
            3.0, int(slow.sum()) + 0
        )[: int(slow.sum())].clip(0.3, 3.0)
        d["tail"] = tail
        # Data-dependent imbalance: uneven sequence lengths, mean 1 across ranks.
        if wl.seq_imbalance > 0:
            imb = rng.lognormal(0.0, wl.seq_imbalance, (S, R))
            if self.plan is not None:
                # A replica's micro-batches flow through all its stages: long sequences are long
                # on every stage of that pipeline (each stage's data-parallel ranks differ).
                imb = imb[:, np.tile(np.arange(self.dp_ranks), wl.pp)]
            d["imbalance"] = imb / imb.mean(axis=1, keepdims=True)
        else:
            d["imbalance"] = np.ones((S, R))
        # Python GC: one rank at a time pauses, about every gc_every steps.
        gc = np.zeros((S, R))
        if wl.gc_every > 0:
            hit = rng.random(S) < 1.0 / wl.gc_every
            gc[hit, rng.integers(0, R, S)[hit]] = wl.gc_pause_s * rng.uniform(0.6, 1.6, int(hit.sum()))
        d["gc"] = gc
        warm = np.ones(S)
        early = steps < wl.warmup_steps
        warm[early] = 1.0 + 1.2 * 0.5 ** steps[early].astype(np.float64)
        d["warm"] = warm
        if any(f.kind in (*HOST_SIDE, FaultKind.PYTHON_GC) for f in self.scenario.faults):
            # From their own stream, so the scenarios without these faults draw what they always did.
            extra = np.random.default_rng([self.seed, 0x4057, int(steps[0])])
            # How hard the co-tenant or the reclaim bites varies from step to step; a full GC's
            # pause varies with the heap.
            d["host_var"] = np.clip(extra.lognormal(0.0, 0.25, S), 0.4, 2.5)
            d["gc_var"] = extra.uniform(0.8, 1.25, S)
        if wl.ep > 1:
            # Tokens per expert vary from batch to batch (routing), mean 1 over each group.
            moe = np.random.default_rng([self.seed, 0xE4, int(steps[0])])
            load = moe.lognormal(0.0, 0.08, (S, R // wl.ep, wl.ep))
            d["expert_load"] = (load / load.mean(axis=2, keepdims=True)).reshape(S, R)
        return d

    def _environment(self, steps: I64, active: list[BOOL], d: dict[str, F64]) -> dict[str, Any]:
        """What the hardware does at each step with ``active`` faults: durations, rates, volumes."""
        hw, wl = self.hw, self.wl
        S, R, N, G, E = len(steps), hw.world_size, hw.nodes, hw.gpus_per_node, hw.efa_devices
        n_ost, n_ckpt = hw.osts_per_fs, self.topo.checkpoint_fs.osts
        faults = self.scenario.faults

        # GPUs: clocks, clock-event reasons and compute time.
        sm_clock = np.full((S, R), float(hw.sm_clock_mhz))
        reasons = np.zeros((S, R), np.int32)
        # Healthy H100s under load routinely report SW power cap and SW thermal slowdown.
        reasons[d["sw_bits"] < 0.3] |= SW_POWER_CAP
        reasons[d["sw_bits"] > 0.93] |= SW_THERMAL
        thermal = np.zeros((S, R), bool)
        power = np.zeros((S, R), bool)
        for j, (f, t, on) in enumerate(zip(faults, self.targets, active, strict=True)):
            if f.kind in (FaultKind.GPU_THERMAL, FaultKind.GPU_POWER):
                r = self.topo.rank(t.node, t.gpu)
                sev = self.severity(steps, j)
                clock = hw.sm_clock_mhz - sev * (hw.sm_clock_mhz - f.sm_clock_mhz)
                if f.kind is FaultKind.GPU_THERMAL:  # the throttle hunts around its target
                    clock = clock + 45.0 * sev * np.where(steps % 2 == 0, 1.0, -1.0)
                sm_clock[on, r] = np.minimum(sm_clock[on, r], clock[on])
                reasons[on, r] |= f.clocks_event_reasons
                (thermal if f.kind is FaultKind.GPU_THERMAL else power)[on, r] = True
        # Compute-bound kernels (GEMMs, attention) slow with the clock; memory-bound ones barely.
        clock_slow = COMPUTE_BOUND * (hw.sm_clock_mhz / sm_clock) + (1.0 - COMPUTE_BOUND)
        slow = clock_slow * self.rank_speed[None, :] * d["imbalance"] * d["warm"][:, None]
        tp = self._tp_comm_s()
        # Pipeline stages compute unevenly (the head on the last); a hand-made split moves layers.
        stage_w = np.ones((S, R))
        if self.plan is not None:
            stage_w[:] = np.repeat(np.asarray(wl.stage_weights), self.dp_ranks)[None, :]
            job = get_job(wl.job) if wl.job in JOBS else None
            for j, (f, on) in enumerate(zip(faults, active, strict=True)):
                if f.kind is FaultKind.STAGE_IMBALANCE and job is not None and on.any():
                    sev = self.severity(steps, j)[on]
                    moved = np.repeat(np.asarray(job.stage_weights(f.layers)), self.dp_ranks)
                    stage_w[on] = stage_w[on] + sev[:, None] * (moved - stage_w[on])
        # Host-side faults stretch compute phases with GPU idle time; a full GC pauses the loop.
        host = np.ones((S, R))
        pause = np.zeros((S, R))
        neighbour_cpus, psi_cpu, psi_mem = np.zeros((S, N)), np.zeros((S, N)), np.zeros((S, N))
        loader_node = np.ones((S, N))
        for j, (f, t, on) in enumerate(zip(faults, self.targets, active, strict=True)):
            sev = self.severity(steps, j)[on]
            if f.kind in HOST_SIDE:
                bite = sev * d["host_var"][on]
                ranks = np.arange(t.node * G, (t.node + 1) * G)
                host[np.ix_(on, ranks)] *= (1 + bite * (f.host_factor - 1))[:, None]
                loader_node[on, t.node] *= 1 + bite * (f.host_factor - 1)
                neighbour_cpus[on, t.node] += sev * f.neighbour_share * hw.ncpus
                share = np.minimum(bite * f.stall_share, 0.95)
                (psi_cpu if f.kind is FaultKind.CPU_CONTENTION else psi_mem)[on, t.node] += share
            elif f.kind is FaultKind.PYTHON_GC:
                pause[on, self.topo.rank(t.node, t.gpu)] += sev * f.pause_s * d["gc_var"][on]
        fwd_busy = (wl.forward_s * stage_w + tp / 3) * slow * d["fwd"]
        bwd_busy = (wl.backward_s * stage_w + 2 * tp / 3) * slow * d["bwd"]
        tp_fwd_s = tp / 3 * slow * d["fwd"]
        tp_bwd_s = 2 * tp / 3 * slow * d["bwd"]
        a2a_fwd_s, a2a_bwd_s = self._moe(steps, active, d, fwd_busy, bwd_busy)
        fwd_s = fwd_busy * host + d["gc"] + pause + a2a_fwd_s
        bwd_s = bwd_busy * host + a2a_bwd_s
        idle_fwd_s = fwd_busy * (host - 1.0) + pause
        idle_bwd_s = bwd_busy * (host - 1.0)
        opt_s = wl.optimizer_s * clock_slow * d["opt"]
        base_dw_s = wl.base_data_wait_s * d["dw"]

        # Storage: an OST's bandwidth is shared by every client reading from it.
        ost_bw = np.full((S, n_ost), wl.ost_read_bytes_per_s)
        lat_mult = np.ones((S, n_ost))
        cpu_mult = np.ones(S)
        ckpt_bw = np.full(S, wl.ost_write_bytes_per_s)
        for j, (f, t, on) in enumerate(zip(faults, self.targets, active, strict=True)):
            sev = self.severity(steps, j)[on]
            if f.kind is FaultKind.OST_SLOW:
                ost_bw[on, t.ost] *= 1 - sev * (1 - f.bandwidth_factor)
                lat_mult[on, t.ost] *= 1 + sev * (f.latency_factor - 1)
            elif f.kind is FaultKind.LOADER_CPU:
                cpu_mult[on] *= 1 + sev * (f.cpu_factor - 1)
            elif f.kind is FaultKind.CHECKPOINT_SLOW:
                ckpt_bw[on] *= 1 - sev * (1 - f.bandwidth_factor)
        node_batch = G * wl.samples_per_rank * wl.sample_bytes
        read_bytes = np.broadcast_to(float(node_batch) / n_ost, (S, N, n_ost)).copy()
        client_bw = ost_bw / N
        stream_bw = client_bw / wl.max_rpcs_in_flight
        # A slow OST gets slower as more clients queue on it (its latency grows with load).
        load_mult = 1.0 + (lat_mult - 1.0) * (N / 4.0) ** 0.5
        read_latency = (
            wl.ost_rpc_latency_s * load_mult[:, None, :] * d["read_lat"]
            + wl.read_rpc_bytes / stream_bw[:, None, :]
        )
        rpcs = read_bytes / wl.read_rpc_bytes
        io_time = (np.maximum(rpcs, 1.0) * read_latency / wl.max_rpcs_in_flight).max(axis=2)
        cpu_time = (
            (wl.samples_per_rank * wl.loader_cpu_s_per_sample * cpu_mult[:, None] / wl.loader_workers)
            * d["cpu"]
            * loader_node
        )
        load_s = np.maximum(io_time, cpu_time)

        # Fabric: per-device bandwidth, errors, and every collective's duration.
        bw_factor = np.ones((S, N, E))
        retrans = np.full((S, N, E), BASE_RETRANS_RATE)
        impaired_lam = np.zeros((S, N, E))
        unresp_lam = np.zeros((S, N, E))
        for j, (f, t, on) in enumerate(zip(faults, self.targets, active, strict=True)):
            sev = self.severity(steps, j)
            if f.kind is FaultKind.FABRIC:
                bw_factor[on] *= (1 - sev[on] * (1 - f.bandwidth_factor))[:, None, None]
                retrans[on] = np.maximum(retrans[on], (sev[on] * f.retrans_rate)[:, None, None])
                impaired_lam[on] = 0.02
            elif f.kind is FaultKind.EFA_NODE:
                rows = np.flatnonzero(on)
                devs = np.array(t.efa)
                idx = np.ix_(rows, np.array([t.node]), devs)
                bw_factor[idx] *= (1 - sev[rows] * (1 - f.bandwidth_factor))[:, None, None]
                retrans[idx] = (sev[rows] * f.retrans_rate)[:, None, None]
                impaired_lam[idx] = 1.5
                unresp_lam[idx] = 0.1
                # Its peers feel it too: their retransmits and timeouts toward it rise.
                others = np.array([n for n in range(N) if n != t.node], dtype=np.int64)
                if len(others):
                    peer = np.ix_(rows, others, np.arange(E))
                    retrans[peer] = np.maximum(retrans[peer], 0.05 * f.retrans_rate)
                    unresp_lam[peer] = 0.01
        coll_s = self._collective_s(bw_factor) * d["coll"] * d["tail"]
        efa_bytes = self.node_wire_bytes()[None, :, None] * d["efa"][:, :, None] * self.efa_share[None, :, :]
        p2p_s = self.p2p_s(bw_factor) * d["coll"][:, 0]
        impaired = _poisson(impaired_lam, d["impaired_u"])
        unresponsive = _poisson(unresp_lam, 1.0 - d["impaired_u"])

        # Checkpoints: every rank's shard, bounded by the filesystem's aggregate bandwidth.
        ckpt_step = np.zeros(S, bool)
        if self.checkpoint_every > 0:
            ckpt_step = (steps + 1) % self.checkpoint_every == 0
        ckpt_node_bytes = float(G * wl.checkpoint_bytes_per_rank)
        write_bytes = np.zeros((S, N, n_ckpt))
        write_bytes[ckpt_step] = ckpt_node_bytes / n_ckpt
        client_write = ckpt_bw / N  # every node writes at once: each gets its share of an OST
        write_latency = wl.ost_rpc_latency_s * 2.0 * d["write_lat"] + wl.write_rpc_bytes / (
            client_write[:, None, None] / wl.max_rpcs_in_flight
        )
        wrpcs = ckpt_node_bytes / n_ckpt / wl.write_rpc_bytes
        write_s = wrpcs * write_latency.max(axis=2) / wl.max_rpcs_in_flight
        return {
            "sm_clock": sm_clock.round().astype(np.int32),
            "reasons": reasons,
            "thermal": thermal,
            "power": power,
            # A pipeline runs forward and backward as micro-batches of whole nanoseconds.
            "fwd_ns": _ns(fwd_s) if self.plan is None else wl.microbatches * _ns(fwd_s / wl.microbatches),
            "bwd_ns": _ns(bwd_s) if self.plan is None else wl.microbatches * _ns(bwd_s / wl.microbatches),
            "idle_fwd_ns": _ns(idle_fwd_s),
            "tp_fwd_ns": _ns(tp_fwd_s),
            "tp_bwd_ns": _ns(tp_bwd_s),
            "a2a_fwd_ns": _ns(a2a_fwd_s),
            "a2a_bwd_ns": _ns(a2a_bwd_s),
            "idle_bwd_ns": _ns(idle_bwd_s),
            "p2p_ns": _ns(p2p_s),
            "neighbour_cpus": neighbour_cpus,
            "psi_cpu_share": psi_cpu,
            "psi_mem_share": psi_mem,
            "opt_ns": _ns(opt_s),
            "base_dw_ns": _ns(base_dw_s),
            "load_ns": _ns(load_s),
            "io_time": io_time,
            "cpu_time": cpu_time,
            "loader_cpu_s": G * wl.loader_workers * cpu_time,
            "read_bytes": read_bytes,
            "read_latency": read_latency,
            "coll_ns": _ns(coll_s),
            "efa_bytes": efa_bytes,
            "retrans": retrans,
            "impaired": impaired,
            "unresponsive": unresponsive,
            "ckpt_step": ckpt_step,
            "write_bytes": write_bytes,
            "write_latency": write_latency,
            "write_ns": _ns(write_s),
            "longest_s": float(
                np.sum(
                    load_s.max(axis=1)
                    + (base_dw_s + fwd_s + bwd_s + opt_s).max(axis=1) * wl.pp
                    + coll_s.sum(axis=1)
                    + 2 * wl.microbatches * wl.pp * p2p_s
                    + np.where(ckpt_step, write_s.max(axis=1), 0.0)
                )
            ),
        }

    def a2a_transfer_s(self) -> float:
        """Seconds a mixture-of-experts job's all-to-alls move data in one phase (forward or
        backward): a dispatch and a combine per MoE layer over NVLink (0 for a dense job)."""
        wl = self.wl
        return 2 * wl.moe_layers * (wl.a2a_bytes / self.hw.nvlink_bytes_per_s + COLLECTIVE_LAUNCH_S)

    def _moe(
        self, steps: I64, active: list[BOOL], d: dict[str, F64], fwd_busy: F64, bwd_busy: F64
    ) -> tuple[F64, F64]:
        """A mixture-of-experts job's all-to-all seconds in forward and backward [S, R], and its
        ranks' compute scaled to their experts' load (in place in ``fwd_busy``/``bwd_busy``).

        Each MoE layer dispatches tokens to their experts' ranks and combines the results back:
        two all-to-alls in forward, two in backward, over NVLink inside the node. A combine ends
        when the group's slowest expert is done, so every rank of the group waits there for the
        most loaded (or slowest) one: its wait is that rank's expert time minus its own.
        """
        wl, hw = self.wl, self.hw
        S, R = len(steps), hw.world_size
        if wl.ep <= 1:
            return np.zeros((S, R)), np.zeros((S, R))
        load = d["expert_load"].copy()
        for j, (f, t, on) in enumerate(zip(self.scenario.faults, self.targets, active, strict=True)):
            if f.kind is FaultKind.EXPERT_IMBALANCE and on.any():
                r = self.topo.rank(t.node, t.gpu)
                group = np.arange(r - r % wl.ep, r - r % wl.ep + wl.ep)
                rows = np.flatnonzero(on)
                share = 1 + self.severity(steps, j)[on] * (f.token_share - 1)
                rest = (wl.ep - share) / (wl.ep - 1)  # the group's tokens stay the same
                scale = np.repeat(rest[:, None], wl.ep, axis=1)
                scale[:, r % wl.ep] = share
                load[np.ix_(rows, group)] *= scale
        e = wl.expert_share
        transfer = self.a2a_transfer_s()
        out = []
        for phase in (fwd_busy, bwd_busy):  # backward sends the gradients of both ways back
            expert = phase * e * load
            np.multiply(phase, (1 - e) + e * load, out=phase)
            slowest = expert.reshape(S, -1, wl.ep).max(axis=2)
            out.append(np.repeat(slowest, wl.ep, axis=1) - expert + transfer)
        return out[0], out[1]

    def _timeline(
        self, steps: I64, env: dict[str, Any], st: _State, *, full: bool = True
    ) -> tuple[Chunk, _State]:
        """The recurrence over steps: loader queues, overlapped collectives, checkpoints.

        A counterfactual replay (``full=False``) needs only the step boundaries: the
        per-collective arrays, the largest of the chunk, are then not kept.
        """
        hw = self.hw
        S, R, N, G, C = len(steps), hw.world_size, hw.nodes, hw.gpus_per_node, len(self.schedule)
        node_of = np.repeat(np.arange(N), G)
        # No step can last longer than all of its parts one after another: refuse a run whose
        # timestamps would overflow instead of writing wrapped-around garbage.
        if not (float(st.rank_end.max()) / NS + env["longest_s"]) * NS < MAX_RUN_NS:
            raise ValueError(
                f"the run could last {float(st.rank_end.max()) / NS + env['longest_s']:.3g} s, beyond the "
                f"{MAX_RUN_NS / NS:.3g} s that nanosecond timestamps hold: lower --steps or --step-seconds"
            )
        out = {
            k: np.empty((S, R), np.int64)
            for k in ("start", "dw_end", "fwd_end", "arrive", "coll_end", "opt_end", "end")
        }
        kept = S if full else 1
        coll_issue = np.empty((kept, R, C), np.int64)
        coll_a = np.empty((kept, C), np.int64)
        coll_b = np.empty((kept, C), np.int64)
        load_a, load_b = np.empty((S, N), np.int64), np.empty((S, N), np.int64)
        ckpt_a, ckpt_b = np.empty((S, N), np.int64), np.empty((S, N), np.int64)
        node_a, node_b = np.empty((S, N), np.int64), np.empty((S, N), np.int64)
        end_prev, ready_prev, consumed = st.rank_end, st.ready_prev, st.consumed
        prev_load_b, prev_node_b, prev_ckpt_b = st.load_b, st.node_b, st.ckpt_b
        load_ns, write_ns = env["load_ns"], env["write_ns"]
        for i in range(S):
            start = end_prev
            loader_start = np.maximum(ready_prev, consumed[0])
            ready = loader_start + load_ns[i, node_of]
            taken = np.maximum(start, ready)
            dw_end = taken + env["base_dw_ns"][i]
            times = self._step_times(
                dw_end, env["fwd_ns"][i], env["bwd_ns"][i], env["coll_ns"][i], int(env["p2p_ns"][i])
            )
            ce = max(times.coll_end, int(times.arrive.max()))
            opt_end = ce + env["opt_ns"][i]
            if env["ckpt_step"][i]:
                first = opt_end.reshape(N, G).min(axis=1)
                wend = first + write_ns[i]
                end = np.full(R, max(int(wend.max()), int(opt_end.max())), np.int64)
                ckpt_a[i] = np.maximum(first, prev_ckpt_b)
                ckpt_b[i] = np.maximum(wend, ckpt_a[i])
                prev_ckpt_b = ckpt_b[i]
            else:
                end = opt_end
                ckpt_a[i] = ckpt_b[i] = prev_ckpt_b
            la = np.maximum(loader_start.reshape(N, G).min(axis=1), prev_load_b)
            lb = np.maximum(ready.reshape(N, G).max(axis=1), la)
            load_a[i], load_b[i] = la, lb
            prev_load_b = lb
            na = np.maximum(start.reshape(N, G).min(axis=1), prev_node_b)
            nb = np.maximum(end.reshape(N, G).max(axis=1), na)
            node_a[i], node_b[i] = na, nb
            prev_node_b = nb
            out["start"][i] = start
            out["dw_end"][i] = dw_end
            out["fwd_end"][i] = times.fwd_end
            out["arrive"][i] = times.arrive
            out["coll_end"][i] = ce
            out["opt_end"][i] = opt_end
            out["end"][i] = end
            k = i if full else 0
            coll_issue[k], coll_a[k], coll_b[k] = times.issue, times.a, times.b
            consumed = np.concatenate([consumed[1:], taken[None, :]])
            ready_prev = ready
            end_prev = end
        state = _State(
            int(steps[-1]) + 1, end_prev, ready_prev, consumed, prev_load_b, prev_node_b, prev_ckpt_b
        )
        chunk = Chunk(
            steps=steps,
            # A pipeline's traffic flows from its first receive on; DDP/FSDP's with the collectives.
            coll_start=(
                out["dw_end"].min(axis=1)
                if self.plan is not None
                else np.minimum(coll_a[:, 0], out["coll_end"][:, 0])
                if full
                else out["coll_end"][:, 0]
            ),
            sm_clock=env["sm_clock"],
            reasons=env["reasons"],
            thermal=env["thermal"],
            power=env["power"],
            load_a=load_a,
            load_b=load_b,
            io_time=env["io_time"],
            cpu_time=env["cpu_time"],
            loader_cpu_s=env["loader_cpu_s"],
            read_bytes=env["read_bytes"],
            read_latency=env["read_latency"],
            ckpt_a=ckpt_a,
            ckpt_b=ckpt_b,
            write_bytes=env["write_bytes"],
            write_latency=env["write_latency"],
            efa_bytes=env["efa_bytes"],
            retrans_rate=env["retrans"],
            impaired_events=env["impaired"],
            unresponsive_events=env["unresponsive"],
            node_a=node_a,
            node_b=node_b,
            compute_ns=env["fwd_ns"]
            + env["bwd_ns"]
            - env["idle_fwd_ns"]
            - env["idle_bwd_ns"]
            - env["tp_fwd_ns"]
            - env["tp_bwd_ns"]
            - env["a2a_fwd_ns"]
            - env["a2a_bwd_ns"],
            tp_fwd_ns=env["tp_fwd_ns"],
            tp_bwd_ns=env["tp_bwd_ns"],
            a2a_fwd_ns=env["a2a_fwd_ns"],
            a2a_bwd_ns=env["a2a_bwd_ns"],
            idle_fwd_ns=env["idle_fwd_ns"],
            idle_bwd_ns=env["idle_bwd_ns"],
            coll_issue=coll_issue,
            coll_a=coll_a,
            coll_b=coll_b,
            p2p_ns=env["p2p_ns"],
            neighbour_cpus=env["neighbour_cpus"],
            psi_cpu_share=env["psi_cpu_share"],
            psi_mem_share=env["psi_mem_share"],
            truth_lost=np.zeros((S, len(self.scenario.faults) + LOST_EXTRA)),
            start=out["start"],
            dw_end=out["dw_end"],
            fwd_end=out["fwd_end"],
            arrive=out["arrive"],
            coll_end=out["coll_end"],
            opt_end=out["opt_end"],
            end=out["end"],
        )
        return chunk, state

    # --- ground truth -----------------------------------------------------------------------

    def _truth(self, lost: F64) -> tuple[list[str], I64]:
        """Per step, the cause whose removal gives back the most time, if it gives back enough.

        Causes are the injected faults (replayed away one at a time) and, last, communication
        itself (replayed free): a job whose collectives outgrow the overlap is network-bound
        with no fault to blame; likewise input loading (replayed free) for a job whose reads
        outgrow its OSTs, which is io-bound. Waiting in a collective for a late rank is not communication:
        with free collectives the ranks still wait for the last one, so that time stays with
        the straggler. A normal checkpoint or GC pause is no fault: such a step stays
        ``compute`` unless a fault also slowed it.
        """
        threshold = TRUTH_THRESHOLD * self.nominal_step_s()
        faults = self.scenario.faults
        classes: list[str] = []
        fault_idx = np.full(len(lost), -1, np.int64)
        F = len(faults)
        for i, row in enumerate(lost):
            j = int(np.argmax(row[:F])) if F else -1
            volume = max((row[F + LOST_COMM], "network"), (row[F + LOST_DATA], "io"))
            if j >= 0 and row[j] >= threshold:
                classes.append(faults[j].verdict_class)
                fault_idx[i] = j
            elif volume[0] >= threshold:
                classes.append(volume[1])
            else:
                classes.append("compute")
        return classes, fault_idx

    def secondary(self, chunk: Chunk, index: int) -> list[int]:
        """Faults other than the dominant one that still cost the step enough to matter."""
        threshold = TRUTH_THRESHOLD * self.nominal_step_s()
        row = chunk.truth_lost[index]
        main = int(chunk.truth_fault[index])
        return [j for j in range(len(row) - LOST_EXTRA) if j != main and row[j] >= threshold]


#: Share of a step's kernel time that is compute-bound (scales with the SM clock).
COMPUTE_BOUND = 0.8
SW_POWER_CAP, SW_THERMAL = 0x4, 0x20


def _poisson(lam: F64, u: F64) -> I64:
    """Poisson counts by inversion of fixed uniforms, so replays draw the same events."""
    out = np.zeros(lam.shape, np.int64)
    p = np.exp(-lam)
    cdf = p.copy()
    k = np.zeros(lam.shape, np.int64)
    todo = (u > cdf) & (lam > 0)
    while todo.any():
        k[todo] += 1
        p = np.where(todo, p * lam / np.maximum(k, 1), p)
        cdf = np.where(todo, cdf + p, cdf)
        todo = todo & (u > cdf) & (k < 50)
    out[:] = k
    return out


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def _hidden(job: str) -> int:
    return get_job(job).hidden if job in JOBS else 4096


def _layers(job: str) -> int:
    return get_job(job).layers if job in JOBS else 32


def _ns(seconds: F64 | float) -> I64:
    return np.asarray(np.rint(np.asarray(seconds) * NS), dtype=np.int64)
