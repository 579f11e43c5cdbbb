"""Training-job physics: compute from FLOPs, memory per GPU, and what each collective costs.

The simulator used to take forward and backward durations as given, which let it run a 10B
model under plain data parallelism at four times an H100's peak. Here a job is described the
way its owners would (parameters, layers, hidden size, sequence length, batch, parallelism,
the model FLOPs utilisation it reaches) and everything else follows:

- compute per step: about 6 x parameters x tokens (forward 2, backward 4) plus attention
  (12 x layers x hidden x sequence length per token), divided over tensor-parallel ranks, at
  ``mfu`` of the GPU's dense BF16 peak;
- memory per GPU: 16 bytes per parameter for mixed-precision Adam (sharded by FSDP over the
  data-parallel ranks, split by tensor parallelism) plus checkpointed activations; a job that
  does not fit is refused, as the real one would die with an out-of-memory error;
- communication: DDP all-reduces 25 MiB gradient buckets during backward; FSDP all-gathers
  each unit's parameters before its forward and backward and reduce-scatters its gradients
  after its backward. A ring collective moves ``(n-1)/n`` of the buffer per phase and pays a
  latency per hop, so its latency grows with the ring (NCCL switches to trees at scale).

Numbers are public figures (DOMAIN.md, "Workload physics").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: H100 SXM dense BF16 peak (1,979 TFLOP/s only with 2:4 sparsity) and HBM3 bandwidth.
H100_BF16_FLOPS = 989e12
H100_HBM_BYTES_PER_S = 3.35e12
H100_MEMORY_BYTES = 80e9
#: Mixed-precision Adam: bf16 weights and grads, fp32 master weights and two moments.
ADAM_BYTES_PER_PARAM = 16
#: DDP's default gradient bucket (``bucket_cap_mb``).
DDP_BUCKET_BYTES = 25 * (1 << 20)
#: At most this many communication units are modelled per step (buckets are grouped beyond).
MAX_UNITS = 16
#: Per-hop latency of a ring collective step, and the rank count above which NCCL uses trees.
HOP_LATENCY_S = 6e-6
TREE_ABOVE_RANKS = 64
#: Fixed cost of launching one collective (kernel launch, proxy thread hand-off).
COLLECTIVE_LAUNCH_S = 25e-6


@dataclass(frozen=True)
class Job:
    """A training job as its owners describe it."""

    name: str
    description: str
    params: float
    layers: int
    hidden: int
    seq_len: int
    #: Sequences each data-parallel replica processes per optimizer step.
    samples_per_rank: int
    parallelism: str  # "ddp" | "fsdp"
    tp: int = 1
    #: Model FLOPs utilisation this job reaches on healthy hardware (30-50% is realistic on H100).
    mfu: float = 0.40
    #: Bytes the dataloader reads from storage per sample, and CPU seconds it spends on one.
    sample_bytes: int = 32 * 1024
    loader_cpu_s_per_sample: float = 0.002
    #: Fewest nodes it fits on (memory) and the most it is meant for (documentation only).
    min_nodes: int = 1
    max_nodes: int = 64

    @property
    def tokens_per_rank(self) -> int:
        return self.samples_per_rank * self.seq_len

    def flops_per_token(self) -> float:
        return 6.0 * self.params + 12.0 * self.layers * self.hidden * self.seq_len

    def compute_s(self, peak_flops: float = H100_BF16_FLOPS) -> float:
        """Forward + backward seconds per step on one GPU at full clock."""
        return self.tokens_per_rank * self.flops_per_token() / self.tp / (peak_flops * self.mfu)

    def optimizer_s(self, world_size: int) -> float:
        """Adam's step: memory-bound, reading and writing the local optimizer state twice."""
        shard = self.param_shards(world_size)
        state = ADAM_BYTES_PER_PARAM * self.params / shard
        return 2.0 * state / (0.6 * H100_HBM_BYTES_PER_S)

    def param_shards(self, world_size: int) -> int:
        """Over how many GPUs one copy of the weights and optimizer state is spread."""
        return world_size if self.parallelism == "fsdp" else self.tp

    def memory_bytes(self, world_size: int) -> float:
        """Peak memory per GPU: sharded static state, unsharded units in flight, activations."""
        static = ADAM_BYTES_PER_PARAM * self.params / self.param_shards(world_size)
        # FSDP keeps two gathered units (the one computing and the one prefetched) in bf16.
        gathered = 2 * 2.0 * self.params / self.tp / self.units() if self.parallelism == "fsdp" else 0.0
        # Activation checkpointing per layer: the layer inputs stay, one layer is recomputed.
        per_layer = 2.0 * self.tokens_per_rank * self.hidden / self.tp
        activations = per_layer * self.layers + 34.0 * self.tokens_per_rank * self.hidden / self.tp
        return static + gathered + activations

    def grad_bytes(self) -> float:
        """Bytes of one full (unsharded) bf16 gradient or parameter copy per tensor-parallel rank."""
        return 2.0 * self.params / self.tp

    def units(self) -> int:
        """Communication units per step: FSDP wrap units, or groups of DDP buckets."""
        if self.parallelism == "fsdp":
            return min(self.layers, MAX_UNITS)
        return max(1, min(math.ceil(self.grad_bytes() / DDP_BUCKET_BYTES), MAX_UNITS))

    def validate(self, world_size: int, gpu_memory: float = H100_MEMORY_BYTES) -> None:
        if self.parallelism not in ("ddp", "fsdp"):
            raise ValueError(f"job {self.name}: parallelism {self.parallelism!r} is not ddp or fsdp")
        if world_size % self.tp:
            raise ValueError(f"job {self.name}: {world_size} GPUs are not a multiple of tp={self.tp}")
        if not 0.05 <= self.mfu <= 0.65:
            raise ValueError(f"job {self.name}: mfu={self.mfu} is outside what H100 training reaches")
        need = self.memory_bytes(world_size)
        usable = 0.92 * gpu_memory
        if need > usable:
            fits = next((w for w in range(world_size, 1 << 16) if self.memory_bytes(w) <= usable), None)
            hint = f"it fits on {fits} GPUs or more" if fits else "it does not fit on any number of GPUs"
            raise ValueError(
                f"job {self.name} needs {need / 1e9:.0f} GB per GPU on {world_size} GPUs, more than the "
                f"{usable / 1e9:.0f} GB usable of {gpu_memory / 1e9:.0f} GB: {hint}"
            )


def ring_latency_s(ranks: int, phases: int) -> float:
    """Latency part of one collective over ``ranks``: per hop on a ring, log-depth on a tree."""
    if ranks <= 1:
        return COLLECTIVE_LAUNCH_S
    hops = (ranks - 1) if ranks <= TREE_ABOVE_RANKS else 2 * math.ceil(math.log2(ranks))
    return COLLECTIVE_LAUNCH_S + phases * hops * HOP_LATENCY_S


JOBS: dict[str, Job] = {
    j.name: j
    for j in (
        Job(
            "vlm-8b-fsdp",
            "An 8B vision-language model, FSDP over every GPU: 16 image-text samples of 512 tokens per "
            "rank, each a 2 MiB image the dataloader decodes (the job whose input pipeline can bind).",
            params=8.0e9,
            layers=32,
            hidden=4096,
            seq_len=512,
            samples_per_rank=16,
            parallelism="fsdp",
            mfu=0.40,
            sample_bytes=2 << 20,
            loader_cpu_s_per_sample=0.05,
            min_nodes=1,
            max_nodes=8,
        ),
        Job(
            "llama-70b-fsdp-tp8",
            "A 70B language model, tensor parallel over the node's 8 GPUs (NVLink) and FSDP across "
            "nodes: one 8,192-token sequence per data-parallel replica.",
            params=70.6e9,
            layers=80,
            hidden=8192,
            seq_len=8192,
            samples_per_rank=1,
            parallelism="fsdp",
            tp=8,
            mfu=0.38,
            sample_bytes=32 * 1024,
            loader_cpu_s_per_sample=0.004,
            min_nodes=4,
            max_nodes=64,
        ),
        Job(
            "gpt-1.3b-ddp",
            "A 1.3B model under plain DDP (25 MiB gradient buckets all-reduced during backward): four "
            "2,048-token sequences per rank, so communication is a large share of the step.",
            params=1.3e9,
            layers=24,
            hidden=2048,
            seq_len=2048,
            samples_per_rank=4,
            parallelism="ddp",
            mfu=0.35,
            sample_bytes=16 * 1024,
            loader_cpu_s_per_sample=0.002,
            min_nodes=1,
            max_nodes=16,
        ),
    )
}
DEFAULT_JOB = "vlm-8b-fsdp"


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise KeyError(f"unknown job {name!r}; known: {', '.join(JOBS)}") from None
