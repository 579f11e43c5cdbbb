"""The streaming trace parser: same events as json.loads, whatever the window size; clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from analyze.helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdiag.analyzers.errors import InputError
from fmdiag.analyzers.readers.kineto_json import TraceStream

FIELDS = ("ph", "cat", "name", "pid", "tid", "ts", "dur")
ARGS = ("correlation", "stream", "device")


def _kept(e: dict[str, object]) -> tuple[object, ...]:
    """What the reader keeps of a json.loads event: the fields of kineto_json.Event."""
    args = e.get("args")
    kept = tuple(args.get(k) for k in ARGS) if isinstance(args, dict) else None
    return (*(e.get(k) for k in FIELDS), kept)


def _events(path: Path, chunk: int) -> tuple[list[tuple[object, ...]], dict[str, object]]:
    stream = TraceStream(path, chunk_bytes=chunk)
    events = [
        (
            *(getattr(e, k) for k in FIELDS),
            None if e.args is None else tuple(getattr(e.args, k) for k in ARGS),
        )
        for e in stream
    ]
    assert stream.events_seen == len(events)
    return events, stream.meta


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])  # the exact path; the fast one with big windows
def test_events_and_meta_equal_a_whole_file_parse_for_any_window(chunk: int) -> None:
    path = FIXTURES / "handmade_new.json"
    whole = json.loads(path.read_text())
    events, meta = _events(path, chunk)
    assert events == [_kept(e) for e in whole["traceEvents"]]
    assert meta == {k: v for k, v in whole.items() if k != "traceEvents"}
    assert meta["traceName"] == "/tmp/traces/worker5.pt.trace.json"  # a key after the events


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    data = (FIXTURES / "handmade_new.json").read_bytes()
    odd = tmp_path / "trace.json"  # gzip bytes under a plain name
    odd.write_bytes(gzip.compress(data))
    assert _events(odd, 100)[0] == [_kept(e) for e in json.loads(data)["traceEvents"]]


def test_compact_json_and_empty_event_list(tmp_path: Path) -> None:
    p = tmp_path / "t.json"
    p.write_text('{"traceEvents":[],"distributedInfo":{"rank":3}}')
    events, meta = _events(p, 4)
    assert events == [] and meta == {"distributedInfo": {"rank": 3}}


@pytest.mark.parametrize(
    ("text", "offset", "words"),
    [
        ('{"traceEvents": [{"ph": "X"}, ', 30, "expected a JSON value"),
        ('{"traceEvents": [{"ph": "X"} {"ph": "X"}]}', 29, "',' or ']' between events"),
        ('[{"ph": "X"}]', 0, "a JSON object"),
        ('{"traceEvents": {"a": 1}}', 16, "traceEvents must be a list"),
        ('{"traceEvents": [1]}', 17, "event 0 is a int"),
        ('{"traceEvents": [{"args": 3}]}', 17, "event 0: Expected `object | null`"),
        ('{"traceEvents": []} trailing', 20, "unexpected data after"),
        ('{"traceEvents": [{"ph": "X", "ts": 1.5e}]}', 38, "invalid JSON"),
        ("", 0, "found end of file"),
    ],
)
def test_bad_input_names_file_and_offset(tmp_path: Path, text: str, offset: int, words: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(InputError) as err:
        _events(p, 5)
    assert str(err.value).startswith(f"{p}:offset {offset}: "), str(err.value)
    assert words in str(err.value)


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path: Path) -> None:
    data = gzip.compress((FIXTURES / "handmade_new.json").read_bytes())
    p = tmp_path / "rank0.json.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"^{p}:offset \d+: "):
        _events(p, 256)


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        _events(tmp_path / "nope.json", 10)
    p = tmp_path / "b.json"
    p.write_bytes(b'{"traceEvents": ["\xff\xfe"]}')
    with pytest.raises(InputError, match="not UTF-8"):
        _events(p, 10)


_BASE = (FIXTURES / "handmade_new.json").read_bytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.integers(0, len(_BASE)),
    flips=st.lists(st.tuples(st.integers(0, len(_BASE) - 1), st.integers(0, 255)), max_size=4),
    chunk=st.integers(1, 300),
)
def test_mutated_traces_parse_or_fail_cleanly(
    tmp_path_factory: pytest.TempPathFactory, cut: int, flips: list[tuple[int, int]], chunk: int
) -> None:
    data = bytearray(_BASE[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    p = tmp_path_factory.mktemp("mut") / "rank1.json"
    p.write_bytes(bytes(data))
    try:
        expected = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError):
        expected = None
    try:
        events, _meta = _events(p, chunk)
    except InputError as exc:
        assert str(exc).startswith(str(p))
        # a document json.loads accepts is refused only when it is not trace-shaped
        if isinstance(expected, dict) and isinstance(expected.get("traceEvents"), list):
            assert not all(
                isinstance(e, dict) and isinstance(e.get("args", {}), dict | None)
                for e in expected["traceEvents"]
            )
        return
    assert isinstance(expected, dict)
    assert events == [_kept(e) for e in expected.get("traceEvents", [])]


def test_fast_path_and_exact_path_agree_on_a_large_trace(tmp_path: Path) -> None:
    """Windows of 1 MiB decode in batches; 1 KiB windows mostly go one event at a time."""
    from analyze import kineto_builder as kb

    p = kb.write(tmp_path / "rank0.json.gz", kb.build(kb.Options(steps=6, layers=20)))
    big, meta_big = _events(p, 1 << 20)
    small, meta_small = _events(p, 1 << 10)
    assert big == small and meta_big == meta_small
    doc = json.loads(gzip.decompress(p.read_bytes()))
    assert big == [_kept(e) for e in doc["traceEvents"]]


def test_a_brace_comma_brace_inside_a_string_is_not_a_boundary(tmp_path: Path) -> None:
    events = [{"ph": "X", "name": f"user}}, {{tricky {i}", "ts": i, "dur": 1} for i in range(3000)]
    p = tmp_path / "rank0.json"
    p.write_text(json.dumps({"traceEvents": events}))
    got, _ = _events(p, 1 << 20)
    assert got == [_kept(e) for e in events]
