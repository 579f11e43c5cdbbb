"""The test bed end to end, as a user runs it: ``python -m fmdiag.testbed`` in real namespaces,
real exporters scraped by a real Prometheus, ``fmdiag collect``, then ``fmdiag analyze``.

A small fixed subset (the full set is ``benchmarks/testbed_accuracy.py``): a fault that starts
mid-run through a cgroup, a node's link shaped with tbf, and a two-stage pipeline across nodes.
Each run is checked for a complete and correct dump (every rank's every step with its phases
and layout, host and step metrics from Prometheus for every node, JAX traces, a truth that
matches what was injected) and for leaving nothing behind. What the analyzer concludes is not
asserted here: the benchmark scores it.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from fmdiag import dumpformat, steprecord
from fmdiag.testbed import cgroups, fabric

pytestmark = pytest.mark.integration

if os.geteuid() != 0:  # the one place a missing privilege is named, not hidden
    pytest.fail("the test bed's tests run as root (CI and this project's machines do)", pytrace=False)

NODES, RANKS_PER_NODE, STEPS = 2, 2, 12


def run_testbed(*args: str, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fmdiag.testbed", *args], capture_output=True, text=True, timeout=timeout
    )


def nothing_left() -> None:
    assert fabric.leftovers(include_live=True) == []
    assert cgroups.leftovers(include_live=True) == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert fabric.PREFIX not in links
    assert "tbf" not in subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout


def run_scenario(tmp_path: Path, name: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / name
    args = ["--scenario", name, "--out", str(out), "--nodes", str(NODES)]
    r = run_testbed(*args, "--ranks-per-node", str(RANKS_PER_NODE), "--steps", str(STEPS), "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"analyse it with: fmdiag analyze {out}" in r.stdout
    nothing_left()
    assert not (out / "testbed" / "work").exists(), "the work folder (data, checkpoints, tsdb) is removed"
    return out, dumpformat.read_truth(out / "truth.json")


def check_dump(out: Path, truth: dict[str, Any], *, pp: int = 1) -> dict[int, list[steprecord.StepRecord]]:
    layout = dumpformat.DumpLayout(out)
    files = layout.step_files()
    assert len(files) == NODES * RANKS_PER_NODE
    by_rank: dict[int, list[steprecord.StepRecord]] = {}
    for path in files:
        read = steprecord.read_file(path)
        assert not read.errors, read.errors
        (rank,) = {r.rank for r in read.records}
        by_rank[rank] = read.records
    ranks = truth["parameters"]["ranks"]
    for r in ranks:
        records = by_rank[r["rank"]]
        assert [x.step for x in records] == list(range(STEPS))
        assert {x.node for x in records} == {r["node"]}
        assert {(x.pp_rank, x.dp_rank, x.tp_rank) for x in records} == {(r["pp_rank"], r["dp_rank"], 0)}
        for x in records:
            assert {"data_wait", "forward", "backward", "comm_exposed", "optimizer"} <= set(x.phases)
            assert sum(x.phases.values()) <= x.duration_s * 1.001
            assert x.tokens and x.samples
    assert {r["pp_rank"] for r in ranks} == set(range(pp))
    # metrics: both subsystems the exporters serve, for every node, through Prometheus
    nodes = {f"node-{i:03d}" for i in range(NODES)}
    steps_table = pq.read_table(layout.metrics_path("steps")).to_pandas()
    assert set(steps_table["instance"].astype(str)) == nodes
    last = steps_table[steps_table["metric"] == "fmdiag_step_last"]
    assert last.groupby("rank", observed=True)["value"].max().to_dict() == {
        str(r["rank"]): STEPS - 1 for r in ranks
    }
    host = pq.read_table(layout.metrics_path("host")).to_pandas()
    assert set(host["instance"].astype(str)) == nodes
    processes = host[host["metric"] == "fmdiag_process_cpu_seconds_total"]
    rank_pids = {
        node: {str(x.pid) for r in ranks if r["node"] == node for x in by_rank[r["rank"]][:1]}
        for node in nodes
    }
    for node in nodes:  # each node's exporter saw its own ranks, and only those
        mine = processes[processes["instance"] == node]
        scrapes = mine.groupby(mine["pid"].astype(str), observed=True)["timestamp"].nunique()
        # a process forked by a rank carries its command line until it execs: such a child may
        # be caught by one scrape, never by two
        assert set(scrapes[scrapes > 1].index) == rank_pids[node], (node, scrapes.to_dict())
    # JAX profiler traces of the last steps, one per rank, with the step annotations
    for r in ranks:
        (trace,) = (layout.root / dumpformat.JAX_DIR / f"rank{r['rank']}").rglob("*.trace.json.gz")
        events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
        assert any(e.get("name") == "train" or "train" in str(e.get("name", "")) for e in events)
    # truth: every step, classes and counts consistent
    assert [s["step"] for s in truth["steps"]] == list(range(STEPS))
    assert sum(truth["class_counts"].values()) == STEPS
    return by_rank


def analyze_json(out: Path) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-m", "fmdiag", "analyze", str(out), "--json"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc: dict[str, Any] = json.loads(r.stdout)
    assert len(doc["verdicts"]) == STEPS
    return doc


def test_list_names_every_scenario() -> None:
    from fmdiag.testbed.scenarios import SCENARIOS

    r = run_testbed("--list", timeout=60)
    assert r.returncode == 0
    for name in SCENARIOS:
        assert f"\n{name}" in "\n" + r.stdout


def test_a_rank_throttled_mid_run_is_the_truths_straggler(tmp_path: Path) -> None:
    out, truth = run_scenario(tmp_path, "straggler-cpu-onset")
    by_rank = check_dump(out, truth)
    (fault,) = truth["faults"]
    culprit = fault["culprit"]
    assert fault["kind"] == "rank-cpu-throttle" and culprit["rank"] != 0
    onset = fault["first_step"]
    assert 3 <= onset <= 7  # planned at 40% of 12 steps, applied between steps
    assert [s["class"] for s in truth["steps"]] == ["compute"] * onset + ["straggler"] * (STEPS - onset)
    # the physics, measured: after the onset the throttled rank computes longest on most steps
    late = by_rank[culprit["rank"]]
    slowest = sum(
        all(
            late[s].phases["forward"] + late[s].phases["backward"]
            >= rec[s].phases["forward"] + rec[s].phases["backward"]
            for rec in by_rank.values()
        )
        for s in range(onset + 1, STEPS)
    )
    assert slowest >= (STEPS - onset - 1) * 0.7
    analyze_json(out)


def test_a_shaped_node_link_makes_network_steps(tmp_path: Path) -> None:
    out, truth = run_scenario(tmp_path, "network-node")
    by_rank = check_dump(out, truth)
    (fault,) = truth["faults"]
    assert fault["kind"] == "node-bandwidth" and fault["culprit"]["node"] in {"node-000", "node-001"}
    assert truth["class_counts"] == {"network": STEPS}
    # every rank spends most of its step in the all-reduce that crosses the slow link
    for records in by_rank.values():
        comm = sorted(r.phases["comm_exposed"] / r.duration_s for r in records)
        assert comm[len(comm) // 2] > 0.3
    analyze_json(out)


def test_a_two_stage_pipeline_with_a_heavy_last_stage(tmp_path: Path) -> None:
    out, truth = run_scenario(tmp_path, "pipeline-imbalance")
    by_rank = check_dump(out, truth, pp=2)
    assert truth["faults"][0]["culprit"] == {"pp_rank": 1, "node": "node-001"}
    assert truth["class_counts"] == {"compute": STEPS}

    # stage 1 holds three times the layers: it computes longer, stage 0 waits in its receives
    def median(rank_filter: int, phase: str) -> float:
        values = sorted(
            r.phases[phase] for recs in by_rank.values() for r in recs if r.pp_rank == rank_filter
        )
        return values[len(values) // 2]

    assert median(1, "forward") + median(1, "backward") > median(0, "forward") + median(0, "backward")
    assert median(0, "comm_exposed") > median(1, "comm_exposed")
    analyze_json(out)


def test_interrupted_runs_remove_everything_they_made(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmdiag.testbed",
            "--scenario",
            "network-fabric",
            "--out",
            str(out),
            "--steps",
            "400",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    spool = out / "testbed" / "work" / "spool"
    # wait until the ranks are training and the fault is on (a shaped link, namespaces, exporters)
    while time.monotonic() < deadline and not any(spool.rglob("*.jsonl")):
        time.sleep(0.5)
    assert any(spool.rglob("*.jsonl")), "the run never started training"
    assert fabric.leftovers(include_live=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; everything it made was removed" in err
    nothing_left()
    assert not (out / "testbed" / "work").exists()
    # this run's ranks and exporters carry its folder in their command lines (other tests' exporters
    # may still be serving: only this run's are looked for)
    left = subprocess.run(["pgrep", "-a", "-f", str(out)], capture_output=True, text=True).stdout
    assert left == "", left


def test_a_timeout_fails_the_run_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "late"
    r = run_testbed("--scenario", "healthy", "--out", str(out), "--steps", "400", "--timeout", "45")
    assert r.returncode == 1 and "timed out after 45 s" in r.stderr, r.stderr[-2000:]
    nothing_left()


def test_it_refuses_in_one_line_when_not_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from fmdiag.testbed import cli

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    r = CliRunner().invoke(cli.main, ["--scenario", "healthy", "--out", str(tmp_path / "x")])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "fmdiag.testbed: needs root (it makes network namespaces, qdiscs and cgroups); run it as root"
    ]
    assert not (tmp_path / "x").exists()
