"""Faults injected into a live tree while a real exporter serves it: a device removed, files
made unreadable or garbled, a Lustre filesystem unmounted. The exporter keeps serving, the
affected collector stays up, and each fault shows in the metrics (device count, filesystem
count, parse_errors_total)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import requests

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    sysfs = tmp_path / "sys"
    shutil.copytree(FIXTURES / "efa" / "nitro_v4" / "sys", sysfs, symlinks=True)
    procfs = tmp_path / "proc"
    shutil.copytree(FIXTURES / "lustre" / "v2.10" / "proc", procfs, symlinks=True)
    return sysfs, procfs


def test_faults_on_a_live_tree(start_exporter: Any, tmp_path: Path, helpers: ModuleType) -> None:
    sysfs, procfs = _tree(tmp_path)
    exp = start_exporter(
        "--collector.disable-defaults",
        "--collector.efa",
        "--collector.lustre",
        f"--path.sysfs={sysfs}",
        f"--path.procfs={procfs}",
        f"--path.debugfs={tmp_path / 'debug'}",
    )

    def scrape() -> Any:
        r = requests.get(f"{exp.url}/metrics", timeout=30)
        assert r.status_code == 200
        parsed = helpers.samples(r.text)
        for collector in ("efa", "lustre"):
            assert helpers.value(parsed, "fmdiag_exporter_collector_success", collector=collector) == 1
        return parsed

    def errors(parsed: Any, collector: str) -> float:
        v = helpers.value(parsed, "fmdiag_exporter_collector_parse_errors_total", collector=collector)
        assert v is not None
        return float(v)

    base = scrape()
    assert helpers.value(base, "fmdiag_efa_devices") == 2
    assert helpers.value(base, "fmdiag_lustre_filesystems") == 1
    assert errors(base, "efa") == 0

    dev = sysfs / "class" / "infiniband" / "rdmap79s0"
    counters = dev / "ports" / "1" / "hw_counters"

    # 1. A counter file turned into a directory (root ignores chmod 000; this really fails).
    (counters / "rx_drops").unlink()
    (counters / "rx_drops").mkdir()
    parsed = scrape()
    assert errors(parsed, "efa") == 1
    assert helpers.value(parsed, "fmdiag_efa_rx_drops_total", device="rdmap79s0") is None
    assert helpers.value(parsed, "fmdiag_efa_rx_drops_total", device="rdmap151s0") is not None
    assert helpers.value(parsed, "fmdiag_efa_tx_bytes_total", device="rdmap79s0") == 1_001_111

    # 2. A counter replaced by a dangling symlink, another garbled: both counted, each scrape.
    (counters / "tx_pkts").unlink()
    (counters / "tx_pkts").symlink_to("/nonexistent/tx_pkts")
    (counters / "rx_pkts").write_text("garbage\n")
    parsed = scrape()
    assert errors(parsed, "efa") == 1 + 3
    assert helpers.value(parsed, "fmdiag_efa_tx_packets_total", device="rdmap79s0") is None
    assert helpers.value(parsed, "fmdiag_efa_rx_packets_total", device="rdmap79s0") is None
    assert helpers.value(parsed, "fmdiag_efa_devices") == 2
    assert "rx_pkts" in exp.log() and "not an unsigned integer" in exp.log()

    # 3. The device is removed (hot-unplug): one device fewer, not an error.
    before = errors(parsed, "efa")
    shutil.rmtree(os.path.realpath(dev))
    dev.unlink()
    parsed = scrape()
    assert helpers.value(parsed, "fmdiag_efa_devices") == 1
    assert errors(parsed, "efa") == before
    assert helpers.value(parsed, "fmdiag_efa_info", device="rdmap79s0") is None

    # 4. A Lustre stats file garbled: counted for lustre, the other OST still exported.
    lustre_errors = errors(parsed, "lustre")
    osc = sorted(p for p in (procfs / "fs" / "lustre" / "osc").iterdir() if p.is_dir())
    (osc[0] / "stats").write_bytes(b"\x00\xff garbage\nread_bytes lots samples\n")
    parsed = scrape()
    assert errors(parsed, "lustre") > lustre_errors
    assert len([k for k in parsed if k[0] == "fmdiag_lustre_osc_read_bytes_total"]) == 1

    # 5. The Lustre filesystem is unmounted: its directories vanish; the collector reports 0.
    lustre_errors = errors(parsed, "lustre")
    for kind in ("llite", "osc", "mdc"):
        for inst in (procfs / "fs" / "lustre" / kind).iterdir():
            if inst.is_dir():
                shutil.rmtree(inst)
    parsed = scrape()
    assert helpers.value(parsed, "fmdiag_lustre_filesystems") == 0
    assert not [k for k in parsed if k[0] == "fmdiag_lustre_osc_read_bytes_total"]
    assert errors(parsed, "lustre") == lustre_errors

    # 6. The whole RDMA class disappears (driver unloaded): zero devices, still serving.
    shutil.rmtree(sysfs / "class" / "infiniband")
    parsed = scrape()
    assert helpers.value(parsed, "fmdiag_efa_devices") == 0
    assert requests.get(f"{exp.url}/healthz", timeout=30).status_code == 200
