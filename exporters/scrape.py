"""Runs the enabled collectors for one scrape: each in its own thread, under a deadline, isolated.

Collectors start one after another, each given a short slice (:data:`STAGGER_S`) to finish
alone before the next starts, so file-parsing collectors do not fight over the GIL; a slow
one is overlapped rather than waited for. A collector that raises or misses the deadline is
marked failed for that scrape (``fmdiag_exporter_collector_success 0``, and
``..._timeouts_total`` +1 for a miss); the others' families are served as usual. A collector
still stuck in a previous scrape is not started again (so a hung filesystem cannot pile up
threads); it counts as another miss.

Concurrent HTTP requests share scrapes, but never stale ones: a request is answered by the
first scrape that *started after it arrived*. Fifty scrapers hitting one node therefore
cause about one source read per scrape duration instead of fifty, every answer is fresh,
and the rendered bytes of a scrape are built once per format.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from fmdiag import __version__
from fmdiag.exporters.collector import Collector, ErrorReporter, SourceUnavailableError
from fmdiag.exporters.exposition import Format, SeriesTexts, render
from fmdiag.exporters.families import CatalogChecks, Families
from fmdiag.exporters.labelsets import LabelSets

log = logging.getLogger("fmdiag.exporter")

_FAILURE_LOG_INTERVAL_S = 60.0
#: How long a scrape lets one collector run alone before it starts the next one anyway.
#: Collectors that parse files hold the GIL between short system calls; run side by side,
#: every read hands the GIL to another thread and back (two context switches), which on a
#: full node cost more CPU than the parsing itself. One at a time they finish in a few ms
#: each; one that waits longer (NVML, lctl, a hung mount) gets company after this slice, so a
#: stuck collector delays the others by at most this much each and never past the deadline.
STAGGER_S = 0.05


@dataclass
class CollectorOutcome:
    name: str
    families: list[Metric]
    success: bool
    duration_s: float


@dataclass
class Snapshot:
    """One scrape's families; renders each format at most once however many requests share it."""

    families: list[Metric]
    outcomes: list[CollectorOutcome]
    #: The scraper's series texts, shared by its snapshots (see exposition.SeriesTexts).
    texts: SeriesTexts | None = None
    _rendered: dict[Format, bytes] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def render(self, fmt: Format) -> bytes:
        with self._lock:
            body = self._rendered.get(fmt)
            if body is None:
                body = render(self.families, fmt, self.texts)
                self._rendered[fmt] = body
            return body


def _run(collector: Collector) -> tuple[list[Metric], float]:
    start = time.perf_counter()
    problem = collector.source_problem()
    if problem is not None:
        raise SourceUnavailableError(problem)
    families = list(collector.collect())
    return families, time.perf_counter() - start


def _start(collector: Collector) -> Future[tuple[list[Metric], float]]:
    """Run one collect in its own daemon thread.

    Not a ThreadPoolExecutor: its workers are joined at interpreter exit, so one collector
    stuck for good in a read (a hung mount) would keep the process alive after SIGTERM.
    """
    future: Future[tuple[list[Metric], float]] = Future()

    def target() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(_run(collector))
        except BaseException as exc:  # handed to the scrape, which marks the collector failed
            future.set_exception(exc)

    threading.Thread(target=target, name=f"collector-{collector.name}", daemon=True).start()
    return future


class Scraper:
    """Owns the collectors and runs them; :meth:`scrape` is safe to call from any thread."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        errors: ErrorReporter,
        timeout_s: float,
        stagger_s: float = STAGGER_S,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"scrape timeout must be positive, got {timeout_s}")
        self.collectors = list(collectors)
        self.errors = errors
        self.timeout_s = timeout_s
        self.stagger_s = stagger_s
        self._inflight: dict[str, Future[tuple[list[Metric], float]]] = {}
        self._timeouts: dict[str, int] = {c.name: 0 for c in self.collectors}
        self._last_failure_log: dict[str, float] = {}
        #: Collector -> the reason its source is unavailable, while it is (logged once).
        self._unavailable: dict[str, str] = {}
        self._checks = CatalogChecks()
        self._texts = SeriesTexts()
        self._labels = LabelSets(("collector",))
        # Single-flight state, guarded by _cond.
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False
        self._latest: Snapshot | None = None
        self._closed = False

    # -- public -----------------------------------------------------------------------------
    def scrape(self) -> Snapshot:
        """A snapshot whose sources were all read after this call began."""
        with self._cond:
            need = self._started + 1
            while self._done < need:
                if not self._running:
                    self._running = True
                    self._started += 1
                    number = self._started
                    self._cond.release()
                    try:
                        snap = self._scrape_once()
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._cond.notify_all()
                    self._latest = snap
                    self._done = number
                else:
                    self._cond.wait()
            assert self._latest is not None
            return self._latest

    def check_sources(self) -> None:
        """Log, at start-up, every collector whose source root is missing (each reason once)."""
        for c in self.collectors:
            try:
                problem = c.source_problem()
            except Exception:
                log.exception("collector %s: error while checking its source", c.name)
                continue
            if problem is not None:
                self._log_unavailable(c.name, problem)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
        for c in self.collectors:
            try:
                c.close()
            except Exception:
                log.exception("collector %s: error while closing", c.name)

    # -- one scrape -------------------------------------------------------------------------
    def _scrape_once(self) -> Snapshot:
        start = time.perf_counter()
        deadline = start + self.timeout_s
        futures: dict[str, Future[tuple[list[Metric], float]]] = {}
        previous_start: Future[tuple[list[Metric], float]] | None = None
        for c in self.collectors:
            previous = self._inflight.get(c.name)
            if previous is not None and not previous.done():
                continue  # still stuck in an earlier scrape: not started twice
            if previous_start is not None:
                # Staggered: give the previous collector a short slice to finish alone first.
                slice_s = min(self.stagger_s, deadline - time.perf_counter())
                if slice_s > 0:
                    wait([previous_start], timeout=slice_s)
            submitted = _start(c)
            futures[c.name] = submitted
            self._inflight[c.name] = submitted
            previous_start = submitted
        if futures:
            wait(list(futures.values()), timeout=max(0.0, deadline - time.perf_counter()))

        outcomes: list[CollectorOutcome] = []
        families: list[Metric] = []
        for c in self.collectors:
            fut = futures.get(c.name)
            if fut is None or not fut.done():
                self._timeouts[c.name] += 1
                why = (
                    "still running from an earlier scrape"
                    if fut is None
                    else f"missed the {self.timeout_s:g} s scrape deadline"
                )
                self._log_failure(c.name, why, None)
                outcomes.append(CollectorOutcome(c.name, [], False, time.perf_counter() - start))
                continue
            exc = fut.exception()
            if isinstance(exc, SourceUnavailableError):
                self._log_unavailable(c.name, exc.reason)
                families.extend(exc.families)
                outcomes.append(CollectorOutcome(c.name, exc.families, False, time.perf_counter() - start))
                continue
            if exc is not None:
                self._log_failure(c.name, "raised during collect", exc)
                outcomes.append(CollectorOutcome(c.name, [], False, time.perf_counter() - start))
                continue
            fams, duration = fut.result()
            if self._unavailable.pop(c.name, None) is not None:
                log.info("collector %s: source available again", c.name)
            families.extend(fams)
            outcomes.append(CollectorOutcome(c.name, fams, True, duration))
        families.extend(self._self_metrics(outcomes))
        return Snapshot(families, outcomes, self._texts)

    def _log_unavailable(self, name: str, reason: str) -> None:
        """Log a missing source once, not every scrape: it is a deployment fault that stays."""
        if self._unavailable.get(name) != reason:
            self._unavailable[name] = reason
            log.warning("collector %s: no data, reporting success 0: %s", name, reason)

    def _log_failure(self, name: str, why: str, exc: BaseException | None) -> None:
        now = time.monotonic()
        last = self._last_failure_log.get(name)
        if last is not None and now - last < _FAILURE_LOG_INTERVAL_S:
            return
        self._last_failure_log[name] = now
        log.error("collector %s failed: %s", name, why, exc_info=exc)

    def _self_metrics(self, outcomes: Sequence[CollectorOutcome]) -> list[Metric]:
        fams = Families(self._checks)
        names = ("collector",)
        success = fams.adder("fmdiag_exporter_collector_success", names)
        duration = fams.adder("fmdiag_exporter_collector_duration_seconds", names)
        parse_errors = fams.adder("fmdiag_exporter_collector_parse_errors_total", names)
        timeouts = fams.adder("fmdiag_exporter_collector_timeouts_total", names)
        for o in outcomes:
            labels = self._labels.get((o.name,))  # the same dict every scrape: rendered once
            success(labels, 1.0 if o.success else 0.0)
            duration(labels, o.duration_s)
            parse_errors(labels, self.errors.count(o.name))
            timeouts(labels, self._timeouts[o.name])
        self._labels.end_scrape()
        rss = _resident_bytes()
        if rss is not None:
            fams.add("fmdiag_exporter_resident_memory_bytes", rss)
        t = os.times()
        fams.add("fmdiag_exporter_cpu_seconds_total", t.user + t.system)
        fams.add(
            "fmdiag_exporter_build_info",
            1.0,
            {"version": __version__, "python_version": platform.python_version()},
        )
        return list(fams)


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_bytes() -> int | None:
    """The exporter's own RSS, from /proc/self/statm (None where there is no procfs)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None
