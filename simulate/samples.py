"""The bundled samples: one small dump per scenario, defined here and nowhere else.

``fmdiag simulate --samples samples`` regenerates all of them (and samples/README.md);
a test regenerates them into a temporary folder and fails when the committed ones differ.
Sizes are chosen to keep the whole folder at a few MB: 4 nodes x 4 GPUs, 4 EFA devices per
node (sharing the node's full fabric bandwidth), 4 OSTs (so each OST serves a node the same
bytes per step as 8 OSTs serve an 8-GPU node), a 5 s scrape interval and gzipped Kineto
traces of a few ranks covering 8 steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmdiag.simulate.cluster.kineto import KinetoOptions
from fmdiag.simulate.cluster.physics import DEFAULT_JOB, get_job
from fmdiag.simulate.cluster.scenarios import HOST_SIDE, SCENARIOS, FaultKind
from fmdiag.simulate.dump import SimOptions, build_model, write_dump

REGENERATE_COMMAND = "fmdiag simulate --samples samples"
NODES, GPUS, EFA, OSTS, STEPS, SEED = 4, 4, 4, 4, 40, 7
#: Scenarios whose samples carry Kineto traces (by name prefix; ``mixed`` too), but for those
#: whose node-wide host faults show as plain gaps before each phase (kept small: steps and
#: metrics tell their story); pipelines trace 4 steps (hundreds of receives and sends a step).
TRACED = ("straggler", "network", "pp-", "moe-")
UNTRACED = ("straggler-cpu-neighbour", "straggler-memory-pressure")


@dataclass(frozen=True)
class Sample:
    scenario: str
    #: Ranks traced with Kineto (empty: none), and the traced steps [first, last).
    kineto_ranks: tuple[int, ...] = ()
    kineto_steps: tuple[int, int] = (12, 20)
    steps: int = STEPS
    lustre_version: str = "2.14"
    efa_srd: bool = True
    #: The same 16 ranks as 2 nodes x 8 GPUs where the job needs whole 8-GPU groups (experts).
    nodes: int = NODES
    gpus: int = GPUS


def sample_list() -> list[Sample]:
    """Every scenario once; the straggler and network samples carry Kineto traces of the
    culprit's rank (known only after simulating, so ranks are chosen by :func:`_kineto_ranks`)."""
    out = []
    for name in SCENARIOS:
        traced = (name.startswith(TRACED) or name == "mixed") and name not in UNTRACED
        steps = 60 if name == "mixed" else STEPS
        per_node = get_job(SCENARIOS[name].job or DEFAULT_JOB).ep
        short = name.startswith(("pp-", "moe-"))
        window = (30, 38) if name == "mixed" else (12, 16) if short else (12, 20)
        out.append(
            Sample(
                name,
                kineto_ranks=(0,) if traced else (),
                kineto_steps=window,
                steps=steps,
                lustre_version="2.10" if name == "io-lustre" else "2.14",
                efa_srd=name != "network-degraded",
                nodes=NODES * GPUS // max(per_node, GPUS),
                gpus=max(per_node, GPUS),
            )
        )
    return out


def options(sample: Sample) -> SimOptions:
    return SimOptions(
        scenario=sample.scenario,
        nodes=sample.nodes,
        gpus=sample.gpus,
        efa_devices=EFA,
        osts=OSTS,
        steps=sample.steps,
        seed=SEED,
        scrape_interval_s=5.0,
        efa_srd=sample.efa_srd,
        lustre_version=sample.lustre_version,
    )


def _kineto_ranks(sample: Sample) -> tuple[int, ...]:
    """Rank 0 plus the culprit's rank (its trace looks different): the throttled or collecting
    rank, the first rank of a node short of CPU or memory, the last pipeline stage's first."""
    if not sample.kineto_ranks:
        return ()
    model = build_model(options(sample))
    ranks = set(sample.kineto_ranks)
    for fault, target in zip(model.scenario.faults, model.targets, strict=True):
        if fault.kind in (
            FaultKind.GPU_THERMAL,
            FaultKind.GPU_POWER,
            FaultKind.PYTHON_GC,
            FaultKind.EXPERT_IMBALANCE,
        ):
            ranks.add(model.topo.rank(target.node, target.gpu))
        elif fault.kind in HOST_SIDE:
            ranks.add(model.topo.rank(target.node, 0))
        elif fault.kind is FaultKind.STAGE_IMBALANCE:
            ranks.add((model.wl.pp - 1) * model.dp_ranks)
    if len(ranks) == 1:
        ranks.add(model.hw.world_size - 1)
    return tuple(sorted(ranks))


def write_samples(root: Path) -> list[Path]:
    """Regenerate every sample under ``root`` and its README; returns the sample folders."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Samples",
        "",
        "Small trace dumps made by `fmdiag simulate`, one per scenario, each with its `truth.json`",
        f"({NODES} nodes x {GPUS} GPUs, {EFA} EFA devices per node, {OSTS} OSTs, seed {SEED}, "
        "5 s scrape interval).",
        "Regenerate them all (a test fails when they are stale):",
        "",
        "```sh",
        REGENERATE_COMMAND,
        "```",
        "",
        "| sample | steps | Kineto ranks | what it shows |",
        "|---|---|---|---|",
    ]
    dirs = []
    for sample in sample_list():
        ranks = _kineto_ranks(sample)
        opts = options(sample)
        if ranks:
            first, last = sample.kineto_steps
            opts = SimOptions(
                **{
                    **opts.__dict__,
                    "kineto": KinetoOptions(
                        ranks=ranks, first_step=first, last_step=last, detail="compact", gzip=True
                    ),
                }
            )
        path = root / sample.scenario
        write_dump(opts, path)
        dirs.append(path)
        traced = ", ".join(str(r) for r in ranks) if ranks else "-"
        shape = "" if sample.gpus == GPUS else f"({sample.nodes} nodes x {sample.gpus} GPUs) "
        lines.append(
            f"| [`{sample.scenario}`]({sample.scenario}/) | {sample.steps} | {traced} | "
            f"{shape}{SCENARIOS[sample.scenario].description} |"
        )
    (root / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dirs
