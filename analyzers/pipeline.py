"""Run the analysis of one dump: readers -> frames -> breakdowns -> cross-rank spread.

Per-rank work (reading a step file; reading and breaking down a Kineto trace) is mapped over
files by :mod:`fmdiag.analyzers.executors`; what comes back is one rank's columns or breakdown.
The cross-rank part is a small explicit reduction per step (:mod:`fmdiag.analyzers.frames.spread`).
Nothing here renders: :class:`Analysis` is what the JSON and terminal reports take.

Only numpy is needed for Kineto traces; pandas (step records) and pyarrow (metrics) are imported
when the dump has such files, so analysing traces stays light in memory and start-up.

Bad input: a file that cannot be read (or a bad line in a step file) raises its
:class:`~fmdiag.analyzers.errors.InputError` unless ``keep_going``, in which case it is listed in
:attr:`Analysis.skipped` (step files: the good lines are kept) and the rest is analysed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmdiag import dumpformat
from fmdiag.analyzers import executors
from fmdiag.analyzers.errors import InputError, Skipped
from fmdiag.analyzers.frames import columns, hta_compat, kineto_breakdown, kineto_windows, spread
from fmdiag.analyzers.readers import kernel_classes, kineto_frame, kineto_reader
from fmdiag.analyzers.readers.coverage import StepsCoverage

if TYPE_CHECKING:
    import pandas as pd

    from fmdiag.analyzers.readers import metrics_reader, steps_reader


@dataclass
class Options:
    hta_compatible: bool = False
    keep_going: bool = False
    workers: int | None = None
    scheduler: str | None = None
    kernel_wait_us: float = kineto_breakdown.KERNEL_WAIT_US
    #: ``--rank-from``: a regex whose first group (else whole match) in a trace's file name is its
    #: rank, for traces that do not state one.
    rank_from: str | None = None
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
    #: Where the steps came from (:mod:`~fmdiag.analyzers.frames.kineto_windows`: host or GPU
    #: ProfilerStep, detected iterations, whole trace).
    steps_from: str = kineto_windows.HOST
    #: GPU activities launched before the profiling window (no launch call in the trace): set
    #: apart, with their GPU time (seconds).
    before_window: int = 0
    before_window_s: float = 0.0
    #: The job's world size as the trace states it (None: not stated).
    world_size: int | None = None
    #: The trace's DataLoader (:func:`~fmdiag.analyzers.frames.kineto_breakdown.loader_kind`).
    loader: str = "none"
    #: ``baseTimeNanoseconds``: the trace's times are µs after it (None: absolute µs).
    base_ns: int | None = None
    #: The rank's parallel-layout coordinates from the trace's named process groups.
    layout: dict[str, int] = field(default_factory=dict)
    #: Per step: the host ops that ran while the GPU waited for the host, ``[name, seconds]``.
    host_wait_ops: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    #: Kernels the classification table does not know, and communication time by library/op
    #: (:func:`~fmdiag.analyzers.readers.kernel_classes.trace_summary`).
    kernel_classes: dict[str, Any] = field(default_factory=dict)
    #: HTA's numbers with its last-step filter on, and off (needed only when this rank has < 2 steps).
    hta_filtered: dict[str, Any] | None = None
    hta_unfiltered: dict[str, Any] | None = None
    #: The ``ProfilerStep#N`` numbers HTA reads in this trace (host and GPU side): its filter is on
    #: when the traces hold two or more (the steps above may be detected ones).
    hta_step_names: list[int] = field(default_factory=list)


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
    #: The world size the traces state (None: none does), and the ranks below it with no trace.
    world_size: int | None = None
    missing_ranks: list[int] = field(default_factory=list)
    #: Kernels no entry of the classification table matched, summed across ranks
    #: (:func:`~fmdiag.analyzers.readers.kernel_classes.merge`); empty without Kineto traces.
    unclassified_kernels: dict[str, Any] = field(default_factory=dict)


def analyze_trace(
    path: str, kernel_wait_us: float, hta: bool, rank_from: str | None = None
) -> TraceResult | Skipped:
    """The per-rank map step for Kineto: read, break down, and (optionally) HTA's numbers."""
    try:
        trace = kineto_reader.read_trace(path, re.compile(rank_from) if rank_from else None)
    except InputError as exc:
        return Skipped.of(exc)
    win = kineto_windows.windows(trace)
    frame, gaps = kineto_breakdown.breakdown_and_gaps(trace, kernel_wait_us, win)
    active = trace.gpu["kind"] != kineto_frame.KIND_NONE
    outside = int(np.sum((win.step < 0) & active & ~win.before_window))
    result = TraceResult(
        source=path,
        rank=trace.rank,
        rank_from=trace.rank_from,
        cpu_only=trace.cpu_only,
        breakdown=frame,
        steps=[int(s) for s in np.unique(win.spans["step"])],
        partial_steps=sorted(win.partial),
        outside_steps=outside,
        counts=trace.counts,
        warnings=trace.warnings,
        steps_from=win.source,
        before_window=int(np.sum(win.before_window)),
        before_window_s=float(np.sum(trace.gpu["dur"][win.before_window])) / 1e6,
        world_size=trace.world_size,
        host_wait_ops=kineto_breakdown.host_wait_ops(trace, gaps),
        loader=kineto_breakdown.loader_kind(trace),
        kernel_classes=kernel_classes.trace_summary(trace.names, trace.gpu),
        base_ns=trace.base_ns,
        layout=trace.layout,
    )
    if win.source != kineto_windows.HOST and not trace.cpu_only:
        result.warnings.append(
            f"{path}: no host ProfilerStep markers: steps are {win.source}"
            + (f" ({len(result.steps)})" if win.source != kineto_windows.WHOLE else "")
        )
    if result.before_window:
        result.warnings.append(
            f"{path}: {result.before_window} GPU activities ({result.before_window_s * 1e3:.1f} ms) were"
            " launched before the profiling window (no launch call in the trace): set apart, not counted"
            " in any step"
        )
    if hta:
        result.hta_step_names = sorted(hta_compat.step_names(trace))
        result.hta_filtered = hta_compat.rank_result(trace, True)
        if len(result.hta_step_names) < 2:
            result.hta_unfiltered = hta_compat.rank_result(trace, False)
    return result


def read_steps_file(path: str) -> steps_reader.FileSteps | Skipped:
    from fmdiag.analyzers.readers import steps_reader  # noqa: PLC0415 - loaded only when needed

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
    from fmdiag.analyzers.frames import step_breakdown  # noqa: PLC0415 - loaded only when needed
    from fmdiag.analyzers.readers import steps_reader  # noqa: PLC0415 - loaded only when needed

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
    steps, coverage = steps_reader.merge(parts, release=True)  # the files' columns move into the frame
    del parts
    executors.trim_heap()
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
    job = functools.partial(
        analyze_trace,
        kernel_wait_us=options.kernel_wait_us,
        hta=options.hta_compatible,
        rank_from=options.rank_from,
    )
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
            hint = (
                ": the traces state no rank; give --rank-from REGEX to read ranks from their file names"
                if t.rank_from == kineto_reader.RANK_ASSUMED
                else ""
            )
            warnings.append(f"{t.source}: rank {t.rank} already read from {seen[t.rank]}; both kept{hint}")
        seen.setdefault(t.rank, t.source)
    sizes = [t.world_size for t in traces if t.world_size]
    world_size = max(sizes) if sizes else None
    missing = sorted(set(range(world_size)) - set(seen)) if world_size else []
    kb = columns.concat([t.breakdown for t in traces], kineto_breakdown.DTYPES)
    complete = columns.select(kb, ~kb["partial"])
    hta = None
    if options.hta_compatible:
        drop = len({s for t in traces for s in t.hta_step_names}) >= 2  # HTA's rule: its ProfilerStep names
        hta = [
            (t.hta_filtered if drop or t.hta_unfiltered is None else t.hta_unfiltered)
            for t in traces
            if t.hta_filtered is not None
        ]
    return {
        "traces": traces,
        "world_size": world_size,
        "missing_ranks": missing,
        "kineto_breakdown": kb,
        "kineto_spread": spread.spread(complete, kineto_breakdown.TIME_COLUMNS),
        "hta": hta,
        "unclassified_kernels": kernel_classes.merge((t.rank, t.kernel_classes) for t in traces)
        if traces
        else {},
    }


def _phases_recorded(frame: pd.DataFrame) -> bool:
    """Whether step records carry any of the phases the verdicts read (else they are bare)."""
    used = [c for c in ("forward", "backward", "comm_exposed", "data_wait") if c in frame]
    return bool(used) and bool(frame[used].notna().to_numpy().any())


def _diagnose(
    records: pd.DataFrame | None,
    kineto: dict[str, Any],
    metrics: dict[str, pd.DataFrame],
    warnings: list[str],
) -> Any:
    """Verdicts from the richer source: step records with phases; else the Kineto breakdown
    (step records without phases lend it each rank's node and GPU); else bare step records."""
    from fmdiag.analyzers.diagnosis import diagnose as diagnosis  # noqa: PLC0415 - loaded only when needed
    from fmdiag.analyzers.frames import kineto_steps  # noqa: PLC0415 - loaded only when needed

    has_records = records is not None and len(records) > 0
    kb = kineto["kineto_breakdown"]
    if records is not None and has_records and _phases_recorded(records):
        return diagnosis.diagnose(records, metrics, _traced(records, kineto) if columns.length(kb) else None)
    if columns.length(kb):
        nodes: dict[int, tuple[str, int]] = {}
        if has_records:
            assert records is not None
            firsts = records.drop_duplicates("rank")
            local = firsts["local_rank"] if "local_rank" in firsts else [-1] * len(firsts)
            for r, node, lr in zip(firsts["rank"], firsts["node"], local, strict=True):
                nodes[int(r)] = (str(node), -1 if np.isnan(float(lr)) else int(lr))
        ops = {t.rank: t.host_wait_ops for t in kineto["traces"]}
        loaders = {t.rank: t.loader for t in kineto["traces"]}
        bases = {t.rank: t.base_ns for t in kineto["traces"] if t.base_ns is not None}
        layouts = {t.rank: t.layout for t in kineto["traces"] if t.layout}
        frame = kineto_steps.step_frame(kb, ops, nodes, loaders, bases, layouts)
        if columns.length(frame):
            ranks = len(np.unique(frame["rank"]))
            warnings.append(
                f"verdicts from Kineto traces ({ranks} rank{'s' if ranks != 1 else ''})"
                + (
                    ", with the step records' nodes (the records have no phases)"
                    if has_records
                    else ": a trace does not say which node or GPU a rank runs on"
                )
            )
            found = diagnosis.diagnose(frame, metrics)
            _partial_job(found, kineto, has_records)
            return found
    if records is not None and has_records:
        return diagnosis.diagnose(records, metrics)
    return None


def _traced(records: pd.DataFrame, kineto: dict[str, Any]) -> columns.Columns:
    """The traces' (rank, step) rows beside phased step records, numbered as the records are."""
    from fmdiag.analyzers.frames import kineto_steps  # noqa: PLC0415 - loaded only when needed

    bases = {t.rank: t.base_ns for t in kineto["traces"] if t.base_ns is not None}
    mine = records[records["rank"].isin(list(bases))]
    spans = {
        int(g["rank"].iloc[0]): (
            g["step"].to_numpy(np.int64),
            g["start_ns"].to_numpy(np.int64),
            g["end_ns"].to_numpy(np.int64),
        )
        for _, g in mine.groupby("rank", sort=False)
    }
    return kineto_steps.traced_rows(kineto["kineto_breakdown"], spans, bases)


def _partial_job(found: Any, kineto: dict[str, Any], has_records: bool) -> None:
    """Cross-rank verdicts from traces of part of the job: the late rank may be one not traced."""
    size, missing = kineto["world_size"], kineto["missing_ranks"]
    present = (size or 0) - len(missing)
    if has_records or not missing or present < 2:
        return
    for v in found.verdicts:
        if v.cls in ("network", "straggler"):
            v.undecided.append(
                f"only {present} of {size} ranks in the data: a late rank among the others would look"
                " the same"
            )


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
    if layout.is_spool():
        warnings.append(f"{dump}: a steptrace spool directory (no steps/ folder): its step records are read")
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
        from fmdiag.analyzers.readers import metrics_reader  # noqa: PLC0415 - loaded only when needed

        if metrics is None:
            from fmdiag.analyzers.diagnosis import metric_use  # noqa: PLC0415 - loaded only when needed

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
    found = _diagnose(steps["steps"], kineto, metrics or {}, warnings)
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
