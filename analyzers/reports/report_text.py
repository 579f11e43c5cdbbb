"""The terminal summary of ``fmdiag analyze``: what was read, what is missing, the breakdown.

Renders an :class:`~fmdiag.analyzers.pipeline.Analysis` as plain text lines; computes nothing
the JSON document does not also carry (means and shares are of columns the JSON holds).
"""

from __future__ import annotations

import math
import shutil
import textwrap
from typing import Any

import numpy as np

from fmdiag import steprecord
from fmdiag.analyzers.diagnosis import rank_scores
from fmdiag.analyzers.frames import columns
from fmdiag.analyzers.pipeline import Analysis
from fmdiag.analyzers.readers.coverage import as_ranges, ranges_text

#: How many of the slowest steps to list.
SLOWEST = 5


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:5.1f}%" if whole > 0 and not math.isnan(part) else "    -"


def render(a: Analysis) -> str:
    lines: list[str] = [f"fmdiag analyze {a.dump}"]
    first = headline(a)
    if first:
        lines.extend(_fill(first, "", "  "))
    cov = a.steps_coverage
    if cov.records:
        head = (
            f"step records: {cov.records} from {cov.files} files, ranks {len(cov.ranks)}"
            f" ({cov.ranks[0]}-{cov.ranks[-1]}), steps {cov.first_step}-{cov.last_step},"
            f" job {', '.join(cov.jobs)}"
        )
        lines.extend(_fill(head))
        if cov.missing_ranks:
            lines.append(f"    missing ranks: {ranges_text(as_ranges(cov.missing_ranks))}")
        for rank, missing in sorted(cov.missing_steps.items())[:10]:
            lines.append(f"    rank {rank} lacks steps {ranges_text(missing)}")
        if cov.steps_missing_everywhere:
            lines.append(f"    no rank recorded steps {ranges_text(cov.steps_missing_everywhere)}")
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
        of = f" of {a.world_size}" if a.world_size else ""
        lines.append(f"  kineto traces: {len(a.traces)} (ranks {ranges_text(as_ranges(ranks))}{of})")
        if a.missing_ranks:
            lines.extend(_wrap(f"  missing ranks: {ranges_text(as_ranges(a.missing_ranks))} (no trace)"))
        sources = sorted({t.steps_from for t in a.traces if not t.cpu_only})
        if sources and sources != ["host ProfilerStep"]:
            lines.append(f"  steps from: {', '.join(sources)}")
        lines.extend(_unclassified_lines(a))
    if a.metrics:
        subs = ", ".join(f"{k} {v.series} series" for k, v in sorted(a.metrics.items()))
        lines.extend(_fill(f"metrics ({a.metrics_source}): {subs}"))
    for s in a.skipped:
        lines.extend(_wrap(f"skipped: {s.reason}"))
    for w in a.warnings:
        lines.extend(_wrap(f"warning: {w}"))
    lines.extend(_steps_section(a))
    lines.extend(_kineto_section(a))
    lines.extend(_hta_section(a))
    lines.extend(_verdict_section(a))
    return "\n".join(lines) + "\n"


#: Unclassified kernel names listed in the summary, and the width a name is cut to.
UNCLASSIFIED_SHOWN = 5
NAME_WIDTH = 80


def _short(name: str, width: int = NAME_WIDTH) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _unclassified_lines(a: Analysis) -> list[str]:
    """Kernels no entry of the classification table matched (docs/kernel-classes.md), if any."""
    u = a.unclassified_kernels
    if not u or not u.get("names"):
        return []
    count = f"{u['names']} names" if u["names_exact"] else f"at least {u['names']} names"
    share = f", {100 * u['share']:.1f}% of kernel time" if u.get("share") is not None else ""
    lines = [f"    kernels not in the classification table: {count}{share} (counted as compute); top:"]
    for item in u["top"][:UNCLASSIFIED_SHOWN]:
        lines.append(f"      {item['kernel_time_us'] / 1e3:7.1f} ms  {_short(item['name'])}")
    return lines


def width() -> int:
    """The terminal's width (``COLUMNS`` or the tty's), 80 when piped, kept within 60-200."""
    return max(60, min(200, shutil.get_terminal_size((80, 24)).columns)) - 2


def _fill(text: str, first: str = "  ", rest: str = "    ") -> list[str]:
    """Wrapped at the terminal's width; a name, path or other long word is never split, at a
    hyphen or anywhere (node-017, ncclDevKernel_… must stay copyable)."""
    return textwrap.wrap(
        text,
        width(),
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _wrap(text: str) -> list[str]:
    return _fill(text)


def _culprit(c: dict[str, object] | None) -> str:
    if not c:
        return "-"
    if set(c) == {"job"}:
        return "the whole job"
    parts = [f"{k} {c[k]}" for k in ("node", "rank", "gpu", "efa_device", "ost", "job") if k in c]
    if "pp_rank" in c:
        parts.insert(0, f"pipeline stage {c['pp_rank']}")
    return ", ".join(parts)


def _verdict_section(a: Analysis) -> list[str]:
    """Phases of one verdict, one line each with their onset and cost, then the recommendation."""
    d = a.diagnosis
    if not a.verdicts or d is None:
        if a.metrics and not a.traces and a.steps is None:
            return ["", "Verdicts: none (no step records or Kineto traces: there is no step to judge)"]
        return []
    lines = ["", "Verdicts (phases of one class)"]
    named = [f"{p['class']} ({p['cause']})" if p.get("cause") else p["class"] for p in d.phases]
    col = max([10, *(len(w) for w in named)])
    head = f"  {'steps':<11} {'class':<{col}} {'onset':>6} {'lost':>7}  "
    lines.append(head + "culprit")
    for p, what in zip(d.phases, named, strict=True):
        span = f"{p['first_step']}-{p['last_step']}" if p["steps"] > 1 else str(p["first_step"])
        on = str(p["onset"]["step"]) if "onset" in p else ""
        lost = f"{p['lost_fraction']:.1%}" if p["lost_s"] > 0 else ""
        row = f"  {span:<11} {what:<{col}} {on:>6} {lost:>7}  "
        # a long culprit continues under its column, never past the terminal's width
        lines.extend(_fill(_culprit(p["culprit"]), row, " " * len(row)))
        if (p["class"] != "compute" or p.get("cause")) and p["recommendation"]:
            lines.extend(_fill(p["recommendation"], "    ", "    "))
        lines.extend(_undecided_lines(a, p["first_step"], p["last_step"]))
    lines.extend(_lost_section(a))
    return lines


def _undecided_lines(a: Analysis, first: int, last: int) -> list[str]:
    """A phase's undecided notes, under it, each with the steps it was noted on (at most 3)."""
    steps: dict[str, list[int]] = {}
    for v in a.verdicts:
        if first <= v.step <= last:
            for u in v.undecided:
                if "continuity" not in u:
                    steps.setdefault(u, []).append(v.step)
    out: list[str] = []
    for note, where in list(steps.items())[:3]:
        label = "step" if len(where) == 1 else "steps"
        out.extend(_fill(f"undecided ({label} {ranges_text(as_ranges(where))}): {note}", "    ", "      "))
    return out


def headline(a: Analysis) -> str:
    """The analysis in one line: the costliest thing to act on, or that nothing stands out."""
    d = a.diagnosis
    if d is None or not a.verdicts:
        return ""
    targets = d.aggregates.get("targets", []) if d.aggregates else []
    if targets and targets[0]["fraction"] > 0:
        t = targets[0]
        bound = d.attribution.bound(t["cause"]) if d.attribution else ""
        what = "pipeline stage imbalance" if t["cause"] == "stage" else t["cause"]
        return (
            f"verdict: {what} ({_culprit(t['target'])}) costs {bound}{t['fraction']:.1%} of step"
            f" time over {t['steps']} steps"
            + (
                f"; {len(targets) - 1} more target{'s' if len(targets) > 2 else ''} below"
                if len(targets) > 1
                else ""
            )
        )
    counts: dict[str, int] = {}
    for v in a.verdicts:
        counts[v.cls] = counts.get(v.cls, 0) + 1
    top = max(counts.items(), key=lambda kv: kv[1])[0]
    return f"verdict: {top} on {counts[top]} of {len(a.verdicts)} steps; no cause costs measurable time"


def _lost_section(a: Analysis) -> list[str]:
    """What fixing each cause gives back, the targets to act on, and the ranks NVRx-style scores flag."""
    d = a.diagnosis
    lines: list[str] = []
    statements = d.attribution.statements() if d.attribution else []
    if statements:
        lines += ["", "Time lost (what-if: the step time without the cause)"]
        for s in statements:
            lines.extend(_fill(s))
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
    lines.extend(_stages_section(d.stages))
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


def _stages_section(stages: list[dict[str, Any]]) -> list[str]:
    """The pipeline's stages side by side: the one the others wait for stands out."""
    if not stages:
        return []
    lines = ["", "Pipeline stages (median per step; waiting: exposed communication, p2p receives included)"]
    lines.append(f"  {'stage':>5} {'ranks':>5} {'compute':>9} {'waiting':>9} {'vs median':>10}  nodes")
    for r in stages:
        nodes = ", ".join(r["nodes"][:3]) + (f" +{len(r['nodes']) - 3}" if len(r["nodes"]) > 3 else "")
        row = (
            f"  {r['pp_rank']:>5} {r['ranks']:>5} {r['compute_s']:8.3f}s {r['wait_share']:9.1%}"
            f" {r['vs_median_stage']:+10.0%}  "
        )
        lines.extend(_fill(nodes or "-", row, " " * len(row)))
    return lines


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
