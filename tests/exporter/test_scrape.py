"""The scraper: concurrency, deadlines, isolation of failures, shared-but-fresh scrapes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import pytest
from prometheus_client.core import Metric

from fmdiag import __version__
from fmdiag.exporters.collector import Collector, CollectorContext, ErrorReporter
from fmdiag.exporters.exposition import Format
from fmdiag.exporters.families import Families
from fmdiag.exporters.scrape import Scraper, Snapshot


class Counting(Collector):
    """Reports how many times it has been collected as fmdiag_efa_devices."""

    name = "counting"

    def __init__(self, ctx: CollectorContext, gate: threading.Event | None = None) -> None:
        super().__init__(ctx)
        self.calls = 0
        self.gate = gate
        self.started = threading.Event()
        self.lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            self.calls += 1
            n = self.calls
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        fams = Families()
        fams.add("fmdiag_efa_devices", n)
        return fams


class Raising(Collector):
    name = "raising"

    def collect(self) -> Iterable[Metric]:
        self.report("/sys/some/file", "garbled")
        raise RuntimeError("bug in a collector")


class Blocking(Collector):
    name = "blocking"

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.release = threading.Event()
        self.calls = 0

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        self.release.wait(30)
        fams = Families()
        fams.add("fmdiag_lustre_filesystems", 2)
        return fams


def values(snap: Snapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in snap.families for s in f.samples}


def coll(snap: Snapshot, metric: str, name: str) -> float:
    return values(snap)[(metric, (("collector", name),))]


def test_failures_are_isolated_and_reported() -> None:
    errors = ErrorReporter()
    ctx = CollectorContext(errors=errors)
    counting, raising, blocking = Counting(ctx), Raising(ctx), Blocking(ctx)
    scraper = Scraper([counting, raising, blocking], errors, timeout_s=0.3)
    try:
        snap = scraper.scrape()
        v = values(snap)
        assert v[("fmdiag_efa_devices", ())] == 1
        assert ("fmdiag_lustre_filesystems", ()) not in v
        assert coll(snap, "fmdiag_exporter_collector_success", "counting") == 1
        assert coll(snap, "fmdiag_exporter_collector_success", "raising") == 0
        assert coll(snap, "fmdiag_exporter_collector_success", "blocking") == 0
        assert coll(snap, "fmdiag_exporter_collector_timeouts_total", "blocking") == 1
        assert coll(snap, "fmdiag_exporter_collector_timeouts_total", "raising") == 0
        assert coll(snap, "fmdiag_exporter_collector_parse_errors_total", "raising") == 1
        assert coll(snap, "fmdiag_exporter_collector_parse_errors_total", "counting") == 0
        assert v[("fmdiag_exporter_build_info", (("python_version", v_py(v)), ("version", __version__)))] == 1
        assert v[("fmdiag_exporter_resident_memory_bytes", ())] > 1e6
        assert v[("fmdiag_exporter_cpu_seconds_total", ())] > 0

        # The blocked collector is not started again while it is still stuck.
        snap2 = scraper.scrape()
        assert blocking.calls == 1
        assert coll(snap2, "fmdiag_exporter_collector_timeouts_total", "blocking") == 2
        assert values(snap2)[("fmdiag_efa_devices", ())] == 2

        # Once it returns, it runs again and succeeds.
        blocking.release.set()
        deadline = time.monotonic() + 10
        while scraper._inflight["blocking"].running() and time.monotonic() < deadline:
            time.sleep(0.01)
        snap3 = scraper.scrape()
        assert blocking.calls == 2
        assert coll(snap3, "fmdiag_exporter_collector_success", "blocking") == 1
        assert values(snap3)[("fmdiag_lustre_filesystems", ())] == 2
        assert coll(snap3, "fmdiag_exporter_collector_timeouts_total", "blocking") == 2
    finally:
        blocking.release.set()
        scraper.close()


def v_py(v: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> str:
    return next(dict(lab)["python_version"] for name, lab in v if name == "fmdiag_exporter_build_info")


def test_concurrent_requests_share_scrapes_but_never_stale_ones() -> None:
    errors = ErrorReporter()
    gate = threading.Event()
    counting = Counting(CollectorContext(errors=errors), gate)
    scraper = Scraper([counting], errors, timeout_s=30)
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def request() -> None:
        with counting.lock:
            started_before = counting.calls  # collections begun before this request arrived
        snap = scraper.scrape()
        with lock:
            results.append((started_before, values(snap)[("fmdiag_efa_devices", ())]))

    try:
        first = threading.Thread(target=request)
        first.start()
        assert counting.started.wait(10)
        threads = [threading.Thread(target=request) for _ in range(10)]
        for t in threads:
            t.start()
        time.sleep(0.2)  # let them queue behind the running scrape
        gate.set()
        for t in [first, *threads]:
            t.join(30)
        assert len(results) == 11
        for started_before, got in results:
            assert got > started_before, "answered from a scrape that began before the request"
        assert counting.calls < 11, "concurrent requests did not share scrapes"
    finally:
        gate.set()
        scraper.close()


def test_snapshot_renders_each_format_once() -> None:
    errors = ErrorReporter()
    scraper = Scraper([Counting(CollectorContext(errors=errors))], errors, timeout_s=5)
    try:
        snap = scraper.scrape()
        a = snap.render(Format.TEXT)
        assert snap.render(Format.TEXT) is a
        assert snap.render(Format.OPENMETRICS).endswith(b"# EOF\n")
    finally:
        scraper.close()


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Scraper([], ErrorReporter(), timeout_s=0)


def test_no_collectors_still_serves_self_metrics() -> None:
    scraper = Scraper([], ErrorReporter(), timeout_s=1)
    try:
        v = values(scraper.scrape())
        assert any(name == "fmdiag_exporter_build_info" for name, _ in v)
    finally:
        scraper.close()


class Overlap(Collector):
    """Records how many collectors of its group run at once (the GIL makes more no faster)."""

    name = "overlap"

    def __init__(self, ctx: CollectorContext, name: str, group: dict[str, int], lock: threading.Lock) -> None:
        super().__init__(ctx)
        self.name = name  # type: ignore[misc]
        self.group = group
        self.lock = lock

    def collect(self) -> Iterable[Metric]:
        with self.lock:
            self.group["running"] += 1
            self.group["most"] = max(self.group["most"], self.group["running"])
        sum(range(20_000))  # a little work, holding the GIL as a parser does
        with self.lock:
            self.group["running"] -= 1
        return Families()


def test_collectors_that_finish_within_their_slice_run_one_at_a_time() -> None:
    errors = ErrorReporter()
    group = {"running": 0, "most": 0}
    lock = threading.Lock()
    collectors = [Overlap(CollectorContext(errors=errors), f"c{i}", group, lock) for i in range(5)]
    # A slice longer than any of them takes: each starts when the one before has finished.
    scraper = Scraper(collectors, errors, timeout_s=60, stagger_s=60)
    try:
        for _ in range(3):
            snap = scraper.scrape()
            assert all(o.success for o in snap.outcomes)
    finally:
        scraper.close()
    assert group["most"] == 1


def test_a_stuck_collector_does_not_hold_back_the_ones_after_it() -> None:
    errors = ErrorReporter()
    ctx = CollectorContext(errors=errors)
    blocking, counting = Blocking(ctx), Counting(ctx)
    scraper = Scraper([blocking, counting], errors, timeout_s=1, stagger_s=0.05)
    try:
        snap = scraper.scrape()  # blocking never returns in time; counting starts after its slice
        assert values(snap)[("fmdiag_efa_devices", ())] == 1
        assert coll(snap, "fmdiag_exporter_collector_success", "counting") == 1
        assert coll(snap, "fmdiag_exporter_collector_success", "blocking") == 0
    finally:
        blocking.release.set()
        scraper.close()
