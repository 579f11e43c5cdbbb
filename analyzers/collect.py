"""``fmdiag collect``: pull one training job's node metrics from Prometheus into a dump's ``metrics/``.

Which series: the job's nodes are the instances that exported its step series
(``fmdiag_step_*{training_job="J"}``) in the time range; every catalogued family of every
subsystem is then read for those instances (steps: for that training job only), in bounded
``query_range`` requests (:mod:`fmdiag.analyzers.readers.prometheus_source`). GPU series also match on
dcgm-exporter's node label, ``hostname`` (after 4.5.3, and fmdiag's default) or ``Hostname``
(before), so a stock dcgm-exporter (whose target is ``host:9400``, or a pod address) is found as
well as fmdiag's own exporter; the dump stores it under the catalogued spelling (``Hostname``).

How they are written: the core's format (``fmdiag.dumpformat``): one long-form Parquet file per
subsystem, string columns dictionary-encoded, rows grouped by series in time order, checked
against ``check_metrics_schema`` before writing. ``instance`` is the node's host name, as the
format says: the target's ``:port`` is dropped, and a series with a ``Hostname`` label (dcgm) is
given that. Prometheus' own ``job`` label (the scrape job) is dropped: the dump describes nodes,
not scrape configs. NaN samples are left out (absent values are absent rows).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fmdiag import catalog, dumpformat
from fmdiag.analyzers.readers import prometheus_source as ps

_PORT = re.compile(r":\d+$")
#: Labels Prometheus attaches that the dump does not keep (``instance`` is rewritten instead).
DROPPED_LABELS = frozenset({"job"})
STEP_JOB_LABEL = "training_job"
#: The step series that tell which instances ran a job.
JOB_MARKER = "fmdiag_step_last"


@dataclass
class CollectResult:
    """What was written: rows and series per subsystem, the job's nodes, requests made."""

    out: Path
    instances: list[str]
    files: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)
    requests: int = 0


#: dcgm-exporter's node label, in every spelling it has had (``hostname``, ``Hostname``).
HOST_LABELS = catalog.LABEL_SPELLINGS["Hostname"]


def node_name(labels: dict[str, str]) -> str:
    """The node a series describes: dcgm's ``hostname``/``Hostname``, else the target without its port."""
    for label in HOST_LABELS:
        if labels.get(label, ""):
            return labels[label]
    return _PORT.sub("", labels.get("instance", ""))


def sample_names(metric: catalog.Metric) -> tuple[str, ...]:
    """The sample names a family is exposed as (what a dump's ``metric`` column holds)."""
    if metric.type is catalog.MetricType.HISTOGRAM:
        return (f"{metric.name}_bucket", f"{metric.name}_count", f"{metric.name}_sum")
    return (metric.name,)


def job_instances(client: ps.Client, job: str, start: float, end: float) -> list[str]:
    """Scrape targets (``instance`` values) that exported step series of ``job``."""
    sel = ps.selector(JOB_MARKER, f'{STEP_JOB_LABEL}="{ps.label_escape(job)}"')
    return sorted({s.get("instance", "") for s in client.series(sel, start, end)} - {""})


def require_job_instances(client: ps.Client, job: str, start: float, end: float) -> list[str]:
    """:func:`job_instances`, or PrometheusError saying that the job left no step series there."""
    instances = job_instances(client, job, start, end)
    if not instances:
        raise ps.PrometheusError(
            f"{client.url}: no {JOB_MARKER}{{{STEP_JOB_LABEL}={job!r}}} series between {start} and {end}:"
            " is the job's step collector scraped?"
        )
    return instances


def series_for(
    client: ps.Client,
    subsystem: str,
    job: str,
    instances: Sequence[str],
    start: float,
    end: float,
    step: float,
    max_series: int,
    max_points: int,
) -> Iterator[ps.Series]:
    present = client.names(start, end)
    hosts = sorted({_PORT.sub("", i) for i in instances})
    inst_re = f'instance=~"({ps.label_escape(ps.regex_alternation(hosts))})(:[0-9]+)?"'
    host_res = [f'{label}=~"{ps.label_escape(ps.regex_alternation(hosts))}"' for label in HOST_LABELS]
    for metric in catalog.by_subsystem(subsystem):
        for name in sample_names(metric):
            if name not in present:
                continue
            if subsystem == "steps":
                selectors = [f'{STEP_JOB_LABEL}="{ps.label_escape(job)}"']
            elif metric.dcgm:
                selectors = [inst_re, *host_res]
            else:
                selectors = [inst_re]
            seen: set[tuple[tuple[str, str], ...]] = set()
            for matchers in selectors:
                for s in ps.fetch(client, name, start, end, step, matchers, max_series, max_points):
                    key = tuple(sorted(s.labels.items()))
                    if key not in seen:
                        seen.add(key)
                        yield s


def long_form(series: Iterable[ps.Series], subsystem: str) -> dict[str, list[Any]]:
    """Series -> the dump's long-form columns (labels absent from a series are "")."""
    rows: list[tuple[ps.Series, dict[str, str]]] = []
    label_names: dict[str, None] = dict.fromkeys(dumpformat.label_columns(subsystem))
    for s in series:
        # A label an exporter may spell two ways (hostname, Hostname) is stored under the catalog's.
        labels = {
            catalog.CATALOGUED_LABEL.get(k, k): v for k, v in s.labels.items() if k not in DROPPED_LABELS
        }
        labels["instance"] = node_name(s.labels)
        label_names.update(dict.fromkeys(labels))
        rows.append((s, labels))
    cols: dict[str, list[Any]] = {"timestamp": [], "metric": [], "value": []}
    for name in label_names:
        cols[name] = []
    for s, labels in rows:
        points = [(t, v) for t, v in zip(s.timestamps, s.values, strict=True) if not math.isnan(v)]
        points.sort()
        n = len(points)
        cols["timestamp"].extend(t for t, _ in points)
        cols["value"].extend(v for _, v in points)
        cols["metric"].extend([s.name] * n)
        for name in label_names:
            cols[name].extend([labels.get(name, dumpformat.NO_LABEL)] * n)
    return cols


def write_table(path: Path, subsystem: str, cols: dict[str, list[Any]]) -> int:
    """Write one metrics file in the core format; returns its row count."""
    arrays = {}
    for name, values in cols.items():
        if name in ("timestamp", "value"):
            arrays[name] = pa.array(values, type=pa.float64())
        else:
            arrays[name] = pa.array(values, type=pa.string()).dictionary_encode()
    table = pa.table(arrays)
    dumpformat.check_metrics_schema(str(path), subsystem, {f.name: str(f.type) for f in table.schema})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return int(table.num_rows)


def collect(
    client: ps.Client,
    job: str,
    start: float,
    end: float,
    out: Path,
    step: float = 15.0,
    max_series: int = ps.DEFAULT_MAX_SERIES,
    max_points: int = ps.DEFAULT_MAX_POINTS,
) -> CollectResult:
    """Write ``out/metrics/<subsystem>.parquet`` for ``job`` over ``[start, end]``."""
    instances = require_job_instances(client, job, start, end)
    layout = dumpformat.DumpLayout(out)
    result = CollectResult(out=out, instances=sorted({node_name({"instance": i}) for i in instances}))
    for subsystem, series in job_series(client, job, instances, start, end, step, max_series, max_points):
        path = layout.metrics_path(subsystem)
        result.rows[subsystem] = write_table(path, subsystem, long_form(series, subsystem))
        result.series[subsystem] = len(series)
        result.files[subsystem] = str(path)
    result.requests = client.requests
    return result


def job_series(
    client: ps.Client,
    job: str,
    instances: Sequence[str],
    start: float,
    end: float,
    step: float,
    max_series: int = ps.DEFAULT_MAX_SERIES,
    max_points: int = ps.DEFAULT_MAX_POINTS,
) -> Iterator[tuple[str, list[ps.Series]]]:
    """(subsystem, its series) for every subsystem with data: one subsystem in memory at a time."""
    for subsystem in dumpformat.METRIC_SUBSYSTEMS:
        series = list(series_for(client, subsystem, job, instances, start, end, step, max_series, max_points))
        if series:
            yield subsystem, series


@dataclass
class CopiedSteps:
    """Step files copied into a dump's ``steps/``: how many, their records, and what was wrong."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    problems: list[str] = field(default_factory=list)


def copy_step_files_from(spools: Sequence[Path], job: str, out: Path) -> CopiedSteps:
    """:func:`copy_step_files` over several spools (one per node when the spool is node-local).

    Two spools holding the same rank's file would overwrite each other's records: the later one
    is not copied and the clash is reported, naming both."""
    result = CopiedSteps()
    seen: dict[str, Path] = {}
    for spool in spools:
        copied = copy_step_files(spool, job, out, skip=seen)
        result.files.extend(copied.files)
        result.records += copied.records
        result.problems.extend(copied.problems)
    return result


def copy_step_files(spool: Path, job: str, out: Path, skip: dict[str, Path] | None = None) -> CopiedSteps:
    """Copy the job's step files from a spool directory (a shared filesystem the ranks write to)
    into ``out/steps/``, byte for byte: a bad line stays for the analysis to report, not dropped
    here. A file is the job's when its name is ``steprecord.file_name(job, rank)``'s and its
    records say the job."""
    from fmdiag import steprecord  # noqa: PLC0415

    prefix = steprecord.file_name(job, 0).removesuffix("00000.jsonl")
    result = CopiedSteps()
    candidates = [p for p in steprecord.step_files(spool) if p.name.startswith(prefix)]
    target = dumpformat.DumpLayout(out).steps_dir
    seen = {} if skip is None else skip
    for path in candidates:
        if path.name in seen:
            result.problems.append(f"{path}: {seen[path.name]} has the same rank's file; not copied")
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            result.problems.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        read = steprecord.read_file(path)
        if read.records and any(r.job != job for r in read.records):
            result.problems.append(f"{path}: records of another job, not copied")
            continue
        result.problems.extend(str(e) for e in read.errors)
        target.mkdir(parents=True, exist_ok=True)
        (target / path.name).write_bytes(data)
        seen[path.name] = path
        result.files.append(str(target / path.name))
        result.records += len(read.records)
    return result
