"""Step records: merged frame, restarts, gaps, clock offsets, spread across ranks; mutated files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdiag import steprecord
from fmdiag.analyzers import spread, step_breakdown, steps_reader

T0 = 1_764_000_000_000_000_000


def record(
    rank: int, step: int, node: str, *, dur_s: float = 1.0, offset_s: float = 0.0, **extra: object
) -> str:
    start = T0 + int(step * 1e9) + int(offset_s * 1e9)
    end = start + int(dur_s * 1e9)
    doc = {"v": 1, "job": "j1", "rank": rank, "node": node, "step": step, "start_ns": start, "end_ns": end}
    doc.update(extra)
    return json.dumps(doc)


def write(dir_: Path, rank: int, lines: list[str], tail: str = "") -> Path:
    p = dir_ / steprecord.file_name("j1", rank)
    p.write_text("".join(line + "\n" for line in lines) + tail)
    return p


def load(dir_: Path) -> tuple[pd.DataFrame, steps_reader.StepsCoverage]:
    return steps_reader.merge([steps_reader.read_file(p) for p in steprecord.step_files(dir_)])


def test_restart_later_record_wins_and_gaps_are_reported(tmp_path: Path) -> None:
    write(tmp_path, 0, [record(0, s, "n0", forward=0.5) for s in range(5)])
    # rank 1 restarted after step 2: steps 2 and 3 written twice, the later ones slower
    lines = [record(1, s, "n0") for s in range(4)] + [record(1, s, "n0", dur_s=2.0) for s in (2, 3, 4)]
    write(tmp_path, 1, lines)
    write(tmp_path, 3, [record(3, s, "n1") for s in (0, 1, 4)], tail='{"v":1,"job":"j1"')  # rank 2 absent
    frame, cov = load(tmp_path)
    assert list(frame.columns) == list(steps_reader.COLUMNS)
    assert len(frame) == 5 + 5 + 3 and cov.records == 13
    assert cov.superseded == 2
    assert frame.set_index(["rank", "step"]).loc[(1, 3), "duration_s"] == 2.0
    assert cov.ranks == [0, 1, 3] and cov.missing_ranks == [2]
    assert cov.missing_steps == {3: [[2, 3]]}
    assert cov.steps_missing_everywhere == []
    assert cov.partial_tails == [str(tmp_path / steprecord.file_name("j1", 3))]
    assert frame["forward"].isna().sum() == 8  # absent phases are NaN, not 0
    assert frame["local_rank"].eq(-1).all()


def test_bad_lines_are_named_and_good_lines_kept(tmp_path: Path) -> None:
    p = write(tmp_path, 0, [record(0, 0, "n0"), '{"v":1,"job":"j1","rank":0}', record(0, 1, "n0")])
    part = steps_reader.read_file(p)
    assert part.rows == 2
    assert part.errors == [f"{p}:2: field 'node' missing"]


def test_clock_offsets_between_nodes_are_taken_out(tmp_path: Path) -> None:
    for rank in range(4):
        node, offset = ("n0", 0.0) if rank < 2 else ("n1", 2.5)  # n1's clock runs 2.5 s ahead
        write(tmp_path, rank, [record(rank, s, node, offset_s=offset, dur_s=1.0) for s in range(6)])
    frame, _ = load(tmp_path)
    offsets = step_breakdown.clock_offsets(frame)
    assert offsets["n1"] - offsets["n0"] == pytest.approx(2.5)
    b = step_breakdown.breakdown(frame)
    per_step = b.groupby("step")["aligned_end_ns"].agg(["min", "max"])
    assert ((per_step["max"] - per_step["min"]) == 0).all()
    assert (b["aligned_end_ns"] - b["aligned_start_ns"] == 1_000_000_000).all()


def test_breakdown_unattributed_and_spread_name_the_slow_rank(tmp_path: Path) -> None:
    for rank in range(4):
        dur = 1.5 if rank == 2 else 1.0
        write(tmp_path, rank, [record(rank, s, "n0", dur_s=dur, forward=0.3, backward=0.4) for s in range(3)])
    frame, _ = load(tmp_path)
    b = step_breakdown.breakdown(frame)
    assert b["unattributed_s"].round(9).tolist() == [0.3 if r != 2 else 0.8 for r in b["rank"]]
    sp = pd.DataFrame(spread.spread(b, step_breakdown.SPREAD_VALUES))
    d = sp[sp["value"] == "duration_s"]
    assert (d["max_rank"] == 2).all() and (d["min_rank"] == 0).all() and (d["ranks"] == 4).all()
    assert d["median"].tolist() == [1.0, 1.0, 1.0]
    assert set(sp["value"]) == {"duration_s", "forward", "backward", "unattributed_s"}  # no NaN-only phases


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_spread_equals_a_groupby(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 40))
    frame = pd.DataFrame(
        {
            "step": data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)),
            "rank": data.draw(st.lists(st.integers(0, 9), min_size=n, max_size=n, unique=False)),
            "x": data.draw(st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, np.nan]), min_size=n, max_size=n)),
        }
    )
    got = pd.DataFrame(spread.spread(frame, ["x"])).set_index("step")
    want = frame.dropna().groupby("step")["x"].agg(["min", "median", "max", "count"])
    assert list(got.index) == list(want.index)
    for step, row in want.iterrows():
        assert got.loc[step, "min"] == row["min"] and got.loc[step, "max"] == row["max"]
        assert got.loc[step, "median"] == pytest.approx(row["median"])
        assert got.loc[step, "ranks"] == row["count"]
        sub = frame.dropna()[frame.dropna()["step"] == step]
        assert got.loc[step, "max_rank"] == sub[sub["x"] == row["max"]]["rank"].min()
        assert got.loc[step, "min_rank"] == sub[sub["x"] == row["min"]]["rank"].min()


_GOOD = "".join(record(0, s, "n0", forward=0.1) + "\n" for s in range(4)).encode()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, len(_GOOD)),
    flips=st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), max_size=3),
)
def test_mutated_step_files_keep_good_lines_and_name_bad_ones(
    tmp_path: Path, cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(_GOOD[:cut])
    for pos, value in flips:
        if pos < len(data):
            data[pos] = value
    p = tmp_path / steprecord.file_name("j1", 0)
    p.write_bytes(bytes(data))
    if steprecord.binary_content(bytes(data)) is not None:
        with pytest.raises(steps_reader.BinaryStepFileError, match=rf"^{p}: binary file: "):
            steps_reader.read_file(p)
        return
    part = steps_reader.read_file(p)
    complete_lines = [ln for ln in bytes(data).split(b"\n")[:-1] if ln.strip()]
    assert part.rows + len(part.errors) + part.superseded == len(complete_lines)
    assert all(e.startswith(f"{p}:") for e in part.errors)
    frame, _cov = steps_reader.merge([part])
    assert len(frame) == part.rows


def test_a_rank_in_two_files_later_file_wins(tmp_path: Path) -> None:
    write(tmp_path, 0, [record(0, s, "n0") for s in range(3)])
    (tmp_path / "zz-restarted.jsonl").write_text(record(0, 2, "n0", dur_s=3.0) + "\n")
    frame, cov = load(tmp_path)
    assert len(frame) == 3 and cov.superseded == 1
    assert frame.set_index("step").loc[2, "duration_s"] == 3.0


def test_implausible_records_are_kept_and_counted(tmp_path: Path) -> None:
    write(tmp_path, 0, [record(0, 0, "n0", dur_s=1.0, forward=5.0), record(0, 1, "n0", forward=0.2)])
    frame, cov = load(tmp_path)
    assert len(frame) == 2 and cov.implausible == 1
    assert "rank 0 step 0: field 'forward'" in cov.implausible_examples[0]


def test_a_binary_file_is_named_with_its_offset(tmp_path: Path) -> None:
    p = tmp_path / steprecord.file_name("j1", 0)
    p.write_bytes(record(0, 0, "n0").encode() + b"\n\x00\x01junk\n")
    with pytest.raises(steps_reader.BinaryStepFileError, match=rf"^{p}: binary file: NUL byte at offset \d+"):
        steps_reader.read_file(p)
