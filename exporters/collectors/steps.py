"""Step collector: step time per (job, rank) from the steptrace spool, tailed incrementally.

This collector keeps state between scrapes on purpose: file offsets (each scrape reads only
what was appended, see :mod:`fmdiag.exporters.spool_tail`) and running aggregates (the
histogram and counters cannot be rebuilt from a tail). Records are validated by
:func:`fmdiag.steprecord.parse_line`, the same function ``fmdiag analyze`` uses, so the
exporter and the analyzer accept exactly the same lines.

Cardinality is bounded per node: at most ``max-ranks`` (job, rank) pairs are exported
(33 series each at most, see exporters/deploy/README.md); records of further pairs are
counted in ``fmdiag_step_series_dropped_total``. A pair is forgotten when its newest step
ended more than ``stale-after`` ago or when every file it came from is gone, which frees its
slot for a new job.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import Metric

from fmdiag import steprecord
from fmdiag.catalog import STEP_DURATION_BUCKETS
from fmdiag.exporters.collector import Collector, CollectorContext, register
from fmdiag.exporters.options import duration, integer, optional_text
from fmdiag.exporters.spool_tail import Chunk, FileKey, SpoolTail
from fmdiag.steprecord import MAX_LINE_BYTES, PHASES, StepRecord, StepRecordError, parse_line

DEFAULT_MAX_RANKS = 64
DEFAULT_STALE_AFTER_S = 3600.0
DEFAULT_MAX_FILES = 1024
DEFAULT_MAX_READ_BYTES = 256 * 1024

#: Bad lines per file and scrape reported under their own file:line (the rest under the file).
_LOGGED_LINES = 5

log = logging.getLogger("fmdiag.exporter")


@dataclass
class RankSeries:
    """Running aggregates of one (job, rank): what the exported series are built from."""

    job: str
    rank: int
    buckets: list[int] = field(default_factory=lambda: [0] * len(STEP_DURATION_BUCKETS))
    count: int = 0
    total_s: float = 0.0
    last_step: int = 0
    last_duration_s: float = 0.0
    last_end_ns: int = -1
    phases: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None
    samples: int | None = None
    #: Per source file: (dropped counted from earlier writer processes, writer's current count).
    dropped_by_file: dict[FileKey, tuple[int, int]] = field(default_factory=dict)
    #: Per source file: the pid of the writer process whose count is current.
    writer_by_file: dict[FileKey, int | None] = field(default_factory=dict)
    #: The file the newest record came from: within one file, a later line is a later step.
    last_source: FileKey | None = None
    #: Dropped counts of files that are gone (a counter never goes down).
    dropped_retired: int = 0

    def add(self, record: StepRecord, source: FileKey) -> None:
        duration = record.duration_s
        index = bisect.bisect_left(STEP_DURATION_BUCKETS, duration)
        if index < len(self.buckets):
            self.buckets[index] += 1
        self.count += 1
        self.total_s += duration
        # end_ns is wall-clock based and may step back (NTP); within one file the later line
        # wins, as docs/formats.md says, and end_ns only orders records of different files.
        if source == self.last_source or record.end_ns >= self.last_end_ns:
            self.last_source = source
            self.last_end_ns = record.end_ns
            self.last_step = record.step
            self.last_duration_s = duration
        for phase, seconds in record.phases.items():
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        if record.tokens is not None:
            self.tokens = (self.tokens or 0) + record.tokens
        if record.samples is not None:
            self.samples = (self.samples or 0) + record.samples
        base, last = self.dropped_by_file.get(source, (0, 0))
        writer = self.writer_by_file.get(source)
        new_writer = record.pid is not None and writer is not None and record.pid != writer
        if new_writer or record.dropped < last:  # a new writer process started counting from zero
            base += last
        self.dropped_by_file[source] = (base, record.dropped)
        if record.pid is not None:
            self.writer_by_file[source] = record.pid

    def forget_file(self, source: FileKey) -> None:
        base, last = self.dropped_by_file.pop(source, (0, 0))
        self.writer_by_file.pop(source, None)
        self.dropped_retired += base + last

    @property
    def dropped(self) -> int:
        return self.dropped_retired + sum(b + last for b, last in self.dropped_by_file.values())


SPOOL_DIR = optional_text(
    "spool-dir",
    "Directory the training jobs' steptrace writes to.",
    metavar="DIR",
    default_text=f"${steprecord.ENV_SPOOL_DIR} or {steprecord.DEFAULT_SPOOL_DIR}",
)
MAX_RANKS = integer(
    "max-ranks",
    DEFAULT_MAX_RANKS,
    "Most (job, rank) pairs exported per node; records of more are counted as dropped.",
    minimum=1,
)
STALE_AFTER = duration(
    "stale-after", DEFAULT_STALE_AFTER_S, "Forget a (job, rank) whose newest step ended longer ago than this."
)
MAX_FILES = integer("max-files", DEFAULT_MAX_FILES, "Most step files followed.", minimum=1)
MAX_READ_BYTES = integer(
    "max-read-bytes",
    DEFAULT_MAX_READ_BYTES,
    "Most bytes read per file per scrape; a longer backlog is read over several scrapes, and a file "
    "already longer than this when the exporter starts is joined at its tail.",
    minimum=1,
)


@register
class StepsCollector(Collector):
    """Step durations, phases and throughput per (job, rank) from the steptrace spool."""

    name = "steps"
    options = (SPOOL_DIR, MAX_RANKS, STALE_AFTER, MAX_FILES, MAX_READ_BYTES)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        spool = self.option(SPOOL_DIR)
        self.spool_dir = Path(spool) if spool else steprecord.spool_dir()
        self.max_ranks = self.option(MAX_RANKS)
        self.stale_after_s = self.option(STALE_AFTER)
        self.tail = SpoolTail(
            self.spool_dir,
            max_files=self.option(MAX_FILES),
            read_budget=self.option(MAX_READ_BYTES),
            max_line=MAX_LINE_BYTES,
        )
        self.series: dict[tuple[str, int], RankSeries] = {}
        #: Which pairs each followed file has fed, to forget them when the file goes.
        self._pairs_of_file: dict[FileKey, set[tuple[str, int]]] = {}
        self.series_dropped = 0
        #: Files whose records were all too old to export, already named in the log.
        self._stale_logged: set[FileKey] = set()
        #: Scrapes may overlap when one overruns its deadline; state changes one at a time.
        self._lock = threading.Lock()
        self.clock = time.time

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self._update()
            return list(self._families())

    def _update(self) -> None:
        now_ns = int(self.clock() * 1e9)
        self._expire(now_ns)  # first, so a finished job's slots are free for this scrape's records
        result = self.tail.poll()
        for where, error in result.errors:
            self.report(where, error)
        for chunk in result.chunks:
            self._ingest(chunk, now_ns)
        for key in result.vanished:
            self._stale_logged.discard(key)
            for pair in self._pairs_of_file.pop(key, set()):
                series = self.series.get(pair)
                if series is not None:
                    series.forget_file(key)
                    if not series.dropped_by_file:
                        del self.series[pair]

    def _expire(self, now_ns: int) -> None:
        stale_before = now_ns - int(self.stale_after_s * 1e9)
        for pair in [p for p, s in self.series.items() if s.last_end_ns < stale_before]:
            del self.series[pair]

    def _ingest(self, chunk: Chunk, now_ns: int) -> None:
        stale_before = now_ns - int(self.stale_after_s * 1e9)
        pairs = self._pairs_of_file.setdefault(chunk.key, set())
        bad = 0
        stale = 0
        for number, line in chunk.lines:
            if line is None:
                error = f"line is over the {MAX_LINE_BYTES}-byte limit"
            else:
                try:
                    record = parse_line(line, source=str(chunk.path), line=number)
                    error = ""
                except StepRecordError as exc:
                    error = f"field {exc.field_name!r} {exc.reason}" if exc.field_name else exc.reason
            if error:
                # Each bad line is counted; past a few per file and scrape they share one
                # log key (the file), so a garbage file cannot flood the log.
                bad += 1
                line_no = f"{number}" if chunk.numbered_from_start else f"+{number}"
                where = f"{chunk.path}:{line_no}" if bad <= _LOGGED_LINES else str(chunk.path)
                self.report(where, error if bad <= _LOGGED_LINES else f"line {line_no}: {error}")
                continue
            pair = (record.job, record.rank)
            series = self.series.get(pair)
            if series is None:
                if record.end_ns < stale_before:
                    stale += 1
                    continue  # history of a finished job: not worth a series
                if len(self.series) >= self.max_ranks:
                    self.series_dropped += 1
                    continue
                series = self.series[pair] = RankSeries(record.job, record.rank)
            series.add(record, chunk.key)
            pairs.add(pair)
        if stale and not pairs and chunk.key not in self._stale_logged:
            # Not an error, but a demo or a restored dump whose records are all old would
            # otherwise show no step series and no reason at all.
            self._stale_logged.add(chunk.key)
            log.info(
                "steps: %s: %d records not exported: their steps ended more than "
                "--collector.steps.stale-after (%gs) ago",
                chunk.path,
                stale,
                self.stale_after_s,
            )

    def _families(self) -> Iterable[Metric]:
        fam = self.families()
        for series in sorted(self.series.values(), key=lambda s: (s.job, s.rank)):
            labels = {"training_job": series.job, "rank": str(series.rank)}
            cumulative, running = [], 0
            for bound, n in zip(STEP_DURATION_BUCKETS, series.buckets, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            fam.add_histogram(
                "fmdiag_step_duration_seconds", labels, cumulative, series.count, series.total_s
            )
            fam.add("fmdiag_step_last", series.last_step, labels)
            fam.add("fmdiag_step_last_duration_seconds", series.last_duration_s, labels)
            fam.add("fmdiag_step_last_end_timestamp_seconds", series.last_end_ns / 1e9, labels)
            for phase in PHASES:
                if phase in series.phases:
                    fam.add(
                        "fmdiag_step_phase_seconds_total", series.phases[phase], {**labels, "phase": phase}
                    )
            if series.tokens is not None:
                fam.add("fmdiag_step_tokens_total", series.tokens, labels)
            if series.samples is not None:
                fam.add("fmdiag_step_samples_total", series.samples, labels)
            fam.add("fmdiag_step_records_dropped_total", series.dropped, labels)
        fam.add("fmdiag_step_series_dropped_total", self.series_dropped)
        fam.add("fmdiag_step_spool_files", len(self.tail.files))
        return fam
