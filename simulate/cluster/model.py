"""The cluster model: a synchronous data-parallel job stepped through time, vectorised over ranks.

Per rank and step: wait for the dataloader's batch, forward, backward, then one gradient
all-reduce that cannot finish before the last rank arrives (so a slow rank makes every other
rank wait inside the collective), then the optimizer, then on checkpoint steps a shard write
and a barrier. Everything else — counters, gauges, step records, Kineto kernels, the ground
truth — is derived from the arrays produced here, so every signal tells the same story.

- Data loading: each rank's loader keeps ``prefetch_batches`` batches ready; a batch takes
  ``max(I/O time, CPU time)`` where the node's reads are striped over all OSTs of the data
  filesystem (the slowest OST decides) and the CPU time is the per-sample cost spread over
  the loader's workers. The step waits only when the loader falls behind.
- All-reduce (ring): every node sends and receives ``2(n-1)/n * grad_bytes`` over its EFA
  devices, split evenly across them, so the slowest device of any node sets the time; inside
  a node NVLink carries the same volume per GPU.
- A throttled GPU's compute time scales with ``max clock / throttled clock``.

All times are integer nanoseconds relative to the job's start, so phases derived as
differences add up exactly to the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fmdiag.simulate.cluster.config import Hardware, Workload
from fmdiag.simulate.cluster.scenarios import Fault, FaultKind, Scenario
from fmdiag.simulate.cluster.topology import Topology

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
BOOL = npt.NDArray[np.bool_]

NS = 1_000_000_000
#: Fixed NCCL cost of one all-reduce (launch, ring set-up), seconds.
ALLREDUCE_LATENCY_S = 0.0004
#: Retransmitted fraction of packets on a healthy fabric.
BASE_RETRANS_RATE = 2e-6
#: A step counts as slowed by a cause when the cause added this fraction of a healthy step.
TRUTH_THRESHOLD = 0.10
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
    #: Ground truth per step: verdict class and index of the responsible fault (-1 none, -2 a checkpoint).
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
        (the order the step records print them)."""
        return {
            "data_wait": self.dw_end - self.start,
            "forward": self.fwd_end - self.dw_end,
            "backward": self.arrive - self.fwd_end,
            "comm_exposed": self.coll_end - self.arrive,
            "optimizer": self.opt_end - self.coll_end,
            "checkpoint": self.end - self.opt_end,
        }


_CHUNK_ARRAYS = tuple(n for n in Chunk.__dataclass_fields__ if n not in ("truth_class", "truth_fault"))


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
        self._rng = np.random.default_rng([seed, 0x5EED])
        N, E = hw.nodes, hw.efa_devices
        shares = 1.0 + 0.002 * self._rng.standard_normal((N, E))
        #: Each EFA device's fixed share of its node's traffic (NCCL channel placement).
        self.efa_share: F64 = shares / shares.sum(axis=1, keepdims=True)
        #: Per-rank compute speed spread (silicon lottery), tiny.
        self.rank_speed: F64 = 1.0 + 0.002 * self._rng.standard_normal(hw.world_size)
        self._state = self._initial_state()

    # --- set-up ----------------------------------------------------------------------------

    def _pick(self, fault: Fault, index: int) -> Target:
        rng = np.random.default_rng([self.seed, 1000 + index])
        hw = self.hw
        node = int(rng.integers(hw.nodes))
        if fault.kind in (FaultKind.GPU_THERMAL, FaultKind.GPU_POWER):
            return Target(node=node, gpu=int(rng.integers(hw.gpus_per_node)))
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
        io = per_ost / wl.ost_read_bytes_per_s + (
            per_ost / wl.read_rpc_bytes * wl.ost_rpc_latency_s / wl.max_rpcs_in_flight
        )
        cpu = wl.samples_per_rank * wl.loader_cpu_s_per_sample / wl.loader_workers
        return max(io, cpu)

    # --- nominal figures (the healthy baseline the truth is measured against) ---------------

    @property
    def wire_bytes_per_node(self) -> float:
        """Bytes each node sends (and receives) over EFA per all-reduce (0 on one node)."""
        n = self.hw.world_size
        return 2 * (n - 1) / n * self.wl.grad_bytes if self.hw.nodes > 1 else 0.0

    @property
    def rank_ring_bytes(self) -> float:
        n = self.hw.world_size
        return 2 * (n - 1) / n * self.wl.grad_bytes

    def nominal_allreduce_s(self) -> float:
        hw = self.hw
        t = self.rank_ring_bytes / hw.nvlink_bytes_per_s
        if hw.nodes > 1:
            efa_bw = hw.efa_node_gbps * 1e9 / 8 * hw.efa_efficiency
            t = max(t, self.wire_bytes_per_node / efa_bw)
        return t + ALLREDUCE_LATENCY_S

    def nominal_step_s(self) -> float:
        wl = self.wl
        return (
            wl.base_data_wait_s + wl.forward_s + wl.backward_s + self.nominal_allreduce_s() + wl.optimizer_s
        )

    # --- faults ------------------------------------------------------------------------------

    def active(self, steps: I64) -> list[BOOL]:
        """For each fault, whether it is active at each of ``steps``."""
        frac = (steps % self.period) / self.period
        return [(frac >= f.start) & (frac < f.end) for f in self.scenario.faults]

    # --- stepping ----------------------------------------------------------------------------

    def run(self, nsteps: int) -> Chunk:
        """The next ``nsteps`` steps (the first call starts at step 0)."""
        hw, wl, rng, st = self.hw, self.wl, self._rng, self._state
        S, R, N, G, E = nsteps, hw.world_size, hw.nodes, hw.gpus_per_node, hw.efa_devices
        n_ost, n_ost_ckpt = hw.osts_per_fs, self.topo.checkpoint_fs.osts
        steps = np.arange(st.next_step, st.next_step + S, dtype=np.int64)
        active = self.active(steps)
        node_of = np.repeat(np.arange(N), G)
        noise = wl.noise

        def jitter(shape: tuple[int, ...], scale: float = 1.0) -> F64:
            return np.clip(1.0 + noise * scale * rng.standard_normal(shape), 0.5, 1.5)

        # GPUs: clocks and compute time.
        sm_clock = np.full((S, R), hw.sm_clock_mhz, np.int32)
        reasons = np.zeros((S, R), np.int32)
        thermal = np.zeros((S, R), bool)
        power = np.zeros((S, R), bool)
        for f, t, on in zip(self.scenario.faults, self.targets, active, strict=True):
            if f.kind in (FaultKind.GPU_THERMAL, FaultKind.GPU_POWER):
                r = self.topo.rank(t.node, t.gpu)
                sm_clock[on, r] = f.sm_clock_mhz
                reasons[on, r] |= f.clocks_event_reasons
                (thermal if f.kind is FaultKind.GPU_THERMAL else power)[on, r] = True
        slow = (hw.sm_clock_mhz / sm_clock) * self.rank_speed[None, :]
        fwd_s = wl.forward_s * slow * jitter((S, R))
        bwd_s = wl.backward_s * slow * jitter((S, R))
        opt_s = wl.optimizer_s * slow * jitter((S, R))
        base_dw_s = wl.base_data_wait_s * jitter((S, R), 5.0)
        fwd, bwd, opt, base_dw = _ns(fwd_s), _ns(bwd_s), _ns(opt_s), _ns(base_dw_s)

        # Storage: per-OST bandwidth and latency, the node's load time per batch.
        ost_bw = np.full((S, n_ost), wl.ost_read_bytes_per_s)
        lat_mult = np.ones((S, n_ost))
        cpu_mult = np.ones(S)
        ckpt_bw = np.full(S, wl.ost_write_bytes_per_s)
        for f, t, on in zip(self.scenario.faults, self.targets, active, strict=True):
            if f.kind is FaultKind.OST_SLOW:
                ost_bw[on, t.ost] *= f.bandwidth_factor
                lat_mult[on, t.ost] *= f.latency_factor
            elif f.kind is FaultKind.LOADER_CPU:
                cpu_mult[on] *= f.cpu_factor
            elif f.kind is FaultKind.CHECKPOINT_SLOW:
                ckpt_bw[on] *= f.bandwidth_factor
        node_batch = G * wl.samples_per_rank * wl.sample_bytes
        read_bytes = np.broadcast_to(float(node_batch) / n_ost, (S, N, n_ost)).copy()
        # One RPC's service time: the OST's latency plus the transfer at the bandwidth one RPC
        # stream gets (max_rpcs_in_flight streams share what the OST gives this client).
        stream_bw = ost_bw / wl.max_rpcs_in_flight
        read_latency = (
            wl.ost_rpc_latency_s * lat_mult[:, None, :] * jitter((S, N, n_ost), 3.0)
            + wl.read_rpc_bytes / stream_bw[:, None, :]
        )
        rpcs = read_bytes / wl.read_rpc_bytes
        io_time = (rpcs * read_latency / wl.max_rpcs_in_flight).max(axis=2)
        cpu_time = (
            wl.samples_per_rank * wl.loader_cpu_s_per_sample * cpu_mult[:, None] / wl.loader_workers
        ) * jitter((S, N))
        load_s = np.maximum(io_time, cpu_time)
        load_ns = _ns(load_s)
        # The workers are busy for cpu_time on each rank: that is the CPU the node spends.
        loader_cpu_s = G * wl.loader_workers * cpu_time

        # Fabric: per-device bandwidth, the all-reduce transfer time, volumes and errors.
        dev_bw = np.full((S, N, E), hw.efa_device_bytes_per_s * hw.efa_efficiency)
        retrans = np.full((S, N, E), BASE_RETRANS_RATE)
        impaired_lam = np.zeros((S, N, E))
        unresp_lam = np.zeros((S, N, E))
        for f, t, on in zip(self.scenario.faults, self.targets, active, strict=True):
            if f.kind is FaultKind.FABRIC:
                dev_bw[on] *= f.bandwidth_factor
                retrans[on] = f.retrans_rate
                impaired_lam[on] = 0.02
            elif f.kind is FaultKind.EFA_NODE:
                devs = list(t.efa)
                idx = np.ix_(np.flatnonzero(on), np.array([t.node]), np.array(devs))
                dev_bw[idx] *= f.bandwidth_factor
                retrans[idx] = f.retrans_rate
                impaired_lam[idx] = 1.5
                unresp_lam[idx] = 0.1
        wire = self.wire_bytes_per_node
        efa_bytes = wire * jitter((S, N), 0.2)[:, :, None] * self.efa_share[None, :, :]
        t_ar = np.full(S, self.rank_ring_bytes / hw.nvlink_bytes_per_s)
        if N > 1:
            t_ar = np.maximum(t_ar, (efa_bytes / dev_bw).max(axis=(1, 2)))
        t_ar_s = t_ar * jitter((S,), 0.5) + ALLREDUCE_LATENCY_S
        t_ar_ns = _ns(t_ar_s)
        impaired_events = rng.poisson(impaired_lam).astype(np.int64)
        unresponsive_events = rng.poisson(unresp_lam).astype(np.int64)

        # Checkpoints.
        ckpt_step = np.zeros(S, bool)
        if self.checkpoint_every > 0:
            ckpt_step = (steps + 1) % self.checkpoint_every == 0
        ckpt_node_bytes = float(G * wl.checkpoint_bytes_per_rank)
        write_bytes = np.zeros((S, N, n_ost_ckpt))
        write_bytes[ckpt_step] = ckpt_node_bytes / n_ost_ckpt
        write_latency = wl.ost_rpc_latency_s * 2.0 * jitter((S, N, n_ost_ckpt), 3.0) + wl.write_rpc_bytes / (
            ckpt_bw[:, None, None] / wl.max_rpcs_in_flight
        )
        wrpcs = ckpt_node_bytes / n_ost_ckpt / wl.write_rpc_bytes
        write_s = wrpcs * write_latency.max(axis=2) / wl.max_rpcs_in_flight
        # No step can last longer than all of its parts one after another: refuse a run whose
        # timestamps would overflow instead of writing wrapped-around garbage.
        longest_s = float(st.rank_end.max()) / NS + float(
            np.sum(
                load_s.max(axis=1)
                + (base_dw_s + fwd_s + bwd_s + opt_s).max(axis=1)
                + t_ar_s
                + np.where(ckpt_step, write_s.max(axis=1), 0.0)
            )
        )
        if not longest_s * NS < MAX_RUN_NS:
            raise ValueError(
                f"the run could last {longest_s:.3g} s, beyond the {MAX_RUN_NS / NS:.3g} s that "
                "nanosecond timestamps hold: lower --steps or --step-seconds"
            )

        # The recurrence over steps: loader queues, the collective's barrier, checkpoints.
        out = {
            k: np.empty((S, R), np.int64)
            for k in ("start", "dw_end", "fwd_end", "arrive", "coll_end", "opt_end", "end")
        }
        coll_start = np.empty(S, np.int64)
        load_a = np.empty((S, N), np.int64)
        load_b = np.empty((S, N), np.int64)
        ckpt_a = np.empty((S, N), np.int64)
        ckpt_b = np.empty((S, N), np.int64)
        node_a = np.empty((S, N), np.int64)
        node_b = np.empty((S, N), np.int64)
        end_prev, ready_prev, consumed = st.rank_end, st.ready_prev, st.consumed
        prev_load_b, prev_node_b, prev_ckpt_b = st.load_b, st.node_b, st.ckpt_b
        for i in range(S):
            start = end_prev
            loader_start = np.maximum(ready_prev, consumed[0])
            ready = loader_start + load_ns[i, node_of]
            taken = np.maximum(start, ready)
            dw_end = taken + base_dw[i]
            fwd_end = dw_end + fwd[i]
            arrive = fwd_end + bwd[i]
            cs = arrive.max()
            ce = cs + t_ar_ns[i]
            opt_end = ce + opt[i]
            if ckpt_step[i]:
                first = opt_end.reshape(N, G).min(axis=1)
                wend = first + _ns(write_s[i])
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
            for k, v in (
                ("start", start),
                ("dw_end", dw_end),
                ("fwd_end", fwd_end),
                ("arrive", arrive),
                ("coll_end", np.broadcast_to(ce, (R,))),
                ("opt_end", opt_end),
                ("end", end),
            ):
                out[k][i] = v
            coll_start[i] = cs
            consumed = np.concatenate([consumed[1:], taken[None, :]])
            ready_prev = ready
            end_prev = end
        self._state = _State(
            int(steps[-1]) + 1, end_prev, ready_prev, consumed, prev_load_b, prev_node_b, prev_ckpt_b
        )

        chunk = Chunk(
            steps=steps,
            coll_start=coll_start,
            sm_clock=sm_clock,
            reasons=reasons,
            thermal=thermal,
            power=power,
            load_a=load_a,
            load_b=load_b,
            io_time=io_time,
            cpu_time=cpu_time,
            loader_cpu_s=loader_cpu_s,
            read_bytes=read_bytes,
            read_latency=read_latency,
            ckpt_a=ckpt_a,
            ckpt_b=ckpt_b,
            write_bytes=write_bytes,
            write_latency=write_latency,
            efa_bytes=efa_bytes,
            retrans_rate=retrans,
            impaired_events=impaired_events,
            unresponsive_events=unresponsive_events,
            node_a=node_a,
            node_b=node_b,
            start=out["start"],
            dw_end=out["dw_end"],
            fwd_end=out["fwd_end"],
            arrive=out["arrive"],
            coll_end=out["coll_end"],
            opt_end=out["opt_end"],
            end=out["end"],
        )
        chunk.truth_class, chunk.truth_fault = self._truth(chunk, active, ckpt_step)
        return chunk

    # --- ground truth -----------------------------------------------------------------------

    def _truth(self, c: Chunk, active: list[BOOL], ckpt_step: BOOL) -> tuple[list[str], I64]:
        """Per step, the cause that added the most time to the critical path, if enough.

        The step's critical path is the rank that reached the all-reduce last: its data wait
        beyond the fixed cost is a data cause (``io`` when its node's loader was I/O-bound,
        else ``host``), its compute beyond the median rank's is a straggler, then the
        all-reduce beyond its healthy duration is the network, and the checkpoint is I/O.
        Measured on the model's own numbers, not assumed from the scenario: a fault that is
        active but does not bind (a slow OST the prefetcher still hides) leaves the step
        compute-bound, which is what an honest verdict must say too.
        """
        wl = self.wl
        S = c.nsteps
        G = self.hw.gpus_per_node
        threshold = TRUTH_THRESHOLD * self.nominal_step_s()
        rows = np.arange(S)
        late = c.arrive.argmax(axis=1)  # [S] the rank on the critical path
        compute = c.arrive - c.dw_end
        dw = c.dw_end - c.start
        excess: dict[str, F64] = {
            "straggler": (compute[rows, late] - np.median(compute, axis=1)) / NS,
            "network": (c.coll_end[:, 0] - c.coll_start) / NS - self.nominal_allreduce_s(),
            "data": dw[rows, late] / NS - wl.base_data_wait_s,
            "checkpoint": (c.end - c.opt_end).max(axis=1) / NS,
        }
        late_node = late // G
        io_bound = c.io_time[rows, late_node] >= c.cpu_time[rows, late_node]
        classes: list[str] = []
        fault_idx = np.full(S, -1, np.int64)
        faults = self.scenario.faults
        for i in range(S):
            cause = max(excess, key=lambda k: float(excess[k][i]))
            if float(excess[cause][i]) < threshold:
                classes.append("compute")
                continue
            if cause == "data":
                cls = "io" if io_bound[i] else "host"
            elif cause == "checkpoint":
                cls = "io"
            else:
                cls = cause
            classes.append(cls)
            kinds = {
                "straggler": (FaultKind.GPU_THERMAL, FaultKind.GPU_POWER),
                "network": (FaultKind.FABRIC, FaultKind.EFA_NODE),
                "data": (FaultKind.OST_SLOW,) if cls == "io" else (FaultKind.LOADER_CPU,),
                "checkpoint": (FaultKind.CHECKPOINT_SLOW,),
            }[cause]
            for j, f in enumerate(faults):
                if f.kind in kinds and active[j][i]:
                    fault_idx[i] = j
                    break
            else:
                if cause == "checkpoint" and ckpt_step[i]:
                    fault_idx[i] = -2
        return classes, fault_idx


def _ns(seconds: F64 | float) -> I64:
    return np.asarray(np.rint(np.asarray(seconds) * NS), dtype=np.int64)
