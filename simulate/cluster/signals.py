"""Node signals at any instant: counters, gauges and rates derived from the model's steps.

Every counter is a baseline (what the node accumulated before the job) plus, per step, an
amount spread evenly over the window in which it really happens: EFA bytes over the
all-reduce's transfer, Lustre reads over the loader's fetch, checkpoint writes over the
checkpoint, GPU busy time over the kernels. So a counter read at any time is exact and
monotonic, its rate is physical (bursty where the real one is), and the same numbers feed
the metric dumps, the node trees and the live mode. Gauges that real tools average over a
sampling period (GPU utilisation, SM activity, power) are averaged over the last second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fmdiag.catalog import EFA_DEVICE_COUNTERS, EFA_PORT_COUNTERS
from fmdiag.simulate.cluster.instruments import EFA_SRD_COUNTERS
from fmdiag.simulate.cluster.model import NS, Chunk, ClusterModel
from fmdiag.simulate.cluster.scenarios import GPU_IDLE

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: Seconds between boot and the job's start (node i booted i * 977 s earlier still).
UPTIME_S = 3 * 86400.0
#: GPU power model (W): idle, extra while compute kernels run at full clock, extra while NCCL runs.
IDLE_W, COMPUTE_W, NCCL_W = 75.0, 575.0, 125.0
IDLE_SM_CLOCK_MHZ = 345
#: The fraction of SM cycles, tensor-pipe cycles, ... a compute / NCCL kernel keeps busy.
KERNEL_PROFILE = {
    "sm_active": (0.93, 0.12),
    "sm_occupancy": (0.55, 0.06),
    "tensor_active": (0.62, 0.0),
    "dram_active": (0.42, 0.18),
    "mem_util": (0.45, 0.20),
}
FB_USED_MIB = 71_680
#: The /proc/stat cpu modes ``SignalSamples.host`` holds, in /proc/stat's order.
CPU_MODES: tuple[str, ...] = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
PAGE = 4096
#: EFA hw_counters files every device has (the SRD ones exist only on Nitro v4+).
EFA_PORT_FILES: tuple[str, ...] = tuple(f for f in EFA_PORT_COUNTERS if f not in EFA_SRD_COUNTERS)
EFA_DEVICE_FILES: tuple[str, ...] = tuple(EFA_DEVICE_COUNTERS)


class Windows:
    """Sorted, non-overlapping intervals (per column, or shared by all columns when 1-D).

    ``cumulative`` spreads each interval's amount evenly over it and answers the running
    total at the query times.
    """

    def __init__(self, a: I64, b: I64) -> None:
        self.a, self.b = a, b

    def locate(self, t: I64) -> tuple[I64, F64]:
        """(index of the first unfinished interval, fraction of it done) per query time."""
        if self.a.ndim == 1:
            j, frac = self._locate1(self.a, self.b, t)
            return j, frac
        K = self.a.shape[1]
        js = np.empty((len(t), K), np.int64)
        fr = np.empty((len(t), K))
        for k in range(K):
            js[:, k], fr[:, k] = self._locate1(self.a[:, k], self.b[:, k], t)
        return js, fr

    @staticmethod
    def _locate1(a: I64, b: I64, t: I64) -> tuple[I64, F64]:
        S = len(a)
        j = np.searchsorted(b, t, side="right").astype(np.int64)
        jj = np.minimum(j, S - 1)
        span = np.maximum(b[jj] - a[jj], 1)
        frac = np.clip((t - a[jj]) / span, 0.0, 1.0) * (j < S)
        return j, frac

    @staticmethod
    def cumulative(loc: tuple[I64, F64], amounts: F64) -> F64:
        """Running totals [T, K, ...] of ``amounts`` [S, K, ...] at the located times."""
        j, frac = loc
        S = amounts.shape[0]
        csum = np.concatenate([np.zeros((1, *amounts.shape[1:])), np.cumsum(amounts, axis=0)])
        jj = np.minimum(j, S - 1)
        if j.ndim == 1:
            extra = (slice(None),) + (None,) * (amounts.ndim - 1)
            return np.asarray(csum[j] + amounts[jj] * frac[extra])
        cols = np.arange(j.shape[1])[None, :]
        extra = (slice(None), slice(None)) + (None,) * (amounts.ndim - 2)
        return np.asarray(csum[j, cols] + amounts[jj, cols] * frac[extra])


@dataclass
class SignalSamples:
    """Signals at T instants. GPU arrays are [T, N, G], EFA [T, N, E], OST [T, N, O], host [T, N]."""

    t_ns: I64  # [T] relative to the job's start
    gpu: dict[str, F64] = field(default_factory=dict)
    efa: dict[str, F64] = field(default_factory=dict)
    #: Per filesystem index: osc stats "<op>.<count|sum|sumsq|min|max>" and gauges, [T, N, O].
    osc: list[dict[str, F64]] = field(default_factory=list)
    #: Per filesystem index: llite and mdc stats, read-ahead, [T, N].
    llite: list[dict[str, F64]] = field(default_factory=list)
    mdc: list[dict[str, F64]] = field(default_factory=list)
    host: dict[str, F64] = field(default_factory=dict)
    #: Per rank [T, N, G]: process CPU by mode, read/write bytes.
    proc: dict[str, F64] = field(default_factory=dict)


class Signals:
    """Evaluates every node signal of a simulated run at arbitrary times."""

    def __init__(self, model: ClusterModel, chunk: Chunk) -> None:
        self.model, self.c = model, chunk
        hw = model.hw
        self.N, self.G, self.E = hw.nodes, hw.gpus_per_node, hw.efa_devices
        c = chunk
        # Per-rank GPU activity windows: compute = forward+backward, then the optimizer.
        self.compute_w = Windows(_interleave(c.dw_end, c.coll_end), _interleave(c.arrive, c.opt_end))
        # Kernel time, not window length: FSDP's stalls inside forward/backward leave the GPU idle.
        # Tensor-parallel all-reduces keep the GPU as busy as the compute around them.
        busy = c.compute_ns + c.tp_fwd_ns + c.tp_bwd_ns + c.a2a_fwd_ns + c.a2a_bwd_ns
        comp_len = _interleave(np.minimum(busy, c.arrive - c.dw_end), c.opt_end - c.coll_end) / NS
        clock_frac = np.repeat(c.sm_clock / hw.sm_clock_mhz, 2, axis=0)
        self.compute_amt = comp_len
        self.compute_energy_amt = comp_len * COMPUTE_W * clock_frac**2
        self.nccl_w = Windows(c.arrive, c.coll_end)
        self.nccl_amt = (c.coll_end - c.arrive) / NS
        self.step_w = Windows(c.start, c.end)
        step_len = (c.end - c.start) / NS
        self.thermal_amt = step_len * c.thermal * 1e6
        self.power_amt = step_len * c.power * 1e6
        self.coll_w = Windows(c.coll_start, c.coll_end[:, 0])
        self.load_w = Windows(c.load_a, c.load_b)
        self.ckpt_w = Windows(c.ckpt_a, c.ckpt_b)
        self.node_w = Windows(c.node_a, c.node_b)
        self._baselines()

    # --- what the nodes accumulated before the job ----------------------------------------

    def _baselines(self) -> None:
        m = self.model
        rng = np.random.default_rng([m.seed, 0xBA5E])
        N, G, E = self.N, self.G, self.E
        self.uptime = UPTIME_S + 977.0 * np.arange(N)  # [N]
        self.base_efa_bytes = rng.uniform(2e12, 9e13, (N, E))
        self.base_efa_retrans = rng.uniform(0, 5e4, (N, E)).round()
        self.base_lustre_bytes = rng.uniform(1e11, 5e12, (N,))
        self.base_gpu_energy = self.uptime[:, None] * IDLE_W * 1000 * rng.uniform(1.0, 1.6, (N, G))
        self.base_cmds = rng.integers(1800, 2600, (N, E)).astype(float)
        self.fb_used = FB_USED_MIB + rng.integers(-900, 900, (N, G)).astype(float)
        self.phase = rng.uniform(0, 2 * np.pi, (N, G))

    # --- evaluation ---------------------------------------------------------------------------

    def at(self, t_ns: I64 | list[int]) -> SignalSamples:
        t = np.asarray(t_ns, dtype=np.int64)
        snap = SignalSamples(t_ns=t)
        self._gpu(t, snap)
        self._efa(t, snap)
        self._lustre(t, snap)
        self._host(t, snap)
        return snap

    def _rank_cum(self, w: Windows, t: I64, amounts: F64) -> F64:
        return Windows.cumulative(w.locate(t), amounts).reshape(len(t), self.N, self.G)

    def _gpu(self, t: I64, snap: SignalSamples) -> None:
        m, c, hw = self.model, self.c, self.model.hw
        N, G = self.N, self.G
        t1 = t - NS
        both = np.concatenate([t, t1, t - 10 * NS])
        T = len(t)
        comp = self._rank_cum(self.compute_w, both, self.compute_amt)
        nccl = self._rank_cum(self.nccl_w, both, self.nccl_amt)
        ecomp = self._rank_cum(self.compute_w, both, self.compute_energy_amt)
        busy_c = np.clip(comp[:T] - comp[T : 2 * T], 0, 1)
        busy_n = np.clip(nccl[:T] - nccl[T : 2 * T], 0, 1)
        ts = (both / NS)[:, None, None]
        energy = self.base_gpu_energy[None] + 1000 * (
            IDLE_W * (ts + self.uptime[None, :, None]) + ecomp + NCCL_W * nccl
        )
        g = snap.gpu
        g["energy_mj"] = energy[:T]
        g["power_w"] = (energy[:T] - energy[T : 2 * T]) / 1000
        power10 = (energy[:T] - energy[2 * T :]) / 10000
        for name, (kc, kn) in KERNEL_PROFILE.items():
            g[name] = np.clip(busy_c * kc + busy_n * kn, 0, 1)
        g["util_gpu"] = np.rint(np.clip(busy_c + busy_n, 0, 1) * 100)
        g["util_mem"] = np.rint(g.pop("mem_util") * 100)
        g["gr_active"] = np.clip(busy_c + busy_n, 0, 1)
        # Instant clock and reasons: the step each rank is in (the last one after the run: a
        # hardware throttle does not lift when the job ends, so the end-of-run node trees
        # still show it).
        j = np.empty((T, hw.world_size), np.int64)
        for r in range(hw.world_size):
            j[:, r] = np.clip(np.searchsorted(c.start[:, r], t, side="right") - 1, 0, c.nsteps - 1)
        cols = np.arange(hw.world_size)[None, :]
        in_run = np.broadcast_to((t >= 0)[:, None], (T, hw.world_size))
        clock = np.where(in_run, c.sm_clock[j, cols], hw.sm_clock_mhz).reshape(T, N, G).astype(float)
        reasons = np.where(in_run, c.reasons[j, cols], 0).reshape(T, N, G)
        throttled_thermal = np.where(in_run, c.thermal[j, cols], False).reshape(T, N, G)
        idle = (busy_c + busy_n) < 0.05
        g["sm_clock"] = np.where(idle, float(IDLE_SM_CLOCK_MHZ), clock)
        g["reasons"] = (reasons | np.where(idle, GPU_IDLE, 0)).astype(float)
        g["mem_clock"] = np.full((T, N, G), float(hw.mem_clock_mhz))
        wobble = 0.6 * np.sin(ts[:T] / 23.0 + self.phase[None])
        temp = 32.0 + 0.055 * power10 + wobble
        g["temp"] = np.rint(np.where(throttled_thermal, 89.0 + wobble, temp))
        g["mem_temp"] = np.rint(np.where(throttled_thermal, 93.0 + wobble, temp + 6.0))
        g["thermal_violation_us"] = self._rank_cum(self.step_w, t, self.thermal_amt)
        g["power_violation_us"] = self._rank_cum(self.step_w, t, self.power_amt)
        g["fb_used"] = np.broadcast_to(self.fb_used, (T, N, G)).astype(float)
        # Bus traffic per GPU over the last second: its share of the node's EFA traffic and
        # of the batches read (both cross PCIe), and its ring traffic over NVLink.
        loc_now, loc_1 = self.coll_w.locate(t), self.coll_w.locate(t1)
        node_bytes = c.efa_bytes.sum(axis=2)  # [S, N]
        efa_rate = Windows.cumulative(loc_now, node_bytes) - Windows.cumulative(loc_1, node_bytes)
        nvl = m.rank_ring_bytes - (m.wire_bytes_per_node / G if N > 1 else 0.0)
        nvl_amt = np.full((c.nsteps, N), nvl)
        nvl_rate = Windows.cumulative(loc_now, nvl_amt) - Windows.cumulative(loc_1, nvl_amt)
        reads = c.read_bytes.sum(axis=2)
        read_rate = Windows.cumulative(self.load_w.locate(t), reads) - Windows.cumulative(
            self.load_w.locate(t1), reads
        )
        g["pcie_tx"] = np.broadcast_to((efa_rate / G + 2e7)[:, :, None], (T, N, G)).copy()
        g["pcie_rx"] = np.broadcast_to(((efa_rate + read_rate) / G + 2e7)[:, :, None], (T, N, G)).copy()
        g["nvlink_tx"] = np.broadcast_to(nvl_rate[:, :, None], (T, N, G)).copy()
        g["nvlink_rx"] = g["nvlink_tx"].copy()

    def _efa(self, t: I64, snap: SignalSamples) -> None:
        c, hw = self.c, self.model.hw
        loc = self.coll_w.locate(t)
        pkt = hw.efa_packet_bytes
        cum_bytes = Windows.cumulative(loc, c.efa_bytes)
        retrans_amt = c.efa_bytes / pkt * c.retrans_rate
        retrans = Windows.cumulative(loc, retrans_amt)
        imp = Windows.cumulative(loc, c.impaired_events.astype(float))
        unresp = Windows.cumulative(loc, c.unresponsive_events.astype(float))
        e = snap.efa
        tx = self.base_efa_bytes[None] + cum_bytes
        rx = self.base_efa_bytes[None] * 1.0003 + cum_bytes
        e["tx_bytes"], e["rx_bytes"] = tx, rx
        e["tx_pkts"], e["rx_pkts"] = tx / pkt, rx / pkt
        # aws-ofi-nccl moves the payload with RDMA writes; sends carry the protocol messages.
        e["rdma_write_bytes"], e["rdma_write_recv_bytes"] = 0.96 * tx, 0.96 * rx
        e["rdma_write_wrs"] = 0.96 * tx / (512 * 1024)
        e["send_bytes"], e["recv_bytes"] = 0.04 * tx, 0.04 * rx
        e["send_wrs"], e["recv_wrs"] = 0.04 * tx / 4096, 0.04 * rx / 4096
        # No RDMA reads in this job: the counters keep what earlier jobs left.
        e["rdma_read_bytes"] = np.broadcast_to(self.base_efa_bytes[None] * 0.002, tx.shape).copy()
        e["rdma_read_wrs"] = e["rdma_read_bytes"] / (256 * 1024)
        e["rdma_read_resp_bytes"] = np.broadcast_to(self.base_efa_bytes[None] * 0.0021, tx.shape).copy()
        zero = np.zeros_like(tx)
        e["rx_drops"] = self.base_efa_retrans[None] * 0.01 + 0.1 * retrans
        e["retrans_pkts"] = self.base_efa_retrans[None] + retrans
        e["retrans_bytes"] = e["retrans_pkts"] * pkt
        e["retrans_timeout_events"] = self.base_efa_retrans[None] * 1e-3 + 2e-3 * retrans
        e["unresponsive_remote_events"] = unresp
        e["impaired_remote_conn_events"] = imp
        ts = (t / NS)[:, None, None]
        e["submitted_cmds"] = np.broadcast_to(self.base_cmds[None], tx.shape).copy()
        e["completed_cmds"] = e["submitted_cmds"]
        e["keep_alive_rcvd"] = np.floor(ts + self.uptime[None, :, None]) + zero
        # Every other catalogued counter (the error counters) stays at 0.
        for name in (*EFA_PORT_COUNTERS, *EFA_DEVICE_COUNTERS):
            e.setdefault(name, zero)

    def _lustre(self, t: I64, snap: SignalSamples) -> None:
        m, c = self.model, self.c
        wl, topo = m.wl, m.topo
        T, N = len(t), self.N
        t1 = t - NS
        load_now, load_1 = self.load_w.locate(t), self.load_w.locate(t1)
        ck_now, ck_1 = self.ckpt_w.locate(t), self.ckpt_w.locate(t1)
        ts = (t / NS)[:, None]
        for fs in topo.filesystems:
            n_ost = fs.osts
            osc: dict[str, F64] = {}
            lli: dict[str, F64] = {}
            zeros3 = np.zeros((T, N, n_ost))
            zeros2 = np.zeros((T, N))
            base = self.base_lustre_bytes[None, :] * (1.0 + 0.3 * fs.index)
            reads = writes = _OstTraffic.zero(zeros3)
            llread_lat = zeros2.copy()
            if fs.index == topo.data_fs.index:
                lat_us = c.read_latency * 1e6
                reads = _OstTraffic.of(
                    self.load_w, load_now, load_1, c.read_bytes, wl.read_rpc_bytes, lat_us, lat_us * 2.5
                )
                llread_lat = reads.latency.sum(axis=2)
            if fs.index == topo.checkpoint_fs.index:
                wlat_us = c.write_latency * 1e6
                peak = np.where(c.write_bytes > 0, wlat_us * 2.5, 0.0)
                writes = _OstTraffic.of(
                    self.ckpt_w, ck_now, ck_1, c.write_bytes, wl.write_rpc_bytes, wlat_us, peak
                )
            rr, ww = reads.nbytes.sum(axis=2), writes.nbytes.sum(axis=2)
            # Base traffic from earlier jobs, split evenly over the OSTs.
            base3 = (base / n_ost)[:, :, None]
            read_rpc = wl.read_rpc_bytes
            osc["read_bytes.count"] = base3 / read_rpc + reads.rpcs
            osc["read_bytes.sum"] = base3 + reads.nbytes
            osc["read_bytes.min"] = np.full((T, N, n_ost), float(read_rpc))
            osc["read_bytes.max"] = np.full((T, N, n_ost), float(read_rpc))
            osc["write_bytes.count"] = base3 * 0.1 / wl.write_rpc_bytes + writes.rpcs
            osc["write_bytes.sum"] = base3 * 0.1 + writes.nbytes
            osc["write_bytes.min"] = np.full((T, N, n_ost), 4096.0)
            osc["write_bytes.max"] = np.full((T, N, n_ost), float(wl.write_rpc_bytes))
            base_lat = wl.ost_rpc_latency_s * 1e6 * 2.0
            osc["ost_read.count"] = osc["read_bytes.count"]
            osc["ost_read.sum"] = base3 / read_rpc * base_lat + reads.latency
            osc["ost_read.sumsq"] = base3 / read_rpc * base_lat**2 + reads.latency_sq
            osc["ost_read.min"] = np.full((T, N, n_ost), 310.0)
            osc["ost_read.max"] = np.maximum(reads.latency_max, 48_000.0)
            osc["ost_write.count"] = osc["write_bytes.count"]
            osc["ost_write.sum"] = base3 * 0.1 / wl.write_rpc_bytes * base_lat * 2 + writes.latency
            osc["ost_write.sumsq"] = (
                base3 * 0.1 / wl.write_rpc_bytes * (base_lat * 2) ** 2 + writes.latency_sq
            )
            osc["ost_write.min"] = np.full((T, N, n_ost), 520.0)
            osc["ost_write.max"] = np.maximum(writes.latency_max, 91_000.0)
            pings = np.floor((ts[:, :, None] + self.uptime[None, :, None]) / 25.0) + zeros3
            reqs = osc["ost_read.count"] + osc["ost_write.count"] + pings
            osc["req_waittime.count"] = reqs
            osc["req_waittime.sum"] = 1.08 * (osc["ost_read.sum"] + osc["ost_write.sum"]) + pings * 180
            osc["req_waittime.sumsq"] = (
                1.17 * (osc["ost_read.sumsq"] + osc["ost_write.sumsq"]) + pings * 180**2
            )
            osc["req_waittime.min"] = np.full((T, N, n_ost), 95.0)
            osc["req_waittime.max"] = np.maximum(osc["ost_read.max"], osc["ost_write.max"]) * 1.08
            osc["req_active.count"] = reqs
            osc["req_active.sum"] = reqs * 1.0 + reads.latency / max(base_lat, 1.0) * 0.5
            osc["req_active.min"] = np.ones((T, N, n_ost))
            osc["req_active.max"] = np.full((T, N, n_ost), float(wl.max_rpcs_in_flight))
            osc["ost_punch.count"] = zeros3 + 3
            osc["ost_punch.sum"] = zeros3 + 3 * 400
            osc["ost_punch.sumsq"] = zeros3 + 3 * 400**2
            osc["ost_punch.min"] = zeros3 + 350
            osc["ost_punch.max"] = zeros3 + 460
            # Little's law: RPCs in flight = (latency-seconds accumulated per second).
            cap = float(wl.max_rpcs_in_flight)
            osc["read_rpcs_in_flight"] = np.rint(np.clip(reads.in_flight, 0, cap))
            osc["write_rpcs_in_flight"] = np.rint(np.clip(writes.in_flight, 0, cap))
            osc["pending_read_pages"] = np.rint(np.maximum(reads.in_flight - cap, 0) * read_rpc / PAGE)
            osc["pending_write_pages"] = np.rint(
                np.maximum(writes.in_flight - cap, 0) * wl.write_rpc_bytes / PAGE
            )
            osc["read_pages_per_rpc"] = osc["read_bytes.count"]
            osc["write_pages_per_rpc"] = osc["write_bytes.count"]
            snap.osc.append(osc)

            # llite: the application's view. Each sample is a file: open, getattr, read, close.
            samples_amt = np.full((c.nsteps, N), float(self.G * wl.samples_per_rank))
            files_amt = np.where(c.write_bytes.sum(axis=2) > 0, float(self.G), 0.0)
            opens = np.zeros((T, N))
            if fs.index == topo.data_fs.index:
                opens = opens + Windows.cumulative(load_now, samples_amt)
            if fs.index == topo.checkpoint_fs.index:
                opens = opens + Windows.cumulative(ck_now, files_amt)
            base_ops = base / wl.sample_bytes
            lli["read_bytes.count"] = base[:, :] / read_rpc + rr / read_rpc
            lli["read_bytes.sum"] = base[:, :] + rr
            lli["read_bytes.min"] = np.full((T, N), 4096.0)
            lli["read_bytes.max"] = np.full((T, N), float(read_rpc))
            lli["write_bytes.count"] = base * 0.1 / wl.write_rpc_bytes + ww / wl.write_rpc_bytes
            lli["write_bytes.sum"] = base * 0.1 + ww
            lli["write_bytes.min"] = np.full((T, N), 4096.0)
            lli["write_bytes.max"] = np.full((T, N), float(wl.write_rpc_bytes))
            lli["read.count"] = lli["read_bytes.count"]
            lli["read.sum"] = base / read_rpc * base_lat + llread_lat
            lli["write.count"] = lli["write_bytes.count"]
            lli["write.sum"] = base * 0.1 / wl.write_rpc_bytes * base_lat * 2 + writes.latency.sum(axis=2)
            for op, per_open, us in (
                ("open", 1, 160.0),
                ("close", 1, 90.0),
                ("getattr", 2, 12.0),
                ("inode_permission", 3, 1.0),
                ("statfs", 0, 40.0),
            ):
                if per_open:
                    count = (base_ops + opens) * per_open
                else:
                    count = np.floor((ts + self.uptime[None, :]) / 60.0) + zeros2
                lli[f"{op}.count"] = count
                lli[f"{op}.sum"] = count * us
            pages = lli["read_bytes.sum"] / PAGE
            lli["read_ahead.hits"] = np.floor(pages * 0.96)
            lli["read_ahead.misses"] = np.floor(pages * 0.04)
            lli["read_ahead.readpage_not_consecutive"] = np.floor(lli["read.count"] * 0.01)
            lli["read_ahead.miss_inside_window"] = np.floor(pages * 0.002)
            snap.llite.append(lli)

            mdc: dict[str, F64] = {}
            count = base_ops + opens
            for op, mult, us in (
                ("mds_getattr", 1.0, 210.0),
                ("mds_close", 1.0, 180.0),
                ("ldlm_ibits_enqueue", 1.0, 260.0),
            ):
                mdc[f"{op}.count"] = count * mult
                mdc[f"{op}.sum"] = count * mult * us
            mdc["req_waittime.count"] = count * 3
            mdc["req_waittime.sum"] = count * 3 * 230.0
            mdc["req_active.count"] = count * 3
            mdc["req_active.sum"] = count * 3 * 1.4
            snap.mdc.append(mdc)

    def _host(self, t: I64, snap: SignalSamples) -> None:
        m, c, hw = self.model, self.c, self.model.hw
        wl = m.wl
        N, G = self.N, self.G
        T = len(t)
        ts = (t / NS)[:, None]
        up = ts + self.uptime[None, :]
        load_now = self.load_w.locate(t)
        node_now = self.node_w.locate(t)
        load_len = np.maximum((c.load_b - c.load_a) / NS, 1e-3)
        node_len = np.maximum((c.node_b - c.node_a) / NS, 1e-3)
        read_gb = c.read_bytes.sum(axis=2) / 1e9
        write_gb = c.write_bytes.sum(axis=2) / 1e9
        loader = Windows.cumulative(load_now, c.loader_cpu_s)
        lus_sys = Windows.cumulative(load_now, 0.4 * read_gb) + Windows.cumulative(
            self.ckpt_w.locate(t), 0.6 * write_gb
        )
        # Workers block on their reads: a little on any node (baseline iowait), a lot when the
        # reads take longer than the decoding they feed.
        blocked = G * wl.loader_workers * (0.5 * np.maximum(c.io_time - c.cpu_time, 0.0) + 0.05 * c.io_time)
        room = np.maximum(0.8 * (hw.ncpus * load_len - c.loader_cpu_s - (G + 2) * load_len), 0.0)
        iowait = Windows.cumulative(load_now, np.minimum(blocked, room))
        # The job's processes spin one core each (CUDA synchronisation) from the job's start.
        job_s = np.maximum(ts + 90.0, 0.0)
        h = snap.host
        # A co-tenant's processes count as the node's user time, not the job's processes'.
        neighbour = Windows.cumulative(node_now, c.neighbour_cpus * node_len)
        h["user"] = up * 0.5 + job_s * G * 1.0 + loader + neighbour
        h["nice"] = up * 0.01
        h["system"] = up * 0.3 + job_s * G * 0.08 + lus_sys
        h["iowait"] = up * 0.002 + iowait
        h["irq"] = up * 0.01
        h["softirq"] = up * 0.05
        h["steal"] = np.zeros((T, N))
        busy = h["user"] + h["nice"] + h["system"] + h["iowait"] + h["irq"] + h["softirq"]
        h["idle"] = hw.ncpus * up - busy
        util = (c.loader_cpu_s + (G + 1) * node_len) / (hw.ncpus * node_len)
        # A co-tenant's runnable tasks make the job's wait (and the job's its): its own share.
        cpu_some = node_len * np.minimum(
            0.01 + 0.9 * np.clip((util - 0.75) / 0.2, 0, 1) + c.psi_cpu_share, 1.0
        )
        # Direct reclaim stalls some tasks (and now and then all of them) of a node short of memory.
        mem_some = Windows.cumulative(node_now, c.psi_mem_share * node_len)
        io_some = np.minimum(node_len, np.maximum(c.io_time - c.cpu_time, 0.0) + 0.002 * node_len)
        h["pressure.cpu.some"] = 1e6 * (up * 0.004 + Windows.cumulative(node_now, cpu_some))
        h["pressure.cpu.full"] = np.zeros((T, N))
        h["pressure.io.some"] = 1e6 * (up * 0.001 + Windows.cumulative(node_now, io_some))
        h["pressure.io.full"] = 1e6 * (up * 0.0005 + Windows.cumulative(node_now, 0.6 * io_some))
        h["pressure.memory.some"] = 1e6 * up * 0.0003 + 1e6 * mem_some
        h["pressure.memory.full"] = 1e6 * up * 0.0001 + 0.3e6 * mem_some
        p = snap.proc
        job3 = job_s[:, :, None] + np.zeros((1, 1, G))
        p["user"] = job3 * 1.0 + (loader / G)[:, :, None]
        p["system"] = job3 * 0.08 + (lus_sys / G)[:, :, None]
        shape = (T, N, G)
        p["iowait"] = np.broadcast_to((iowait / G)[:, :, None], shape).copy()
        rb = Windows.cumulative(load_now, c.read_bytes.sum(axis=2))
        wb = Windows.cumulative(self.ckpt_w.locate(t), c.write_bytes.sum(axis=2))
        p["read_bytes"] = np.broadcast_to((rb / G)[:, :, None], shape).copy()
        p["write_bytes"] = np.broadcast_to((wb / G)[:, :, None], shape).copy()


def op_bounds(stats: dict[str, F64], key: str) -> tuple[F64, F64]:
    """(min, max) of a Lustre stats line, as whole units: the tracked extremes where the model
    keeps them, else a spread around the mean (0.3x and 6x); both 0 while the count is 0."""
    count = stats[f"{key}.count"]
    mean = stats[f"{key}.sum"] / np.maximum(count, 1.0)
    lo = stats.get(f"{key}.min")
    hi = stats.get(f"{key}.max")
    vmin = np.floor(lo if lo is not None else mean * 0.3)
    vmax = np.floor(hi if hi is not None else mean * 6.0)
    empty = np.floor(count) == 0
    return np.where(empty, 0.0, np.minimum(vmin, vmax)), np.where(empty, 0.0, vmax)


def _interleave(x: I64, y: I64) -> I64:
    """Rows x0, y0, x1, y1, ... of two [S, ...] arrays."""
    out = np.empty((2 * x.shape[0], *x.shape[1:]), dtype=np.int64)
    out[0::2], out[1::2] = x, y
    return out


@dataclass(frozen=True)
class _OstTraffic:
    """One direction's cumulative per-OST client counters (T x N x OSTs), from per-window volumes."""

    nbytes: F64
    rpcs: F64
    latency: F64  # summed RPC latency, us
    latency_sq: F64
    in_flight: F64  # RPCs in flight at each instant (Little's law over the last second)
    latency_max: F64

    @classmethod
    def zero(cls, zeros: F64) -> _OstTraffic:
        return cls(zeros, zeros, zeros, zeros, zeros, zeros)

    @classmethod
    def of(
        cls,
        windows: Windows,
        now: tuple[I64, F64],
        second_ago: tuple[I64, F64],
        nbytes: F64,
        rpc_bytes: float,
        latency_us: F64,
        peak_us: F64,
    ) -> _OstTraffic:
        rpcs = nbytes / rpc_bytes
        latency = Windows.cumulative(now, rpcs * latency_us)
        return cls(
            nbytes=Windows.cumulative(now, nbytes),
            rpcs=Windows.cumulative(now, rpcs),
            latency=latency,
            latency_sq=Windows.cumulative(now, rpcs * latency_us**2),
            in_flight=(latency - Windows.cumulative(second_ago, rpcs * latency_us)) / 1e6,
            latency_max=_running_max(windows, now, peak_us),
        )


def _running_max(w: Windows, loc: tuple[I64, F64], values: F64) -> F64:
    """The largest value among the intervals started by each query time."""
    j, frac = loc
    S = values.shape[0]
    run = np.maximum.accumulate(values, axis=0)
    started = j + (frac > 0)  # intervals that have begun
    idx = np.clip(started - 1, 0, S - 1)
    if j.ndim == 1:
        out = run[idx]
        return np.asarray(np.where((started > 0)[(slice(None),) + (None,) * (values.ndim - 1)], out, 0.0))
    cols = np.arange(j.shape[1])[None, :]
    out = run[idx, cols]
    mask = (started > 0)[(slice(None), slice(None)) + (None,) * (values.ndim - 2)]
    return np.asarray(np.where(mask, out, 0.0))
