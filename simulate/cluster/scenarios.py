"""The scenarios `fmdiag simulate` can inject, as data: one :class:`Scenario` per scenario.

A scenario is a list of faults, each active over a fraction of the run (so ``mixed`` is just
several faults one after another). A fault changes how hardware behaves — a slower EFA
device, an OST with high latency, a GPU at a lower clock — and the cluster model turns that
into step times and counters; nothing here says what the symptoms are, so symptoms and the
ground truth both follow from the same physics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    #: Every EFA path congested: lower bandwidth and some retransmits on all nodes.
    FABRIC = "fabric"
    #: Some EFA devices of one node impaired: low bandwidth, retransmits, impaired connections.
    EFA_NODE = "efa-node"
    #: One OST of the data filesystem slow: low bandwidth, high RPC latency.
    OST_SLOW = "ost-slow"
    #: The checkpoint filesystem accepts writes slowly.
    CHECKPOINT_SLOW = "checkpoint-slow"
    #: Dataloader samples cost far more CPU (heavy decoding/augmentation): CPU-bound input.
    LOADER_CPU = "loader-cpu"
    #: One GPU in hardware thermal slowdown.
    GPU_THERMAL = "gpu-thermal"
    #: One GPU power-braked.
    GPU_POWER = "gpu-power"
    #: A pipeline split by hand: the last stage (which also holds the output head and loss)
    #: gets ``layers`` more transformer layers than an even split, taken from the other stages.
    STAGE_IMBALANCE = "stage-imbalance"
    #: A co-tenant on one node (another job's processes, a runaway agent) takes CPUs: the
    #: node's training processes launch kernels late, so their GPUs idle between kernels.
    CPU_CONTENTION = "cpu-contention"
    #: One node short of host memory: direct reclaim stalls its training processes and loaders.
    MEMORY_PRESSURE = "memory-pressure"
    #: One rank's Python garbage collector runs full collections every step (a leak of
    #: reference cycles): the training loop pauses, the GPU idles, nothing else shows it.
    PYTHON_GC = "python-gc"
    #: A hot expert: one expert-parallel rank's experts receive ``token_share`` times the mean
    #: tokens (the router favours them), the other ranks of its group the rest.
    EXPERT_IMBALANCE = "expert-imbalance"


#: The verdict class each fault produces when it binds (DESIGN.md's verdict classes).
FAULT_CLASS: dict[FaultKind, str] = {
    FaultKind.FABRIC: "network",
    FaultKind.EFA_NODE: "network",
    FaultKind.OST_SLOW: "io",
    FaultKind.CHECKPOINT_SLOW: "io",
    FaultKind.LOADER_CPU: "host",
    FaultKind.GPU_THERMAL: "straggler",
    FaultKind.GPU_POWER: "straggler",
    # Not a fault of the hardware: the job's own partition costs compute time (DOMAIN.md).
    FaultKind.STAGE_IMBALANCE: "compute",
    FaultKind.CPU_CONTENTION: "straggler",
    FaultKind.MEMORY_PRESSURE: "straggler",
    FaultKind.PYTHON_GC: "straggler",
    # Uneven expert load is the data's and the router's doing, not the hardware's (DOMAIN.md).
    FaultKind.EXPERT_IMBALANCE: "compute",
}

#: Faults that slow one node's ranks from the host side: no GPU clock-event bit.
HOST_SIDE = (FaultKind.CPU_CONTENTION, FaultKind.MEMORY_PRESSURE)

#: nvmlClocksEventReason bits: HW slowdown, HW thermal slowdown, HW power brake.
HW_SLOWDOWN, HW_THERMAL, HW_POWER_BRAKE, GPU_IDLE = 0x8, 0x40, 0x80, 0x1


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    #: Active from this fraction of the run's steps up to (not including) ``end``.
    start: float = 0.0
    end: float = 1.0
    #: Multiplies the bandwidth of what the fault hits (EFA device, OST, checkpoint writes).
    bandwidth_factor: float = 1.0
    #: Multiplies the RPC latency of the hit OST.
    latency_factor: float = 1.0
    #: Multiplies the CPU cost of one sample in the dataloader.
    cpu_factor: float = 1.0
    #: SM clock of the hit GPU while throttled (MHz), and the clock event reasons it reports.
    sm_clock_mhz: int = 0
    clocks_event_reasons: int = 0
    #: Fraction of packets retransmitted on the hit EFA devices.
    retrans_rate: float = 0.0
    #: How many EFA devices of the hit node are impaired (EFA_NODE).
    devices: int = 1
    #: Fraction of the run over which the fault grows from nothing to full strength after
    #: ``start`` (a GPU heating up, a filling OST); 0: at full strength at once.
    ramp: float = 0.0
    #: Intermittent faults: on for ``on_steps``, then off for ``off_steps``, repeating (0: steady).
    on_steps: int = 0
    off_steps: int = 0
    #: Host-side faults: the hit ranks' forward and backward take this much longer (the GPU
    #: idles between late launches), their loaders' CPU work too; the share of the node's CPUs
    #: a co-tenant keeps busy; the share of time some task of the node stalls on the resource
    #: (PSI "some").
    host_factor: float = 1.0
    neighbour_share: float = 0.0
    stall_share: float = 0.0
    #: Seconds one rank's training loop pauses per step (PYTHON_GC).
    pause_s: float = 0.0
    #: Layers moved onto the last pipeline stage (STAGE_IMBALANCE).
    layers: float = 0.0
    #: Tokens the hot expert rank receives, as a multiple of its group's mean (EXPERT_IMBALANCE).
    token_share: float = 1.0

    @property
    def verdict_class(self) -> str:
        return FAULT_CLASS[self.kind]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: tuple[Fault, ...] = ()
    #: Overrides the workload's checkpoint cadence (None: keep it).
    checkpoint_every: int | None = None
    #: The job this scenario trains (physics.JOBS); None: the default job.
    job: str | None = None
    #: Hardware fields this scenario changes (e.g. a slower fabric), as a mapping.
    hardware: tuple[tuple[str, object], ...] = ()
    #: Workload fields this scenario changes (e.g. uneven sequence lengths).
    workload: tuple[tuple[str, object], ...] = ()


_THERMAL = Fault(
    FaultKind.GPU_THERMAL,
    sm_clock_mhz=1260,
    clocks_event_reasons=HW_SLOWDOWN | HW_THERMAL,
)
_POWER = Fault(
    FaultKind.GPU_POWER,
    sm_clock_mhz=1050,
    clocks_event_reasons=HW_SLOWDOWN | HW_POWER_BRAKE,
)
_EFA_NODE = Fault(FaultKind.EFA_NODE, bandwidth_factor=0.12, retrans_rate=0.04, devices=1)
_OST_SLOW = Fault(FaultKind.OST_SLOW, bandwidth_factor=0.01, latency_factor=40.0)
_LOADER = Fault(FaultKind.LOADER_CPU, cpu_factor=50.0)
PP_JOB = "gpt-13b-pp4"
MOE_JOB = "moe-16b-ep8"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "healthy",
            (
                "Compute-bound: kernels back to back, data prefetched in time, all-reduce well within the "
                "fabric's capacity."
            ),
        ),
        Scenario(
            "network-degraded",
            (
                "Fabric-wide congestion: every EFA path at 8% of its bandwidth with 2% retransmits, so the "
                "collectives outgrow what FSDP's overlap can hide; no late rank."
            ),
            (Fault(FaultKind.FABRIC, bandwidth_factor=0.08, retrans_rate=0.02),),
        ),
        Scenario(
            "network-node",
            (
                "One node's EFA device impaired (12% bandwidth, retransmits, impaired connections): "
                "every rank waits in the all-reduce."
            ),
            (_EFA_NODE,),
        ),
        Scenario(
            "io-lustre",
            (
                "One OST of the data filesystem slow (1% bandwidth, 40x RPC latency): the dataloader cannot "
                "keep up, data_wait grows."
            ),
            (_OST_SLOW,),
        ),
        Scenario(
            "checkpoint-stall",
            (
                "Checkpoint every 10 steps to a filesystem accepting writes at 8% of its bandwidth: periodic "
                "long checkpoint phases."
            ),
            (Fault(FaultKind.CHECKPOINT_SLOW, bandwidth_factor=0.08),),
            checkpoint_every=10,
        ),
        Scenario(
            "host-dataloader",
            (
                "CPU-starved input pipeline (50x CPU per sample, node CPUs saturated), no Lustre pressure: "
                "data_wait grows."
            ),
            (_LOADER,),
        ),
        Scenario(
            "straggler-thermal",
            (
                "One GPU in HW thermal slowdown (clock event reasons 0x48, SM clock 1260 MHz): its rank "
                "computes slower and every other rank waits."
            ),
            (_THERMAL,),
        ),
        Scenario(
            "straggler-power",
            (
                "One GPU power-braked (clock event reasons 0x88, SM clock 1050 MHz): a straggler with a "
                "hardware cause."
            ),
            (_POWER,),
        ),
        Scenario(
            "straggler-ramp",
            (
                "A GPU that heats up: from a third of the run its clock sinks over the next third to "
                "1260 MHz (HW thermal slowdown, hunting around its target); at first the slowdown is "
                "within the noise, then it binds."
            ),
            (dataclasses.replace(_THERMAL, start=0.33, ramp=0.33),),
        ),
        Scenario(
            "network-intermittent",
            (
                "One node's EFA device fails intermittently from a quarter of the run on: 3 steps impaired, "
                "5 steps fine, repeating; retransmits rise on its peers too while it is bad."
            ),
            (dataclasses.replace(_EFA_NODE, start=0.25, on_steps=3, off_steps=5),),
        ),
        Scenario(
            "network-volume",
            (
                "No fault: a 1.3B model under DDP on a 200 Gbit/s fabric moves more gradient bytes than "
                "backward can hide. EFA runs near line rate with no errors: network-bound by volume."
            ),
            job="gpt-1.3b-ddp",
            hardware=(("efa_node_gbps", 200.0),),
        ),
        Scenario(
            "imbalance-data",
            (
                "No fault: uneven sequence lengths make a different rank the slowest each step "
                "(data-dependent imbalance). Ranks wait for each other in the collectives, but no GPU is "
                "a hardware straggler."
            ),
            workload=(("seq_imbalance", 0.22),),
        ),
        Scenario(
            "overlap",
            (
                "Two faults overlapping in time: a thermally throttled GPU for the first two thirds of the "
                "run and a slow OST from the second third on; the truth names the dominant cause per step "
                "and lists the other."
            ),
            (
                dataclasses.replace(_THERMAL, start=0.0, end=0.67),
                dataclasses.replace(_OST_SLOW, start=0.33, end=1.0),
            ),
        ),
        Scenario(
            "mixed",
            (
                "The bottleneck changes over time: healthy, then a slow OST, then an impaired EFA device, "
                "then a thermally throttled GPU, then a CPU-bound dataloader (a fifth of the run each)."
            ),
            (
                Fault(FaultKind.OST_SLOW, 0.2, 0.4, bandwidth_factor=0.01, latency_factor=40.0),
                Fault(FaultKind.EFA_NODE, 0.4, 0.6, bandwidth_factor=0.12, retrans_rate=0.04),
                Fault(
                    FaultKind.GPU_THERMAL,
                    0.6,
                    0.8,
                    sm_clock_mhz=1260,
                    clocks_event_reasons=HW_SLOWDOWN | HW_THERMAL,
                ),
                Fault(FaultKind.LOADER_CPU, 0.8, 1.0, cpu_factor=50.0),
            ),
        ),
        Scenario(
            "pp-stage-imbalance",
            (
                "No fault of the hardware: a 4-stage 1F1B pipeline split by hand with 3 more layers on the "
                "last stage (13 of 40, beside the output head and loss) than an even split: it computes 1.7x "
                "the others, which wait for it in their p2p receives every micro-batch. Truth: compute, "
                "cause stage imbalance, culprit the last stage."
            ),
            (Fault(FaultKind.STAGE_IMBALANCE, layers=3.0),),
            job=PP_JOB,
        ),
        Scenario(
            "pp-seq-imbalance",
            (
                "No fault: uneven sequence lengths under a 4-stage 1F1B pipeline (lognormal, sigma 0.22, per "
                "data-parallel replica and step): a replica with long sequences is slow on every stage, so "
                "each stage's gradient all-reduce waits for a different replica each step."
            ),
            job=PP_JOB,
            workload=(("seq_imbalance", 0.22),),
        ),
        Scenario(
            "pp-straggler",
            (
                "A 4-stage 1F1B pipeline with one GPU power-braked (0x88, 1050 MHz): its micro-batches run "
                "late, its neighbour stages wait in their receives and its stage's gradient all-reduce "
                "waits for it (a stage's own bubble hides part of a milder slowdown)."
            ),
            (_POWER,),
            job=PP_JOB,
        ),
        Scenario(
            "moe-expert-imbalance",
            (
                "No fault of the hardware: a mixture-of-experts job whose router sends one expert-parallel "
                "rank's experts 1.8x their group's mean tokens: that rank computes longer and receives more "
                "in every all-to-all, and the other ranks of its node wait in the all-to-all combine, layer "
                "after layer. Truth: compute, cause expert imbalance, culprit the hot rank."
            ),
            (Fault(FaultKind.EXPERT_IMBALANCE, token_share=1.8),),
            job=MOE_JOB,
        ),
        Scenario(
            "straggler-cpu-neighbour",
            (
                "A co-tenant takes most of one node's CPUs from a fifth of the run on: that node's ranks "
                "launch kernels late (the GPUs idle between them, compute phases 1.35x) and every other rank "
                "waits. No GPU clock-event bit; the node's CPU time and CPU pressure (PSI) rise."
            ),
            (
                Fault(
                    FaultKind.CPU_CONTENTION,
                    start=0.2,
                    host_factor=1.35,
                    neighbour_share=0.75,
                    stall_share=0.6,
                ),
            ),
        ),
        Scenario(
            "straggler-memory-pressure",
            (
                "One node short of host memory from a quarter of the run on: direct reclaim stalls its "
                "training processes (compute phases 1.3x, the GPUs idle) and its loaders. No GPU bit; the "
                "node's memory pressure (PSI) rises."
            ),
            (Fault(FaultKind.MEMORY_PRESSURE, start=0.25, host_factor=1.3, stall_share=0.35),),
        ),
        Scenario(
            "straggler-python-gc",
            (
                "One rank's Python garbage collector runs a full collection every step (a leak of "
                "reference cycles): its loop pauses about 0.3 s in forward while its GPU idles, and every "
                "other rank waits. Nothing but its timing shows it."
            ),
            (Fault(FaultKind.PYTHON_GC, pause_s=0.3),),
        ),
    )
}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        known = ", ".join(SCENARIOS)
        raise KeyError(f"unknown scenario {name!r}; known: {known}") from None
