"""The README's exporter demo, run as written: a live simulated node with the culprit GPU.

Only what a test must change is changed: the demo folder (a fresh temporary one) and the port
(a free one on 127.0.0.1 instead of :9847 on every interface).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import exporter_proc, prom

REPO = Path(__file__).resolve().parents[2]


def demo_block() -> str:
    blocks = re.findall(r"```sh\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if "fmdiag simulate" in b and "fmdiag exporter" in b]
    return block


def _stop_group(pgid: int) -> None:
    """SIGTERM the demo's process group (simulator, exporter), SIGKILL what is left after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def test_the_readme_demo_shows_the_thermal_straggler() -> None:
    pytest.importorskip("numpy", reason="fmdiag simulate needs the analyze extra")
    block = demo_block()
    assert "--live" in block and "node-000" in block and "until curl -s localhost:9847/metrics" in block
    port = prom.free_port()
    with tempfile.TemporaryDirectory(prefix="demo-", dir="/tmp") as tmp:
        script = (
            block.replace("/tmp/demo", f"{tmp}/demo")  # simulate --out refuses a non-empty folder
            .replace("localhost:9847", f"127.0.0.1:{port}")
            .replace("fmdiag exporter ", f"fmdiag exporter --web.listen-address=127.0.0.1:{port} ")
        )
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        # Output to files, not pipes: the demo's background jobs keep their copies open.
        out_path, err_path = Path(tmp) / "demo.out", Path(tmp) / "demo.err"
        with out_path.open("w") as out_f, err_path.open("w") as err_f:
            proc = subprocess.Popen(
                ["bash", "-e", "-c", script],
                stdout=out_f,
                stderr=err_f,
                env=env,
                start_new_session=True,  # the demo's background jobs share this process group
            )
            try:
                proc.wait(timeout=120)
            finally:
                _stop_group(proc.pid)
        out, err = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, err
    found = exporter_proc.samples("".join(line + "\n" for line in out.splitlines()))
    clocks = {dict(lab)["gpu"]: v for (n, lab), v in found.items() if n == "DCGM_FI_DEV_SM_CLOCK"}
    assert len(clocks) == 8
    assert clocks.pop("3") < 1400 and set(clocks.values()) == {1980.0}  # the culprit, throttled
    reasons = exporter_proc.value(found, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS", gpu="3")
    assert reasons is not None and int(reasons) & 0x48 == 0x48  # HW slowdown + HW thermal slowdown
    assert (
        exporter_proc.value(found, "fmdiag_gpu_clocks_event_active", gpu="3", reason="hw_thermal_slowdown")
        == 1
    )
    assert all(dict(lab)["hostname"] == "node-000" for (n, lab) in found if n == "DCGM_FI_DEV_SM_CLOCK")
    steps = {dict(lab)["rank"] for (n, lab) in found if n == "fmdiag_step_last_duration_seconds"}
    assert steps == {str(r) for r in range(8)}  # the spool was found and its records are live
