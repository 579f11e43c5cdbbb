"""The real Prometheus server ingests fmdiag's exposition in both formats without errors,
keeps dcgm-exporter's counter names exactly, and reads EFA counters from a real exporter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ENERGY = 123_456_789
#: A server built from fmdiag's own scraper, exposition and HTTP server, with one test
#: collector emitting what no collector in this area emits: a DCGM counter without `_total`.
SERVER = textwrap.dedent(f"""
    import threading
    from fmdiag.exporters.collector import Collector, CollectorContext, ErrorReporter
    from fmdiag.exporters.families import Families
    from fmdiag.exporters.scrape import Scraper
    from fmdiag.exporters.server import ExporterServer, serve
    from fmdiag.exporters.webconfig import WebConfigSource

    GPU = {{"gpu": "0", "UUID": "GPU-1", "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
            "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node-1"}}

    class Dcgm(Collector):
        name = "dcgm_shape"
        def collect(self):
            fams = Families()
            fams.add("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", {ENERGY}, GPU)
            fams.add("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", 0, GPU)
            fams.add("DCGM_FI_DEV_GPU_TEMP", 45, GPU)
            fams.add_histogram("fmdiag_step_duration_seconds", {{"training_job": "j", "rank": "0"}},
                               [(0.5, 1), (1.0, 3)], count=4, total=3.5)
            return fams

    errors = ErrorReporter()
    scraper = Scraper([Dcgm(CollectorContext(errors=errors))], errors, 5.0)
    server = ExporterServer("127.0.0.1:0", scraper, "/metrics", WebConfigSource(None), ["dcgm_shape"])
    print(server.bound, flush=True)
    serve(server, threading.Event())
""")


@pytest.fixture
def dcgm_shaped_server(tmp_path: Path) -> Iterator[str]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def _jobs(address: str) -> str:
    """Two extra jobs scraping the same target, one forced to each format."""
    return "".join(
        f"  - job_name: {fmt}\n    metrics_path: /metrics\n    params: {{format: [{fmt}]}}\n"
        f"    static_configs:\n      - targets: ['{address}']\n"
        for fmt in ("text", "openmetrics")
    )


def test_prometheus_ingests_text_and_openmetrics(dcgm_shaped_server: str, start_prometheus: Any) -> None:
    address = dcgm_shaped_server
    # The main job lets Prometheus negotiate (it asks for OpenMetrics first).
    server = start_prometheus([address], job="negotiated", extra_jobs=_jobs(address))
    for job in ("negotiated", "text", "openmetrics"):
        result = server.wait_for(f'DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{job="{job}"}}')
        assert float(result[0]["value"][1]) == ENERGY
        assert result[0]["metric"]["UUID"] == "GPU-1"
        q = server.wait_for(f'histogram_quantile(0.5, fmdiag_step_duration_seconds_bucket{{job="{job}"}})')
        assert 0.5 < float(q[0]["value"][1]) <= 1.0
    for target in server.targets():
        assert target["health"] == "up", target
        assert target["lastError"] == "", target
    # No sample was renamed: nothing ends in `_total` that should not.
    names = set(server.api("label/__name__/values"))
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in names
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" not in names
    assert "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL" in names
    # The text format declares the DCGM counter as a counter under its exact name.
    meta = server.api(
        "targets/metadata", match_target='{job="text"}', metric="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
    )
    assert [m["type"] for m in meta] == ["counter"]
    # OpenMetrics (forced, and what Prometheus negotiates by itself) types it unknown.
    for job in ("openmetrics", "negotiated"):
        meta = server.api(
            "targets/metadata", match_target=f'{{job="{job}"}}', metric="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
        )
        assert [m["type"] for m in meta] == ["unknown"], job
    # rate() works on it from either format.
    for job in ("text", "openmetrics"):
        server.wait_for(f'rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION{{job="{job}"}}[5s])')


def test_prometheus_scrapes_real_exporter_efa(
    tmp_path: Path, start_exporter: Any, start_prometheus: Any
) -> None:
    exp = start_exporter(
        "--collector.disable-defaults",
        "--collector.efa",
        f"--path.sysfs={FIXTURES / 'efa' / 'nitro_v4' / 'sys'}",
    )
    server = start_prometheus([exp.address])
    result = server.wait_for('fmdiag_efa_tx_bytes_total{device="rdmap79s0"}')
    assert float(result[0]["value"][1]) == 1_001_111
    assert result[0]["metric"]["port"] == "1"
    up = server.wait_for('fmdiag_exporter_collector_success{collector="efa"}')
    assert up[0]["value"][1] == "1"
    info = server.query("fmdiag_efa_info")
    assert sorted(r["metric"]["pci_address"] for r in info) == ["0000:4f:00.0", "0000:97:00.0"]
    for target in server.targets():
        assert target["health"] == "up" and target["lastError"] == ""
