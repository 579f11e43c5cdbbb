"""Run the analysis of one dump: readers -> frames -> breakdowns -> cross-rank spread.

Per-rank work (reading a step file; reading and breaking down a Kineto trace) is mapped over
files by :mod:`fmdiag.analyzers.executors`; what comes back is one rank's columns or breakdown.
The cross-rank part is a small explicit reduction per step (:mod:`fmdiag.analyzers.spread`).
Nothing here renders: :class:`Analysis` is what the JSON and terminal reports take.

Only numpy is needed for Kineto traces; pandas (step records) and pyarrow (metrics) are imported
when the dump has such files, so analysing traces stays light in memory and start-up.

Bad input: a file that cannot be read (or a bad line in a step file) raises its
:class:`~fmdiag.analyzers.errors.InputError` unless ``keep_going``, in which case it is listed in
:attr:`Analysis.skipped` (step files: the good lines are kept) and the rest is analysed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmdiag import dumpformat
from fmdiag.analyzers import columns, executors, hta_compat, kineto_breakdown, kineto_reader, spread
from fmdiag.analyzers.coverage import StepsCoverage
from fmdiag.analyzers.errors import InputError, Skipped

if TYPE_CHECKING:
    import pandas as pd

    from fmdiag.analyzers import metrics_reader, steps_reader


@dataclass
class Options:
    hta_compatible: bool = False
    keep_going: bool = False
    workers: int | None = None
    scheduler: str | None = None
    kernel_wait_us: float = kineto_breakdown.KERNEL_WAIT_US
    #: Called as ``progress(label, total)`` before each per-file map; returns the ``advance(n)``
    #: hook the map calls as files finish (the CLI draws a bar on a terminal). None: silent.
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None


@dataclass
class TraceResult:
    """What one Kineto trace reduces to in its worker."""

    source: str
    rank: int
    rank_from: str
    cpu_only: bool
    breakdown: columns.Columns
    steps: list[int]
    partial_steps: list[int]
    outside_steps: int
    counts: dict[str, int]
    warnings: list[str]
    #: HTA's numbers with its last-step filter on, and off (needed only when this rank has < 2 steps).
    hta_filtered: dict[str, Any] | None = None
    hta_unfiltered: dict[str, Any] | None = None


@dataclass
class Analysis:
    dump: str
    options: Options
    #: The merged step records (pandas; None when the dump has no step files).
    steps: pd.DataFrame | None
    steps_coverage: StepsCoverage
    step_breakdown: Any
    step_spread: columns.Columns
    clock_offsets: dict[str, float]
    traces: list[TraceResult]
    kineto_breakdown: columns.Columns
    kineto_spread: columns.Columns
    hta: list[dict[str, Any]] | None
    metrics: dict[str, metrics_reader.MetricsSummary]
    metrics_source: str | None
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: One per step (``verdicts.Verdict``); empty without step records.
    verdicts: list[Any] = field(default_factory=list)
    #: Attribution, phases, aggregates, rank scores (``diagnosis.Diagnosis``); None without step records.
    diagnosis: Any = None
    #: The node metrics themselves (subsystem -> long-form frame), for reports that plot them.
    metric_frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def _hta_rank(trace: Any, filtered: bool) -> dict[str, Any]:
    k = hta_compat.kept_kernels(trace, filtered)
    overlap = hta_compat.comm_comp_overlap(k)
    return {
        "rank": trace.rank,
        "temporal": hta_compat.temporal(k),
        "comm_comp_overlap_ratio": None if np.isnan(overlap) else overlap,
        "comm_comp_overlap_pctg": None if np.isnan(overlap) else round(100 * overlap, 2),
        "idle": hta_compat.idle_breakdown(k),
    }


def analyze_trace(path: str, kernel_wait_us: float, hta: bool) -> TraceResult | Skipped:
    """The per-rank map step for Kineto: read, break down, and (optionally) HTA's numbers."""
    try:
        trace = kineto_reader.read_trace(path)
    except InputError as exc:
        return Skipped.of(exc)
    frame = kineto_breakdown.breakdown(trace, kernel_wait_us)
    launch = kineto_breakdown.launch_times(trace)
    at = np.where(np.isnan(launch), trace.gpu["ts"], launch)
    active = trace.gpu["kind"] != 3
    outside = int(np.sum((kineto_breakdown.step_of(trace, at) < 0) & active))
    result = TraceResult(
        source=path,
        rank=trace.rank,
        rank_from=trace.rank_from,
        cpu_only=trace.cpu_only,
        breakdown=frame,
        steps=[int(s) for s in trace.steps["step"]],
        partial_steps=sorted(kineto_breakdown.partial_steps(trace)),
        outside_steps=outside,
        counts=trace.counts,
        warnings=trace.warnings,
    )
    if hta:
        result.hta_filtered = _hta_rank(trace, True)
        if len(set(result.steps)) < 2:
            result.hta_unfiltered = _hta_rank(trace, False)
    return result


def read_steps_file(path: str) -> steps_reader.FileSteps | Skipped:
    from fmdiag.analyzers import steps_reader  # noqa: PLC0415 - pandas only when there are step files

    try:
        return steps_reader.read_file(path)
    except steps_reader.BinaryStepFileError as exc:
        return Skipped(path, str(exc))
    except OSError as exc:
        return Skipped(path, f"{path}: cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return Skipped(path, f"{path}: not UTF-8 text at byte {exc.start}")


def _advance(options: Options, label: str, total: int) -> Callable[[int], None] | None:
    return options.progress(label, total) if options.progress is not None and total else None


def _fail_or_skip(items: list[Any], keep_going: bool, skipped: list[Skipped]) -> list[Any]:
    good = []
    for item in items:
        if isinstance(item, Skipped):
            if not keep_going:
                raise InputError.verbatim(item.source, item.reason)
            skipped.append(item)
        else:
            good.append(item)
    return good


def _steps(step_files: list[str], options: Options, skipped: list[Skipped]) -> dict[str, Any]:
    """Step records: per-file read (mapped), merge, per-rank breakdown, spread, clock offsets."""
    from fmdiag.analyzers import step_breakdown, steps_reader  # noqa: PLC0415 - pandas only when needed

    parts = _fail_or_skip(
        executors.map_items(
            read_steps_file,
            step_files,
            _workers(options, step_files, "steps"),
            options.scheduler,
            _advance(options, "step records", len(step_files)),
        ),
        options.keep_going,
        skipped,
    )
    for p in parts:
        if p.errors and not options.keep_going:
            more = (
                f" (and {len(p.errors) - 1} more bad lines; --keep-going keeps the good ones)"
                if len(p.errors) > 1
                else ""
            )
            raise InputError.verbatim(p.source, p.errors[0] + more)
        skipped.extend(Skipped(p.source, e) for e in p.errors)
    steps, coverage = steps_reader.merge(parts)
    del parts  # the files' columns: the frame holds a copy, and at scale it is a gigabyte
    offsets = step_breakdown.clock_offsets(steps)
    sb = step_breakdown.breakdown(steps, offsets)
    return {
        "steps": steps,
        "steps_coverage": coverage,
        "step_breakdown": sb,
        "step_spread": spread.spread(sb, step_breakdown.SPREAD_VALUES),
        "clock_offsets": offsets,
    }


#: Below this much input (bytes on disk) one process beats a pool: starting workers (~0.5 s
#: each, numpy imported in each) costs about as much as parsing this much. Step records cost
#: ~10x more per byte than (gzipped) Kineto traces, whose reader decodes in C. (Sized by their
#: uncompressed bytes, 118.8 MB of traces went to a pool: 0.04 s sooner, and three times the
#: memory of the one process the HTA comparison measures.)
POOL_THRESHOLD_BYTES = {"steps": 32 * 2**20, "kineto": 64 * 2**20}


def _workers(options: Options, files: list[str], kind: str) -> int:
    """The pool size: as asked, else one process for small inputs and one per CPU for big ones."""
    if options.workers is not None:
        return options.workers
    size = 0
    for f in files:
        try:
            size += Path(f).stat().st_size
        except OSError:
            pass
    return executors.default_workers() if size >= POOL_THRESHOLD_BYTES[kind] else 1


def _kineto(
    trace_files: list[str], options: Options, skipped: list[Skipped], warnings: list[str]
) -> dict[str, Any]:
    job = functools.partial(analyze_trace, kernel_wait_us=options.kernel_wait_us, hta=options.hta_compatible)
    traces: list[TraceResult] = _fail_or_skip(
        executors.map_items(
            job,
            trace_files,
            _workers(options, trace_files, "kineto"),
            options.scheduler,
            _advance(options, "Kineto traces", len(trace_files)),
        ),
        options.keep_going,
        skipped,
    )
    traces.sort(key=lambda t: (t.rank, t.source))
    seen: dict[int, str] = {}
    for t in traces:
        warnings.extend(t.warnings)
        if t.rank in seen:
            warnings.append(f"{t.source}: rank {t.rank} already read from {seen[t.rank]}; both kept")
        seen.setdefault(t.rank, t.source)
    kb = columns.concat([t.breakdown for t in traces], kineto_breakdown.DTYPES)
    complete = columns.select(kb, ~kb["partial"])
    hta = None
    if options.hta_compatible:
        drop = len({s for t in traces for s in t.steps}) >= 2
        hta = [
            (t.hta_filtered if drop or t.hta_unfiltered is None else t.hta_unfiltered)
            for t in traces
            if t.hta_filtered is not None
        ]
    return {
        "traces": traces,
        "kineto_breakdown": kb,
        "kineto_spread": spread.spread(complete, kineto_breakdown.TIME_COLUMNS),
        "hta": hta,
    }


def run(
    dump: Path,
    options: Options,
    metrics: dict[str, pd.DataFrame] | None = None,
    metrics_source: str | None = None,
) -> Analysis:
    """Analyse the dump at ``dump``; ``metrics`` replaces the dump's ``metrics/`` (a live Prometheus)."""
    if not dump.is_dir():
        raise InputError(str(dump), "not a directory (a trace dump holds steps/, kineto/, metrics/)")
    layout = dumpformat.DumpLayout(dump)
    skipped: list[Skipped] = []
    warnings: list[str] = []
    step_files = [str(p) for p in layout.step_files()]
    trace_files = [str(p) for p in layout.kineto_files()]
    if step_files:
        steps = _steps(step_files, options, skipped)
    else:
        steps = {
            "steps": None,
            "steps_coverage": StepsCoverage(),
            "step_breakdown": {},
            "step_spread": spread.spread({"step": [], "rank": []}, []),
            "clock_offsets": {},
        }
    kineto = _kineto(trace_files, options, skipped, warnings)
    summaries = {}
    metric_files = layout.metrics_files()
    if metrics is not None or metric_files:
        from fmdiag.analyzers import metrics_reader  # noqa: PLC0415 - pyarrow only when there are metrics

        if metrics is None:
            from fmdiag.analyzers import metric_use  # noqa: PLC0415

            metrics = {}
            for sub, path in metric_files.items():
                try:
                    metrics[sub], summaries[sub] = metrics_reader.read_used(path, sub, metric_use.USED)
                except InputError as exc:
                    if not options.keep_going:
                        raise
                    skipped.append(Skipped.of(exc))
            metrics_source = "dump" if metrics else None
        else:
            summaries = {sub: metrics_reader.summarize(sub, f) for sub, f in metrics.items()}
    if not step_files and not trace_files and not summaries and not skipped:
        raise InputError(str(dump), "no steps/, kineto/ or metrics/ data: nothing to analyse")
    found: Any = None
    if steps["steps"] is not None and len(steps["steps"]):
        from fmdiag.analyzers import diagnosis  # noqa: PLC0415 - pandas is loaded already here

        found = diagnosis.diagnose(steps["steps"], metrics or {})
    elif columns.length(kineto["kineto_breakdown"]):
        from fmdiag.analyzers import diagnosis, kineto_steps  # noqa: PLC0415

        frame = kineto_steps.step_frame(kineto["kineto_breakdown"])
        if columns.length(frame):
            found = diagnosis.diagnose(frame, metrics or {})
            warnings.append(
                f"verdicts from Kineto traces alone ({len(np.unique(frame['rank']))} ranks): data wait is the"
                " GPU's host-wait idle time, and a trace does not say which node or GPU a rank runs on"
            )
    return Analysis(
        dump=str(dump),
        verdicts=found.verdicts if found is not None else [],
        diagnosis=found,
        metric_frames=metrics or {},
        options=options,
        metrics=summaries,
        metrics_source=metrics_source,
        skipped=skipped,
        warnings=warnings,
        **steps,
        **kineto,
    )
