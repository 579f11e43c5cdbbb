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
    #: Pipeline stages (1: no pipeline) and micro-batches per step (1F1B): a stage is a block of
    #: ``world / pp`` consecutive ranks (Megatron's rank order, pipeline outermost), and
    #: ``samples_per_rank`` sequences of one data-parallel replica flow as that many micro-batches.
    pp: int = 1
    microbatches: int = 1
    #: Output vocabulary: the last stage's output projection and loss cost ``vocab / (12 hidden)``
    #: transformer layers' FLOPs (0: not modelled), which makes it the longest stage.
    vocab: int = 0
    #: Mixture of experts: ``experts`` per MoE layer, each token routed to ``top_k``, experts
    #: spread over ``ep`` consecutive ranks of a node (expert parallel: tokens go to their experts'
    #: ranks and back by all-to-all); ``active_params`` are those one token uses, and
    #: ``expert_share`` the share of its FLOPs in the expert MLPs. 0: a dense model.
    experts: int = 0
    top_k: int = 0
    ep: int = 1
    active_params: float = 0.0
    expert_share: float = 0.0
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
        used = self.active_params if self.experts else self.params
        return 6.0 * used + 12.0 * self.layers * self.hidden * self.seq_len

    def a2a_bytes(self) -> float:
        """Bytes one rank sends in one all-to-all of one MoE layer (dispatch or combine): each
        token's hidden state to its ``top_k`` experts, all but ``1/ep`` of them on other ranks."""
        if self.ep <= 1:
            return 0.0
        return self.tokens_per_rank * self.top_k * self.hidden * 2.0 * (self.ep - 1) / self.ep

    def compute_s(self, peak_flops: float = H100_BF16_FLOPS) -> float:
        """Forward + backward seconds per step on one GPU at full clock (the mean pipeline stage)."""
        return self.tokens_per_rank * self.flops_per_token() / self.tp / self.pp / (peak_flops * self.mfu)

    @property
    def head_layers(self) -> float:
        """The output projection's FLOPs in transformer layers (a layer's ~12 h^2 weights, the
        head's h x vocab)."""
        return self.vocab / (12.0 * self.hidden)

    def stage_weights(self, extra_last_layers: float = 0.0) -> tuple[float, ...]:
        """Each pipeline stage's compute relative to the mean stage: layers split evenly, the
        head on the last stage; ``extra_last_layers`` moves that many layers from the other
        stages to the last (an uneven hand-made split)."""
        if self.pp <= 1:
            return (1.0,)
        even = self.layers / self.pp
        others = even - extra_last_layers / (self.pp - 1)
        last = even + extra_last_layers + self.head_layers
        mean = (self.layers + self.head_layers) / self.pp
        return (*(others / mean for _ in range(self.pp - 1)), last / mean)

    def optimizer_s(self, world_size: int) -> float:
        """Adam's step: memory-bound, reading and writing the local optimizer state twice."""
        shard = self.param_shards(world_size)
        state = ADAM_BYTES_PER_PARAM * self.params / shard
        return 2.0 * state / (0.6 * H100_HBM_BYTES_PER_S)

    def param_shards(self, world_size: int) -> int:
        """Over how many GPUs one copy of the weights and optimizer state is spread."""
        return world_size if self.parallelism == "fsdp" else self.tp * self.pp

    def memory_bytes(self, world_size: int) -> float:
        """Peak memory per GPU: sharded static state, unsharded units in flight, activations."""
        static = ADAM_BYTES_PER_PARAM * self.params / self.param_shards(world_size)
        # FSDP keeps two gathered units (the one computing and the one prefetched) in bf16.
        gathered = 2 * 2.0 * self.params / self.tp / self.units() if self.parallelism == "fsdp" else 0.0
        # Activation checkpointing per layer: the layer inputs stay, one layer is recomputed.
        per_layer = 2.0 * self.tokens_per_rank * self.hidden / self.tp
        if self.pp > 1:
            # 1F1B: the first stage holds up to ``pp`` micro-batches' layer inputs in flight.
            tokens = self.tokens_per_rank / self.microbatches
            in_flight = min(self.pp, self.microbatches)
            per_mb = 2.0 * tokens * self.hidden / self.tp
            activations = per_mb * self.layers / self.pp * in_flight + 34.0 * tokens * self.hidden / self.tp
        else:
            activations = per_layer * self.layers + 34.0 * self.tokens_per_rank * self.hidden / self.tp
        return static + gathered + activations

    def grad_bytes(self) -> float:
        """Bytes of one full (unsharded) bf16 gradient or parameter copy per tensor-parallel rank."""
        return 2.0 * self.params / self.tp / self.pp

    def p2p_bytes(self) -> float:
        """Bytes of one micro-batch's activations (or their gradients) sent between stages."""
        return 2.0 * self.tokens_per_rank / max(self.microbatches, 1) * self.hidden / self.tp

    def units(self) -> int:
        """Communication units per step: FSDP wrap units, or groups of DDP buckets."""
        if self.parallelism == "fsdp":
            return min(self.layers, MAX_UNITS)
        if self.pp > 1:
            # Without overlap_grad_reduce a pipeline reduces all its buckets after the flush.
            return 1
        return max(1, min(math.ceil(self.grad_bytes() / DDP_BUCKET_BYTES), MAX_UNITS))

    def validate(self, world_size: int, gpu_memory: float = H100_MEMORY_BYTES) -> None:
        if self.parallelism not in ("ddp", "fsdp"):
            raise ValueError(f"job {self.name}: parallelism {self.parallelism!r} is not ddp or fsdp")
        if world_size % self.tp:
            raise ValueError(f"job {self.name}: {world_size} GPUs are not a multiple of tp={self.tp}")
        if self.pp > 1 and (self.parallelism != "ddp" or self.tp != 1 or world_size % self.pp):
            raise ValueError(
                f"job {self.name}: a pipeline of pp={self.pp} needs ddp, tp=1 and a GPU count that is a "
                f"multiple of pp (got {self.parallelism}, tp={self.tp}, {world_size} GPUs)"
            )
        if self.ep > 1 and (world_size % self.ep or self.experts % self.ep or not 0 < self.expert_share < 1):
            raise ValueError(
                f"job {self.name}: ep={self.ep} needs a GPU count and expert count that are multiples of it "
                f"and an expert FLOP share in (0, 1)"
            )
        if self.pp > 1 and (self.microbatches < 1 or self.samples_per_rank % self.microbatches):
            raise ValueError(
                f"job {self.name}: {self.samples_per_rank} samples do not split into "
                f"{self.microbatches} micro-batches"
            )
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
        Job(
            "gpt-13b-pp4",
            "A 13B language model (40 layers, hidden 5,120, a 128k vocabulary) pipeline parallel over 4 "
            "stages of world/4 consecutive ranks (1F1B, 8 micro-batches of one 4,096-token sequence; the "
            "last stage also holds the output projection and loss, about 2 layers more), data parallel "
            "(DDP) within each stage, gradients all-reduced after the pipeline flush.",
            params=13.0e9,
            layers=40,
            hidden=5120,
            seq_len=4096,
            samples_per_rank=8,
            parallelism="ddp",
            pp=4,
            microbatches=8,
            vocab=128256,
            mfu=0.40,
            sample_bytes=16 * 1024,
            loader_cpu_s_per_sample=0.002,
            min_nodes=1,
            max_nodes=64,
        ),
        Job(
            "moe-16b-ep8",
            "A 16B mixture-of-experts model (DeepSeekMoE-16B's shape: 28 layers, hidden 2,048, 64 experts, "
            "6 routed per token, 2.8B parameters active) with expert parallelism over the node's 8 GPUs "
            "(8 experts a rank, tokens dispatched and combined by all-to-all over NVLink each layer) and "
            "FSDP over every GPU: four 4,096-token sequences per rank.",
            params=16.4e9,
            layers=28,
            hidden=2048,
            seq_len=4096,
            samples_per_rank=4,
            parallelism="fsdp",
            experts=64,
            top_k=6,
            ep=8,
            active_params=2.8e9,
            expert_share=0.6,
            mfu=0.30,
            sample_bytes=16 * 1024,
            loader_cpu_s_per_sample=0.002,
            min_nodes=1,
            max_nodes=64,
        ),
    )
}
DEFAULT_JOB = "vlm-8b-fsdp"


def get_job(name: str) -> Job:
    try:
        return JOBS[name]
    except KeyError:
        raise KeyError(f"unknown job {name!r}; known: {', '.join(JOBS)}") from None
