"""`fmdiag simulate` end to end through the real command group."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

from fmdiag import steprecord
from fmdiag.cli import cli
from fmdiag.simulate.cluster.physics import JOBS
from fmdiag.simulate.cluster.scenarios import SCENARIOS


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["simulate", *args])
    return result.exit_code, result.output


def test_list_describes_every_scenario() -> None:
    code, out = run("--list")
    assert code == 0
    for name in SCENARIOS:
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    for name in JOBS:  # the presets too, the pipeline's among them
        assert any(line.startswith(name + " ") and "[preset]" in line for line in out.splitlines()), name


def test_straggler_thermal_dump_names_the_throttled_gpu_and_node(tmp_path: Path) -> None:
    out = tmp_path / "d"
    code, text = run("--scenario", "straggler-thermal", "--nodes", "4", "--out", str(out))
    assert code == 0, text
    for entry in ("steps", "metrics", "truth.json"):
        assert (out / entry).exists()
    truth = json.loads((out / "truth.json").read_text())
    culprit = truth["faults"][0]["culprit"]
    assert set(culprit) >= {"node", "rank", "gpu", "gpu_uuid"}
    assert truth["class_counts"] == {"straggler": 100}
    assert all(s["culprit"] == culprit for s in truth["steps"])
    # The culprit is the GPU whose metrics show HW thermal slowdown, on that node.
    gpu = pd.read_parquet(out / "metrics" / "gpu.parquet")
    reasons = gpu[gpu["metric"] == "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"]
    hot = reasons[(reasons["value"].astype(int) & 0x40) != 0]
    assert set(hot["UUID"]) == {culprit["gpu_uuid"]}
    assert set(hot["Hostname"]) == {culprit["node"]} and set(hot["gpu"]) == {str(culprit["gpu"])}
    # ... and the rank whose records show the least exposed communication.
    records = {p: steprecord.read_file(p).records for p in steprecord.step_files(out / "steps")}
    assert len(records) == 32
    comm = {recs[0].rank: sum(r.phases["comm_exposed"] for r in recs) for recs in records.values()}
    assert min(comm, key=comm.__getitem__) == culprit["rank"]


def test_kineto_and_trees_options(tmp_path: Path) -> None:
    out = tmp_path / "k"
    code, text = run(
        "--scenario",
        "network-node",
        "--nodes",
        "2",
        "--gpus",
        "2",
        "--efa-devices",
        "2",
        "--steps",
        "6",
        "--kineto",
        "0,3",
        "--kineto-steps",
        "1:3",
        "--kineto-gzip",
        "--node-trees",
        "--no-efa-srd",
        "--lustre-version",
        "2.10",
        "--out",
        str(out),
    )
    assert code == 0, text
    assert sorted(p.name for p in (out / "kineto").iterdir()) == ["rank0.json.gz", "rank3.json.gz"]
    assert (out / "nodes" / "node-001" / "proc" / "fs" / "lustre").is_dir()
    hw = next((out / "nodes" / "node-000" / "sys" / "class" / "infiniband").iterdir()) / "ports/1/hw_counters"
    assert (hw / "tx_bytes").exists() and not (hw / "retrans_pkts").exists()


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    code, text = run("--out", str(tmp_path / "x"))
    assert code == 2 and "--scenario is required" in text
    code, text = run("--scenario", "nope", "--out", str(tmp_path / "x"))
    assert code == 2 and "nope" in text
    code, text = run(
        "--scenario", "healthy", "--nodes", "1", "--gpus", "2", "--kineto", "5", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "--kineto" in text and "outside 0..1" in text
    code, text = run(
        "--scenario", "healthy", "--kineto", "0", "--kineto-steps", "5:2", "--out", str(tmp_path / "x")
    )
    assert code == 2 and "FIRST:LAST" in text
    code, text = run("--scenario", "healthy", "--step-seconds", "0.01", "--out", str(tmp_path / "x"))
    assert code == 1 and "--step-seconds 0.01" in text
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, text = run("--scenario", "healthy", "--out", str(busy))
    assert code == 1 and "not an fmdiag simulate dump" in text and (busy / "notes.txt").exists()


def test_step_seconds_and_start(tmp_path: Path) -> None:
    out = tmp_path / "s"
    code, text = run(
        "--scenario",
        "healthy",
        "--nodes",
        "2",
        "--gpus",
        "1",
        "--steps",
        "8",
        "--step-seconds",
        "3",
        "--start",
        "2024-01-02T03:04:05Z",
        "--job",
        "my job",
        "--no-metrics",
        "--out",
        str(out),
    )
    assert code == 0, text
    assert not (out / "metrics").exists()
    recs = steprecord.read_file(steprecord.step_files(out / "steps")[0]).records
    assert recs[0].start_ns == 1_704_164_645 * 10**9 and recs[0].job == "my job"
    after_warmup = sorted(r.duration_s for r in recs[3:])
    assert abs(after_warmup[len(after_warmup) // 2] - 3.0) < 0.15


def test_values_beyond_what_the_dump_can_hold_are_refused_clearly(tmp_path: Path) -> None:
    base = (
        "--scenario",
        "healthy",
        "--nodes",
        "1",
        "--gpus",
        "1",
        "--efa-devices",
        "1",
        "--preset",
        "gpt-1.3b-ddp",
    )
    # Nanosecond timestamps end in 2262: a start or a run past that must not wrap silently.
    code, text = run(*base, "--steps", "2", "--start", "1e11", "--out", str(tmp_path / "a"))
    assert code == 2 and "--start" in text
    code, text = run(
        *base, "--steps", "10000", "--step-seconds", "1e9", "--no-metrics", "--out", str(tmp_path / "b")
    )
    assert code == 1 and "--steps" in text and "--step-seconds" in text
    assert not list((tmp_path / "b").rglob("*.jsonl"))
    # Millions of scrapes would exhaust memory: say which option to change instead.
    code, text = run(*base, "--steps", "2", "--step-seconds", "1e8", "--out", str(tmp_path / "c"))
    assert code == 1 and "--scrape-interval" in text
    code, text = run(*base, "--steps", "2", "--seed", "-5", "--out", str(tmp_path / "d"))
    assert code == 2 and "--seed" in text
