"""The terminal summary of ``fmdiag analyze``: what was read, what is missing, the breakdown.

Renders an :class:`~fmdiag.analyzers.pipeline.Analysis` as plain text lines; computes nothing
the JSON document does not also carry (means and shares are of columns the JSON holds).
"""

from __future__ import annotations

import math
import textwrap

import numpy as np

from fmdiag import steprecord
from fmdiag.analyzers import columns, rank_scores
from fmdiag.analyzers.pipeline import Analysis

#: How many of the slowest steps to list.
SLOWEST = 5


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f}%" if whole > 0 and not math.isnan(part) else "    -"


def _ranges(ranges: list[list[int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def render(a: Analysis) -> str:
    lines: list[str] = [f"fmdiag analyze {a.dump}"]
    cov = a.steps_coverage
    if cov.records:
        head = (
            f"step records: {cov.records} from {cov.files} files, ranks {len(cov.ranks)}"
            f" ({cov.ranks[0]}-{cov.ranks[-1]}), steps {cov.first_step}-{cov.last_step},"
            f" job {', '.join(cov.jobs)}"
        )
        lines.extend(textwrap.wrap(head, 78, initial_indent="  ", subsequent_indent="    "))
        if cov.missing_ranks:
            lines.append(f"    missing ranks: {_ranges(_as_ranges(cov.missing_ranks))}")
        for rank, missing in sorted(cov.missing_steps.items())[:10]:
            lines.append(f"    rank {rank} lacks steps {_ranges(missing)}")
        if cov.steps_missing_everywhere:
            lines.append(f"    no rank recorded steps {_ranges(cov.steps_missing_everywhere)}")
        if cov.implausible:
            lines.append(f"    {cov.implausible} records with a phase longer than the step (kept)")
        if cov.superseded:
            lines.append(
                f"    {cov.superseded} records superseded by a later record of the same step (restarts)"
            )
    else:
        lines.append("  step records: none")
    if a.traces:
        ranks = sorted({t.rank for t in a.traces})
        lines.append(f"  kineto traces: {len(a.traces)} (ranks {', '.join(map(str, ranks))})")
    if a.metrics:
        subs = ", ".join(f"{k} {v.series} series" for k, v in sorted(a.metrics.items()))
        lines.extend(
            textwrap.wrap(
                f"metrics ({a.metrics_source}): {subs}", 78, initial_indent="  ", subsequent_indent="    "
            )
        )
    for s in a.skipped:
        lines.extend(_wrap(f"skipped: {s.reason}"))
    for w in a.warnings:
        lines.extend(_wrap(f"warning: {w}"))
    lines.extend(_steps_section(a))
    lines.extend(_kineto_section(a))
    lines.extend(_hta_section(a))
    lines.extend(_verdict_section(a))
    return "\n".join(lines) + "\n"


def _wrap(text: str) -> list[str]:
    """80 columns, but a path or other long word is never split (it must stay copyable)."""
    return textwrap.wrap(
        text,
        78,
        initial_indent="  ",
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _culprit(c: dict[str, object] | None) -> str:
    if not c:
        return "-"
    if set(c) == {"job"}:
        return "the whole job"
    parts = [f"{k} {c[k]}" for k in ("node", "rank", "gpu", "efa_device", "ost", "job") if k in c]
    return ", ".join(parts)


def _verdict_section(a: Analysis) -> list[str]:
    """Phases of one verdict, one line each with their onset and cost, then the recommendation."""
    d = a.diagnosis
    if not a.verdicts or d is None:
        if a.metrics and not a.traces and a.steps is None:
            return ["", "Verdicts: none (no step records or Kineto traces: there is no step to judge)"]
        return []
    lines = ["", "Verdicts (phases of one class)"]
    lines.append(f"  {'steps':<11} {'class':<10} {'onset':>6} {'lost':>7}  culprit")
    for p in d.phases:
        span = f"{p['first_step']}-{p['last_step']}" if p["steps"] > 1 else str(p["first_step"])
        on = str(p["onset"]["step"]) if "onset" in p else ""
        lost = f"{p['lost_fraction']:.1%}" if p["lost_s"] > 0 else ""
        lines.append(f"  {span:<11} {p['class']:<10} {on:>6} {lost:>7}  {_culprit(p['culprit'])}")
        if p["class"] != "compute" and p["recommendation"]:
            lines.extend(
                textwrap.wrap(p["recommendation"], 78, initial_indent="    ", subsequent_indent="    ")
            )
    undecided = sorted({u for v in a.verdicts for u in v.undecided if "continuity" not in u})
    for u in undecided[:5]:
        lines.extend(textwrap.wrap(f"undecided: {u}", 78, initial_indent="  ", subsequent_indent="    "))
    lines.extend(_lost_section(a))
    return lines


def _lost_section(a: Analysis) -> list[str]:
    """What fixing each cause gives back, the targets to act on, and the ranks NVRx-style scores flag."""
    d = a.diagnosis
    lines: list[str] = []
    statements = d.attribution.statements() if d.attribution else []
    if statements:
        lines += ["", "Time lost (what-if: the step time without the cause)"]
        for s in statements:
            lines.extend(textwrap.wrap(s, 78, initial_indent="  ", subsequent_indent="    "))
        if not d.attribution.baseline.measured:
            but = (
                ", but a straggler's: its peers' idle GPU time"
                if d.attribution.straggler_from_activity
                else ""
            )
            lines.extend(_wrap(f"(no healthy stretch in the run: losses are lower bounds{but})"))
    targets = d.aggregates.get("targets", [])
    if targets:
        lines += ["", "Act on (ranked by the time they cost)"]
        for t in targets[:5]:
            lines.append(f"  {t['fraction']:6.1%}  {t['cause']:<10} {_culprit(t['target'])}")
    scores = d.rank_scores
    if scores is not None and columns.length(scores) and bool(np.any(scores["flagged"])):
        bad = rank_scores.flagged(scores)
        total = columns.length(scores)
        lines += ["", f"Ranks below the score threshold ({columns.length(bad)} of {total}; 1.0 = best)"]
        lines.append(f"  {'rank':>6} {'node':<14} {'relative':>9} {'own history':>12}")
        for i in range(min(5, columns.length(bad))):
            lines.append(
                f"  {int(bad['rank'][i]):>6} {bad['node'][i]:<14} {bad['relative_score'][i]:9.3f}"
                f" {bad['individual_score'][i]:12.3f}"
            )
    return lines


def _as_ranges(values: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def _steps_section(a: Analysis) -> list[str]:
    b = a.step_breakdown
    if a.steps is None or not len(b):
        return []
    lines = ["", "Step records: mean per step across ranks (share of step time)"]
    total = float(b["duration_s"].mean())
    lines.append(f"  step time {total:.3f} s")
    for phase in (*steprecord.PHASES, "unattributed_s"):
        if phase in b and b[phase].notna().any():
            mean = float(b[phase].fillna(0.0).mean())
            if phase == "unattributed_s" and abs(mean) < 5e-4:
                continue  # the phases cover the step: nothing to say (and no "-0.000")
            label = phase.removesuffix("_s")
            lines.append(f"  {label:<16} {mean:8.3f} s {_pct(mean, total)}")
    sp = columns.select(a.step_spread, a.step_spread["value"] == "duration_s")
    order = np.argsort(-sp["max"], kind="stable")[:SLOWEST]
    if order.size:
        lines.append("  slowest steps (max across ranks; rank):")
        for i in order:
            lines.append(
                f"    step {int(sp['step'][i]):>6}  max {sp['max'][i]:.3f} s (rank {int(sp['max_rank'][i])})"
                f"  median {sp['median'][i]:.3f} s  min {sp['min'][i]:.3f} s (rank {int(sp['min_rank'][i])})"
            )
    big = {n: o for n, o in a.clock_offsets.items() if abs(o) >= 1e-3}
    if big:
        lines.append(
            "  node clock offsets (from step ends): "
            + ", ".join(f"{n} {o * 1e3:+.1f} ms" for n, o in sorted(big.items()))
        )
    return lines


def _kineto_section(a: Analysis) -> list[str]:
    kb = a.kineto_breakdown
    complete = columns.select(kb, ~kb["partial"])
    if not columns.length(complete):
        return []
    lines = ["", "Kineto: GPU time per rank, complete steps (share of span)"]
    names = ("compute", "commexp", "commovl", "memory", "idle", "hostwt", "kernwt")
    lines.append(f"  {'rank':>5} {'steps':>5} {'span s':>8} " + " ".join(f"{n:>7}" for n in names))
    shown = (
        "compute_s",
        "comm_exposed_s",
        "comm_overlapped_s",
        "memory_s",
        "idle_s",
        "idle_host_wait_s",
        "idle_kernel_wait_s",
    )
    for rank in np.unique(complete["rank"]):
        on = complete["rank"] == rank
        span = float(complete["span_s"][on].sum())
        steps = int(np.unique(complete["step"][on]).size)
        shares = " ".join(f"{_pct(float(complete[c][on].sum()), span):>7}" for c in shown)
        lines.append(f"  {int(rank):>5} {steps:>5} {span:8.3f} {shares}")
    return lines


def _hta_section(a: Analysis) -> list[str]:
    if not a.hta:
        return []
    lines = ["", "HTA-compatible (Holistic Trace Analysis' definitions, µs)"]
    lines.append(
        f"  {'rank':>5} {'kernel time':>12} {'idle':>10} {'compute':>12} {'non-compute':>12} {'overlap %':>9}"
    )
    for r in a.hta:
        t = r["temporal"]
        ov = r["comm_comp_overlap_pctg"]
        lines.append(
            f"  {r['rank']:>5} {t['kernel_time_us']:12.0f} {t['idle_time_us']:10.0f}"
            f" {t['compute_time_us']:12.0f}"
            f" {t['non_compute_time_us']:12.0f} {'-' if ov is None else f'{ov:.2f}':>9}"
        )
    return lines
