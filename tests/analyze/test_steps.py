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
from fmdiag.analyzers.frames import spread, step_breakdown
from fmdiag.analyzers.readers import steps_reader

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


_VALUES = st.sampled_from([0.5, 1.0, 1.5, 2.0, 0.0, -0.0, 3.25, np.nan])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_spread_on_the_step_grid_equals_spread_by_sorting(data: st.DataObject) -> None:
    """The grid (one row per step, a sort per row) against one lexsort of all rows: bit for bit,
    ragged steps, duplicate ranks and NaN included (mixed signed zeros take the sorting path)."""
    n = data.draw(st.integers(1, 60))
    steps = np.array(data.draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)), dtype=np.int64)
    ranks = np.array(data.draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), dtype=np.int64)
    values = np.array(data.draw(st.lists(_VALUES, min_size=n, max_size=n)), dtype=np.float64)
    if data.draw(st.booleans()):  # a full grid in order: the reshaped, copy-free layout
        steps, ranks = np.repeat(np.arange(n), 3), np.tile(np.arange(3), n)
        values = np.repeat(values, 3)
    keep = ~np.isnan(values)
    if not keep.any():
        return
    want = spread._by_sorting("x", steps[keep], values[keep], ranks[keep])
    grid = spread._Grid.of(steps, ranks)
    assert grid is not None
    if not spread._mixed_zeros(values):
        got = grid.spread("x", values)
        for name in spread.COLUMNS:
            assert got[name].tolist() == want[name].tolist(), name
            if got[name].dtype.kind == "f":
                assert (np.signbit(got[name]) == np.signbit(want[name])).all(), name
    got_all = spread.spread({"step": steps, "rank": ranks, "x": values}, ["x"])
    for name in spread.COLUMNS:
        assert got_all[name].tolist() == want[name].tolist(), name


def test_spread_of_ragged_steps_sorts_instead_of_padding() -> None:
    steps = np.concatenate([np.zeros(5000, dtype=np.int64), np.arange(1, 5000)])
    assert spread._Grid.of(steps, np.arange(steps.size)) is None
    frame = {"step": steps, "rank": np.arange(steps.size), "x": np.ones(steps.size)}
    out = spread.spread(frame, ["x"])
    assert out["ranks"][0] == 5000 and len(out["step"]) == 5000


_PHASE_VALUES = st.sampled_from([None, 0.0, -0.0, 0.25, 0.5, 1, 2.5])


@st.composite
def step_files(draw: st.DrawFn) -> list[list[str]]:
    """Files of records with restarts, two jobs, ranks in two files, gaps and odd phases."""
    files = []
    for f in range(draw(st.integers(1, 5))):
        lines = []
        for _ in range(draw(st.integers(0, 8))):
            rank = draw(st.sampled_from([f, f, f, 0, 1, 6]))
            doc: dict[str, object] = {
                "v": 1,
                "job": draw(st.sampled_from(["j1", "j1", "j2"])),
                "rank": rank,
                "node": draw(st.sampled_from([f"n{rank // 2}", "n0", "zz"])),
                "step": draw(st.integers(0, 5)),
                "start_ns": T0 + draw(st.integers(0, 10**9)),
            }
            doc["end_ns"] = int(doc["start_ns"]) + draw(st.sampled_from([0, 1, 10**9, 2 * 10**9 + 7]))  # type: ignore[call-overload]
            for name in steprecord.PHASES:
                value = draw(_PHASE_VALUES)
                if value is not None:
                    doc[name] = value
            for name in ("local_rank", "tokens", "gpu_time", "dropped"):
                if draw(st.booleans()):
                    doc[name] = draw(st.integers(0, 2**62))
            lines.append(json.dumps(doc))
        files.append(lines)
    return files


def naive_merge(paths: list[Path]) -> pd.DataFrame:
    """The frame as its documentation defines it, one record at a time through pandas."""
    rows = []
    for p in paths:
        latest: dict[tuple[str, int, int], steprecord.StepRecord] = {}
        for rec in steprecord.read_file(p).records:
            latest[(rec.job, rec.rank, rec.step)] = rec
        for r in latest.values():
            row: dict[str, object] = {
                "job": r.job,
                "node": r.node,
                "rank": r.rank,
                "local_rank": -1 if r.local_rank is None else r.local_rank,
                "step": r.step,
                "start_ns": r.start_ns,
                "end_ns": r.end_ns,
                "dropped": r.dropped,
                "pp_rank": -1 if r.pp_rank is None else r.pp_rank,
                "duration_s": (r.end_ns - r.start_ns) / 1e9,
            }
            row.update({name: r.phases.get(name, np.nan) for name in steprecord.PHASES})
            for name in ("tokens", "samples", "gpu_time"):
                value = getattr(r, name)
                row[name] = np.nan if value is None else float(value)
            rows.append(row)
    frame = pd.DataFrame(rows, columns=list(steps_reader.COLUMNS))
    frame = frame.astype({n: "int64" for n in steps_reader.INT_COLUMNS})
    frame = frame.astype({n: "float64" for n in steps_reader.FLOAT_COLUMNS})
    frame["job"] = pd.Categorical(frame["job"])
    frame["node"] = pd.Categorical(frame["node"])
    frame = frame.drop_duplicates(subset=["job", "rank", "step"], keep="last")
    return frame.sort_values(["step", "rank"], kind="stable").reset_index(drop=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=step_files())
def test_merge_equals_the_frame_built_record_by_record(tmp_path: Path, files: list[list[str]]) -> None:
    for old in tmp_path.glob("*.jsonl"):
        old.unlink()
    paths = []
    for i, lines in enumerate(files):
        paths.append(tmp_path / f"f{i}.jsonl")
        paths[-1].write_text("".join(line + "\n" for line in lines))
    frame, cov = steps_reader.merge([steps_reader.read_file(p) for p in paths])
    want = naive_merge(paths)
    if want.empty:
        assert frame.empty and cov.records == 0
        return
    pd.testing.assert_frame_equal(frame, want, check_exact=True)
    assert cov.records == len(want)
    assert cov.ranks == sorted(set(want["rank"]))
    all_steps = set(want["step"])
    for rank, group in want.groupby("rank"):
        missing = sorted(all_steps - set(group["step"]))
        assert [s for a, b in cov.missing_steps.get(int(rank), []) for s in range(a, b + 1)] == missing  # type: ignore[call-overload]
    b = step_breakdown.breakdown(frame)
    unattributed = frame["duration_s"] - frame[list(steprecord.PHASES)].fillna(0.0).sum(axis=1)
    assert b["unattributed_s"].tolist() == unattributed.tolist()
    offsets = step_breakdown.clock_offsets(frame)
    pd.testing.assert_frame_equal(step_breakdown.breakdown(frame, offsets), b)
