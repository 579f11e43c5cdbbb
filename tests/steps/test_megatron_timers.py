"""`fmdiag steps import-megatron`: Megatron-LM timer logs into step records, then `fmdiag analyze`.

The logs here are built from the format strings Megatron-LM prints with (megatron/core/timers.py
``_get_all_ranks_time_string`` and ``_get_global_min_max_time_string``; the iteration line of
megatron/training/training.py ``training_log``), as the last rank prints them through
``logging.basicConfig``'s default format, with torchrun's ``[defaultN]:`` prefixes on some lines
and other processes' output between.
"""

# Megatron-LM's own str.format calls, kept as they are in its source rather than as f-strings:
# ruff: noqa: UP032

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmdiag import megatron_timers as mt
from fmdiag import steprecord
from fmdiag.analyzers.cli import analyze
from fmdiag.analyzers.readers import steps_reader
from fmdiag.cli import cli

WORLD = 8  # tp=2, pp=2, dp=2
T0 = dt.datetime(2025, 3, 1, 10, 0, 0)
#: Megatron's timers_to_log order (level 1, then level 2).
ORDER = (
    "forward-backward",
    "layernorm-grads-all-reduce",
    "embedding-grads-all-reduce",
    "all-grads-sync",
    "params-all-gather",
    "optimizer-copy-to-main-grad",
    "optimizer-unscale-and-check-inf",
    "optimizer-clip-main-grad",
    "optimizer-count-zeros",
    "optimizer-inner-step",
    "optimizer-copy-main-to-model-params",
    "optimizer",
    "batch-generator",
    "forward-compute",
    "backward-compute",
    "forward-recv",
    "forward-send",
    "backward-recv",
    "backward-send",
    "forward-send-forward-recv",
    "forward-send-backward-recv",
    "backward-send-forward-recv",
    "backward-send-backward-recv",
    "forward-backward-send-forward-backward-recv",
)


def all_ranks_block(times: Mapping[str, Mapping[int, float]], prefix: str = "") -> list[str]:
    """``timers.log`` with ``--timing-log-option all``: a timer is listed when some rank has time
    in it, a rank when its time is above 0."""
    lines = [f"{prefix}INFO:megatron.core.timers:times across ranks (ms):"]
    for name in [n for n in ORDER if n in times] + [n for n in times if n not in ORDER]:
        per_rank = times[name]
        if not any(per_rank.get(r, 0.0) > 0 for r in range(WORLD)):
            continue
        lines.append(prefix + "\n  {}:".format(name)[1:])
        for rank in range(WORLD):
            if per_rank.get(rank, 0.0) > 0:
                lines.append(prefix + "\n     rank {:2d}: {:.2f}".format(rank, per_rank[rank])[1:])
    return lines


def minmax_block(times: Mapping[str, Mapping[int, float]]) -> list[str]:
    lines = ["INFO:megatron.core.timers:(min, max) time across ranks (ms):"]
    for name, per_rank in times.items():
        values = [v for v in per_rank.values() if v > 0]
        if values:
            lines.append(
                "    {}: ({:.2f}, {:.2f})".format((name + " ").ljust(48, "."), min(values), max(values))
            )
    return lines


def iteration_line(iteration: int, elapsed_ms: float, when: dt.datetime) -> str:
    line = f" [{when.strftime('%Y-%m-%d %H:%M:%S.%f')}]"
    line += " iteration {:8d}/{:8d} |".format(iteration, 1000)
    line += " consumed samples: {:12d} |".format(iteration * 64)
    line += " elapsed time per iteration (ms): {:.1f} |".format(elapsed_ms)
    line += f" throughput per GPU (TFLOP/s/GPU): {187.3:.1f} |"
    line += f" learning rate: {1.5e-4:.6E} |"
    line += f" global batch size: {64:5d} |"
    line += " lm loss: {:.6E} |".format(7.123)
    line += f" loss scale: {1.0:.1f} |"
    line += f" grad norm: {1.234:.3f} |"
    line += " number of skipped iterations: {:3d} |".format(0)
    line += " number of nan iterations: {:3d} |".format(0)
    return line


def stage_times(slow: float = 1.0) -> dict[str, dict[int, float]]:
    """ms per iteration of a 1F1B pipeline of two stages (ranks 0-3, 4-7). Stage 1 computes
    ``slow`` times longer; stage 0 waits for its gradients that much longer in backward-recv."""
    fwd, bwd = 300.0, 600.0
    extra = (fwd + bwd) * (slow - 1.0)

    def per_stage(first: float, last: float) -> dict[int, float]:
        return {r: first if r < 4 else last for r in range(WORLD)}

    comm0 = 5.0 + 40.0 + extra  # forward-send, backward-recv
    comm1 = 20.0 + 4.0  # forward-recv, backward-send
    return {
        "forward-backward": per_stage(fwd + bwd + comm0 + 31.5, fwd * slow + bwd * slow + comm1 + 31.5),
        "layernorm-grads-all-reduce": per_stage(0.0, 0.0),  # sequence parallelism off: all 0, not listed
        "embedding-grads-all-reduce": per_stage(1.5, 1.5),
        "all-grads-sync": per_stage(30.0, 30.0),
        "params-all-gather": per_stage(12.0, 12.0),
        "optimizer-copy-to-main-grad": per_stage(3.0, 3.0),
        "optimizer-inner-step": per_stage(20.0, 20.0),
        "optimizer": per_stage(50.0, 50.0),  # holds params-all-gather (the distributed optimizer)
        "batch-generator": per_stage(2.5, 2.0),
        "forward-compute": per_stage(fwd, fwd * slow),  # holds batch-generator
        "backward-compute": per_stage(bwd, bwd * slow),
        "forward-recv": per_stage(0.0, 20.0),
        "forward-send": per_stage(5.0, 0.0),
        "backward-recv": per_stage(40.0 + extra, 0.0),
        "backward-send": per_stage(0.0, 4.0),
    }


def megatron_log(iterations: tuple[int, ...] = (10, 20, 30, 40), slow: float = 1.0) -> list[str]:
    times = stage_times(slow)
    elapsed = max(times["forward-backward"].values()) + 50.0 + 20.0
    lines = [
        "using world size: 8, data-parallel size: 2, context-parallel size: 1, tensor-model-parallel"
        " size: 2, pipeline-model-parallel size: 2",
        "> building GPT2BPETokenizer tokenizer ...",
        "[default0]:[rank0]:[W301 10:00:01.000000000 ProcessGroupNCCL.cpp:4561] using GPU 0 as device",
    ]
    # start-up timers: logged before any iteration line, no interval of their own
    lines += all_ranks_block({"model-and-optimizer-setup": {r: 1523.4 for r in range(WORLD)}})
    lines.append("training ...")
    for k, iteration in enumerate(iterations):
        when = T0 + dt.timedelta(milliseconds=elapsed * 10 * (k + 1))
        lines.append(iteration_line(iteration, elapsed, when))
        lines.append(
            f"[Rank 7] (after {iteration} iterations) memory (MB) | allocated: 10240.00 | max allocated:"
            " 20480.00 | reserved: 24000.00 | max reserved: 24000.00"
        )
        block = all_ranks_block(times, prefix="[default3]:" if k % 2 else "")
        if k % 2:  # other processes' output between the block's lines
            block.insert(5, "[default0]:     rank  0: 99999.00")
            block.insert(9, "[default1]:some warning from another rank:")
        lines += block
    return lines


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


LAYOUT = mt.Layout(tp=2, pp=2, dp=2, ranks_per_node=4)


def test_a_realistic_log_is_read_into_intervals_of_every_rank(tmp_path: Path) -> None:
    log = write(tmp_path / "train.log", megatron_log())
    stats = mt.ParseStats()
    intervals = list(mt.read_intervals([log], stats=stats))
    assert [i.iteration for i in intervals] == [10, 20, 30, 40]
    assert stats.blocks == 5 and stats.blocks_outside_intervals == 1 and stats.bad_lines == 0
    first = intervals[0]
    assert first.train_iters == 1000 and first.elapsed_ms == pytest.approx(1046.5)
    assert first.timestamp_ns == mt.parse_timestamp("2025-03-01T10:00:10.465Z")[0]
    for interval in intervals:
        assert interval.ranks() == set(range(WORLD))
        assert "layernorm-grads-all-reduce" not in interval.timers  # 0 everywhere: not printed
        assert interval.timers["forward-recv"] == {4: 20.0, 5: 20.0, 6: 20.0, 7: 20.0}
        # the [default0]: line between the [default3]: block's lines is another process's
        assert interval.timers["forward-backward"][0] == 976.5
        assert interval.timers["backward-recv"][3] == 40.0


def test_each_rank_gets_its_place_in_megatrons_rank_order() -> None:
    # tp-cp-ep-dp-pp, tp fastest: ranks 0-3 are stage 0, tp pairs (0,1) (2,3), dp pairs (0,2) (1,3)
    expect = {
        0: (0, 0, 0),
        1: (1, 0, 0),
        2: (0, 1, 0),
        3: (1, 1, 0),
        4: (0, 0, 1),
        5: (1, 0, 1),
        6: (0, 1, 1),
        7: (1, 1, 1),
    }
    for rank, (tp, dp, pp) in expect.items():
        assert LAYOUT.coordinates(rank) == {"tp_rank": tp, "dp_rank": dp, "pp_rank": pp, "cp_rank": 0}
        assert LAYOUT.node(rank) == f"node-{rank // 4:03d}" and LAYOUT.local_rank(rank) == rank % 4
    # parallel_state's own example: 8 GPUs, order tp-pp-dp, sizes 2-2-2 -> dp groups [0,4] [1,5] [2,6] [3,7]
    swapped = mt.Layout(tp=2, pp=2, dp=2, ranks_per_node=8, order="tp-cp-ep-pp-dp")
    groups: dict[tuple[int, int], list[int]] = {}
    for rank in range(8):
        c = swapped.coordinates(rank)
        groups.setdefault((c["tp_rank"], c["pp_rank"]), []).append(rank)
    assert sorted(groups.values()) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # context and expert parallel: cp after tp; ep splits the cp*dp ranks of a stage (expert tp = tp)
    moe = mt.Layout(tp=2, pp=1, dp=4, cp=2, ep=4, ranks_per_node=8)
    assert moe.world_size == 16
    assert moe.coordinates(2) == {"tp_rank": 0, "cp_rank": 1, "dp_rank": 0, "pp_rank": 0, "ep_rank": 1}
    assert moe.coordinates(9) == {"tp_rank": 1, "cp_rank": 0, "dp_rank": 2, "pp_rank": 0, "ep_rank": 0}
    with pytest.raises(ValueError, match="ep=3 must divide cp\\*dp=8"):
        mt.Layout(tp=2, pp=1, dp=4, cp=2, ep=3, ranks_per_node=8)


def test_timers_become_phases_without_counting_nested_timers_twice(tmp_path: Path) -> None:
    log = write(tmp_path / "train.log", megatron_log())
    records = list(mt.to_records(mt.read_intervals([log]), job="gpt", layout=LAYOUT))
    assert len(records) == 4 * WORLD
    by = {(r["rank"], r["step"]): r for r in records}
    first, last = by[0, 10], by[5, 40]
    # stage 0: forward-compute holds batch-generator; optimizer holds params-all-gather
    assert first["data_wait"] == 0.0025
    assert first["forward"] == pytest.approx(0.2975)
    assert first["backward"] == 0.6
    assert first["optimizer"] == pytest.approx(0.038)
    # forward-send 5 + backward-recv 40 + all-grads-sync 30 + embedding 1.5 + params-all-gather 12
    assert first["comm_exposed"] == pytest.approx(0.0885)
    # stage 1: forward-recv 20 + backward-send 4 + the same collectives
    assert last["comm_exposed"] == pytest.approx(0.0675) and last["forward"] == pytest.approx(0.298)
    assert (last["node"], last["local_rank"], last["pp_rank"], last["tp_rank"], last["dp_rank"]) == (
        "node-001",
        1,
        1,
        1,
        0,
    )
    # one average iteration per interval, at the end of its interval; the intervals end to end from
    # the first iteration line's time, each 10 iterations long
    for r in records:
        assert r["end_ns"] - r["start_ns"] == 1_046_500_000
        steprecord.validate(r)
    ends = sorted({r["end_ns"] for r in records})
    assert ends[0] == mt.parse_timestamp("2025-03-01T10:00:10.465Z")[0]
    assert [b - a for a, b in itertools.pairwise(ends)] == [10_465_000_000] * 3
    # explicit start: the first interval starts there
    again = list(mt.to_records(mt.read_intervals([log]), job="gpt", layout=LAYOUT, start_ns=0))
    assert min(r["end_ns"] for r in again) == 10_465_000_000


def test_a_bad_rank_line_names_its_file_and_line(tmp_path: Path) -> None:
    lines = megatron_log()
    at = next(i for i, line in enumerate(lines) if line.endswith("rank  6: 600.00"))
    lines[at] = lines[at].replace("600.00", "6O0.00")
    log = write(tmp_path / "train.log", lines)
    with pytest.raises(mt.MegatronLogError) as err:
        list(mt.read_intervals([log]))
    assert str(err.value).startswith(f"{log}:{at + 1}: not a rank's time")
    # lenient: counted, and every other value kept
    stats = mt.ParseStats()
    intervals = list(mt.read_intervals([log], lenient=True, stats=stats))
    assert stats.bad_lines == 1 and len(intervals) == 4
    assert (
        6 not in intervals[0].timers["backward-compute"] and len(intervals[1].timers["backward-compute"]) == 8
    )
    # and that rank's backward is unknown in that interval, not 0
    records = {(r["rank"], r["step"]): r for r in mt.to_records(intervals, job="j", layout=LAYOUT)}
    assert "backward" not in records[6, 10] and records[6, 10]["forward"] == pytest.approx(0.298)
    assert records[6, 20]["backward"] == 0.6 and records[7, 10]["backward"] == 0.6
    # the command says the same, and writes nothing
    out = tmp_path / "dump"
    result = CliRunner().invoke(cli, ["steps", "import-megatron", str(log), "--out", str(out), *LAYOUT_ARGS])
    assert result.exit_code == 1 and f"{log}:{at + 1}: not a rank's time" in result.output
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_the_minmax_format_is_refused_with_what_to_change(tmp_path: Path) -> None:
    lines = []
    for k, iteration in enumerate((10, 20)):
        lines.append(iteration_line(iteration, 1000.0, T0 + dt.timedelta(seconds=10 * (k + 1))))
        lines += minmax_block(stage_times())
    log = write(tmp_path / "train.log", lines)
    assert "    forward-backward ...............................: (955.50, 976.50)" in lines
    stats = mt.ParseStats()
    assert list(mt.to_records(mt.read_intervals([log], stats=stats), job="j", layout=LAYOUT)) == []
    with pytest.raises(mt.MegatronLogError, match="--timing-log-option all"):
        mt.check_has_per_rank_times(stats, str(log))
    result = CliRunner().invoke(
        cli, ["steps", "import-megatron", str(log), "--out", str(tmp_path / "d"), *LAYOUT_ARGS]
    )
    assert result.exit_code == 1
    assert "min/max across ranks" in result.output and "need --timing-log-option all" in result.output


def test_a_layout_that_does_not_match_the_log_is_refused(tmp_path: Path) -> None:
    log = write(tmp_path / "train.log", megatron_log())
    at = next(i for i, line in enumerate(megatron_log()) if " iteration       10/" in line) + 1
    with pytest.raises(mt.MegatronLogError, match=f"^{log}:{at}: .*all of ranks 0-7 .* = 16"):
        list(
            mt.to_records(
                mt.read_intervals([log]), job="j", layout=mt.Layout(tp=2, pp=2, dp=4, ranks_per_node=4)
            )
        )
    with pytest.raises(mt.MegatronLogError, match="rank 7, outside the layout"):
        list(
            mt.to_records(
                mt.read_intervals([log]), job="j", layout=mt.Layout(tp=2, pp=2, dp=1, ranks_per_node=4)
            )
        )


def test_a_runs_first_iteration_log_is_left_out() -> None:
    """Megatron-LM logs after a run's first iteration too, timers not reset but divided by the log
    interval: iterations 1, then 10, 20; and a restart from a checkpoint at 20: 21, 30, 40."""
    lines = megatron_log(iterations=(1, 10, 20, 21, 30, 40))
    stats = mt.ParseStats()
    records = list(mt.to_records(mt.parse_lines(lines, stats=stats), job="j", layout=LAYOUT, stats=stats))
    assert sorted({r["step"] for r in records}) == [10, 20, 30, 40]
    assert stats.first_iteration_logs == [1, 21]


def test_gzip_logs_with_srun_labels_and_collector_timestamps(tmp_path: Path) -> None:
    """Kubernetes' CRI lines around srun --label's: the last task (7) prints the timers; the other
    tasks' lines come between."""
    lines = []
    for i, line in enumerate(megatron_log()):
        lines.append(f"2025-03-01T09:00:00.5Z stdout F  7: {line}")
        if i % 7 == 3:
            lines.append(f"2025-03-01T09:00:00.6Z stdout F  {i % 7}:      rank  1: 5.00")
    log = tmp_path / "train.log.gz"
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    intervals = list(mt.read_intervals([log]))
    assert [i.iteration for i in intervals] == [10, 20, 30, 40]
    assert all(
        i.ranks() == set(range(WORLD)) and 5.0 not in i.timers["forward-compute"].values() for i in intervals
    )
    # the collector's time has a UTC offset: it wins over Megatron's naive one
    assert intervals[0].timestamp_ns == mt.parse_timestamp("2025-03-01T09:00:00.5Z")[0]


LAYOUT_ARGS = ["--job", "gpt-8b", "--tp", "2", "--pp", "2", "--dp", "2", "--ranks-per-node", "4"]


def import_and_analyze(tmp_path: Path, lines: list[str]) -> tuple[Path, dict[str, object]]:
    log = tmp_path / "train.log.gz"
    log.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    out = tmp_path / "dump"
    result = CliRunner().invoke(cli, ["steps", "import-megatron", str(log), "--out", str(out), *LAYOUT_ARGS])
    assert result.exit_code == 0, result.output
    assert "32 step records, 8 ranks, 4 intervals (iterations 10-40)" in result.output
    files = sorted((out / "steps").iterdir())
    assert [f.name for f in files] == [steprecord.file_name("gpt-8b", r) for r in range(WORLD)]
    assert CliRunner().invoke(cli, ["steps", "check", str(out)]).exit_code == 0
    report = CliRunner().invoke(analyze, [str(out), "--json", "--workers", "1"])
    assert report.exit_code == 0, report.output
    doc: dict[str, object] = json.loads(report.output)
    return out, doc


def test_import_then_analyze(tmp_path: Path) -> None:
    out, doc = import_and_analyze(tmp_path, megatron_log())
    verdicts = doc["verdicts"]
    assert isinstance(verdicts, list) and [v["step"] for v in verdicts] == [10, 20, 30, 40]
    frame, coverage = steps_reader.merge(
        [steps_reader.read_file(f) for f in sorted((out / "steps").iterdir())]
    )
    assert coverage.ranks == list(range(WORLD)) and not coverage.bad_lines
    assert frame.groupby("rank")["pp_rank"].first().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # an existing job is not overwritten by accident
    log = tmp_path / "train.log.gz"
    again = CliRunner().invoke(cli, ["steps", "import-megatron", str(log), "--out", str(out), *LAYOUT_ARGS])
    assert again.exit_code == 1 and "pass --force" in again.output
    stale = out / "steps" / steprecord.file_name("gpt-8b", 9)
    stale.write_text("")
    forced = ["steps", "import-megatron", str(log), "--out", str(out), *LAYOUT_ARGS, "--force"]
    assert CliRunner().invoke(cli, forced).exit_code == 0
    files = sorted((out / "steps").iterdir())
    assert [f.name for f in files] == [steprecord.file_name("gpt-8b", r) for r in range(WORLD)]
    assert all(len(f.read_text().splitlines()) == 4 for f in files)


def test_a_pipeline_stage_three_times_slower_is_named_as_a_stage_imbalance(tmp_path: Path) -> None:
    """Stage 1 computes 3x stage 0; stage 0 spends the difference waiting in backward-recv (the
    gradients of stage 1). The other stage idles a third of its time: a stage imbalance, named by
    its stage (compute with cause stage_imbalance: no GPU metrics show a hardware cause)."""
    _, doc = import_and_analyze(tmp_path, megatron_log(slow=3.0))
    verdicts = doc["verdicts"]
    assert isinstance(verdicts, list) and len(verdicts) == 4
    for v in verdicts:
        assert v["class"] == "compute" and v["cause"] == "stage_imbalance", v
        assert v["culprit"] == {"pp_rank": 1, "node": "node-001"}
        assert "pipeline stage 1" in v["recommendation"]
