"""``fmdiag analyze --html``: the analysis as one self-contained HTML page of plotly figures.

The page is for someone looking at a slow run without the cluster at hand (an incident review,
a ticket): so it is one file, with plotly.js inlined once in the head and no network reference,
that opens offline in any browser. Like the JSON and terminal reports it only renders: every
number comes from the :class:`~fmdiag.analyzers.pipeline.Analysis` or its JSON document; the
figures only reduce them (medians across ranks, bins) so that a 4,096-rank x 1,000-step job stays
a page a browser opens (heatmap bins of ranks and steps, peers aggregated to their median, only a
culprit's own metric series in full).
"""

from __future__ import annotations

import html
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go  # type: ignore[import-untyped]
import plotly.offline  # type: ignore[import-untyped]
from plotly.subplots import make_subplots  # type: ignore[import-untyped]

from fmdiag import __version__, steprecord
from fmdiag.analyzers.diagnosis.verdicts import EFA_ERROR_COUNTERS, HW_SLOWDOWN_BITS, SAMPLE_TOLERANCE_S
from fmdiag.analyzers.pipeline import Analysis
from fmdiag.analyzers.readers.coverage import as_ranges, ranges_text
from fmdiag.dumpformat import VERDICT_CLASSES

#: Heatmap bins: more rows or columns than a screen has pixels only make the file big.
MAX_RANK_ROWS = 512
MAX_STEP_COLUMNS = 1000
#: Points per metric line in the overlays (the scrape grid is widened past this).
MAX_POINTS = 2000
#: Shaded verdict runs per overlay (an alternating run of 1,000 steps would be 500 shapes).
MAX_SHADES = 300
#: Fixed colours: the same class is the same colour in every figure and every report.
CLASS_COLOURS = {
    "compute": "#4c78a8",
    "network": "#f58518",
    "io": "#54a24b",
    "host": "#b279a2",
    "straggler": "#e45756",
    "checkpoint": "#9d755d",
    "stage": "#ff9da6",
}
PHASES = (*steprecord.PHASES, "unattributed_s")
PHASE_COLOURS = {
    "data_wait": "#54a24b",
    "forward": "#4c78a8",
    "backward": "#72b7b2",
    "comm_exposed": "#f58518",
    "optimizer": "#eeca3b",
    "checkpoint": "#9d755d",
    "unattributed_s": "#bab0ac",
}
PEER = "#7f7f7f"
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 24px 24px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin: 20px 0 4px; } h2 { font-size: 1.2em; margin: 28px 0 6px;
     border-bottom: 1px solid #ddd; padding-bottom: 2px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td:has(.swatch) { white-space: nowrap; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 4px; border-radius: 2px; }
.note { color: #666; font-style: italic; } .fig { margin: 4px 0 16px; }
.summary { display: flex; flex-wrap: wrap; gap: 24px; } footer { color: #888; font-size: 0.85em;
     margin-top: 32px; border-top: 1px solid #ddd; padding-top: 6px; }
"""


def render(analysis: Analysis, doc: dict[str, Any]) -> str:
    """The whole page: summary, step heatmap, breakdown, verdict timeline, time lost, overlays."""
    a = analysis
    b = a.step_breakdown if isinstance(a.step_breakdown, pd.DataFrame) and len(a.step_breakdown) else None
    name = Path(str(doc.get("dump", a.dump))).name or str(doc.get("dump", a.dump))
    body = [f"<h1>fmdiag analyze: {_e(name)}</h1>", f'<p class="note">{_e(doc.get("dump", a.dump))}</p>']
    body.append(_summary(b, doc))
    body.append("<h2>Step time per rank</h2>")
    body.append(_heatmap(b) if b is not None else _note("no step records: no per-rank step times"))
    body.append("<h2>Median step breakdown</h2>")
    body.append(_breakdown(b) if b is not None else _note("no step records: no step breakdown"))
    body.append("<h2>Verdicts</h2>")
    verdicts = doc.get("verdicts") or []
    body.append(_timeline(verdicts) if verdicts else _note("no verdicts (they need step records)"))
    body.append("<h2>Time lost per cause</h2>")
    body.append(_lost(doc))
    body.append("<h2>Metrics behind the verdicts</h2>")
    body.append(_overlays(a, verdicts))
    body.append(
        f"<footer>fmdiag {_e(__version__)} · document {_e(doc.get('format', ''))} version "
        f"{_e(doc.get('version', ''))} (written by fmdiag {_e(doc.get('fmdiag_version', ''))})</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>fmdiag analyze: {_e(name)}</title>\n<style>{CSS}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n'
        "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value))


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _fig(fig: Any, div_id: str, height: int = 420) -> str:
    fig.update_layout(template="plotly_white", height=height, margin={"l": 70, "r": 30, "t": 50, "b": 50})
    # the template's white bar outlines turn 1,000 thin bars into stripes
    fig.update_traces(marker_line_width=0, selector={"type": "bar"})
    body: str = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="fig">{body}</div>'


def _culprit_text(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    if set(c) == {"job"}:
        return "whole job"  # not "job whole job"
    return ", ".join(
        f"{k} {c[k]}" for k in ("node", "rank", "gpu", "efa_device", "fs", "ost", "job") if k in c
    )


def _wrap(text: str, width: int = 90) -> str:
    """Plotly hover labels do not wrap: break long recommendations at spaces."""
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return "<br>".join(html.escape(x) for x in lines)


def _swatch(cls: str) -> str:
    return f'<span class="swatch" style="background:{CLASS_COLOURS.get(cls, PEER)}"></span>{_e(cls)}'


# --- summary ---------------------------------------------------------------------------------


def _summary(b: pd.DataFrame | None, doc: dict[str, Any]) -> str:
    cov = doc.get("coverage", {}).get("steps", {})
    facts = [("dump", doc.get("dump", ""))]
    if b is not None:
        facts.append(("ranks", f"{b['rank'].nunique()}"))
        facts.append(("steps", f"{b['step'].nunique()} ({int(b['step'].min())}-{int(b['step'].max())})"))
    if cov.get("jobs"):
        facts.append(("job", ", ".join(cov["jobs"])))
    subs = doc.get("inputs", {}).get("metrics", {}).get("subsystems", {})
    facts.append(("metrics", ", ".join(sorted(subs)) or "none"))
    facts.append(("kineto traces", str(len(doc.get("inputs", {}).get("kineto", {}).get("files", [])))))
    kcov = doc.get("coverage", {}).get("kineto", {})
    if kcov.get("world_size"):
        facts.append(("world size (traces)", str(kcov["world_size"])))
    if kcov.get("missing_ranks"):
        facts.append(("missing ranks", ranges_text(as_ranges(kcov["missing_ranks"]))))
    unclassified = kcov.get("unclassified_kernels") or {}
    if unclassified.get("names"):
        facts.append(("kernels not in the classification table", _unclassified_text(unclassified)))
    if doc.get("warnings"):
        facts.append(("warnings", str(len(doc["warnings"]))))
    if doc.get("skipped"):
        facts.append(("skipped", str(len(doc["skipped"]))))
    parts = ["<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>"]
    verdicts = doc.get("verdicts") or []
    if verdicts:
        counts = Counter(v["class"] for v in verdicts)
        rows = "".join(
            f'<tr><td>{_swatch(c)}</td><td class="num">{counts[c]}</td></tr>'
            for c in VERDICT_CLASSES
            if counts[c]
        )
        parts.append(f"<table><tr><th>verdict</th><th>steps</th></tr>{rows}</table>")
    if b is not None:
        total = float(b["duration_s"].mean())
        shares = [
            (p.removesuffix("_s"), float(b[p].fillna(0.0).mean()))
            for p in PHASES
            if p in b and b[p].notna().any()
        ]
        shares.sort(key=lambda kv: -kv[1])
        rows = "".join(
            f'<tr><td>{_e(p)}</td><td class="num">{m:.3f} s</td>'
            f'<td class="num">{100 * m / total if total > 0 else math.nan:.1f}%</td></tr>'
            for p, m in shares[:5]
        )
        parts.append(
            f"<table><tr><th>top phases</th><th>mean</th><th>of {total:.3f} s</th></tr>{rows}</table>"
        )
    lost = (doc.get("attribution") or {}).get("run", {}).get("lost_s") or {}
    if lost:
        rows = "".join(
            f'<tr><td>{_swatch(c)}</td><td class="num">{s:.1f} s</td></tr>'
            for c, s in sorted(lost.items(), key=lambda kv: -(kv[1] or 0.0))
            if s
        )
        parts.append(f"<table><tr><th>time lost</th><th>run</th></tr>{rows}</table>")
    out = '<div class="summary">' + "".join(parts) + "</div>"
    statements = (doc.get("attribution") or {}).get("statements") or []
    if statements:
        out += "<ul>" + "".join(f"<li>{_e(t)}</li>" for t in statements[:5]) + "</ul>"
    targets = (doc.get("aggregates") or {}).get("targets")
    if targets:
        out += _top_targets(targets)
    elif verdicts:
        out += _top_recommendations(verdicts)
    if unclassified.get("names"):
        out += _unclassified_table(unclassified)
    return out


def _unclassified_text(u: dict[str, Any]) -> str:
    count = f"{u['names']} names" if u.get("names_exact", True) else f"at least {u['names']} names"
    share = f", {100 * u['share']:.1f}% of kernel time" if u.get("share") is not None else ""
    return f"{count}{share} (counted as compute)"


def _unclassified_table(u: dict[str, Any], top: int = 10, width: int = 120) -> str:
    """The unclassified kernels with the most time (docs/kernel-classes.md says how to add them)."""

    def short(name: str) -> str:
        return name if len(name) <= width else name[: width - 1] + "…"

    rows = "".join(
        f'<tr><td class="num">{item["kernel_time_us"] / 1e3:.1f} ms</td><td class="num">{item["ranks"]}</td>'
        f'<td title="{_e(item["name"])}"><code>{_e(short(item["name"]))}</code></td></tr>'
        for item in u.get("top", [])[:top]
    )
    return (
        '<table id="unclassified-kernels"><tr><th>kernel time</th><th>ranks</th>'
        f"<th>kernel not in the classification table (counted as compute)</th></tr>{rows}</table>"
    )


def _top_targets(targets: list[dict[str, Any]], top: int = 5) -> str:
    """The document's targets, already ranked by the time fixing each would give back."""
    rows = "".join(
        f'<tr><td>{_swatch(str(t.get("cause", "")))}</td><td class="num">{t.get("lost_s") or 0.0:.1f} s</td>'
        f'<td class="num">{t.get("steps", "")}</td><td>{_e(_culprit_text(t.get("target")) or "-")}</td>'
        f"<td>{_e(t.get('recommendation', ''))}</td></tr>"
        for t in targets[:top]
    )
    return (
        "<table><tr><th>cause</th><th>lost</th><th>steps</th><th>target</th><th>recommendation</th></tr>"
        f"{rows}</table>"
    )


def _top_recommendations(verdicts: list[dict[str, Any]], top: int = 5) -> str:
    """The most frequent (class, culprit) pairs, each with the recommendation of its middle step
    (the first steps of a run are often warm-up, unlike the rest)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for v in verdicts:
        groups.setdefault((v["class"], _culprit_text(v.get("culprit"))), []).append(v)
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:top]
    rows = "".join(
        f'<tr><td>{_swatch(cls)}</td><td class="num">{len(vs)}</td><td>{_e(culprit)}</td>'
        f"<td>step {v['step']}: {_e(v.get('recommendation', ''))}</td></tr>"
        for (cls, culprit), vs in ranked
        for v in [vs[len(vs) // 2]]
    )
    return (
        f"<table><tr><th>class</th><th>steps</th><th>culprit</th><th>recommendation</th></tr>{rows}</table>"
    )


# --- step figures ----------------------------------------------------------------------------


def _bin_max(z: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Max over bins of ``size`` along ``axis`` (NaN only where a whole bin is NaN)."""
    if size <= 1:
        return z
    n = z.shape[axis]
    pad = -n % size
    if pad:
        widths = [(0, 0), (0, 0)]
        widths[axis] = (0, pad)
        z = np.pad(z, widths, constant_values=np.nan)
    shape = (z.shape[0] // size, size, z.shape[1]) if axis == 0 else (z.shape[0], z.shape[1] // size, size)
    out: np.ndarray = np.fmax.reduce(z.reshape(shape), axis=axis + 1)
    return out


def _colour_scale(z: np.ndarray) -> tuple[float | None, float | None]:
    """The heatmap's colour range from the typical steps only: a step column whose median is over
    1.5x the median column's (warm-up, evaluation, a checkpoint) would set the top of the scale
    and leave every ordinary step one flat colour, hiding the late rank."""
    if not np.isfinite(z).any():
        return None, None
    with np.errstate(all="ignore"):
        cols = np.nanmedian(np.where(np.isfinite(z), z, np.nan), axis=0)
    typical = float(np.nanmedian(cols))
    keep = np.isfinite(cols) & (cols <= 1.5 * typical)
    body = z[:, keep] if keep.any() else z
    return float(np.nanpercentile(body, 1)), float(np.nanpercentile(body, 99))


def _heatmap(b: pd.DataFrame) -> str:
    ranks, ri = np.unique(b["rank"].to_numpy(), return_inverse=True)
    steps, si = np.unique(b["step"].to_numpy(), return_inverse=True)
    z = np.full((len(ranks), len(steps)), np.nan)
    # every rank leaves a synchronous step together, so raw step time is flat across ranks: less
    # the exposed wait and the checkpoint, the late rank is the one that stands out
    busy = b["duration_s"].to_numpy(dtype="float64")
    for waited in ("comm_exposed", "checkpoint"):
        if waited in b:
            busy = busy - b[waited].fillna(0.0).to_numpy(dtype="float64")
    z[ri, si] = busy
    rb = math.ceil(len(ranks) / MAX_RANK_ROWS)
    sb = math.ceil(len(steps) / MAX_STEP_COLUMNS)
    z = _bin_max(_bin_max(z, rb, 0), sb, 1).astype(np.float32)
    scale = _colour_scale(z)
    ytitle = "rank" if rb == 1 else f"rank (bins of {rb} ranks, max per bin; first rank shown)"
    xtitle = "step" if sb == 1 else f"step (bins of {sb} steps, max per bin; first step shown)"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=steps[::sb],
            y=ranks[::rb],
            colorscale="Viridis",
            # slow steps (warm-up, an eval, a checkpoint) must not wash the colours out
            zmin=scale[0],
            zmax=scale[1],
            colorbar={"title": {"text": "s"}},
            hovertemplate="step %{x}<br>rank %{y}<br>busy %{z:.3f} s<extra></extra>",
        )
    )
    fig.update_layout(
        title="Step time per rank, less exposed communication and checkpoint (the late rank stands out)",
        xaxis_title=xtitle,
        yaxis_title=ytitle,
    )
    fig.update_yaxes(autorange="reversed")
    return _fig(fig, "fig-heatmap", height=max(360, min(720, 120 + 6 * z.shape[0])))


def _step_bins(index: np.ndarray) -> tuple[np.ndarray, int]:
    size = math.ceil(len(index) / MAX_STEP_COLUMNS)
    return np.arange(len(index)) // size, size


def _breakdown(b: pd.DataFrame) -> str:
    phases = [p for p in PHASES if p in b and b[p].notna().any()]
    med = b.groupby("step", sort=True)[phases].median()
    keys, size = _step_bins(med.index.to_numpy())
    if size > 1:
        med = med.groupby(keys).mean().set_index(med.index.to_numpy()[::size])
    fig = go.Figure()
    for p in phases:
        fig.add_trace(
            go.Bar(
                x=med.index.to_numpy(),
                y=med[p].to_numpy(dtype="float64"),
                name=p.removesuffix("_s"),
                marker_color=PHASE_COLOURS.get(p, PEER),
                hovertemplate=f"step %{{x}}<br>{p.removesuffix('_s')} %{{y:.3f}} s<extra></extra>",
            )
        )
    xtitle = "step" if size == 1 else f"step (mean over bins of {size} steps)"
    fig.update_layout(
        title="Median across ranks of each phase, per step",
        barmode="relative",
        bargap=0.05,
        xaxis_title=xtitle,
        yaxis_title="seconds",
    )
    return _fig(fig, "fig-breakdown")


def _timeline(verdicts: list[dict[str, Any]]) -> str:
    fig = go.Figure()
    for cls in VERDICT_CLASSES:
        vs = [v for v in verdicts if v["class"] == cls]
        if not vs:
            continue
        custom = [
            [
                _e(_culprit_text(v.get("culprit"))),
                _wrap(v.get("recommendation") or "-"),
                _wrap("; ".join(v.get("undecided") or []) or "-"),
            ]
            for v in vs
        ]
        fig.add_trace(
            go.Bar(
                x=[v["step"] for v in vs],
                y=[v["confidence"] for v in vs],
                name=cls,
                marker_color=CLASS_COLOURS[cls],
                customdata=custom,
                hovertemplate=(
                    f"step %{{x}}: <b>{cls}</b> (confidence %{{y:.2f}})<br>culprit %{{customdata[0]}}"
                    "<br>%{customdata[1]}<br><i>undecided: %{customdata[2]}</i><extra></extra>"
                ),
            )
        )
    fig.update_layout(
        title="Verdict per step (bar height: confidence)",
        barmode="overlay",
        bargap=0.05,
        xaxis_title="step",
        yaxis={"title": "confidence", "range": [0, 1]},
        hoverlabel={"align": "left"},
    )
    return _fig(fig, "fig-timeline", height=320)


# --- time lost -------------------------------------------------------------------------------


def _lost(doc: dict[str, Any]) -> str:
    """The attribution's time lost per cause, over the run and per step."""
    att = doc.get("attribution")
    if not att:
        return _note("no verdicts (no step records or traces): no time lost to show")
    totals = {c: float(v or 0.0) for c, v in att["run"]["lost_s"].items()}
    if not any(v > 0 for v in totals.values()):
        return _note("no time lost to any cause: every step was as fast as the run's healthy steps")
    table = att["per_step"]
    per_step = pd.DataFrame(table["rows"], columns=table["columns"])
    steps = per_step["step"].to_numpy()
    stacked = {c: per_step[f"lost_{c}_s"].astype("float64").fillna(0.0).to_numpy() for c in totals}
    title = "Time lost per cause (what-if attribution)"
    out: list[str] = []
    fig = make_subplots(rows=1, cols=2, column_widths=[0.25, 0.75], subplot_titles=("whole run", "per step"))
    fig.add_trace(
        go.Bar(
            x=list(totals),
            y=list(totals.values()),
            marker_color=[CLASS_COLOURS.get(c, PEER) for c in totals],
            showlegend=False,
            hovertemplate="%{x}: %{y:.2f} s<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for c, ys in stacked.items():
        fig.add_trace(
            go.Bar(
                x=steps,
                y=ys,
                name=c,
                marker_color=CLASS_COLOURS.get(c, PEER),
                hovertemplate=f"step %{{x}}: {c} %{{y:.3f}} s<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_layout(title=title, barmode="stack", bargap=0.05)
    fig.update_yaxes(title_text="seconds", row=1, col=1)
    fig.update_xaxes(title_text="step", row=1, col=2)
    out.append(_fig(fig, "fig-lost"))
    nodes = (doc.get("aggregates") or {}).get("by_node") or []
    if nodes:
        top = sorted(nodes, key=lambda n: -(n.get("lost_s") or 0.0))[:40]
        fig = go.Figure()
        causes = sorted({c for n in top for c in (n.get("causes") or {})})
        for c in causes:  # one bar segment per cause: which cause made each node cost
            fig.add_trace(
                go.Bar(
                    x=[float((n.get("causes") or {}).get(c) or 0.0) for n in top],
                    y=[str(n.get("node")) for n in top],
                    orientation="h",
                    name=c,
                    marker_color=CLASS_COLOURS.get(c, PEER),
                    hovertemplate=f"%{{y}}: {c} %{{x:.2f}} s lost<extra></extra>",
                )
            )
        if not causes:
            fig.add_trace(
                go.Bar(
                    x=[n.get("lost_s") or 0.0 for n in top],
                    y=[str(n.get("node")) for n in top],
                    orientation="h",
                    marker_color=PEER,
                )
            )
        shown = "" if len(nodes) <= len(top) else f" (top {len(top)} of {len(nodes)})"
        fig.update_layout(
            title=f"Time lost per node, by cause{shown}", xaxis_title="seconds", barmode="stack"
        )
        fig.update_yaxes(autorange="reversed")
        out.append(_fig(fig, "fig-lost-nodes", height=max(300, 80 + 18 * len(top))))
    return "".join(out)


# --- metric overlays -------------------------------------------------------------------------


def _step_times(a: Analysis) -> pd.DataFrame | None:
    """Per step: median start and end over ranks, Unix s (the times the verdicts looked at)."""
    if a.steps is None or not len(a.steps):
        return None
    g = a.steps.groupby("step", sort=True)
    return pd.DataFrame({"start": g["start_ns"].median() / 1e9, "end": g["end_ns"].median() / 1e9})


def _shades(times: pd.DataFrame, verdicts: list[dict[str, Any]], cls: str) -> list[dict[str, Any]]:
    """Rectangles over the runs of steps of class ``cls``, behind the lines."""
    cls_of = {v["step"]: v["class"] for v in verdicts}
    runs: list[list[float]] = []
    prev = False
    for step, row in times.iterrows():
        on = cls_of.get(step) == cls
        if on and prev:
            runs[-1][1] = float(row["end"])
        elif on:
            runs.append([float(row["start"]), float(row["end"])])
        prev = on
    return [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": _ts(x0),
            "x1": _ts(x1),
            "y0": 0,
            "y1": 1,
            "fillcolor": CLASS_COLOURS[cls],
            "opacity": 0.15,
            "line": {"width": 0},
            "layer": "below",
        }
        for x0, x1 in runs[:MAX_SHADES]
    ]


def _ts(t: Any) -> Any:
    return pd.to_datetime(t, unit="s")


def _interval(ts: np.ndarray, span: float) -> float:
    """The scrape interval of a series, widened so that ``span`` holds at most MAX_POINTS bins."""
    u = np.unique(ts)
    d = np.diff(u)
    step = float(np.median(d[d > 0])) if (d > 0).any() else SAMPLE_TOLERANCE_S / 2
    return max(step, span / MAX_POINTS)


def _binned(ts: np.ndarray, values: np.ndarray, width: float, how: str = "median") -> tuple[Any, np.ndarray]:
    """Values aggregated per time bin across series (peers' median): bounded by the bin count."""
    keys = np.floor(ts / width)
    s = pd.Series(values).groupby(keys).agg(how)
    return _ts(s.index.to_numpy() * width), s.to_numpy(dtype="float64")


def _series(frame: pd.DataFrame, metric: str, **labels: str) -> pd.DataFrame:
    mask = frame["metric"] == metric
    for k, v in labels.items():
        if k not in frame:
            return frame.iloc[0:0]
        mask &= frame[k].astype(str) == v
    return frame[mask]


def _window(frame: pd.DataFrame | None, times: pd.DataFrame | None) -> pd.DataFrame | None:
    """The metrics of the job's time (a scrape or two either side), not the node's whole history."""
    if frame is None or not len(frame):
        return None
    if times is not None:
        lo = float(times["start"].min()) - SAMPLE_TOLERANCE_S
        hi = float(times["end"].max()) + SAMPLE_TOLERANCE_S
        frame = frame[(frame["timestamp"] >= lo) & (frame["timestamp"] <= hi)]
    return frame if len(frame) else None


def _counter_rates(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per-second rate of counters per series ``keys``; a reset (a negative step) is left out."""
    f = frame.groupby([*keys, "timestamp"], observed=True)["value"].sum().reset_index()
    f = f.sort_values([*keys, "timestamp"])
    g = f.groupby(keys, observed=True)
    dv, dt = g["value"].diff(), g["timestamp"].diff()
    f["rate"] = (dv / dt).where((dv >= 0) & (dt > 0))
    return f.dropna(subset=["rate"])


def _overlays(a: Analysis, verdicts: list[dict[str, Any]]) -> str:
    counts = Counter(v["class"] for v in verdicts)
    wanted = [c for c in ("straggler", "network", "io", "host") if counts[c]]
    if not a.metric_frames:
        return _note("no node metrics in this dump (metrics/): the verdicts' metric evidence cannot be shown")
    if not wanted:
        return _note("no straggler, network, io or host verdict: no metric to overlay")
    times = _step_times(a)
    out = []
    for cls in sorted(wanted, key=lambda c: -counts[c]):
        vs = [v for v in verdicts if v["class"] == cls]
        make = {"straggler": _straggler, "network": _network, "io": _io, "host": _host}[cls]
        rows, why = make(a, vs, times)
        if not rows:
            out.append(_note(f"{cls} verdicts ({len(vs)} steps): {why}"))
            continue
        fig = make_subplots(
            rows=len(rows),
            cols=1,
            shared_xaxes=True,
            vertical_spacing=0.06,
            subplot_titles=[r[0] for r in rows],
        )
        seen: set[str] = set()
        for i, (_, traces) in enumerate(rows, start=1):
            for t in traces:
                # one legend entry per series name, toggling it in every row
                t.update(legendgroup=t.name, showlegend=t.name not in seen)
                seen.add(t.name)
                fig.add_trace(t, row=i, col=1)
        if times is not None:
            fig.update_layout(shapes=_shades(times, verdicts, cls))
        fig.update_layout(title=f"{cls} ({len(vs)} steps, shaded): {why}", hovermode="x unified")
        fig.update_xaxes(title_text="time (UTC)", row=len(rows), col=1)
        out.append(_fig(fig, f"fig-overlay-{cls}", height=120 + 220 * len(rows)))
    return "".join(out)


Rows = list[tuple[str, list[Any]]]


def _line(x: Any, y: np.ndarray, name: str, colour: str, dash: str = "solid", shape: str = "linear") -> Any:
    return go.Scatter(x=x, y=y, name=name, mode="lines", line={"color": colour, "dash": dash, "shape": shape})


def _top_culprit(vs: list[dict[str, Any]], *keys: str) -> dict[str, Any] | None:
    got = Counter(
        tuple(str(v["culprit"][k]) for k in keys)
        for v in vs
        if v.get("culprit") and all(k in v["culprit"] for k in keys)
    )
    if not got:
        return None
    best = got.most_common(1)[0][0]
    return dict(zip(keys, best, strict=True))


def _span(times: pd.DataFrame | None, ts: np.ndarray) -> float:
    if times is not None:
        return float(times["end"].max() - times["start"].min()) + 2 * SAMPLE_TOLERANCE_S
    return float(ts.max() - ts.min()) if len(ts) else 0.0


def _straggler(a: Analysis, vs: list[dict[str, Any]], times: pd.DataFrame | None) -> tuple[Rows, str]:
    gpu = _window(a.metric_frames.get("gpu"), times)
    if gpu is None or "gpu" not in gpu:
        return [], "no GPU metrics in this dump"
    c = _top_culprit(vs, "node", "gpu")
    if c is None:
        return [], "no culprit GPU named"
    mine = (gpu["instance"].astype(str) == c["node"]) & (gpu["gpu"].astype(str) == c["gpu"])
    label = f"{c['node']} GPU {c['gpu']}"
    rows: Rows = []
    for metric, title in (
        ("DCGM_FI_DEV_SM_CLOCK", "SM clock (MHz)"),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "HW slowdown clock-event bit (0x8 | 0x40 | 0x80) set"),
        ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (C)"),
        ("DCGM_FI_DEV_POWER_USAGE", "power (W)"),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "graphics engine active (fraction)"),
    ):
        on = gpu["metric"] == metric
        own, peers = gpu[on & mine].sort_values("timestamp"), gpu[on & ~mine]
        if not len(own):
            continue
        y = own["value"].to_numpy(dtype="float64")
        py = peers["value"].to_numpy(dtype="float64")
        reasons = metric == "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
        if reasons:
            bits = y.astype(np.int64)
            y = ((bits & HW_SLOWDOWN_BITS) != 0).astype("float64")
            py = ((py.astype(np.int64) & HW_SLOWDOWN_BITS) != 0).astype("float64")
        ts = own["timestamp"].to_numpy()
        trace = _line(_ts(ts), y, label, CLASS_COLOURS["straggler"], shape="hv" if reasons else "linear")
        if reasons:
            trace.update(
                customdata=[f"0x{int(v):x}" for v in bits], hovertemplate="%{y:.0f} (reasons %{customdata})"
            )
        traces = [trace]
        if len(peers):
            width = _interval(ts, _span(times, ts))
            px, pm = _binned(peers["timestamp"].to_numpy(), py, width, "mean" if reasons else "median")
            peer_name = "share of peer GPUs" if reasons else "peer GPUs' median"
            traces.append(_line(px, pm, peer_name, PEER, dash="dot", shape="hv" if reasons else "linear"))
        rows.append((title, traces))
    return rows, f"{label} against its peers"


def _network(a: Analysis, vs: list[dict[str, Any]], times: pd.DataFrame | None) -> tuple[Rows, str]:
    efa = _window(a.metric_frames.get("efa"), times)
    if efa is None or "device" not in efa:
        return [], "no EFA metrics in this dump"
    errs = efa[efa["metric"].isin(EFA_ERROR_COUNTERS)]
    if not len(errs):
        return [], "no EFA error counters in this dump"
    rates = _counter_rates(errs, ["instance", "device"])
    c = _top_culprit(vs, "node")
    if not len(rates):
        return [], "EFA error counters have too few samples for a rate"
    ts_all = rates["timestamp"].to_numpy()
    width = _interval(ts_all, _span(times, ts_all))
    traces: list[Any] = []
    if c is not None:
        mine = rates["instance"].astype(str) == c["node"]
        palette = ["#f58518", "#e45756", "#b279a2", "#4c78a8", "#54a24b", "#eeca3b", "#72b7b2", "#9d755d"]
        for i, (dev, g) in enumerate(rates[mine].groupby("device", observed=True)):
            traces.append(
                _line(
                    _ts(g["timestamp"].to_numpy()),
                    g["rate"].to_numpy(),
                    f"{c['node']} {dev}",
                    palette[i % len(palette)],
                )
            )
        peers = rates[~mine]
        what = f"error events per device of {c['node']} against other nodes' devices"
    else:
        peers = rates
        what = "no culprit device named: all devices' median and max"
        mx, my = _binned(peers["timestamp"].to_numpy(), peers["rate"].to_numpy(), width, "max")
        traces.append(_line(mx, my, "max device", CLASS_COLOURS["network"]))
    if len(peers):
        px, pm = _binned(peers["timestamp"].to_numpy(), peers["rate"].to_numpy(), width)
        traces.append(_line(px, pm, "other devices' median" if c else "median device", PEER, dash="dot"))
    title = "EFA error events per second (retransmits, impaired / unresponsive remotes, rx drops)"
    return [(title, traces)], what


def _cpu_fractions(a: Analysis, times: pd.DataFrame | None) -> tuple[Any, pd.DataFrame] | None:
    """Cluster-wide share of CPU time per mode per scrape bin (the verdicts' cpu_fractions)."""
    host = _window(a.metric_frames.get("host"), times)
    if host is None or "mode" not in host:
        return None
    cpu = _counter_rates(_series(host, "fmdiag_host_cpu_seconds_total"), ["instance", "mode"])
    if not len(cpu):
        return None
    ts = cpu["timestamp"].to_numpy()
    width = _interval(ts, _span(times, ts))
    cpu["bin"] = np.floor(ts / width)
    per = cpu.pivot_table(index="bin", columns="mode", values="rate", aggfunc="sum", observed=True)
    share = per.div(per.sum(axis=1), axis=0)
    return _ts(share.index.to_numpy() * width), share


def _io(a: Analysis, vs: list[dict[str, Any]], times: pd.DataFrame | None) -> tuple[Rows, str]:
    rows: Rows = []
    cpu = _cpu_fractions(a, times)
    if cpu is not None and "iowait" in cpu[1]:
        x, share = cpu
        rows.append(
            (
                "CPU iowait share, all nodes",
                [_line(x, share["iowait"].to_numpy(), "iowait", CLASS_COLOURS["io"])],
            )
        )
    lustre = _window(a.metric_frames.get("lustre"), times)
    ost = _top_culprit(vs, "ost")
    if lustre is not None and "ost" in lustre:
        lat = _series(lustre, "fmdiag_lustre_osc_operation_latency_max_seconds", operation="ost_read")
        lat = lat[lat["ost"].astype(str) != ""]
        if len(lat):
            fs = lat["fs"].astype(str) if "fs" in lat else pd.Series("", index=lat.index)
            # the osc labels the target by index; the verdicts name it <fs>-OSTnnnn
            full = np.array(
                [
                    o if not f or o.startswith(f"{f}-") else f"{f}-{o}"
                    for o, f in zip(lat["ost"].astype(str), fs, strict=True)
                ]
            )
            mine = full == ost["ost"] if ost else np.zeros(len(lat), dtype=bool)
            ts_all = lat["timestamp"].to_numpy()
            width = _interval(ts_all, _span(times, ts_all))
            traces = []
            if mine.any():
                own = lat[mine]
                x, y = _binned(own["timestamp"].to_numpy(), own["value"].to_numpy(), width, "max")
                traces.append(_line(x, y, f"{ost['ost'] if ost else ''} (max over clients)", "#2f6b2a"))
            peers = lat[~mine]
            if len(peers):
                x, y = _binned(peers["timestamp"].to_numpy(), peers["value"].to_numpy(), width)
                traces.append(
                    _line(x, y, "other OSTs' median" if mine.any() else "OSTs' median", PEER, "dot")
                )
                if not mine.any():
                    x, y = _binned(peers["timestamp"].to_numpy(), peers["value"].to_numpy(), width, "max")
                    traces.append(_line(x, y, "slowest OST", "#2f6b2a"))
            rows.append(("Lustre ost_read latency, longest single operation (s)", traces))
    if not rows:
        return [], "no host CPU or Lustre metrics in this dump"
    return rows, f"iowait and read latency{' of ' + ost['ost'] if ost else ''}"


def _host(a: Analysis, vs: list[dict[str, Any]], times: pd.DataFrame | None) -> tuple[Rows, str]:
    cpu = _cpu_fractions(a, times)
    if cpu is None:
        return [], "no host CPU metrics in this dump"
    x, share = cpu
    traces = [
        _line(x, share[m].to_numpy(), m, colour, dash)
        for m, colour, dash in (
            ("user", CLASS_COLOURS["host"], "solid"),
            ("system", PEER, "dot"),
            ("iowait", CLASS_COLOURS["io"], "dot"),
        )
        if m in share
    ]
    return [("CPU time share by mode, all nodes", traces)], "CPU user share across the nodes"
