"""Web config defects an operator would hit: certificate rotation, impossible bcrypt costs."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from fmdiag.exporters.webconfig import WebConfigError, WebConfigSource, parse_web_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NITRO_V4 = FIXTURES / "efa" / "nitro_v4" / "sys"
HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()


@pytest.mark.parametrize("cost", ["00", "03", "32", "99"])
def test_bcrypt_cost_outside_4_to_31_is_rejected(cost: str) -> None:
    """bcrypt cannot verify such a hash; cost 32..99 also made start-up compute a dummy hash
    at cost 31 (hours) before serving anything."""
    hashed = f"$2y${cost}${HASH[7:]}"
    assert len(hashed) == 60
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.prom: .*cost"):
        parse_web_config(f"basic_auth_users: {{prom: '{hashed}'}}\n", Path("/etc"), "web.yml")


def _new_cert(d: Path, cn: str) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "server.key", "-out", "server.crt", "-days", "2", "-subj", f"/CN={cn}",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        cwd=d, check=True, capture_output=True,
    )  # fmt: skip


def _served_cert(host: str, port: int) -> str:
    return ssl.get_server_certificate((host, port), timeout=10)


def test_rotated_certificate_is_served_without_touching_the_web_config(
    start_exporter: Any, tmp_path: Path
) -> None:
    """cert-manager (or a Secret update) replaces the certificate and key, not web.yml:
    the new certificate must be served, as exporter-toolkit does."""
    _new_cert(tmp_path, "first")
    config = tmp_path / "web.yml"
    config.write_text(
        textwrap.dedent("""\
        tls_server_config:
          cert_file: server.crt
          key_file: server.key
        """)
    )
    exp = start_exporter("--collector.disable-defaults", "--collector.efa", f"--path.sysfs={NITRO_V4}",
                         f"--web.config.file={config}")  # fmt: skip
    first = _served_cert(exp.host, exp.port)
    staging = tmp_path / "next"
    staging.mkdir()
    _new_cert(staging, "second")
    for name in ("server.key", "server.crt"):
        shutil.copy(staging / name, tmp_path / f"{name}.tmp")
        (tmp_path / f"{name}.tmp").rename(tmp_path / name)
    deadline = time.monotonic() + 15
    served = first
    while served == first and time.monotonic() < deadline:
        time.sleep(0.3)
        served = _served_cert(exp.host, exp.port)
    assert served == (staging / "server.crt").read_text().replace("\r", "")


def test_source_notices_changed_tls_files(tmp_path: Path) -> None:
    _new_cert(tmp_path, "first")
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n")
    src = WebConfigSource(config)
    src._CHECK_INTERVAL_S = 0.0
    before = src.current()
    assert src.current() is before  # nothing changed: nothing rebuilt
    _new_cert(tmp_path, "second")
    assert src.current() is not before
