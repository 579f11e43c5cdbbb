"""truth.json: what was injected, where, and per step which bottleneck really bound.

The per-step class is counterfactual (``ClusterModel.run`` replays the chunk without each
fault, and with free communication): the cause whose removal gives back the most time, when
it gives back at least 10% of a healthy step; otherwise ``compute``. Each step lists the time
every cause cost it and the secondary causes; the culprit names the hardware the dominant
fault hit.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from fmdiag import dumpformat
from fmdiag.simulate.cluster.config import Hardware, Workload
from fmdiag.simulate.cluster.model import LOST_COMM, LOST_DATA, TRUTH_THRESHOLD, Chunk, ClusterModel, Target
from fmdiag.simulate.cluster.physics import get_job
from fmdiag.simulate.cluster.scenarios import HOST_SIDE, Fault, FaultKind


def culprit(model: ClusterModel, fault: Fault, target: Target) -> dict[str, Any] | None:
    """The hardware a fault hit, in the names the exporters and step records use."""
    topo = model.topo
    if fault.kind in (
        FaultKind.GPU_THERMAL,
        FaultKind.GPU_POWER,
        FaultKind.PYTHON_GC,
        FaultKind.EXPERT_IMBALANCE,
    ):
        rank = topo.rank(target.node, target.gpu)
        where: dict[str, Any] = {"node": topo.hostnames[target.node], "rank": rank, "local_rank": target.gpu}
        if model.plan is not None:
            where |= {k: v for k, v in model.layout(rank).items() if k in ("pp_rank", "dp_rank")}
        if model.wl.ep > 1:
            where["ep_rank"] = model.layout(rank)["ep_rank"]
        if fault.kind in (FaultKind.PYTHON_GC, FaultKind.EXPERT_IMBALANCE):  # the process, not its GPU
            return where
        gpu = topo.gpus(target.node)[target.gpu]
        return {**where, "gpu": gpu.index, "gpu_uuid": gpu.uuid, "pci_bus_id": gpu.pci_bus_id}
    if fault.kind in HOST_SIDE:
        return {"node": topo.hostnames[target.node]}
    if fault.kind is FaultKind.STAGE_IMBALANCE:
        last = model.wl.pp - 1
        D = model.dp_ranks
        nodes = {topo.place(r)[0] for r in range(last * D, (last + 1) * D)}
        node = {"node": topo.hostnames[next(iter(nodes))]} if len(nodes) == 1 else {}
        return {"pp_rank": last, **node}
    if fault.kind is FaultKind.EFA_NODE:
        devs = topo.efa(target.node)
        names = [devs[d].name for d in target.efa]
        return {"node": topo.hostnames[target.node], "efa_device": names[0], "efa_devices": names}
    if fault.kind is FaultKind.OST_SLOW:
        fs = topo.filesystems[target.fs]
        return {"fs": fs.fsname, "ost": fs.ost_name(target.ost), "ost_index": target.ost}
    if fault.kind is FaultKind.CHECKPOINT_SLOW:
        return {"fs": topo.filesystems[target.fs].fsname}
    return None  # fabric-wide congestion, a cluster-wide dataloader problem: no single culprit


def _fault_steps(model: ClusterModel, index: int) -> tuple[int, int] | None:
    """First and last step (of the scenario's length) at which fault ``index`` is active."""
    steps = np.arange(model.period, dtype=np.int64)
    on = np.flatnonzero(model.active(steps)[index])
    return (int(on[0]), int(on[-1])) if len(on) else None


def truth_doc(
    model: ClusterModel, chunk: Chunk, *, start_ns: int, job: str, extra: dict[str, Any]
) -> dict[str, Any]:
    faults = []
    culprits: list[dict[str, Any] | None] = []
    for i, (f, t) in enumerate(zip(model.scenario.faults, model.targets, strict=True)):
        c = culprit(model, f, t)
        culprits.append(c)
        span = _fault_steps(model, i)
        params = {k: v for k, v in dataclasses.asdict(f).items() if k not in ("kind", "start", "end")}
        faults.append(
            {
                "kind": f.kind.value,
                "class": f.verdict_class,
                "first_step": span[0] if span else None,
                "last_step": span[1] if span else None,
                "parameters": params,
                "culprit": c,
            }
        )
    steps = []
    nfaults = len(model.scenario.faults)
    counts: dict[str, int] = {}
    ckpt = (chunk.end - chunk.opt_end).max(axis=1) > 0
    for i, (step, cls, fi) in enumerate(
        zip(chunk.steps.tolist(), chunk.truth_class, chunk.truth_fault.tolist(), strict=True)
    ):
        lost = chunk.truth_lost[i]
        steps.append(
            {
                "step": step,
                "class": cls,
                "fault": fi if fi >= 0 else None,
                "culprit": culprits[fi] if fi >= 0 else None,
                "secondary": model.secondary(chunk, i),
                "lost_s": {
                    **{str(j): round(float(x), 6) for j, x in enumerate(lost[:nfaults]) if x > 0},
                    dumpformat.LOST_COMMUNICATION: round(float(max(lost[nfaults + LOST_COMM], 0.0)), 6),
                    dumpformat.LOST_DATA_LOADING: round(float(max(lost[nfaults + LOST_DATA], 0.0)), 6),
                },
                "checkpoint": bool(ckpt[i]),
            }
        )
        counts[cls] = counts.get(cls, 0) + 1
    hw: Hardware = model.hw
    wl: Workload = model.wl
    return {
        "format": dumpformat.TRUTH_FORMAT,
        "version": dumpformat.TRUTH_VERSION,
        "scenario": model.scenario.name,
        "description": model.scenario.description,
        "seed": model.seed,
        "job": job,
        "start_ns": start_ns,
        "steps_total": chunk.nsteps,
        "parameters": {
            "hardware": dataclasses.asdict(hw),
            "workload": {**dataclasses.asdict(wl), "checkpoint_every": model.checkpoint_every},
            "job": dataclasses.asdict(get_job(wl.job)),
            **extra,
        },
        "nominal": {
            "step_s": model.nominal_step_s(),
            "communication_s": model.nominal_comm_s(),
            "efa_bytes_per_node_per_step": model.wire_bytes_per_node,
            "lustre_read_bytes_per_node_per_step": hw.gpus_per_node * wl.samples_per_rank * wl.sample_bytes,
            "truth_threshold_fraction": TRUTH_THRESHOLD,
        },
        "faults": faults,
        "class_counts": dict(sorted(counts.items())),
        "steps": steps,
    }


def write_truth(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(dumpformat.dump_truth(dumpformat.validate_truth(doc, str(path))), encoding="utf-8")
