"""The tail/split path: arbitrary chunking must yield exactly the complete lines, once."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.exporters.spool_tail import LineBuffer, SpoolTail
from fmdiag.steprecord import StepRecordError, parse_line


def test_partial_line_is_held_until_its_newline() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b'{"a": 1}\n{"b"') == [(1, b'{"a": 1}')]
    assert buf.pending == 4
    assert buf.feed(b": 2") == []
    assert buf.feed(b"}\n") == [(2, b'{"b": 2}')]
    assert buf.pending == 0


def test_blank_lines_are_numbered_but_not_returned() -> None:
    buf = LineBuffer(100)
    assert buf.feed(b"a\n\n  \r\nb\r\n") == [(1, b"a"), (4, b"b")]


def test_overlong_line_is_reported_once_without_buffering_it() -> None:
    buf = LineBuffer(10)
    assert buf.feed(b"0123456789abc") == []
    assert buf.pending == 0  # dropped as it arrived
    assert buf.feed(b"def" * 100) == []
    assert buf.feed(b"\nok\n") == [(1, None), (2, b"ok")]
    assert buf.feed(b"0123456789\n") == [(3, b"0123456789")]  # exactly the limit is fine


def test_joining_mid_line_skips_the_fragment_silently() -> None:
    buf = LineBuffer(100, skip_first=True)
    assert buf.feed(b'tail of a record"}\n{"x": 1}\n') == [(1, b'{"x": 1}')]


def test_invalid_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        LineBuffer(0)
    with pytest.raises(ValueError):
        SpoolTail(Path("."), max_files=0)


# --- property: random records, garbage and blank lines, cut into random chunks -------------

_RECORD = st.builds(
    lambda job, rank, step, start, dur: {
        "v": 1,
        "job": job,
        "rank": rank,
        "node": "n1",
        "step": step,
        "start_ns": start,
        "end_ns": start + dur,
    },
    st.text(alphabet="abcxyz-_.", min_size=1, max_size=8),
    st.integers(min_value=0, max_value=4096),
    st.integers(min_value=0, max_value=10**9),
    st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=0, max_value=10**12),
)
_GARBAGE = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b and b.strip() != b""),
    st.just(b'{"job": "j", "rank": -1}'),
    st.just(b'{"v": 99, "job": "j", "rank": 1, "node": "n", "step": 1, "start_ns": 1, "end_ns": 2}'),
    st.just(b"[1, 2, 3]"),
    st.just(b'{"job": "j", "rank": 1, "node": "n", "step": 1, "start_ns": 5, "end_ns": 4}'),
)
_ITEM = st.one_of(
    _RECORD.map(lambda r: ("good", json.dumps(r).encode(), r)),
    _GARBAGE.map(lambda g: ("bad", g, None)),
    st.sampled_from([b"", b"   ", b"\t"]).map(lambda b: ("blank", b, None)),
)


def _stream(items: list[tuple[str, bytes, object]], tail: bytes) -> bytes:
    return b"".join(line + b"\n" for _, line, _ in items) + tail


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _parse_all(lines: list[tuple[int, bytes | None]]) -> tuple[list[dict[str, object]], int]:
    good, bad = [], 0
    for number, line in lines:
        try:
            if line is None:
                raise StepRecordError("too long", line=number)
            rec = parse_line(line, line=number)
        except StepRecordError:
            bad += 1
            continue
        good.append(
            {
                "v": rec.v,
                "job": rec.job,
                "rank": rec.rank,
                "node": rec.node,
                "step": rec.step,
                "start_ns": rec.start_ns,
                "end_ns": rec.end_ns,
            }
        )
    return good, bad


@given(
    st.lists(_ITEM, max_size=30),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=20),
)
def test_any_chunking_yields_exactly_the_complete_lines(
    items: list[tuple[str, bytes, object]], tail: bytes, cuts: list[int]
) -> None:
    data = _stream(items, tail)
    buf = LineBuffer(64 * 1024)
    lines: list[tuple[int, bytes | None]] = []
    for chunk in _cut(data, cuts):
        lines += buf.feed(chunk)
    good, bad = _parse_all(lines)
    assert good == [r for kind, _, r in items if kind == "good"]
    assert bad == sum(1 for kind, _, _ in items if kind == "bad")
    # Numbering counts every newline, so errors point at the right line of the file.
    assert [n for n, _ in lines] == [i + 1 for i, (kind, _, _) in enumerate(items) if kind != "blank"]
    assert buf.pending == len(tail)  # the unterminated last line is neither lost nor returned


@settings(max_examples=60)
@given(
    st.lists(_ITEM, max_size=25),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=8),
    st.integers(min_value=16, max_value=400),
)
def test_file_appended_in_random_chunks_between_polls(
    items: list[tuple[str, bytes, object]], tail: bytes, cuts: list[int], budget: int
) -> None:
    """The same property through real files, a small read budget and a poll after each append."""
    data = _stream(items, tail)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.rank00000.jsonl"
        path.touch()
        tail_reader = SpoolTail(Path(tmp), read_budget=budget)
        lines: list[tuple[int, bytes | None]] = []

        def drain() -> None:
            while True:
                result = tail_reader.poll()
                assert result.errors == [] and result.vanished == []
                got = [ln for c in result.chunks for ln in c.lines]
                lines.extend(got)
                tailed = next(iter(tail_reader.files.values()))
                if tailed.offset == path.stat().st_size:
                    return

        drain()
        for chunk in _cut(data, cuts):
            with open(path, "ab") as f:
                f.write(chunk)
            drain()
    good, bad = _parse_all(lines)
    assert good == [r for kind, _, r in items if kind == "good"]
    assert bad == sum(1 for kind, _, _ in items if kind == "bad")


def test_rename_keeps_the_offset_and_truncation_restarts(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"1\n2\n")
    tail = SpoolTail(tmp_path)
    assert [ln for c in tail.poll().chunks for ln in c.lines] == [(1, b"1"), (2, b"2")]
    b = tmp_path / "sub" / "b.jsonl"
    b.parent.mkdir()
    a.rename(b)
    with open(b, "ab") as f:
        f.write(b"3\n")
    result = tail.poll()
    assert [(c.path, c.lines) for c in result.chunks] == [(b, [(3, b"3")])]
    assert result.vanished == []
    os.truncate(b, 0)
    with open(b, "ab") as f:
        f.write(b"x\n")
    result = tail.poll()
    assert [(c.restarted, c.lines) for c in result.chunks] == [(True, [(1, b"x")])]


def test_rewrite_in_place_past_the_old_offset_is_noticed(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"old-1\nold-2\n")
    tail = SpoolTail(tmp_path)
    tail.poll()
    # Truncated and refilled beyond the old size between two polls: the size alone cannot
    # tell, the bytes before the offset do.
    with open(a, "r+b") as f:
        f.truncate(0)
        f.write(b"new-1\nnew-2\nnew-3\n")
    result = tail.poll()
    assert [(c.restarted, c.lines) for c in result.chunks] == [
        (True, [(1, b"new-1"), (2, b"new-2"), (3, b"new-3")])
    ]


def test_replaced_file_is_a_new_file_and_the_old_one_vanishes(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"1\n")
    tail = SpoolTail(tmp_path)
    tail.poll()
    old_key = next(iter(tail.files))
    keep = tmp_path / "keep.txt"  # keeps the old inode alive so it cannot be reused at once
    a.rename(keep)
    a.write_bytes(b"fresh\n")
    result = tail.poll()
    assert result.vanished == [old_key]
    assert [c.lines for c in result.chunks] == [[(1, b"fresh")]]


def test_joining_a_long_file_reads_only_its_tail(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    a.write_bytes(b"".join(b"line-%04d\n" % i for i in range(1000)))  # 10 bytes a line
    tail = SpoolTail(tmp_path, read_budget=95)
    chunk = tail.poll().chunks[0]
    assert not chunk.numbered_from_start
    # 95 bytes back lands mid-line: that fragment is skipped, the next 9 lines are whole.
    assert [ln for _, ln in chunk.lines] == [b"line-%04d" % i for i in range(991, 1000)]
    tail = SpoolTail(tmp_path, read_budget=100)  # exactly on a line boundary: nothing skipped
    assert [ln for _, ln in tail.poll().chunks[0].lines] == [b"line-%04d" % i for i in range(990, 1000)]


def test_file_limit_refuses_extra_files_and_reports_each_once(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"{i}.jsonl").write_bytes(b"x\n")
    tail = SpoolTail(tmp_path, max_files=3)
    first = tail.poll()
    assert len(tail.files) == 3 and first.refused == 2 and len(first.errors) == 2
    second = tail.poll()
    assert second.refused == 2 and second.errors == []


def test_only_regular_jsonl_files_are_followed(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"a\n")
    (tmp_path / "notes.txt").write_bytes(b"n\n")
    (tmp_path / "a.jsonl.1").write_bytes(b"rotated\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jsonl"
    outside.write_bytes(b"secret\n")
    (tmp_path / "link.jsonl").symlink_to(outside)
    os.mkfifo(tmp_path / "pipe.jsonl")
    tail = SpoolTail(tmp_path)
    result = tail.poll()
    assert [c.lines for c in result.chunks] == [[(1, b"a")]]
    assert result.errors == []


def test_missing_spool_is_quiet_and_a_non_directory_is_reported_once(tmp_path: Path) -> None:
    tail = SpoolTail(tmp_path / "not-yet")
    assert tail.poll().errors == []
    (tmp_path / "file").write_text("x")
    tail = SpoolTail(tmp_path / "file")
    assert len(tail.poll().errors) == 1
    assert tail.poll().errors == []


@settings(max_examples=50)
@given(
    st.lists(_ITEM, max_size=25),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=6),
)
def test_collector_counts_exactly_the_valid_records_and_reports_the_bad(
    items: list[tuple[str, bytes, object]], tail: bytes, cuts: list[int]
) -> None:
    """End to end through StepsCollector: no exception, good records counted, bad ones reported."""
    from fmdiag.exporters.collector import CollectorContext, ErrorReporter
    from fmdiag.exporters.collectors.steps import StepsCollector

    data = _stream(items, tail)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = CollectorContext(
            options={"spool-dir": tmp, "stale-after": "1000000d", "max-ranks": "5000"}, errors=ErrorReporter()
        )
        collector = StepsCollector(ctx)
        collector.clock = lambda: 2**62 / 1e9
        path = Path(tmp) / "fuzz.rank00000.jsonl"
        for chunk in _cut(data, cuts):
            with open(path, "ab") as f:
                f.write(chunk)
            list(collector.collect())
        counts: dict[tuple[str, str], float] = {}
        for fam in collector.collect():
            for s in fam.samples:
                if s.name == "fmdiag_step_duration_seconds_count":
                    counts[(s.labels["training_job"], s.labels["rank"])] = s.value
    expected: dict[tuple[str, str], float] = {}
    for kind, _, rec in items:
        if kind == "good":
            assert isinstance(rec, dict)
            key = (rec["job"], str(rec["rank"]))
            expected[key] = expected.get(key, 0) + 1
    assert counts == expected
    assert ctx.errors.count("steps") == sum(1 for kind, _, _ in items if kind == "bad")
