"""--live: trees advance with wall-clock time at the rates live-truth.json states."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fmdiag import steprecord
from fmdiag.simulate.cluster.model import NS
from fmdiag.simulate.dump import SimOptions
from fmdiag.simulate.live import LiveRun

START_NS = 1_760_000_000 * NS


def _efa_tx(root: Path) -> dict[str, int]:
    ib = root / "sys" / "class" / "infiniband"
    return {
        d.name: int((d / "ports" / "1" / "hw_counters" / "tx_bytes").read_text())
        for d in sorted(ib.iterdir())
    }


def _lustre_read(root: Path) -> int:
    osc = root / "sys" / "kernel" / "debug" / "lustre" / "osc"
    total = 0
    for d in osc.iterdir():
        for line in (d / "stats").read_text().splitlines():
            parts = line.split()
            if parts and parts[0] == "read_bytes":
                total += int(parts[6])
    return total


@pytest.mark.parametrize("scenario", ["healthy", "network-node"])
def test_tree_rates_match_live_truth(
    tmp_path: Path, small_opts: Callable[..., SimOptions], scenario: str
) -> None:
    # No checkpoint in the window: a 30 s checkpoint would make two minutes unrepresentative.
    run = LiveRun(small_opts(scenario, nodes=2, checkpoint_every=0), tmp_path, START_NS)
    run.tick(5 * NS)
    host = "node-001"
    root = tmp_path / "nodes" / host
    tx0, rd0 = _efa_tx(root), _lustre_read(root)
    run.tick(125 * NS)  # two minutes later: about 100 steps
    tx1, rd1 = _efa_tx(root), _lustre_read(root)
    truth = json.loads((tmp_path / "live-truth.json").read_text())
    assert truth["format"] == "fmdiag-live-truth" and truth["scenario"] == scenario
    # It names the fault and its culprit, as truth.json does.
    assert [f["kind"] for f in truth["faults"]] == [f.kind.value for f in run.model.scenario.faults]
    if scenario == "network-node":
        assert truth["faults"][0]["culprit"]["efa_device"]
    want = truth["nodes"][host]
    for dev, rates in want["efa_devices"].items():
        assert (tx1[dev] - tx0[dev]) / 120 == pytest.approx(rates["tx_bytes_per_s"], rel=0.05)
    assert sum(tx1.values()) - sum(tx0.values()) == pytest.approx(120 * want["efa_tx_bytes_per_s"], rel=0.05)
    assert (rd1 - rd0) / 120 == pytest.approx(want["lustre_read_bytes_per_s"]["lustrefs"], rel=0.05)
    # Steps completed so far are in the dump's steps/ and the node's spool, nothing beyond now.
    for folder in (tmp_path / "steps", root / "spool"):
        for path in steprecord.step_files(folder):
            recs = steprecord.read_file(path).records
            assert recs and max(r.end_ns for r in recs) <= START_NS + 125 * NS
            assert [r.step for r in recs] == list(range(len(recs)))
    run.finish(125 * NS)
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["steps_total"] == len(truth["steps"]) > 50
    written = [len(steprecord.read_file(p).records) for p in steprecord.step_files(tmp_path / "steps")]
    assert truth["steps_total"] == min(written)  # truth names no step the records lack


def test_live_command_stops_on_sigterm(tmp_path: Path) -> None:
    out = tmp_path / "live"
    cmd = [
        sys.executable,
        "-m",
        "fmdiag",
        "simulate",
        "--scenario",
        "straggler-thermal",
        "--nodes",
        "1",
        "--gpus",
        "2",
        "--efa-devices",
        "2",
        "--osts",
        "2",
        "--step-seconds",
        "0.3",
        "--live",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})
    try:
        deadline = time.monotonic() + 60
        spool = out / "nodes" / "node-000" / "spool"
        while time.monotonic() < deadline:
            files = list(spool.glob("*.jsonl")) if spool.exists() else []
            if files and all(len(steprecord.read_file(f).records) >= 5 for f in files):
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else:
            pytest.fail("no step records within 60 s")
        state0 = json.loads((out / "nodes" / "node-000" / "nvml" / "state.json").read_text())
        time.sleep(1.5)
        state1 = json.loads((out / "nodes" / "node-000" / "nvml" / "state.json").read_text())
        assert state1["time_s"] > state0["time_s"]
        assert state1["gpus"][0]["energy_mj"] > state0["gpus"][0]["energy_mj"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    truth = json.loads((out / "truth.json").read_text())
    assert truth["parameters"]["live"] is True and truth["class_counts"] == {"straggler": len(truth["steps"])}
