"""`fmdiag collect` and `analyze --prometheus` against a real Prometheus holding backfilled history.

History is written as OpenMetrics and turned into TSDB blocks by ``promtool tsdb
create-blocks-from openmetrics`` (TOOLCHAIN.md); the server then starts on those blocks. It holds
two nodes of training job ``j1`` (fmdiag exporter targets ``node-a:9101``, ``node-b:9101``), a
third node running another job, and GPU series from a stock dcgm-exporter whose target is a pod
address (``10.0.0.5:9400``) and whose ``Hostname`` label names the node.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.prom import Prometheus

from fmdiag import dumpformat, steprecord
from fmdiag.analyzers import collect

# The subcommands themselves, not the root group (whose cached help option other tests compare).
from fmdiag.analyzers.cli import analyze
from fmdiag.analyzers.cli import collect as collect_cmd
from fmdiag.analyzers.readers import prometheus_source

# promtool (Debian prometheus, installed by .ci/run) backfills the history: without it, these fail.
pytestmark = [pytest.mark.integration]

STEP = 15
POINTS = 41  # ten minutes at 15 s
T0 = float(int(time.time()) // 60 * 60 - 30 * 60)  # half an hour ago: inside a 1 h retention
T1 = T0 + STEP * (POINTS - 1)


def _openmetrics() -> str:
    lines: list[str] = []
    series = [
        ("fmdiag_step_last", {"instance": "node-a:9101", "job": "fmdiag", "training_job": "j1", "rank": "0"}),
        ("fmdiag_step_last", {"instance": "node-b:9101", "job": "fmdiag", "training_job": "j1", "rank": "1"}),
        (
            "fmdiag_step_last",
            {"instance": "node-c:9101", "job": "fmdiag", "training_job": "other", "rank": "0"},
        ),
        (
            "fmdiag_step_duration_seconds_count",
            {"instance": "node-a:9101", "job": "fmdiag", "training_job": "j1", "rank": "0"},
        ),
        (
            "fmdiag_step_duration_seconds_bucket",
            {"instance": "node-a:9101", "job": "fmdiag", "training_job": "j1", "rank": "0", "le": "+Inf"},
        ),
        (
            "fmdiag_efa_tx_bytes_total",
            {"instance": "node-b:9101", "job": "fmdiag", "device": "rdmap0s0", "port": "1"},
        ),
        (
            "fmdiag_efa_tx_bytes_total",
            {"instance": "node-c:9101", "job": "fmdiag", "device": "rdmap0s0", "port": "1"},
        ),
    ]
    for gpu in range(3):  # stock dcgm-exporter on node-a: its target is the pod, not the node
        series.append(
            (
                "DCGM_FI_DEV_GPU_TEMP",
                {
                    "instance": "10.0.0.5:9400",
                    "job": "dcgm",
                    "gpu": str(gpu),
                    "UUID": f"GPU-{gpu}",
                    "Hostname": "node-a",
                    "modelName": "H100",
                },
            )
        )
    series.append(
        (
            "DCGM_FI_DEV_GPU_TEMP",
            {
                "instance": "10.0.0.9:9400",
                "job": "dcgm",
                "gpu": "0",
                "UUID": "GPU-c",
                "Hostname": "node-c",
                "modelName": "H100",
            },
        )
    )
    for name, labels in series:
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for i in range(POINTS):
            lines.append(f"{name}{{{text}}} {i * 10 + len(labels)} {T0 + i * STEP:.0f}")
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    work = tmp_path_factory.mktemp("prom")
    om = work / "history.om"
    om.write_text(_openmetrics())
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(work / "data")],
        check=True,
        capture_output=True,
    )
    with Prometheus(work, targets=[]) as p:
        deadline = time.monotonic() + 30
        while len(p.query("fmdiag_step_last", at=T1)) < 3:  # the blocks load at start; poll briefly
            assert time.monotonic() < deadline, p.log()[-2000:]
            time.sleep(0.2)
        yield p


def test_time_chunks_cover_the_grid_once() -> None:
    chunks = prometheus_source.time_chunks(0, 100, 10, 4)
    assert chunks == [(0, 30), (40, 70), (80, 100)]
    assert prometheus_source.time_chunks(5, 5, 1, 10) == [(5, 5)]


def test_batches_never_split_a_node() -> None:
    series = [{"instance": "a"}] * 3 + [{"instance": "b"}] * 2 + [{"instance": "c"}] * 4
    assert prometheus_source.batches(series, 5) == [["a", "b"], ["c"]]
    assert prometheus_source.batches(series, 1) == [["a"], ["b"], ["c"]]


def test_collect_writes_the_dump_format(prom: Prometheus, tmp_path: Path) -> None:
    out = tmp_path / "dump"
    r = CliRunner().invoke(
        collect_cmd,
        [
            "--prometheus",
            prom.url,
            "--job",
            "j1",
            "--start",
            str(T0),
            "--end",
            str(T1),
            "--out",
            str(out),
            "--step",
            "15s",
        ],
    )
    assert r.exit_code == 0, r.output
    layout = dumpformat.DumpLayout(out)
    assert set(layout.metrics_files()) == {"steps", "efa", "gpu"}
    for sub, path in layout.metrics_files().items():
        schema = pq.read_schema(path)
        dumpformat.check_metrics_schema(str(path), sub, {f.name: str(f.type) for f in schema})
        assert str(schema.field("metric").type).startswith("dictionary")
    steps = pd.read_parquet(layout.metrics_path("steps"))
    assert set(steps["instance"]) == {"node-a", "node-b"}  # ports dropped; node-c's job left out
    assert set(steps["training_job"]) == {"j1"} and "job" not in steps.columns
    assert set(steps["metric"]) == {
        "fmdiag_step_last",
        "fmdiag_step_duration_seconds_count",
        "fmdiag_step_duration_seconds_bucket",
    }
    last = steps[(steps["metric"] == "fmdiag_step_last") & (steps["rank"] == "0")]
    assert len(last) == POINTS and last["timestamp"].is_monotonic_increasing
    assert set(steps.loc[steps["metric"] != "fmdiag_step_duration_seconds_bucket", "le"]) == {""}
    gpu = pd.read_parquet(layout.metrics_path("gpu"))
    assert set(gpu["instance"]) == {"node-a"} and sorted(set(gpu["gpu"])) == ["0", "1", "2"]
    efa = pd.read_parquet(layout.metrics_path("efa"))
    assert set(efa["instance"]) == {"node-b"} and len(efa) == POINTS
    assert "3 nodes" not in r.output and "2 nodes" in r.output


def test_small_requests_give_the_same_tables(prom: Prometheus, tmp_path: Path) -> None:
    big = collect.collect(prometheus_source.Client(prom.url), "j1", T0, T1, tmp_path / "a", STEP)
    small_client = prometheus_source.Client(prom.url)
    small = collect.collect(small_client, "j1", T0, T1, tmp_path / "b", STEP, max_series=1, max_points=7)
    assert small.requests > big.requests
    for sub in big.files:
        a = (
            pd.read_parquet(big.files[sub])
            .sort_values(["metric", "instance", "timestamp"])
            .reset_index(drop=True)
        )
        b = (
            pd.read_parquet(small.files[sub])
            .sort_values(["metric", "instance", "timestamp"])
            .reset_index(drop=True)
        )
        pd.testing.assert_frame_equal(a.astype(str), b.astype(str))


def test_unknown_job_is_a_clear_error(prom: Prometheus, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        collect_cmd,
        [
            "--prometheus",
            prom.url,
            "--job",
            "nope",
            "--start",
            str(T0),
            "--end",
            str(T1),
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 1 and "no fmdiag_step_last" in r.output and "'nope'" in r.output


def test_unreachable_prometheus(tmp_path: Path) -> None:
    r = CliRunner().invoke(
        collect_cmd,
        [
            "--prometheus",
            "http://127.0.0.1:9",
            "--job",
            "j1",
            "--start",
            "0",
            "--end",
            "10",
            "--out",
            str(tmp_path),
        ],
    )
    assert r.exit_code == 1 and "http://127.0.0.1:9" in r.output


def test_analyze_reads_metrics_from_prometheus(prom: Prometheus, tmp_path: Path) -> None:
    steps = tmp_path / "dump" / "steps"
    steps.mkdir(parents=True)
    lines = []
    for s in range(3):
        start = int((T0 + 60 + s) * 1e9)
        lines.append(
            json.dumps(
                {
                    "job": "j1",
                    "rank": 0,
                    "node": "node-a",
                    "step": s,
                    "start_ns": start,
                    "end_ns": start + 900_000_000,
                }
            )
        )
    (steps / steprecord.file_name("j1", 0)).write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(
        analyze,
        [
            str(tmp_path / "dump"),
            "--json",
            "--prometheus",
            prom.url,
            "--start",
            str(T0),
            "--end",
            str(T1),
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    metrics = doc["inputs"]["metrics"]
    assert metrics["source"] == f"prometheus {prom.url}"
    assert metrics["subsystems"]["gpu"]["series"] == 3
    assert metrics["subsystems"]["steps"]["instances"] == ["node-a", "node-b"]


def test_collect_copies_the_jobs_step_files_from_a_spool(prom: Prometheus, tmp_path: Path) -> None:
    from fmdiag import steprecord

    spool = tmp_path / "spool"
    spool.mkdir()
    good = '{"v":1,"job":"j1","rank":%d,"node":"node-a","step":0,"start_ns":1,"end_ns":2}\n'
    (spool / steprecord.file_name("j1", 0)).write_text(good % 0 + "not json\n")
    (spool / steprecord.file_name("j1", 1)).write_text(good % 1)
    (spool / steprecord.file_name("other", 0)).write_text(good.replace("j1", "other") % 0)
    out = tmp_path / "dump"
    args = ["--prometheus", prom.url, "--job", "j1", "--start", str(T0), "--end", str(T1), "--out", str(out)]
    r = CliRunner().invoke(collect_cmd, [*args, "--steps-from", str(spool)])
    assert r.exit_code == 0, r.output
    copied = sorted(p.name for p in dumpformat.DumpLayout(out).step_files())
    assert copied == [steprecord.file_name("j1", 0), steprecord.file_name("j1", 1)]
    assert "2 step files, 2 records" in r.stdout
    assert "j1.rank00000.jsonl:2: not valid JSON" in r.stderr  # reported, and kept for the analysis to name
    assert (out / "steps" / steprecord.file_name("j1", 0)).read_text().endswith("not json\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(collect_cmd, [*args, "--steps-from", str(empty)])
    assert r.exit_code != 0 and "no step files of job 'j1'" in r.output


def test_collect_copies_one_spool_per_node_and_names_a_rank_in_two(prom: Prometheus, tmp_path: Path) -> None:
    from fmdiag import steprecord

    line = '{"v":1,"job":"j1","rank":%d,"node":"%s","step":0,"start_ns":1,"end_ns":2}\n'
    spools = []
    for node, ranks in (("node-a", (0, 1)), ("node-b", (2, 3, 1))):
        spool = tmp_path / node
        spool.mkdir()
        for rank in ranks:
            (spool / steprecord.file_name("j1", rank)).write_text(line % (rank, node))
        spools += ["--steps-from", str(spool)]
    out = tmp_path / "dump"
    args = ["--prometheus", prom.url, "--job", "j1", "--start", str(T0), "--end", str(T1), "--out", str(out)]
    r = CliRunner().invoke(collect_cmd, [*args, *spools])
    assert r.exit_code == 0, r.output
    assert len(dumpformat.DumpLayout(out).step_files()) == 4
    assert "4 step files, 4 records" in r.stdout
    # rank 1 in both spools: the first is kept, the second named, not silently overwritten
    assert f"node-b/{steprecord.file_name('j1', 1)}: " in r.stderr and "same rank's file" in r.stderr
    assert '"node":"node-a"' in (out / "steps" / steprecord.file_name("j1", 1)).read_text()
