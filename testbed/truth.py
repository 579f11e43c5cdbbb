"""truth.json for a test-bed run, in the core's format, built from what really happened.

The simulator knows each step's counterfactual; a real run does not. What it does know, by
construction, is which fault was in place when: the injector logged each fault's on and off
times, and every rank logged each step's start and end. A step is a fault's when the fault was
on for at least half of the step's span (first start to last end over the ranks); a checkpoint
throttle binds only on steps that write a checkpoint. Causes that are the job's own shape
(uneven sequence lengths, an unbalanced pipeline) hold on every step.

``lost_s`` is estimated, not replayed: a faulty step's duration minus the median of the run's
fault-free steps without a checkpoint, given only when the run has at least three of those (a
fault present from the first step to the last has no healthy step to compare with).

Faults of the input path (the loader's disk reads, its CPU) act through a prefetch queue: the
steps just after the onset still consume batches made before it, and after the fault is removed
some consume batches made under it. So for those faults a step is the fault's when any rank's
batch for it was made while the fault was on (each rank logs when its batches were ready).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from fmdiag import dumpformat
from fmdiag.steprecord import StepRecord
from fmdiag.testbed.faults import Target
from fmdiag.testbed.scenarios import JOB_CONDITIONS, Fault, Kind, Scenario

#: Faults that reach the step through the loader's prefetch queue.
INPUT_PATH = frozenset({Kind.INPUT_READ, Kind.LOADER_CPU})
#: A step is a fault's when the fault was on for at least this share of it.
MAJORITY = 0.5
#: Fewer fault-free reference steps than this: no time-lost estimate.
MIN_REFERENCE_STEPS = 3

SHARED_NOTE = (
    "Nodes are network namespaces on one machine: each has its own network stack and link (a "
    "tbf-shaped veth on a bridge), but CPU, memory, kernel and disk are shared. The host "
    "collector of every node's exporter reads the machine's /proc, so its CPU, PSI and memory "
    "series describe the whole machine, not the node; per-process series are the node's ranks."
)


def _spans(records: Sequence[StepRecord]) -> dict[int, tuple[int, int, bool]]:
    """step -> (first start, last end, a checkpoint was written) over all ranks."""
    out: dict[int, tuple[int, int, bool]] = {}
    for r in records:
        ckpt = r.phases.get("checkpoint", 0.0) > 0
        if r.step in out:
            s, e, c = out[r.step]
            out[r.step] = (min(s, r.start_ns), max(e, r.end_ns), c or ckpt)
        else:
            out[r.step] = (r.start_ns, r.end_ns, ckpt)
    return out


def _intervals(index: int, events: Sequence[tuple[int, str, int]], end_ns: int) -> list[tuple[int, int]]:
    out, on = [], None
    for i, what, t in events:
        if i != index:
            continue
        if what == "on" and on is None:
            on = t
        elif what == "off" and on is not None:
            out.append((on, t))
            on = None
    if on is not None:
        out.append((on, end_ns))
    return out


def culprit(fault: Fault, target: Target, ranks: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    if fault.kind == Kind.RANK_CPU:
        rank = next(r for r in ranks if r["rank"] == target.rank)
        return {"node": rank["node"], "rank": rank["rank"], "local_rank": rank["local_rank"]}
    if fault.kind == Kind.NODE_BANDWIDTH:
        return {"node": target.node}
    if fault.kind == Kind.STAGE_IMBALANCE:
        found: dict[str, Any] = {"pp_rank": target.pp_rank}
        if target.node is not None:
            found["node"] = target.node
        return found
    return None


def build(
    *,
    scenario: Scenario,
    job: str,
    seed: int,
    steps_total: int,
    records: Sequence[StepRecord],
    targets: Sequence[Target],
    events: Sequence[tuple[int, str, int]],
    ranks: Sequence[Mapping[str, Any]],
    parameters: Mapping[str, Any],
    batches_made: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """``batches_made``: step -> when each rank's batch for it was ready (Unix ns)."""
    spans = _spans(records)
    if not spans:
        raise ValueError("no step records: nothing to build the truth from")
    run_end = max(e for _, e, _ in spans.values())
    faults = list(scenario.faults)
    active: list[list[tuple[int, int]]] = []
    for i, fault in enumerate(faults):
        if fault.kind in JOB_CONDITIONS:
            active.append([(min(s for s, _, _ in spans.values()), run_end)])
        else:
            active.append(_intervals(i, events, run_end))
    culprits = [culprit(f, t, ranks) for f, t in zip(faults, targets, strict=True)]

    def on_in(i: int, step: int, start: int, end: int, ckpt: bool) -> bool:
        if faults[i].kind == Kind.CHECKPOINT_WRITE and not ckpt:
            return False
        made = (batches_made or {}).get(step)
        if faults[i].kind in INPUT_PATH and made:
            return any(a <= t < b for t in made for a, b in active[i])
        covered = sum(max(0, min(end, b) - max(start, a)) for a, b in active[i])
        return covered >= MAJORITY * max(1, end - start)

    steps: list[dict[str, Any]] = []
    for step in range(steps_total):
        if step not in spans:
            continue
        start, end, ckpt = spans[step]
        hits = [i for i in range(len(faults)) if on_in(i, step, start, end, ckpt)]
        first = hits[0] if hits else None
        steps.append(
            {
                "step": step,
                "class": faults[first].verdict_class if first is not None else "compute",
                "fault": first,
                "culprit": culprits[first] if first is not None else None,
                "secondary": hits[1:],
                "checkpoint": ckpt and (first is None or faults[first].kind != Kind.CHECKPOINT_WRITE),
                "duration_s": round((end - start) / 1e9, 6),
            }
        )
    reference = [s["duration_s"] for s in steps if s["fault"] is None and not s["checkpoint"]]
    ref = statistics.median(reference) if len(reference) >= MIN_REFERENCE_STEPS else None
    for s in steps:
        if ref is not None and s["fault"] is not None and faults[s["fault"]].kind not in JOB_CONDITIONS:
            s["lost_s"] = {str(s["fault"]): round(max(0.0, s["duration_s"] - ref), 6)}
        del s["duration_s"]
    fault_docs = []
    for i, fault in enumerate(faults):
        hit = [s["step"] for s in steps if s["fault"] == i or i in s["secondary"]]
        fault_docs.append(
            {
                "kind": fault.kind,
                "class": fault.verdict_class,
                "first_step": hit[0] if hit else None,
                "last_step": hit[-1] if hit else None,
                "parameters": {
                    **dict(fault.params),
                    "planned_windows": fault.windows(steps_total),
                    "applied_ns": [[a, b] for a, b in active[i]],
                },
                "culprit": culprits[i],
            }
        )
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["class"]] = counts.get(s["class"], 0) + 1
    doc = {
        "format": dumpformat.TRUTH_FORMAT,
        "version": dumpformat.TRUTH_VERSION,
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "job": job,
        "start_ns": min(s for s, _, _ in spans.values()),
        "steps_total": steps_total,
        "parameters": {**dict(parameters), "testbed": True, "shared": SHARED_NOTE},
        "nominal": {"step_s": ref, "reference_steps": len(reference)},
        "faults": fault_docs,
        "class_counts": counts,
        "steps": steps,
    }
    return dumpformat.validate_truth(doc, "truth.json")
