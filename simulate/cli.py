"""``fmdiag simulate``: write a trace dump of a virtual cluster with an injected bottleneck."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import click

from fmdiag.simulate.cluster.kineto import DETAIL_LAYERS, NCCL_NAMINGS, KinetoOptions, parse_ranks
from fmdiag.simulate.cluster.model import MAX_RUN_NS, NS
from fmdiag.simulate.cluster.physics import JOBS
from fmdiag.simulate.cluster.scenarios import SCENARIOS
from fmdiag.simulate.dump import DEFAULT_START_NS, SimOptions, write_dump
from fmdiag.simulate.live import run_live
from fmdiag.simulate.samples import write_samples

MAX_START_NS = MAX_RUN_NS


def _parse_start(text: str) -> int:
    try:
        start_ns = int(float(text) * NS)
    except (ValueError, OverflowError):
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is neither Unix seconds nor an ISO 8601 time", param_hint="--start"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        start_ns = int(when.timestamp()) * NS
    # Timestamps are int64 nanoseconds (they end in 2262); leave the run room to fit.
    if not -MAX_START_NS < start_ns < MAX_START_NS:
        raise click.BadParameter(f"{text!r} is outside 1824..2116", param_hint="--start")
    return start_ns


def _parse_steps_range(text: str) -> tuple[int, int | None]:
    if text == "all":
        return 0, None
    first, sep, last = text.partition(":")
    try:
        a = int(first) if first else 0
        b = int(last) if last else None
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected FIRST:LAST (LAST excluded) or 'all'") from None
    if not sep or a < 0 or (b is not None and b <= a):
        raise click.BadParameter(f"{text!r}: expected FIRST:LAST with 0 <= FIRST < LAST, or 'all'")
    return a, b


def list_scenarios() -> str:
    """The scenarios, then the job presets (``--preset``) with their parallel layouts."""
    described = {
        **{name: s.description for name, s in SCENARIOS.items()},
        **{name: f"[preset] {j.description}" for name, j in JOBS.items()},
    }
    width = max(len(n) for n in described)
    lines = []
    for i, (name, text) in enumerate(described.items()):
        if i == len(SCENARIOS):
            lines += ["", "Job presets (--preset; a scenario trains its own unless told):"]
        wrapped = textwrap.wrap(text, 100 - width - 2) or [""]
        lines.append(f"{name:<{width}}  {wrapped[0]}")
        lines += [f"{'':<{width}}  {w}" for w in wrapped[1:]]
    return "\n".join(lines)


@click.command("simulate")
@click.option("--list", "list_", is_flag=True, help="Describe the scenarios and job presets, and exit.")
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), help="The bottleneck to inject.")
@click.option(
    "--out", type=click.Path(path_type=Path), help="Dump directory (created; an old dump there is replaced)."
)
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--gpus", default=8, show_default=True, type=click.IntRange(1, 16), help="GPUs (ranks) per node."
)
@click.option(
    "--efa-devices",
    default=32,
    show_default=True,
    type=click.IntRange(1, 64),
    help="EFA devices per node; they share the node's 3,200 Gbit/s.",
)
@click.option("--steps", default=100, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--start", default=None, help="Job start: Unix seconds or ISO 8601 [default: 2025-06-02T00:00:00Z]."
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(0, min_open=True),
    help="Scale compute so a healthy step takes this long [default: about 1.2 s].",
)
@click.option(
    "--scrape-interval",
    default=15.0,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds between metric samples in metrics/.",
)
@click.option("--job", default=None, help="Job id in step records and metrics [default: sim-SCENARIO].")
@click.option(
    "--preset",
    type=click.Choice(list(JOBS)),
    default=None,
    help="The training job (model, parallelism, batch) [default: the scenario's, else vlm-8b-fsdp].",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(0),
    help="Checkpoint every N steps (0: never) [default: the scenario's].",
)
@click.option("--metrics/--no-metrics", default=True, show_default=True, help="Write metrics/.")
@click.option(
    "--kineto",
    "kineto_ranks",
    default=None,
    metavar="RANKS",
    help="Write Kineto traces of these ranks: '0,5', '0-3' or 'all'.",
)
@click.option(
    "--kineto-steps",
    default="all",
    show_default=True,
    metavar="FIRST:LAST",
    help="Steps traced whole (LAST excluded); the step after them is cut mid-way.",
)
@click.option("--kineto-gzip", is_flag=True, help="Write rank<r>.json.gz instead of rank<r>.json.")
@click.option(
    "--kineto-nccl",
    default="new",
    show_default=True,
    type=click.Choice(list(NCCL_NAMINGS)),
    help="NCCL kernel names of the whole job: ncclDevKernel_* (new, NCCL >= 2.19) or ncclKernel_* (old).",
)
@click.option(
    "--kineto-detail",
    default="full",
    show_default=True,
    type=click.Choice(list(DETAIL_LAYERS)),
    help="full: hundreds of kernels a step; compact: one model block a step and back-to-back "
    "collectives merged (small files, same timings).",
)
@click.option(
    "--node-trees",
    is_flag=True,
    help="Render every node's sysfs/procfs/debugfs tree and NVML state in nodes/.",
)
@click.option(
    "--efa-srd/--no-efa-srd",
    default=True,
    show_default=True,
    help="EFA hw_counters include the SRD counters (Nitro v4+).",
)
@click.option(
    "--lustre-version",
    default="2.14",
    show_default=True,
    type=click.Choice(["2.10", "2.14"]),
    help="Lustre client layout: 2.10 (/proc) or 2.14 (debugfs).",
)
@click.option(
    "--lustre-fs",
    default=1,
    show_default=True,
    type=click.IntRange(1, 8),
    help="Lustre filesystems (data on the first, checkpoints on the last).",
)
@click.option(
    "--osts", default=8, show_default=True, type=click.IntRange(1, 256), help="OSTs per filesystem."
)
@click.option("--live", is_flag=True, help="Keep the node trees advancing in real time until SIGINT/SIGTERM.")
@click.option(
    "--live-seconds",
    default=0.0,
    type=click.FloatRange(0),
    help="With --live: stop after this long (0: never).",
)
@click.option(
    "--samples",
    "samples_dir",
    type=click.Path(path_type=Path),
    help="Regenerate the bundled samples (one per scenario) and their README in this folder, then exit.",
)
def simulate(
    list_: bool,
    scenario: str | None,
    out: Path | None,
    nodes: int,
    gpus: int,
    efa_devices: int,
    steps: int,
    seed: int,
    start: str | None,
    step_seconds: float | None,
    scrape_interval: float,
    job: str | None,
    preset: str | None,
    checkpoint_every: int | None,
    metrics: bool,
    kineto_ranks: str | None,
    kineto_steps: str,
    kineto_gzip: bool,
    kineto_nccl: str,
    kineto_detail: str,
    node_trees: bool,
    efa_srd: bool,
    lustre_version: str,
    lustre_fs: int,
    osts: int,
    live: bool,
    live_seconds: float,
    samples_dir: Path | None,
) -> None:
    """Simulate a data- or pipeline-parallel training job on a virtual GPU/EFA/Lustre cluster with one
    injected bottleneck, and write what observability would see: step records, node
    metrics, Kineto traces, node trees, and the ground truth (truth.json)."""
    if list_:
        click.echo(list_scenarios())
        return
    if samples_dir is not None:
        for path in write_samples(samples_dir):
            click.echo(str(path))
        return
    if scenario is None:
        raise click.UsageError("--scenario is required (see --list)")
    if out is None:
        raise click.UsageError("--out is required")
    kineto = None
    if kineto_ranks is not None:
        first, last = _parse_steps_range(kineto_steps)
        try:
            ranks = parse_ranks(kineto_ranks, nodes * gpus)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--kineto") from None
        kineto = KinetoOptions(
            ranks=ranks,
            first_step=first,
            last_step=last,
            nccl_naming=kineto_nccl,
            detail=kineto_detail,
            gzip=kineto_gzip,
        )
    opts = SimOptions(
        scenario=scenario,
        nodes=nodes,
        gpus=gpus,
        efa_devices=efa_devices,
        steps=steps,
        seed=seed,
        start_ns=DEFAULT_START_NS if start is None else _parse_start(start),
        step_seconds=step_seconds,
        scrape_interval_s=scrape_interval,
        job=job,
        job_preset=preset,
        efa_srd=efa_srd,
        lustre_version=lustre_version,
        lustre_filesystems=lustre_fs,
        osts=osts,
        checkpoint_every=checkpoint_every,
        metrics=metrics,
        kineto=kineto,
        node_trees=node_trees,
    )
    try:
        if live:
            if kineto is not None or start is not None:
                raise click.UsageError("--live runs in real time: --kineto and --start do not apply")
            run = run_live(opts, out, seconds=live_seconds)
            click.echo(f"{out}: live run stopped after {int(run.written.min())} steps", err=True)
            return
        result = write_dump(opts, out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    classes = ", ".join(f"{k} {v}" for k, v in sorted(_counts(result.chunk.truth_class).items()))
    click.echo(f"{out}: {steps} steps x {nodes * gpus} ranks of {scenario} ({classes})", err=True)


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
