"""The step-record reader: every good line kept, every bad one named by file, line and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.steprecord import (
    MAX_LINE_BYTES,
    PHASES,
    StepRecordError,
    parse_line,
    read_file,
    validate,
)

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
    "backward": 0.9,
    "tokens": 4096,
}


def test_a_good_record_parses_with_its_phases() -> None:
    record = parse_line(json.dumps(GOOD))
    assert (record.job, record.rank, record.node, record.step) == ("j", 3, "n1", 7)
    assert record.duration_s == pytest.approx(1.5)
    assert record.phases == {"forward": 0.5, "backward": 0.9}
    assert record.tokens == 4096 and record.local_rank == 3


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"job": None}, "job"),
        ({"job": ""}, "job"),
        ({"rank": "3"}, "rank"),
        ({"rank": True}, "rank"),
        ({"rank": -1}, "rank"),
        ({"step": 1.5}, "step"),
        ({"end_ns": 1}, "end_ns"),
        ({"forward": -0.1}, "forward"),
        ({"forward": "fast"}, "forward"),
        ({"tokens": 1.5}, "tokens"),
        ({"pp_rank": -1}, "pp_rank"),
        ({"dp_rank": "0"}, "dp_rank"),
        ({"ep_rank": 0.5}, "ep_rank"),
        ({"v": 99}, "v"),
        ({"v": 0}, "v"),
    ],
)
def test_bad_fields_are_named(change: dict[str, Any], field_name: str) -> None:
    obj = {**GOOD, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(StepRecordError) as info:
        validate(obj, source="steps/r3.jsonl", line=12)
    assert info.value.field_name == field_name
    assert str(info.value).startswith("steps/r3.jsonl:12: field")


def test_missing_required_field_says_missing() -> None:
    obj = dict(GOOD)
    del obj["start_ns"]
    with pytest.raises(StepRecordError, match="field 'start_ns' missing"):
        validate(obj)


def test_unknown_fields_are_allowed_for_forward_compatibility() -> None:
    assert parse_line(json.dumps({**GOOD, "new_field": [1, 2]})).step == 7


def test_oversized_lines_are_refused_before_parsing() -> None:
    with pytest.raises(StepRecordError, match="over the"):
        parse_line("x" * (MAX_LINE_BYTES + 1))


def test_read_file_keeps_good_lines_and_names_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "j.rank00003.jsonl"
    lines = [json.dumps({**GOOD, "step": s}) for s in range(3)]
    lines.insert(1, '{"job": "j", "rank": 3')  # a fragment left by a crash
    path.write_text("\n".join(lines) + "\n" + json.dumps({**GOOD, "step": 9})[:20])
    result = read_file(path)
    assert [r.step for r in result.records] == [0, 1, 2]
    assert len(result.errors) == 1
    assert result.errors[0].line == 2 and str(path) in str(result.errors[0])
    assert result.partial_tail


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@given(st.binary(max_size=300))
def test_garbage_bytes_give_a_clear_error_or_a_record(data: bytes) -> None:
    try:
        parse_line(data, source="f", line=1)
    except StepRecordError as exc:
        assert str(exc).startswith("f:1:")


@given(st.dictionaries(st.sampled_from([*GOOD, *PHASES, "dropped", "samples", "gpu_time"]), json_values))
def test_wrong_types_never_escape_as_other_exceptions(obj: dict[str, Any]) -> None:
    try:
        record = validate(obj)
    except StepRecordError:
        return
    assert record.end_ns >= record.start_ns and record.rank >= 0


@given(
    st.lists(st.sampled_from(["good", "garbage", "truncated", "blank"]), max_size=20),
    st.integers(0, 10),
)
def test_files_with_mixed_lines_keep_every_good_record(
    tmp_path_factory: pytest.TempPathFactory, kinds: list[str], cut: int
) -> None:
    path = tmp_path_factory.mktemp("h") / "f.jsonl"
    chunks, expected = [], []
    for i, kind in enumerate(kinds):
        line = json.dumps({**GOOD, "step": i})
        if kind == "good":
            expected.append(i)
        elif kind == "garbage":
            line = "\x00not json{"
        elif kind == "truncated":
            line = line[: cut + 5]
        else:
            line = "   "
        chunks.append(line + "\n")
    path.write_text("".join(chunks))
    result = read_file(path)
    assert [r.step for r in result.records] == expected
    assert len(result.errors) == sum(k in ("garbage", "truncated") for k in kinds)


@pytest.mark.parametrize("field_name", ["rank", "step", "start_ns", "end_ns", "tokens", "samples", "dropped"])
def test_integers_beyond_64_bits_are_named_not_left_to_overflow_later(field_name: str) -> None:
    """JSON integers are unbounded; one past int64 must be refused here, not raise an
    OverflowError in the exporter when it becomes a float sample (or a duration)."""
    huge = 10**400
    obj = {**GOOD, field_name: huge}
    if field_name == "start_ns":
        obj["end_ns"] = huge
    with pytest.raises(StepRecordError) as info:
        validate(obj)
    assert info.value.field_name == field_name


def test_every_accepted_record_has_a_finite_duration() -> None:
    record = parse_line(json.dumps({**GOOD, "start_ns": 0, "end_ns": 2**63 - 1}))
    assert record.duration_s > 0


_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=2**64),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
)


@given(st.dictionaries(st.sampled_from([*GOOD, *PHASES, "dropped", "samples", "gpu_time", "pid"]), _VALUE))
def test_out_of_range_values_are_bad_lines_not_crashes(changes: dict[str, Any]) -> None:
    """Huge integers (float() of one past 1e308 raises), NaN, infinities, bools: a clear error."""
    try:
        record = validate({**GOOD, **changes})
    except StepRecordError:
        return
    assert all(0 <= v < float("inf") for v in record.phases.values())
