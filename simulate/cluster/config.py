"""The simulated cluster's hardware and the training job's workload, as plain data.

Defaults describe a p5.48xlarge-like node (8 H100, 32 EFA devices sharing 3,200 Gbit/s, 192
vCPUs) reading its dataset from FSx for Lustre, running a data-parallel job whose healthy
step is compute-bound: about 1.2 s of compute and 0.15 s of gradient all-reduce. Scenarios
change the hardware's behaviour (faults), never these nominal figures, so a fault's effect
is always measured against the same healthy baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    forward_s: float = 0.33
    backward_s: float = 0.66
    optimizer_s: float = 0.05
    #: Gradient bytes all-reduced per step (a 10B-parameter model in bf16).
    grad_bytes: float = 20e9
    samples_per_rank: int = 16
    tokens_per_sample: int = 4096
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
    #: What one client reaches to one healthy OST.
    ost_read_bytes_per_s: float = 1.5e9
    ost_write_bytes_per_s: float = 1.0e9
    ost_rpc_latency_s: float = 0.002
    max_rpcs_in_flight: int = 8
    #: Checkpoint every this many steps (0: never); each rank writes its shard.
    checkpoint_every: int = 0
    checkpoint_bytes_per_rank: int = 2 * GIB
    #: Relative standard deviation of every duration and volume.
    noise: float = 0.01

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
