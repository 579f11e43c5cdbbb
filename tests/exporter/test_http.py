"""A real `python -m fmdiag exporter` process on a loopback port, over HTTP and HTTPS."""

from __future__ import annotations

import gzip
import http.client
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import bcrypt
import pytest
import requests
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NITRO_V4 = FIXTURES / "efa" / "nitro_v4" / "sys"
PROM_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
EFA_ONLY = ("--collector.disable-defaults", "--collector.efa")


def test_text_openmetrics_landing_health(start_exporter: Any, helpers: ModuleType) -> None:
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}")
    r = requests.get(f"{exp.url}/metrics", timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    parsed = helpers.samples(r.text)
    assert helpers.value(parsed, "fmdiag_efa_devices") == 2
    assert helpers.value(parsed, "fmdiag_efa_tx_bytes_total", device="rdmap79s0") == 1_001_111
    assert helpers.value(parsed, "fmdiag_exporter_collector_success", collector="efa") == 1
    assert helpers.value(parsed, "fmdiag_exporter_collector_parse_errors_total", collector="efa") == 0
    assert "# TYPE fmdiag_efa_tx_bytes_total counter" in r.text

    r = requests.get(f"{exp.url}/metrics", headers={"Accept": PROM_ACCEPT}, timeout=30)
    assert r.headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert r.text.endswith("# EOF\n")
    fams = {f.name: f for f in om_parse(r.text)}
    assert fams["fmdiag_efa_tx_bytes"].type == "counter"

    r = requests.get(f"{exp.url}/metrics?format=text", headers={"Accept": PROM_ACCEPT}, timeout=30)
    assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    r = requests.get(f"{exp.url}/metrics?format=openmetrics", timeout=30)
    assert r.headers["Content-Type"].startswith("application/openmetrics-text") and r.text.endswith("# EOF\n")
    assert requests.get(f"{exp.url}/metrics?format=json", timeout=30).status_code == 400

    r = requests.get(f"{exp.url}/", timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["Content-Type"]
    assert 'href="/metrics"' in r.text and "efa" in r.text
    r = requests.get(f"{exp.url}/healthz", timeout=30)
    assert (r.status_code, r.text) == (200, "ok\n")
    assert requests.get(f"{exp.url}/nope", timeout=30).status_code == 404
    assert requests.post(f"{exp.url}/metrics", timeout=30).status_code == 501
    head = requests.head(f"{exp.url}/metrics", timeout=30)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) > 0


def test_gzip_and_keep_alive(start_exporter: Any) -> None:
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}")
    conn = http.client.HTTPConnection(exp.host, exp.port, timeout=30)
    bodies = []
    for encoding in ("gzip", "identity", "gzip;q=0"):
        conn.request("GET", "/metrics", headers={"Accept-Encoding": encoding})
        resp = conn.getresponse()
        raw = resp.read()
        if encoding == "gzip":
            assert resp.getheader("Content-Encoding") == "gzip"
            raw = gzip.decompress(raw)
        else:
            assert resp.getheader("Content-Encoding") is None
        bodies.append(raw)
    conn.close()  # three requests over one connection
    assert all(b"fmdiag_efa_devices 2" in b for b in bodies)


def test_collector_flags(start_exporter: Any, helpers: ModuleType) -> None:
    exp = start_exporter("--no-collector.efa", f"--path.sysfs={NITRO_V4}")
    parsed = helpers.samples(requests.get(f"{exp.url}/metrics", timeout=30).text)
    assert helpers.value(parsed, "fmdiag_efa_devices") is None
    assert helpers.value(parsed, "fmdiag_exporter_collector_success", collector="efa") is None

    exp = start_exporter("--collector.disable-defaults", f"--path.sysfs={NITRO_V4}")
    parsed = helpers.samples(requests.get(f"{exp.url}/metrics", timeout=30).text)
    assert not [k for k in parsed if k[0] == "fmdiag_exporter_collector_success"]
    assert helpers.value(parsed, "fmdiag_exporter_build_info") == 1

    exp = start_exporter(
        *EFA_ONLY,
        f"--path.sysfs={NITRO_V4}",
        "--collector.efa.device-exclude=rdmap151s0",
        "--web.telemetry-path=/m",
    )
    parsed = helpers.samples(requests.get(f"{exp.url}/m", timeout=30).text)
    assert helpers.value(parsed, "fmdiag_efa_devices") == 1
    assert requests.get(f"{exp.url}/metrics", timeout=30).status_code == 404


def test_rootfs_roots_the_other_paths(start_exporter: Any, helpers: ModuleType) -> None:
    exp = start_exporter(*EFA_ONLY, f"--path.rootfs={NITRO_V4.parent}")
    parsed = helpers.samples(requests.get(f"{exp.url}/metrics", timeout=30).text)
    assert helpers.value(parsed, "fmdiag_efa_devices") == 2
    assert f"sysfs={NITRO_V4}" in exp.log()


def test_every_registered_collector_has_flags() -> None:
    from fmdiag.exporters.collector import REGISTRY
    from fmdiag.exporters.collectors import discover

    assert discover() == {}, "a collector module failed to import"
    out = subprocess.run(
        [sys.executable, "-m", "fmdiag", "exporter", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name, cls in REGISTRY.items():
        assert f"--collector.{name} / --no-collector.{name}" in out
        for option in cls.options:
            assert f"--collector.{name}.{option.name}" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--collector.efa.device-exclude=("], "device-exclude"),
        (["--web.listen-address=nonsense"], "listen address"),
        (["--scrape.timeout=fast"], "not a duration"),
        (["--web.telemetry-path=/healthz"], "telemetry-path"),
        (["--web.config.file=/nonexistent/web.yml"], "cannot read web config"),
        (["--collector.steps.stale-after=soon"], "Invalid value for '--collector.steps.stale-after'"),
        (["--collector.host.max-processes=many"], "'many' is not an integer"),
        # A disabled collector's flags are checked too: a typo never waits for the day it is enabled.
        (["--no-collector.lustre", "--collector.lustre.source=nfs"], "expected one of auto, proc"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(args: list[str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "fmdiag", "exporter", "--web.listen-address=127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert message in r.stderr


def _web_config(tmp_path: Path, tls: dict[str, Path], extra: str = "") -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(
        "tls_server_config:\n"
        f"  cert_file: {tls['server.crt']}\n"
        f"  key_file: {tls['server.key']}\n"
        f"{extra}"
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    return path


def test_tls_and_basic_auth(
    start_exporter: Any, tmp_path: Path, tls_files: dict[str, Path], helpers: ModuleType
) -> None:
    config = _web_config(tmp_path, tls_files)
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}", f"--web.config.file={config}")
    assert exp.scheme == "https"
    ca = str(tls_files["server.crt"])
    url = f"{exp.url}/metrics"
    r = requests.get(url, verify=ca, auth=("prometheus", "s3cret"), timeout=30)
    assert r.status_code == 200
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert helpers.value(helpers.samples(r.text), "fmdiag_efa_devices") == 2
    r = requests.get(url, verify=ca, timeout=30)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.get(url, verify=ca, auth=("prometheus", "wrong"), timeout=30).status_code == 401
    assert requests.get(f"{exp.url}/", verify=ca, timeout=30).status_code == 401
    assert requests.get(f"{exp.url}/healthz", verify=ca, timeout=30).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{exp.address}/metrics", timeout=30)
    # The server still answers after a failed plain-HTTP handshake.
    assert requests.get(url, verify=ca, auth=("prometheus", "s3cret"), timeout=30).status_code == 200


def test_mutual_tls(start_exporter: Any, tmp_path: Path, tls_files: dict[str, Path]) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tls_files['ca.crt']}\n"
    config = _web_config(tmp_path, tls_files, extra)
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}", f"--web.config.file={config}")
    ca = str(tls_files["server.crt"])
    url = f"{exp.url}/metrics"
    with pytest.raises(requests.exceptions.ConnectionError):  # SSLError, or a reset under TLS 1.3
        requests.get(url, verify=ca, auth=("prometheus", "s3cret"), timeout=30)
    client = (str(tls_files["client.crt"]), str(tls_files["client.key"]))
    r = requests.get(url, verify=ca, cert=client, auth=("prometheus", "s3cret"), timeout=30)
    assert r.status_code == 200


def test_sigterm_exits_cleanly(start_exporter: Any) -> None:
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}")
    assert requests.get(f"{exp.url}/metrics", timeout=30).status_code == 200
    assert exp.stop() == 0
    assert "shutting down" in exp.log()
