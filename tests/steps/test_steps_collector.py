"""The steps collector against a spool that writers append to between scrapes."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from fmdiag import steprecord, steptrace
from fmdiag.catalog import STEP_DURATION_BUCKETS
from fmdiag.durations import parse_duration
from fmdiag.exporters.collector import CollectorContext, ErrorReporter
from fmdiag.exporters.collectors.steps import StepsCollector

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "steps"
NOW = 1_764_000_000.0  # the collector's clock in these tests (Unix seconds)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def make(spool: Path, **options: str) -> StepsCollector:
    ctx = CollectorContext(options={"spool-dir": str(spool), **options}, errors=ErrorReporter())
    collector = StepsCollector(ctx)
    collector.clock = lambda: NOW
    return collector


def scrape(collector: StepsCollector) -> Samples:
    out: Samples = {}
    for fam in collector.collect():
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(samples: Samples, metric: str, /, **labels: str) -> float | None:
    key = (metric, tuple(sorted(labels.items())))
    return samples.get(key)


def pairs(samples: Samples) -> set[tuple[str, str]]:
    return {(dict(lab)["training_job"], dict(lab)["rank"]) for (n, lab) in samples if n == "fmdiag_step_last"}


def record(
    job: str = "job1", rank: int = 0, step: int = 0, dur_s: float = 1.0, end_s: float = NOW - 10, **extra: Any
) -> bytes:
    end_ns = int(end_s * 1e9)
    rec = {
        "v": 1,
        "job": job,
        "rank": rank,
        "node": "n1",
        "step": step,
        "start_ns": end_ns - int(dur_s * 1e9),
        "end_ns": end_ns,
        **extra,
    }
    return json.dumps(rec).encode() + b"\n"


def append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def errors(collector: StepsCollector) -> int:
    return collector.ctx.errors.count("steps")


# --- aggregates -------------------------------------------------------------------------------


def test_hand_written_spool_gives_exact_aggregates(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    shutil.copytree(FIXTURES / "spool", spool)
    collector = make(spool, **{"stale-after": "100000d"})
    s = scrape(collector)
    assert pairs(s) == {("llama-70b-0412", "0"), ("llama-70b-0412", "1")}
    r0 = {"training_job": "llama-70b-0412", "rank": "0"}
    # rank 0: steps 0..3 lasting 1.9, 2.0, 2.1 and 9.5 s; the 3rd line of the file is garbage.
    assert get(s, "fmdiag_step_duration_seconds_count", **r0) == 4
    assert get(s, "fmdiag_step_duration_seconds_sum", **r0) == pytest.approx(15.5)
    assert get(s, "fmdiag_step_duration_seconds_bucket", **r0, le="2.0") == 2
    assert get(s, "fmdiag_step_duration_seconds_bucket", **r0, le="3.0") == 3
    assert get(s, "fmdiag_step_duration_seconds_bucket", **r0, le="7.5") == 3
    assert get(s, "fmdiag_step_duration_seconds_bucket", **r0, le="10.0") == 4
    assert get(s, "fmdiag_step_duration_seconds_bucket", **r0, le="+Inf") == 4
    assert get(s, "fmdiag_step_last", **r0) == 3
    assert get(s, "fmdiag_step_last_duration_seconds", **r0) == pytest.approx(9.5)
    assert get(s, "fmdiag_step_last_end_timestamp_seconds", **r0) == pytest.approx(1764000010.0)
    assert get(s, "fmdiag_step_phase_seconds_total", **r0, phase="data_wait") == pytest.approx(7.56)
    assert get(s, "fmdiag_step_phase_seconds_total", **r0, phase="forward") == pytest.approx(2.4)
    assert get(s, "fmdiag_step_phase_seconds_total", **r0, phase="checkpoint") is None  # never reported
    assert get(s, "fmdiag_step_tokens_total", **r0) == 4 * 65536
    assert get(s, "fmdiag_step_samples_total", **r0) == 64
    assert get(s, "fmdiag_step_records_dropped_total", **r0) == 2
    r1 = {"training_job": "llama-70b-0412", "rank": "1"}
    assert get(s, "fmdiag_step_duration_seconds_count", **r1) == 2
    assert get(s, "fmdiag_step_tokens_total", **r1) is None  # this writer reports no tokens
    assert get(s, "fmdiag_step_spool_files") == 2
    assert get(s, "fmdiag_step_series_dropped_total") == 0
    assert errors(collector) == 1  # rank 0's garbage line, named by file and line


def test_bucket_bounds_are_inclusive(tmp_path: Path) -> None:
    lines = b"".join(record(step=i, dur_s=b) for i, b in enumerate(STEP_DURATION_BUCKETS))
    append(tmp_path / "j.rank00000.jsonl", lines + record(step=99, dur_s=601.0))
    s = scrape(make(tmp_path))
    for i, bound in enumerate(STEP_DURATION_BUCKETS):
        assert (
            get(s, "fmdiag_step_duration_seconds_bucket", training_job="job1", rank="0", le=repr(bound))
            == i + 1
        )
    assert get(s, "fmdiag_step_duration_seconds_bucket", training_job="job1", rank="0", le="+Inf") == 19


def test_each_scrape_reads_only_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=0) + record(step=1))
    collector = make(tmp_path)
    assert get(scrape(collector), "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 2
    offset = next(iter(collector.tail.files.values())).offset
    assert offset == path.stat().st_size
    assert get(scrape(collector), "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 2
    append(path, record(step=2, dur_s=4.0))
    s = scrape(collector)
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 3
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 2
    assert get(s, "fmdiag_step_last_duration_seconds", training_job="job1", rank="0") == 4.0


def test_partial_last_line_waits_for_its_newline_without_an_error(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    line = record(step=7)
    append(path, record(step=6) + line[:25])
    collector = make(tmp_path)
    s = scrape(collector)
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 6
    append(path, line[25:-1])
    assert get(scrape(collector), "fmdiag_step_last", training_job="job1", rank="0") == 6
    append(path, b"\n")
    assert get(scrape(collector), "fmdiag_step_last", training_job="job1", rank="0") == 7
    assert errors(collector) == 0


def test_a_fragment_ended_by_a_restarted_writer_is_one_bad_line(tmp_path: Path) -> None:
    """steptrace ends a crashed writer's fragment with a newline: one error, nothing glued."""
    spool = tmp_path / "spool"
    path = spool / steprecord.file_name("job1", 0)
    append(path, record(step=0) + record(step=1)[:30])
    collector = make(spool)
    scrape(collector)
    with steptrace.StepTracer(spool, job="job1", rank=0, node="n1") as tracer:
        for _ in range(3):
            with tracer.step():
                pass
    s = scrape(collector)
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 4
    assert errors(collector) == 1


def test_garbage_lines_are_counted_and_good_lines_kept(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    append(
        path,
        b"".join(
            [
                record(step=0),
                b"not json at all\n",
                record(step=1)[:-2] + b"\n",
                b'{"job": "job1", "rank": 0, "node": "n1", "step": 2, "start_ns": 9, "end_ns": 1}\n',
                b"\xff\xfe\xfd\n",
                b"\n",
                b"x" * 70000 + b"\n",
                record(step=3),
                b"[]\n",
                b'{"v": 2, "job": "job1", "rank": 0, "node": "n1", "step": 4, "start_ns": 1, "end_ns": 2}\n',
            ]
        ),
    )
    collector = make(tmp_path)
    s = scrape(collector)
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 2
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 3
    assert errors(collector) == 7


# --- files coming, going, rotating ------------------------------------------------------------


def test_new_files_are_picked_up(tmp_path: Path) -> None:
    collector = make(tmp_path / "spool")
    s = scrape(collector)
    assert pairs(s) == set() and get(s, "fmdiag_step_spool_files") == 0
    append(tmp_path / "spool" / "job1.rank00000.jsonl", record(rank=0))
    assert pairs(scrape(collector)) == {("job1", "0")}
    append(tmp_path / "spool" / "job1.rank00001.jsonl", record(rank=1))
    append(tmp_path / "spool" / "job2.rank00000.jsonl", record(job="job2", rank=0))
    s = scrape(collector)
    assert pairs(s) == {("job1", "0"), ("job1", "1"), ("job2", "0")}
    assert get(s, "fmdiag_step_spool_files") == 3
    assert errors(collector) == 0


def test_copytruncate_rotation_neither_loses_nor_repeats_records(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=0) + record(step=1))
    collector = make(tmp_path)
    scrape(collector)
    append(path, record(step=2))
    # logrotate copytruncate: copy to a name that is not *.jsonl, then truncate in place.
    shutil.copy(path, tmp_path / "job1.rank00000.jsonl.1")
    os.truncate(path, 0)
    append(path, record(step=3))
    s = scrape(collector)
    # step 2 was in the file only between two scrapes and left with the copy; steps 0, 1
    # are not counted twice and step 3 is read from the truncated file's start.
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 3
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 3
    append(path, record(step=4))
    assert get(scrape(collector), "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 4
    assert errors(collector) == 0


def test_a_renamed_file_is_followed_by_inode(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=0))
    collector = make(tmp_path)
    scrape(collector)
    moved = tmp_path / "archive" / "job1.rank00000.old.jsonl"
    moved.parent.mkdir()
    path.rename(moved)
    append(moved, record(step=1))
    s = scrape(collector)
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 2
    assert get(s, "fmdiag_step_spool_files") == 1


def test_a_replaced_file_is_read_from_its_start(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=0) + record(step=1))
    collector = make(tmp_path)
    scrape(collector)
    replacement = tmp_path / "new.tmp"
    append(replacement, record(step=5) + record(step=6, dropped=1))
    os.replace(replacement, path)
    s = scrape(collector)
    # The new inode is read from its start; the pair goes on (counters never go back).
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 4
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 6
    assert get(s, "fmdiag_step_records_dropped_total", training_job="job1", rank="0") == 1


def test_pairs_of_a_deleted_file_are_forgotten(tmp_path: Path) -> None:
    append(tmp_path / "job1.rank00000.jsonl", record(rank=0))
    append(tmp_path / "job1.rank00001.jsonl", record(rank=1))
    collector = make(tmp_path)
    assert pairs(scrape(collector)) == {("job1", "0"), ("job1", "1")}
    (tmp_path / "job1.rank00001.jsonl").unlink()
    s = scrape(collector)
    assert pairs(s) == {("job1", "0")}
    assert get(s, "fmdiag_step_spool_files") == 1


# --- bounds -----------------------------------------------------------------------------------


def test_ranks_beyond_the_bound_are_not_exported_but_counted(tmp_path: Path) -> None:
    for rank in range(10):
        append(tmp_path / f"job1.rank{rank:05d}.jsonl", record(rank=rank, step=0) + record(rank=rank, step=1))
    collector = make(tmp_path, **{"max-ranks": "4"})
    s = scrape(collector)
    assert len(pairs(s)) == 4
    assert get(s, "fmdiag_step_series_dropped_total") == 12  # 6 ranks x 2 records
    # Series per rank are bounded: 21 histogram samples + 3 last_* + phases + totals.
    assert sum(1 for (_, lab) in s if dict(lab).get("rank") is not None) <= 4 * 33
    for rank in range(10):
        append(tmp_path / f"job1.rank{rank:05d}.jsonl", record(rank=rank, step=2))
    s = scrape(collector)
    assert len(pairs(s)) == 4
    assert get(s, "fmdiag_step_series_dropped_total") == 18


def test_files_present_at_start_are_joined_at_their_tail(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    lines = [record(step=i) for i in range(300)]
    append(path, b"".join(lines))
    collector = make(tmp_path, **{"max-read-bytes": "4096"})
    s = scrape(collector)
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    whole = sum(1 for start in starts if start >= path.stat().st_size - 4096)  # lines wholly inside
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == whole
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 299
    append(path, record(step=300))
    assert (
        get(scrape(collector), "fmdiag_step_duration_seconds_count", training_job="job1", rank="0")
        == whole + 1
    )
    assert errors(collector) == 0


def test_stale_pairs_are_forgotten_and_free_their_slot(tmp_path: Path) -> None:
    append(tmp_path / "old.rank00000.jsonl", record(job="old", end_s=NOW - 600))
    collector = make(tmp_path, **{"max-ranks": "1", "stale-after": "30m"})
    assert pairs(scrape(collector)) == {("old", "0")}
    collector.clock = lambda: NOW + 1800  # the job's last step ended 40 minutes ago now
    append(tmp_path / "new.rank00000.jsonl", record(job="new", end_s=NOW + 1790))
    s = scrape(collector)
    assert pairs(s) == {("new", "0")}
    assert get(s, "fmdiag_step_series_dropped_total") == 0


def test_history_older_than_stale_after_creates_no_series(tmp_path: Path) -> None:
    append(tmp_path / "done.rank00000.jsonl", record(job="done", end_s=NOW - 7200))
    collector = make(tmp_path, **{"max-ranks": "1"})
    s = scrape(collector)
    assert pairs(s) == set()
    assert get(s, "fmdiag_step_series_dropped_total") == 0


def test_dropped_counts_survive_a_writer_restart(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=0) + record(step=1, dropped=3) + record(step=2, dropped=5))
    collector = make(tmp_path)
    assert get(scrape(collector), "fmdiag_step_records_dropped_total", training_job="job1", rank="0") == 5
    append(path, record(step=3) + record(step=4, dropped=1))  # a new writer process
    assert get(scrape(collector), "fmdiag_step_records_dropped_total", training_job="job1", rank="0") == 6


def test_a_long_backlog_is_read_over_several_scrapes(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    collector = make(tmp_path, **{"max-read-bytes": "4096"})
    scrape(collector)  # the exporter is up before the file appears: it is read from its start
    append(path, b"".join(record(step=i) for i in range(300)))
    counts = []
    for _ in range(20):
        counts.append(
            get(scrape(collector), "fmdiag_step_duration_seconds_count", training_job="job1", rank="0")
        )
    assert counts[0] is not None and counts[0] < 300
    assert counts == sorted(counts)
    assert counts[-1] == 300
    assert errors(collector) == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max-ranks", "0"),
        ("max-ranks", "lots"),
        ("stale-after", "soon"),
        ("stale-after", "-5m"),
        ("max-files", "0"),
        ("max-read-bytes", "1k"),
    ],
)
def test_invalid_options_are_refused_naming_the_flag(tmp_path: Path, option: str, value: str) -> None:
    with pytest.raises(ValueError, match=option):
        make(tmp_path, **{option: value})


def test_durations() -> None:
    assert parse_duration("1h") == 3600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration("90") == 90
    for bad in ("", "h", "1x", "1h 2m", "0s", "-1h", "inf"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_default_spool_dir_comes_from_steptrace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(steprecord.ENV_SPOOL_DIR, str(tmp_path))
    assert StepsCollector(CollectorContext()).spool_dir == tmp_path
    monkeypatch.delenv(steprecord.ENV_SPOOL_DIR)
    assert str(StepsCollector(CollectorContext()).spool_dir) == steprecord.DEFAULT_SPOOL_DIR


# --- live writers -----------------------------------------------------------------------------


def test_real_writers_appending_while_the_collector_scrapes(tmp_path: Path) -> None:
    """Eight steptrace writers in threads, scraped concurrently: every record counted once."""
    spool = tmp_path / "spool"
    collector = StepsCollector(CollectorContext(options={"spool-dir": str(spool)}))
    steps_per_rank = 150
    done = threading.Event()

    def train(rank: int) -> None:
        with steptrace.StepTracer(spool, job="live", rank=rank, node="n1", handoff_timeout=1.0) as tracer:
            for _ in range(steps_per_rank):
                with tracer.step(tokens=10, samples=1) as step:
                    step.add_phase("forward", 0.001)

    writers = [threading.Thread(target=train, args=(rank,)) for rank in range(8)]
    for w in writers:
        w.start()
    seen: list[float] = []

    def scraper() -> None:
        while not done.is_set():
            s = scrape(collector)
            seen.append(sum(v for (n, _), v in s.items() if n == "fmdiag_step_duration_seconds_count"))

    reader = threading.Thread(target=scraper)
    reader.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    s = scrape(collector)
    for rank in range(8):
        labels = {"training_job": "live", "rank": str(rank)}
        assert get(s, "fmdiag_step_duration_seconds_count", **labels) == steps_per_rank
        assert get(s, "fmdiag_step_last", **labels) == steps_per_rank - 1
        assert get(s, "fmdiag_step_tokens_total", **labels) == 10 * steps_per_rank
        assert get(s, "fmdiag_step_phase_seconds_total", **labels, phase="forward") == pytest.approx(
            0.001 * steps_per_rank
        )
    assert seen == sorted(seen)  # counters never went backwards while writers appended
    assert collector.ctx.errors.count("steps") == 0


def test_a_garbage_file_is_counted_in_full_but_cannot_flood_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    append(tmp_path / "junk.jsonl", b"".join(b"garbage %d\n" % i for i in range(100)) + record())
    collector = make(tmp_path)
    with caplog.at_level("WARNING", logger="fmdiag.exporter"):
        s = scrape(collector)
    assert errors(collector) == 100
    assert get(s, "fmdiag_step_duration_seconds_count", training_job="job1", rank="0") == 1
    logged = [r.getMessage() for r in caplog.records if "junk.jsonl" in r.getMessage()]
    assert 1 <= len(logged) <= 6
    assert any("junk.jsonl:1:" in m for m in logged)


def test_a_new_writer_process_is_told_apart_by_pid_even_when_it_drops_more(tmp_path: Path) -> None:
    """``dropped`` restarts at 0 in each writer process. A restarted writer that has already
    dropped more than the previous one must still add to the counter, not replace it."""
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=0, pid=100, dropped=2) + record(step=1, pid=100, dropped=5))
    collector = make(tmp_path)
    assert get(scrape(collector), "fmdiag_step_records_dropped_total", training_job="job1", rank="0") == 5
    append(path, record(step=0, pid=200, dropped=7))  # the rank restarted and dropped 7 of its own
    assert get(scrape(collector), "fmdiag_step_records_dropped_total", training_job="job1", rank="0") == 12


def test_last_step_follows_file_order_when_the_wall_clock_steps_back(tmp_path: Path) -> None:
    """start_ns is wall-clock: after an NTP step backwards, a newer step can end 'earlier'.
    Within one file, the later line is the later step (docs/formats.md: the later record wins)."""
    path = tmp_path / "job1.rank00000.jsonl"
    append(path, record(step=1, end_s=NOW - 10) + record(step=2, end_s=NOW - 40))
    s = scrape(make(tmp_path))
    assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 2


def test_a_record_with_a_huge_integer_is_one_bad_line_not_a_broken_collector(tmp_path: Path) -> None:
    path = tmp_path / "job1.rank00000.jsonl"
    bad = dict(json.loads(record(step=1)))
    bad["step"] = 10**400
    append(path, record(step=0) + json.dumps(bad).encode() + b"\n")
    collector = make(tmp_path)
    for _ in range(2):  # the series it would have updated must not poison later scrapes
        s = scrape(collector)
        assert get(s, "fmdiag_step_last", training_job="job1", rank="0") == 0
    assert errors(collector) == 1


def test_a_file_of_only_stale_records_is_named_in_the_log_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Records older than stale-after are skipped on purpose, but never silently."""
    path = tmp_path / "done.rank00000.jsonl"
    append(path, record(job="done", end_s=NOW - 7200) + record(job="done", step=1, end_s=NOW - 7100))
    collector = make(tmp_path)
    with caplog.at_level("INFO", logger="fmdiag.exporter"):
        assert pairs(scrape(collector)) == set()
        append(path, record(job="done", step=2, end_s=NOW - 7000))
        scrape(collector)
    lines = [r.getMessage() for r in caplog.records if "stale-after" in r.getMessage()]
    assert lines == [
        f"steps: {path}: 2 records not exported: their steps ended more than "
        "--collector.steps.stale-after (3600s) ago"
    ]
