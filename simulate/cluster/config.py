"""The simulated cluster's hardware and the training job's workload, as plain data.

Defaults describe a p5.48xlarge-like node (8 H100, 32 EFA devices sharing 3,200 Gbit/s, 192
vCPUs) reading its dataset from FSx for Lustre. The job's costs come from its description
(:mod:`.physics`: FLOPs, memory, collective sizes) through :func:`workload_for`. Scenarios
change the hardware's behaviour (faults), never these nominal figures, so a fault's effect is
always measured against the same healthy cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fmdiag.simulate.cluster.physics import ADAM_BYTES_PER_PARAM, DEFAULT_JOB, Job

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Hardware:
    nodes: int = 4
    gpus_per_node: int = 8
    efa_devices: int = 32
    #: The node's fabric bandwidth, shared evenly by its EFA devices; fewer devices (for
    #: smaller dumps) keep the node's bandwidth, so a scenario behaves the same.
    efa_node_gbps: float = 3200.0
    #: Fraction of line rate a ring all-reduce reaches on a healthy fabric.
    efa_efficiency: float = 0.75
    efa_packet_bytes: int = 8192
    efa_srd_counters: bool = True
    #: Per-GPU NVLink bandwidth a ring all-reduce reaches inside one node.
    nvlink_bytes_per_s: float = 450e9
    gpu_name: str = "NVIDIA H100 80GB HBM3"
    sm_clock_mhz: int = 1980
    mem_clock_mhz: int = 2619
    #: vCPUs per GPU (a p5.48xlarge has 192 for 8 GPUs), so the host share per rank stays the
    #: same whatever the GPU count and a CPU-bound input pipeline saturates any node size.
    cpus_per_gpu: int = 24
    lustre_filesystems: int = 1
    osts_per_fs: int = 8
    lustre_version: str = "2.14"

    def validate(self) -> None:
        """Refuse sizes the model cannot represent, naming the option."""
        checks = {
            "nodes": self.nodes >= 1,
            "gpus_per_node": 1 <= self.gpus_per_node <= 16,
            "efa_devices": 1 <= self.efa_devices <= 64,
            "lustre_filesystems": 1 <= self.lustre_filesystems <= 8,
            "osts_per_fs": 1 <= self.osts_per_fs <= 256,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)} is out of range")
        if self.lustre_version not in ("2.10", "2.14"):
            raise ValueError(f"lustre_version={self.lustre_version!r}: expected 2.10 or 2.14")

    @property
    def ncpus(self) -> int:
        return self.cpus_per_gpu * self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def efa_device_bytes_per_s(self) -> float:
        """Line rate of one EFA device in bytes per second."""
        return self.efa_node_gbps * 1e9 / 8 / self.efa_devices


@dataclass(frozen=True)
class Workload:
    """One job's per-step costs on this cluster, derived from its :class:`~.physics.Job` by
    :func:`workload_for` (so they obey the FLOPs, memory and bandwidth budget), plus the data
    pipeline, storage and the background noise every real cluster has."""

    job: str = DEFAULT_JOB
    parallelism: str = "fsdp"
    tp: int = 1
    #: Pipeline stages and micro-batches per step (1F1B, :mod:`.pipeline`); 1: no pipeline.
    pp: int = 1
    microbatches: int = 1
    #: Each stage's compute relative to the mean stage (the last holds the output head).
    stage_weights: tuple[float, ...] = (1.0,)
    #: Bytes of one micro-batch's activations (or gradients) sent to the neighbour stage.
    p2p_bytes: float = 0.0
    #: Expert parallelism (:mod:`.physics` ``Job.ep``): ranks per expert-parallel group, the
    #: share of compute in the experts, the bytes one all-to-all sends, MoE layers a step.
    ep: int = 1
    expert_share: float = 0.0
    a2a_bytes: float = 0.0
    moe_layers: int = 0
    #: Communication units per step (FSDP wrap units or groups of DDP buckets).
    units: int = 16
    forward_s: float = 0.337
    backward_s: float = 0.674
    optimizer_s: float = 0.004
    #: Bytes of one unsharded bf16 parameter (or gradient) copy per tensor-parallel rank.
    grad_bytes: float = 16e9
    samples_per_rank: int = 16
    tokens_per_sample: int = 512
    sample_bytes: int = 2 * MIB
    #: Dataloader worker processes per rank and the CPU time one sample costs them.
    loader_workers: int = 21
    loader_cpu_s_per_sample: float = 0.05
    #: Batches the loader may have ready ahead of the step that consumes them.
    prefetch_batches: int = 2
    #: Fixed cost of taking a ready batch (collate, pinned-memory copy).
    base_data_wait_s: float = 0.003
    read_rpc_bytes: int = 1 * MIB
    write_rpc_bytes: int = 4 * MIB
    #: What one OST delivers in all, shared by every client reading from it at once.
    ost_read_bytes_per_s: float = 6.0e9
    ost_write_bytes_per_s: float = 6.0e9
    ost_rpc_latency_s: float = 0.002
    max_rpcs_in_flight: int = 8
    #: Checkpoint every this many steps (0: never); each rank writes its shard of the full
    #: training state, so a checkpoint's bytes are the model's, whatever the job's size.
    checkpoint_every: int = 25
    checkpoint_bytes_per_rank: int = 2 * GIB
    #: Relative standard deviation of every duration and volume.
    noise: float = 0.01
    #: Persistent per-GPU speed differences (silicon, cooling): relative standard deviation.
    gpu_speed_spread: float = 0.015
    #: Data-dependent imbalance: per step and rank, compute scales by a lognormal of this sigma
    #: (uneven sequence lengths move the slowest rank from step to step). 0: packed batches.
    seq_imbalance: float = 0.0
    #: The first steps run slower (allocator warm-up, autotuning, NCCL channel set-up).
    warmup_steps: int = 3
    #: Python garbage collection: about every this many steps one rank pauses for ``gc_pause_s``.
    gc_every: int = 40
    gc_pause_s: float = 0.18
    #: Probability that one collective of a step is slow, and how much slower (heavy tail).
    slow_collective_p: float = 0.03
    slow_collective_factor: float = 3.0

    def validate(self, hw: Hardware) -> None:
        if (self.loader_workers + 1) * hw.gpus_per_node > 0.95 * hw.ncpus:
            raise ValueError(
                f"loader_workers={self.loader_workers} x {hw.gpus_per_node} GPUs needs more than "
                f"the node's {hw.ncpus} CPUs"
            )
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 0")
        if not 0 <= self.noise < 0.2:
            raise ValueError(f"noise={self.noise} must be in [0, 0.2)")
        if self.parallelism not in ("ddp", "fsdp") or self.units < 1:
            raise ValueError(f"parallelism={self.parallelism!r}, units={self.units}: expected ddp|fsdp, >= 1")
        if self.pp < 1 or hw.world_size % self.pp or len(self.stage_weights) != self.pp:
            raise ValueError(
                f"pp={self.pp}: needs a GPU count ({hw.world_size}) that is a multiple of it and one "
                f"weight per stage (got {len(self.stage_weights)})"
            )
        if self.ep > 1 and (hw.gpus_per_node % self.ep or self.tp != 1 or self.pp != 1):
            raise ValueError(f"ep={self.ep}: needs a node's GPUs to be a multiple of it, tp=1 and pp=1")
        if self.pp > 1 and (self.microbatches < 1 or self.parallelism != "ddp" or self.tp != 1):
            raise ValueError(f"pp={self.pp}: needs ddp, tp=1 and >= 1 micro-batch")


def workload_for(job: Job, hw: Hardware, **overrides: Any) -> Workload:
    """The per-step costs of ``job`` on ``hw``; refuses a job that does not fit in GPU memory."""
    world = hw.world_size
    job.validate(world)
    compute = job.compute_s()
    fields: dict[str, Any] = {
        "job": job.name,
        "parallelism": job.parallelism,
        "tp": job.tp,
        "pp": job.pp,
        "microbatches": job.microbatches,
        "stage_weights": job.stage_weights(),
        "p2p_bytes": job.p2p_bytes() if job.pp > 1 else 0.0,
        "ep": job.ep,
        "expert_share": job.expert_share,
        "a2a_bytes": job.a2a_bytes(),
        "moe_layers": job.layers if job.ep > 1 else 0,
        "units": job.units(),
        "forward_s": compute / 3.0,
        "backward_s": 2.0 * compute / 3.0,
        "optimizer_s": job.optimizer_s(world),
        "grad_bytes": job.grad_bytes(),
        "samples_per_rank": job.samples_per_rank,
        "tokens_per_sample": job.seq_len,
        "sample_bytes": job.sample_bytes,
        "loader_cpu_s_per_sample": job.loader_cpu_s_per_sample,
        # Each rank writes its shard of weights and optimizer state.
        "checkpoint_bytes_per_rank": int(ADAM_BYTES_PER_PARAM * job.params / world),
    }
    fields.update(overrides)
    return Workload(**fields)
