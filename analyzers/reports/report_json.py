"""``fmdiag analyze --json``: the analysis as one versioned JSON document (docs/analyze.md).

This module only renders an :class:`~fmdiag.analyzers.pipeline.Analysis`; every number in it
was computed by the pipeline. Tables (per-rank per-step rows, spreads) are written column-wise —
``{"columns": [...], "rows": [[...], ...]}`` — which keeps a 4,096-rank job's output a third of
the size of one object per row. NaN (a phase a rank did not record) is written as ``null``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from typing import Any, TextIO

from fmdiag import __version__
from fmdiag.analyzers.frames import columns
from fmdiag.analyzers.pipeline import Analysis
from fmdiag.analyzers.readers import kernel_classes
from fmdiag.analyzers.readers.kineto_reader import RANK_ASSUMED

FORMAT = "fmdiag-analyze"
#: Bumped when a field changes meaning or goes away; new fields do not bump it.
VERSION = 1
#: Where a trace's rank came from when its file name gave it.
_FROM_NAME = ("file name", "--rank-from")


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def table(frame: Any) -> dict[str, Any]:
    """A pandas frame or numpy columns as ``{"columns": [...], "rows": [[...]]}``, NaN as null."""
    if hasattr(frame, "to_json"):
        # pandas' C writer turns NaN into null and numpy scalars into numbers, fast on millions of rows
        rows = json.loads(frame.to_json(orient="values", double_precision=15))
        return {"columns": [str(c) for c in frame.columns], "rows": rows}
    return {"columns": list(frame), "rows": columns.rows(frame)}


def document(a: Analysis, table_of: Any = None) -> dict[str, Any]:
    """The JSON document of an analysis (see docs/analyze.md for every field)."""
    table_of = table_of or table
    cov = dataclasses.asdict(a.steps_coverage)
    kineto_cov = {
        "files": len(a.traces),
        "ranks": sorted({t.rank for t in a.traces}),
        "rank_from_file_name": sorted(t.rank for t in a.traces if t.rank_from in _FROM_NAME),
        "rank_assumed": sorted(t.rank for t in a.traces if t.rank_from == RANK_ASSUMED),
        "world_size": a.world_size,
        "missing_ranks": a.missing_ranks,
        "steps_from": {str(t.rank): t.steps_from for t in a.traces},
        "loader": {str(t.rank): t.loader for t in a.traces},
        "launched_before_window": {
            str(t.rank): {"gpu_events": t.before_window, "gpu_time_s": t.before_window_s}
            for t in a.traces
            if t.before_window
        },
        "cpu_only": sorted(t.rank for t in a.traces if t.cpu_only),
        "partial_steps": {str(t.rank): t.partial_steps for t in a.traces if t.partial_steps},
        "gpu_events_outside_steps": {str(t.rank): t.outside_steps for t in a.traces if t.outside_steps},
        "events": {str(t.rank): t.counts for t in a.traces},
        "unclassified_kernels": a.unclassified_kernels or None,
    }
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "fmdiag_version": __version__,
        "dump": a.dump,
        "options": {
            "hta_compatible": a.options.hta_compatible,
            "keep_going": a.options.keep_going,
            "kernel_wait_us": a.options.kernel_wait_us,
        },
        "inputs": {
            "steps": {"files": cov["files"], "records": cov["records"]},
            "kineto": {"files": [t.source for t in a.traces]},
            "metrics": {
                "source": a.metrics_source,
                "subsystems": {k: dataclasses.asdict(v) for k, v in a.metrics.items()},
            },
        },
        "coverage": {"steps": cov, "kineto": kineto_cov, "clock_offsets_s": a.clock_offsets},
        "skipped": [dataclasses.asdict(s) for s in a.skipped],
        "warnings": a.warnings,
        "steps": {"per_rank": table_of(a.step_breakdown), "spread": table_of(a.step_spread)},
        "kineto": {
            "per_rank": table_of(a.kineto_breakdown),
            "spread": table_of(a.kineto_spread),
            "comm_kernel_time_us": kernel_classes.comm_by_rank((t.rank, t.kernel_classes) for t in a.traces),
        },
        "hta": a.hta,
        "verdicts": [v.to_json() for v in a.verdicts],
        **_diagnosis(a, table_of),
    }
    cleaned: dict[str, Any] = _clean(doc)
    return cleaned


def _diagnosis(a: Analysis, table_of: Any) -> dict[str, Any]:
    """Attribution, phases, aggregates, rank scores, change points and pipeline stages (null without
    step records; stages null without a pipeline)."""
    d = a.diagnosis
    if d is None or d.attribution is None:
        return {
            k: None for k in ("attribution", "phases", "aggregates", "rank_scores", "change_points", "stages")
        }
    return {
        "attribution": d.attribution.to_json(table_of),
        "phases": d.phases,
        "aggregates": d.aggregates,
        "rank_scores": table_of(d.rank_scores),
        "change_points": d.change_points,
        "stages": d.stages or None,
    }


#: Rows of a big table turned into text at a time by :func:`write`: about 40 MB of text for the
#: per-rank breakdown, where the whole table at once is 600 MB for 4,096 ranks x 1,000 steps.
CHUNK_ROWS = 1 << 18


def dumps(a: Analysis) -> str:
    """The document as text (:func:`write` into a string)."""
    out = io.StringIO()
    write(a, out)
    return out.getvalue()


def write(a: Analysis, out: TextIO) -> None:
    """Write the document to ``out``. Big pandas tables are written by pandas' C writer, a slice
    of rows at a time, between the pieces of the rest of the document: a 4,096-rank x 1,000-step
    job's output (600 MB) is never held whole, nor built as millions of Python lists first."""
    fast: dict[str, Any] = {}

    def splice(frame: Any) -> Any:
        if not hasattr(frame, "to_json"):
            return table(frame)
        key = f"@@fmdiag-table-{len(fast)}@@"
        fast[key] = frame
        return key

    doc = document(a, table_of=splice)
    text = json.dumps(doc, allow_nan=False, separators=(",", ":"))
    for key, frame in fast.items():
        before, text = text.split(f'"{key}"', 1)
        out.write(before)
        _write_rows(frame, out)
    out.write(text)
    out.write("\n")


def _write_rows(frame: Any, out: TextIO) -> None:
    """``{"columns": [...], "rows": [...]}`` of a pandas frame, in slices of :data:`CHUNK_ROWS`.

    orient="values" is written by pandas' C writer row by row ("split" first builds a Python list
    per row, 4x slower on 4 million rows); each slice's text is its rows between brackets, so the
    slices joined by commas are the whole table's text.
    """
    names = json.dumps([str(c) for c in frame.columns], separators=(",", ":"))
    out.write('{"columns":' + names + ',"rows":[')
    for begin in range(0, len(frame), CHUNK_ROWS):
        rows = frame.iloc[begin : begin + CHUNK_ROWS].to_json(orient="values", double_precision=15)
        if begin:
            out.write(",")
        out.write(rows[1:-1])
    out.write("]}")
