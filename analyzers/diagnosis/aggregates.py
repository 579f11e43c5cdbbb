"""Over the run: phases of one verdict with their onsets, and the time lost per node, rank and target.

A **phase** is a run of consecutive steps with one verdict class; steps of a phase whose culprit
is missing (an interval with no metric sample) do not split it, and its culprit is the one
named on most of its steps. A **target** is what an operator acts on — a GPU, a node's EFA
device, an OST, or the job itself — with the time it cost: every step's loss of each cause is
booked to that step's culprit for the cause, so "drain node-017" is ranked by the seconds it
would give back.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from fmdiag.analyzers.diagnosis import onset
from fmdiag.analyzers.diagnosis.attribution import CAUSES, Attribution
from fmdiag.analyzers.diagnosis.verdicts import StepFeatures, Verdict

#: Targets listed in the report.
TOP = 10


def _key(culprit: dict[str, Any] | None) -> str:
    return json.dumps(culprit, sort_keys=True) if culprit else ""


def _target_key(cause: str, culprit: dict[str, Any] | None) -> str:
    """What an operator acts on, once: a GPU (node, GPU index) or an EFA device whatever else
    its culprits carry (a UUID on some steps, a rank on others) and whatever cause its steps
    were booked to; an OST; else the culprit as written, per cause (the whole job)."""
    if culprit:
        node = culprit.get("node")
        gpu = culprit.get("gpu")
        if node and isinstance(gpu, int) and gpu >= 0:
            return json.dumps(["gpu", node, gpu])
        if node and culprit.get("efa_device"):
            return json.dumps(["efa", node, culprit["efa_device"]])
        if culprit.get("ost"):
            return json.dumps(["ost", culprit.get("fs", ""), culprit["ost"]])
    return cause + "|" + _key(culprit)


def _typical(candidates: list[int], feats: list[StepFeatures]) -> int:
    """The candidate step whose duration is the median of theirs: a phase's or target's typical
    step, not its first (a warm-up or onset step quotes numbers the rest of the phase never saw)."""
    ordered = sorted(candidates, key=lambda i: (feats[i].duration_s, i))
    return ordered[(len(ordered) - 1) // 2]


def phases(
    feats: list[StepFeatures],
    verdicts: list[Verdict],
    attr: Attribution,
    change: dict[str, list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    bounds: list[tuple[int, int]] = []
    for i, v in enumerate(verdicts):
        if bounds and verdicts[bounds[-1][0]].cls == v.cls:
            bounds[-1] = (bounds[-1][0], i)
        else:
            bounds.append((i, i))
    total = attr.run_seconds
    for a, b in bounds:
        vs = verdicts[a : b + 1]
        cls = vs[0].cls
        cause = "checkpoint" if all(v.primary_cause == "checkpoint" for v in vs) else cls
        named = Counter(_key(v.culprit) for v in vs if v.culprit)
        top = named.most_common(1)[0][0] if named else ""
        chosen = [a + j for j, v in enumerate(vs) if _key(v.culprit) == top] or list(range(a, b + 1))
        pick = verdicts[_typical(chosen, feats)]
        lost = float(attr.per_step["lost_total_s"][a : b + 1].sum())
        phase: dict[str, Any] = {
            "first_step": vs[0].step,
            "last_step": vs[-1].step,
            "steps": len(vs),
            "class": cls,
            # what the evidence names behind the class (a straggler's hardware/host/data/unknown,
            # a stage imbalance), as most of the phase's steps name it; None: nothing named
            "cause": Counter(v.reason for v in vs).most_common(1)[0][0] or None,
            "culprit": pick.culprit,
            "confidence": round(sum(v.confidence for v in vs) / len(vs), 3),
            "lost_s": round(lost, 6),
            "lost_fraction": round(lost / total, 6) if total > 0 else 0.0,
            "recommendation": pick.recommendation,
        }
        if cls != "compute":
            on = onset.phase_onset(feats, a, b, cause, change)
            k = next((j for j, f in enumerate(feats) if f.step == on["step"]), a)
            on["time"] = round(feats[k].end_s - feats[k].duration_s, 3)
            phase["onset"] = on
        out.append(phase)
    return out


def _add(
    table: dict[str, dict[str, Any]], key: str, base: dict[str, Any], cause: str, s: float, step: int
) -> None:
    row = table.setdefault(key, {**base, "lost_s": 0.0, "causes": {}, "steps": 0, "first_step": step})
    row["lost_s"] += s
    row["causes"][cause] = row["causes"].get(cause, 0.0) + s
    row["steps"] += 1
    row["last_step"] = step


def _finish(rows: dict[str, dict[str, Any]], total: float) -> list[dict[str, Any]]:
    out = sorted(rows.values(), key=lambda r: -r["lost_s"])
    for r in out:
        r["lost_s"] = round(r["lost_s"], 6)
        r["fraction"] = round(r["lost_s"] / total, 6) if total > 0 else 0.0
        r["causes"] = {c: round(v, 6) for c, v in r["causes"].items()}
    return out


def aggregates(
    verdicts: list[Verdict], attr: Attribution, feats: list[StepFeatures] | None = None
) -> dict[str, Any]:
    """Time lost per cause, per node, per rank and per target, each ranked by seconds lost."""
    by_node: dict[str, dict[str, Any]] = {}
    by_rank: dict[str, dict[str, Any]] = {}
    targets: dict[str, dict[str, Any]] = {}
    advice: dict[str, list[int]] = {}
    for i, v in enumerate(verdicts):
        for cause in CAUSES:
            s = float(attr.per_step[f"lost_{cause}_s"][i])
            if s <= 0:
                continue
            culprit = attr.culprits[i].get(cause)
            if culprit is None and v.outside_metrics and cause != "checkpoint":
                continue  # no metrics there to name a culprit: not "the whole job" either
            key = _target_key(cause, culprit)
            base = {"cause": cause, "target": culprit or {"job": "whole job"}, "recommendation": ""}
            _add(targets, key, base, cause, s, v.step)
            row = targets[key]
            if culprit and len(culprit) > len(row["target"]):
                row["target"] = culprit  # the fullest description of the same thing (its UUID too)
            if v.primary_cause == cause and v.recommendation:
                advice.setdefault(key, []).append(i)
            if culprit and "node" in culprit:
                _add(by_node, str(culprit["node"]), {"node": culprit["node"]}, cause, s, v.step)
            if culprit and "rank" in culprit:
                _add(
                    by_rank,
                    str(culprit["rank"]),
                    {"rank": culprit["rank"], "node": culprit.get("node")},
                    cause,
                    s,
                    v.step,
                )
    for key, steps in advice.items():
        pick = _typical(steps, feats) if feats else steps[0]
        targets[key]["recommendation"] = verdicts[pick].recommendation
    for row in targets.values():  # a target booked to several causes is named by its costliest
        row["cause"] = max(row["causes"].items(), key=lambda kv: kv[1])[0]
    total = attr.run_seconds
    ranked = _finish(targets, total)
    for row in ranked:
        row.pop("causes", None)
    lost = attr.lost_s()
    return {
        "lost_by_cause": {
            c: {"lost_s": round(s, 6), "fraction": round(s / total, 6) if total > 0 else 0.0}
            for c, s in lost.items()
        },
        "targets": ranked[:TOP],
        "by_node": _finish(by_node, total)[:TOP],
        "by_rank": _finish(by_rank, total)[:TOP],
    }
