"""The step-record reader's fast path: rows instead of objects, msgspec instead of json, where
installed. Whatever path a line takes, the result (record or error message) must be the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag import steprecord

GOOD: dict[str, Any] = {
    "v": 1,
    "job": "j",
    "rank": 3,
    "node": "n1",
    "step": 7,
    "start_ns": 1_700_000_000_000_000_000,
    "end_ns": 1_700_000_001_500_000_000,
    "local_rank": 3,
    "forward": 0.5,
    "backward": 1,
    "tokens": 4096,
    "gpu_time": 1,
}
FIELDS = [*GOOD, *steprecord.PHASES, "dropped", "samples", "gpu_time", "pid", "other"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**64),
    st.just(2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(-0.0),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return ("ok", repr(fn(*args)))
    except steprecord.StepRecordError as exc:
        return ("error", str(exc), exc.field_name, exc.line, exc.source)


def with_json(text: str | bytes) -> tuple[Any, ...]:
    """What the standard library alone makes of a line: the reference for the fast decoder."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return ("bad json",)
    return outcome(steprecord.validate, obj)


def lines() -> st.SearchStrategy[str | bytes]:
    docs = st.dictionaries(st.sampled_from(FIELDS), VALUES).map(lambda d: json.dumps({**GOOD, **d}))
    return st.one_of(
        docs,
        docs.map(lambda t: t.encode()),
        docs.map(lambda t: t.replace("1.0", "NaN").replace("0.5", "1e400")),  # json-only extensions
        docs.map(lambda t: "\ufeff" + t),  # a BOM: json accepts it in bytes only
        docs.map(lambda t: ("\ufeff" + t).encode()),
        st.just(b'{"job": "\xed\xa0\x80"}'),  # a lone surrogate encoded in UTF-8: json's surrogatepass
        st.binary(max_size=120),
        st.text(max_size=120),
    )


@given(lines())
def test_the_fast_decoder_accepts_and_refuses_exactly_what_json_does(text: str | bytes) -> None:
    got = outcome(steprecord.parse_line, text)
    want = with_json(text)
    if want == ("bad json",):
        assert got[0] == "error" and got[1].startswith("line 0: not valid JSON: ")
    else:
        assert got == want


@given(lines())
def test_error_messages_do_not_depend_on_msgspec(text: str | bytes) -> None:
    fast = outcome(steprecord._parse, text, "f", 2, steprecord._decoder())
    plain = outcome(steprecord._parse, text, "f", 2, json.loads)
    assert fast == plain


@given(st.dictionaries(st.sampled_from(FIELDS), VALUES), st.booleans())
def test_a_row_is_the_record(changes: dict[str, Any], from_good: bool) -> None:
    obj = {**GOOD, **changes} if from_good else changes
    record = outcome(lambda o: steprecord.validate(o, source="f", line=3), obj)
    row = outcome(lambda o: steprecord.from_row(steprecord.validate_row(o, source="f", line=3)), obj)
    assert row == record
    if record[0] == "ok":
        values = steprecord.validate_row(obj)
        assert len(values) == len(steprecord.ROW_FIELDS)
        rec = steprecord.validate(obj)
        for name, value in zip(steprecord.ROW_FIELDS, values, strict=True):
            want = rec.phases.get(name) if name in steprecord.PHASES else getattr(rec, name)
            assert value == want and type(value) is type(want), name


def test_read_rows_is_read_file(tmp_path: Path) -> None:
    lines = [json.dumps({**GOOD, "step": s}) for s in range(3)]
    lines.insert(1, '{"job": "j", "rank": 3')
    lines.insert(2, "   ")
    path = tmp_path / "j.rank00003.jsonl"
    path.write_text("\n".join(lines) + "\n" + json.dumps(GOOD)[:20])
    rows = steprecord.read_rows(path.read_bytes(), source=str(path))
    records = steprecord.read_file(path)
    assert [steprecord.from_row(r) for r in rows.rows] == records.records
    assert (
        [str(e) for e in rows.errors]
        == [str(e) for e in records.errors]
        == [f"{path}:2: not valid JSON: Expecting ',' delimiter: line 1 column 23 (char 22)"]
    )
    assert rows.partial_tail and records.partial_tail


@pytest.mark.parametrize("seconds", [1.5, 1.5 * (1 + 1e-9) + 1e-9, 1.5 * (1 + 1e-9) + 2e-9])
def test_longest_phase_is_the_warnings_threshold(seconds: float) -> None:
    record = steprecord.validate({**GOOD, "forward": seconds})
    assert bool(steprecord.warnings(record)) == (seconds > steprecord.longest_phase(record.duration_s))
