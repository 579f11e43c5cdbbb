"""End to end on a live simulated node: `fmdiag simulate --live --node-trees` advances the
node's sysfs/procfs/debugfs tree every second, `fmdiag exporter` serves it, the real Prometheus
server scrapes it every second, and rate() of EFA and Lustre bytes over the run must match the
simulator's truth (live-truth.json) within 5%."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

STEP_S = 0.25
#: No checkpoints: a pause of seconds would make a 20 s window unrepresentative of the average.
#: How long Prometheus scrapes after the first sample: ~80 steps, since EFA traffic comes in
#: one burst per step (live-truth.json asks for windows of twenty steps or more).
RUN_S = 20.0
TOLERANCE = 0.05


def _simulate(out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "fmdiag", "simulate", "--scenario", "healthy", "--nodes", "2", "--gpus", "4",
         "--efa-devices", "4", "--osts", "4", "--node-trees", "--live", "--live-seconds", "300",
         "--step-seconds", str(STEP_S), "--checkpoint-every", "0", "--no-metrics", "--out", str(out)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"simulator exited ({proc.returncode}):\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} not written within {timeout_s} s")
        time.sleep(0.1)


def _close(measured: float, truth: float, what: str) -> None:
    assert truth > 0, f"{what}: the simulator's truth is zero"
    print(f"{what}: rate {measured:.4g}/s, truth {truth:.4g}/s ({measured / truth - 1:+.2%})")
    assert abs(measured - truth) <= TOLERANCE * truth, (
        f"{what}: Prometheus rate {measured:.4g}/s vs truth {truth:.4g}/s ({measured / truth - 1:+.1%})"
    )


def test_rates_over_the_run_match_the_simulators_truth(
    tmp_path: Path, start_exporter: Any, start_prometheus: Any
) -> None:
    out = tmp_path / "sim"
    sim = _simulate(out)
    try:
        node = out / "nodes" / "node-000"
        _wait_for(out / "live-truth.json", sim)
        _wait_for(node / "sys" / "class" / "infiniband", sim)
        exp = start_exporter(
            "--collector.disable-defaults", "--collector.efa", "--collector.lustre", f"--path.rootfs={node}"
        )
        prom = start_prometheus([exp.address])
        prom.wait_for("fmdiag_efa_tx_bytes_total", timeout_s=30, min_results=4)
        prom.wait_for("fmdiag_lustre_llite_read_bytes_total", timeout_s=30)
        first = time.time()
        time.sleep(RUN_S)
        end = time.time()
        window = f"{int(end - first)}s"

        truth = json.loads((out / "live-truth.json").read_text())["nodes"]["node-000"]
        for direction in ("tx", "rx"):
            per_device = {
                r["metric"]["device"]: float(r["value"][1])
                for r in prom.query(f"rate(fmdiag_efa_{direction}_bytes_total[{window}])", at=end)
            }
            assert set(per_device) == set(truth["efa_devices"])
            for dev, rates in truth["efa_devices"].items():
                _close(per_device[dev], rates[f"{direction}_bytes_per_s"], f"EFA {dev} {direction}")
            total = prom.query(f"sum(rate(fmdiag_efa_{direction}_bytes_total[{window}]))", at=end)
            _close(
                float(total[0]["value"][1]), truth[f"efa_{direction}_bytes_per_s"], f"EFA node {direction}"
            )

        reads = prom.query(f"sum by (fs) (rate(fmdiag_lustre_llite_read_bytes_total[{window}]))", at=end)
        measured = {r["metric"]["fs"]: float(r["value"][1]) for r in reads}
        for fs, rate in truth["lustre_read_bytes_per_s"].items():
            if rate > 0:
                _close(measured[fs], rate, f"Lustre {fs} read")
        # Every scrape of the run succeeded for both collectors.
        ok = prom.query("min_over_time(fmdiag_exporter_collector_success[1m])", at=end)
        assert sorted((r["metric"]["collector"], r["value"][1]) for r in ok) == [
            ("efa", "1"),
            ("lustre", "1"),
        ]
        assert all(t["health"] == "up" for t in prom.targets())
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(30)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
