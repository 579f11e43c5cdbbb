"""One simulated run written as a trace dump: steps/, metrics/, kineto/, nodes/, truth.json.

This module only wires the stages: the model steps the job, the writers each render one
view of the same arrays. ``SimOptions`` is the whole description of a run, so the CLI, the
samples and the tests build runs the same way.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmdiag import dumpformat
from fmdiag.simulate.cluster import scenarios
from fmdiag.simulate.cluster.config import Hardware, Workload, workload_for
from fmdiag.simulate.cluster.kineto import KinetoOptions, write_kineto
from fmdiag.simulate.cluster.metric_dump import check_size, write_metrics
from fmdiag.simulate.cluster.model import NS, Chunk, ClusterModel
from fmdiag.simulate.cluster.physics import DEFAULT_JOB, get_job
from fmdiag.simulate.cluster.signals import Signals
from fmdiag.simulate.cluster.steps import write_steps
from fmdiag.simulate.cluster.truth import truth_doc, write_truth
from fmdiag.simulate.nodes.from_model import node_states
from fmdiag.simulate.nodes.render import render_node
from fmdiag.steprecord import file_name

#: 2025-06-02T00:00:00Z: offline runs start here unless told otherwise, so dumps are reproducible.
DEFAULT_START_NS = 1_748_822_400 * NS


@dataclass(frozen=True)
class SimOptions:
    scenario: str
    nodes: int = 4
    gpus: int = 8
    efa_devices: int = 32
    steps: int = 100
    seed: int = 0
    start_ns: int = DEFAULT_START_NS
    #: Scale forward/backward/optimizer so a healthy step takes about this long (None: ~1.2 s).
    step_seconds: float | None = None
    scrape_interval_s: float = 15.0
    job: str | None = None
    efa_srd: bool = True
    lustre_version: str = "2.14"
    lustre_filesystems: int = 1
    osts: int = 8
    checkpoint_every: int | None = None
    metrics: bool = True
    kineto: KinetoOptions | None = None
    node_trees: bool = False
    #: The job to train (physics.JOBS); None: the scenario's, else the default.
    job_preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def job_name(self) -> str:
        return self.job or f"sim-{self.scenario}"


def build_model(opts: SimOptions) -> ClusterModel:
    scenario = scenarios.get(opts.scenario)
    hw = Hardware(
        nodes=opts.nodes,
        gpus_per_node=opts.gpus,
        efa_devices=opts.efa_devices,
        efa_srd_counters=opts.efa_srd,
        lustre_version=opts.lustre_version,
        lustre_filesystems=opts.lustre_filesystems,
        osts_per_fs=opts.osts,
    )
    hw = dataclasses.replace(hw, **dict(scenario.hardware))  # type: ignore[arg-type]
    job = get_job(opts.job_preset or scenario.job or DEFAULT_JOB)
    wl = workload_for(job, hw, **dict(scenario.workload))
    if opts.checkpoint_every is not None:
        wl = dataclasses.replace(wl, checkpoint_every=opts.checkpoint_every)
        scenario = dataclasses.replace(scenario, checkpoint_every=None)
    if opts.step_seconds is not None:
        wl = _scaled(wl, hw, opts.step_seconds)
    return ClusterModel(hw, wl, scenario, opts.seed, opts.steps)


def _scaled(wl: Workload, hw: Hardware, step_s: float) -> Workload:
    """The workload with compute scaled so the healthy step takes about ``step_s`` seconds.

    A test and demo knob (live runs with short steps): it changes the job's effective FLOP
    rate, so truth.json records it under ``parameters.step_seconds``.
    """
    probe = ClusterModel(hw, dataclasses.replace(wl, checkpoint_every=0), scenarios.get("healthy"), 0, 1)
    nominal = probe.nominal_step_s()
    compute = wl.forward_s + wl.backward_s + wl.optimizer_s
    fixed = max(0.0, nominal - compute)
    if step_s <= fixed + 0.01:
        raise ValueError(
            f"--step-seconds {step_s}: must exceed the communication and data time of "
            f"{fixed + 0.01:.3f} s that this job cannot hide on this cluster"
        )
    k = (step_s - fixed) / compute
    return dataclasses.replace(
        wl, forward_s=wl.forward_s * k, backward_s=wl.backward_s * k, optimizer_s=wl.optimizer_s * k
    )


def prepare_out(out: Path) -> None:
    """Make ``out`` ready for a dump: refuse a non-empty folder that is not one."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory")
    if out.is_dir():
        entries = [p.name for p in out.iterdir()]
        if entries and dumpformat.TRUTH_FILE not in entries and dumpformat.LIVE_TRUTH_FILE not in entries:
            raise ValueError(
                f"--out {out}: not empty and not an fmdiag simulate dump (no truth.json); "
                "choose an empty or new directory"
            )
        for name in dumpformat.ENTRIES:  # only what a dump holds is replaced
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


@dataclass
class DumpResult:
    model: ClusterModel
    chunk: Chunk


def run_parameters(opts: SimOptions) -> dict[str, Any]:
    return {
        "steps": opts.steps,
        "scrape_interval_s": opts.scrape_interval_s,
        "step_seconds": opts.step_seconds,
        **opts.extra,
    }


def write_dump(opts: SimOptions, out: Path) -> DumpResult:
    model = build_model(opts)
    prepare_out(out)
    chunk = model.run(opts.steps)
    if opts.metrics:
        check_size(model, chunk, opts.scrape_interval_s)
    job = opts.job_name
    layout = dumpformat.DumpLayout(out)
    write_steps(layout.steps_dir, model, chunk, opts.start_ns, job)
    signals = Signals(model, chunk)
    if opts.metrics:
        write_metrics(layout.metrics_dir, model, chunk, signals, opts.start_ns, opts.scrape_interval_s, job)
    if opts.kineto is not None:
        write_kineto(layout.kineto_dir, model, chunk, opts.start_ns, opts.kineto)
    if opts.node_trees:
        render_trees(layout.nodes_dir, model, signals, opts, int(chunk.end.max()))
        for node, host in enumerate(model.topo.hostnames):
            spool = layout.nodes_dir / host / "spool"
            spool.mkdir(parents=True, exist_ok=True)
            for lr in range(model.hw.gpus_per_node):
                name = file_name(job, model.topo.rank(node, lr))
                shutil.copyfile(layout.steps_dir / name, spool / name)
    doc = truth_doc(model, chunk, start_ns=opts.start_ns, job=job, extra=run_parameters(opts))
    write_truth(layout.truth_path, doc)
    return DumpResult(model, chunk)


def render_trees(
    root: Path, model: ClusterModel, signals: Signals, opts: SimOptions, t_ns: int
) -> list[Path]:
    """Every node's sysfs/procfs/debugfs tree and NVML state at ``t_ns`` after the job's start."""
    snap = signals.at([t_ns])
    paths = []
    for node, state in enumerate(node_states(signals, snap, opts.start_ns)):
        path = root / state.hostname
        boot = opts.start_ns / NS - float(signals.uptime[node])
        render_node(state, path, efa_srd=opts.efa_srd, lustre_layout=opts.lustre_version, boot_time_s=boot)
        paths.append(path)
    return paths
