"""A wrong --path.* (a bad hostPath mount) is success 0 with the reason, not a healthy empty node."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests
from support import exporter_proc


def _success(exp: Any) -> dict[str, float | None]:
    found = exporter_proc.samples(requests.get(f"{exp.url}/metrics", timeout=30).text)
    return {
        c: exporter_proc.value(found, "fmdiag_exporter_collector_success", collector=c)
        for c in ("efa", "gpu", "host", "lustre", "steps")
    }


def _wait_for_log(exp: Any, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in exp.log() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_missing_rootfs_is_reported_at_start_up_and_by_every_collector_that_needs_it(
    start_exporter: Any, tmp_path: Path
) -> None:
    root = tmp_path / "not-mounted"
    exp = start_exporter(f"--path.rootfs={root}", f"--collector.steps.spool-dir={tmp_path / 'spool'}")
    efa_reason = f"collector efa: no data, reporting success 0: {root}/sys has no class/ directory"
    _wait_for_log(exp, efa_reason)
    assert efa_reason in exp.log()  # before any scrape: at start-up
    for _ in range(3):
        success = _success(exp)
    assert success == {"efa": 0, "gpu": 0, "host": 0, "lustre": 0, "steps": 1}
    log = exp.log()
    assert log.count(efa_reason) == 1  # once, not once per scrape
    assert log.count(f"collector host: no data, reporting success 0: {root}/proc/stat does not exist") == 1
    assert log.count(f"collector lustre: no data, reporting success 0: {root}/proc is not a directory") == 1
    assert log.count("collector gpu: no data, reporting success 0: NVML cannot initialise") == 1


def test_a_valid_root_without_the_hardware_is_healthy(start_exporter: Any, tmp_path: Path) -> None:
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "net").mkdir(parents=True)  # sysfs, but no class/infiniband: no RDMA devices
    exp = start_exporter("--collector.disable-defaults", "--collector.efa", f"--path.sysfs={sysfs}")
    found = exporter_proc.samples(requests.get(f"{exp.url}/metrics", timeout=30).text)
    assert exporter_proc.value(found, "fmdiag_exporter_collector_success", collector="efa") == 1
    assert exporter_proc.value(found, "fmdiag_efa_devices") == 0
    assert "no data" not in exp.log()
