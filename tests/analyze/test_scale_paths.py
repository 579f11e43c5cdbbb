"""The paths that keep a 4,096-rank analysis in its time and memory give what the plain ones give.

Each fast path has an exact, slower twin it must match value for value (issue 18, item 9): the
step-file reader checked a field at a time against ``steprecord``'s record-at-a-time reader, the
metrics reader read a row group at a time against a whole-file read, the JSON document written
in slices against one written whole, and the merge that moves the files' columns into the frame
against the one that copies them.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdiag import steprecord
from fmdiag.analyzers import pipeline
from fmdiag.analyzers.readers import metrics_reader, steps_reader
from fmdiag.analyzers.reports import report_json

T0 = 1_764_000_000_000_000_000
SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _record(rank: int, step: int, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "job": "j1",
        "rank": rank,
        "node": "n0",
        "step": step,
        "start_ns": T0 + step * 10**9,
        "end_ns": T0 + step * 10**9 + 900_000_000,
        "local_rank": rank,
        "forward": 0.25,
        "backward": 0.5,
        "tokens": 8192,
    }
    doc.update(extra)
    return doc


#: Values that pass or fail some rule, or pass one path's decoder and not the other's.
_ODD = st.sampled_from(
    [None, True, False, 0, -1, 1, 2, 2**63 - 1, 2**63, 2**64, 0.0, -0.0, 1.5, -1.5, "x", "", [1], {}]
)
_FIELDS = ["v", "job", "rank", "node", "step", "start_ns", "end_ns", *steprecord.OPTIONAL_NUMBERS]
_FIELDS += steprecord.PHASES


@st.composite
def _lines(draw: st.DrawFn) -> str:
    lines = []
    for i in range(draw(st.integers(1, 6))):
        doc = _record(draw(st.sampled_from([0, 1])), draw(st.integers(0, 3)) + i)
        for _ in range(draw(st.integers(0, 2))):
            name = draw(st.sampled_from(_FIELDS))
            if draw(st.booleans()):
                doc[name] = draw(_ODD)
            else:
                doc.pop(name, None)
        text = json.dumps(doc)
        text = draw(
            st.sampled_from(
                [
                    text,
                    text,
                    " " + text + "\r",
                    text.replace("}", ', "extra": [1, {"a": null}]}'),
                    text.replace("{", '{"rank": 7, ', 1),  # a repeated key: the last wins
                    text.replace("}", ', "x": NaN}'),  # json reads it, msgspec does not
                    text.replace("}", ', "x": 1e400}'),
                    "",
                    "[1, 2]",
                    text[:-3],
                ]
            )
        )
        lines.append(text)
    tail = draw(st.sampled_from(["\n", "\n", ""]))
    return "\n".join(lines) + tail


def _slow(path: Path, monkeypatch: pytest.MonkeyPatch) -> steps_reader.FileSteps:
    with monkeypatch.context() as m:
        m.setattr(steps_reader, "_fast_fields", lambda data: None)
        return steps_reader.read_file(path)


def _same_steps(a: steps_reader.FileSteps, b: steps_reader.FileSteps) -> None:
    assert dataclasses.replace(a, columns={}) == dataclasses.replace(b, columns={})
    assert list(a.columns) == list(b.columns)
    for name, x in a.columns.items():
        y = b.columns[name]
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
        if x.dtype.kind == "f":
            np.testing.assert_array_equal(np.signbit(x), np.signbit(y), err_msg=name)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_lines())
def test_step_files_read_a_field_at_a_time_equal_the_record_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(text)
    _same_steps(steps_reader.read_file(path), _slow(path, monkeypatch))


def test_plain_step_files_take_the_fast_path_with_the_same_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = [_record(3, s, data_wait=0, gpu_time=2, dropped=None, pp_rank=1) for s in range(5)]
    docs[2]["forward"] = 5.0  # implausible (longer than the step): counted, with an example
    docs.append(_record(3, 1))  # a restart: the later record wins
    path = tmp_path / "f.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    assert steps_reader._fast_fields(path.read_bytes()) is not None
    fast = steps_reader.read_file(path)
    _same_steps(fast, _slow(path, monkeypatch))
    assert fast.superseded == 1 and fast.implausible == 1 and fast.implausible_examples
    assert fast.columns["data_wait"].dtype == np.float64 and fast.columns["gpu_time"][0] == 2.0


def test_merge_that_releases_the_parts_gives_the_same_frame(tmp_path: Path) -> None:
    paths = []
    for rank in range(3):
        paths.append(tmp_path / f"r{rank}.jsonl")
        lines = [json.dumps(_record(rank, s, node=f"n{rank // 2}")) for s in range(4)]
        paths[-1].write_text("\n".join(lines) + "\n")
    want, want_cov = steps_reader.merge([steps_reader.read_file(p) for p in paths])
    parts = [steps_reader.read_file(p) for p in paths]
    got, cov = steps_reader.merge(parts, release=True)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert cov == want_cov
    assert all(set(p.columns) <= {"step"} for p in parts)


def _metrics_file(path: Path, dictionary: bool) -> None:
    """A long-form metrics file of several row groups whose dictionaries differ, one of them
    holding none of the metrics kept."""
    pieces = []
    for group, metrics in enumerate((["a", "b"], ["c"], ["b", "d", "a"], ["a"])):
        rows = 6
        cols: dict[str, Any] = {
            "timestamp": [1000.0 + 15 * (group * rows + i) for i in range(rows)],
            "metric": [metrics[i % len(metrics)] for i in range(rows)],
            "value": [float(i) for i in range(rows)],
            "instance": [f"node-{(group + i) % 3}" for i in range(rows)],
            "gpu": [str(i % 2) for i in range(rows)],
            "mode": ["" for _ in range(rows)],
        }
        table = pa.table(cols)
        if dictionary:
            table = pa.table(
                {
                    name: pc_dictionary(column) if name not in ("timestamp", "value") else column
                    for name, column in zip(table.column_names, table.columns, strict=True)
                }
            )
        pieces.append(table)
    whole = pa.concat_tables(pieces)
    with pq.ParquetWriter(path, whole.schema) as writer:
        for piece in pieces:
            writer.write_table(piece)


def pc_dictionary(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.dictionary_encode(column)


@pytest.mark.parametrize("dictionary", [True, False])
@pytest.mark.parametrize("keep", [{"a", "d"}, {"c"}, set()])
def test_metrics_read_a_row_group_at_a_time_equal_a_whole_file_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dictionary: bool, keep: set[str]
) -> None:
    path = tmp_path / "gpu.parquet"
    _metrics_file(path, dictionary)
    assert pq.ParquetFile(path).num_row_groups == 4
    monkeypatch.setattr(metrics_reader.dumpformat, "check_metrics_schema", lambda *a: None)
    frame, summary = metrics_reader.read_used(path, "gpu", keep)
    table = pq.read_table(path).unify_dictionaries()
    want = table.filter(metrics_reader._is_in(table["metric"], keep)).to_pandas()
    pd.testing.assert_frame_equal(frame, want, check_exact=True, check_categorical=True)
    for name in want.columns:
        if isinstance(want[name].dtype, pd.CategoricalDtype):
            assert list(frame[name].cat.categories) == list(want[name].cat.categories)
    assert summary == metrics_reader.summarize_table("gpu", table)
    assert summary == metrics_reader.summarize("gpu", metrics_reader.read_file(path, "gpu"))


def test_the_json_document_written_in_slices_is_the_document_written_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    analysis = pipeline.run(SAMPLES / "straggler-thermal", pipeline.Options())
    monkeypatch.setattr(report_json, "CHUNK_ROWS", 10**12)
    whole = report_json.dumps(analysis)
    monkeypatch.setattr(report_json, "CHUNK_ROWS", 7)
    out = io.StringIO()
    report_json.write(analysis, out)
    assert out.getvalue() == whole
    doc = json.loads(whole)
    assert len(doc["steps"]["per_rank"]["rows"]) == len(analysis.step_breakdown) > 7
