"""HTTP edge cases a cluster operator meets: HEAD with auth, bodies on GET, a hung source at shutdown."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import bcrypt
import requests

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
NITRO_V4 = FIXTURES / "efa" / "nitro_v4" / "sys"
EFA_ONLY = ("--collector.disable-defaults", "--collector.efa")


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection or goes quiet for 3 s."""
    sock.settimeout(3.0)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def test_head_401_has_no_body_so_keep_alive_stays_in_sync(start_exporter: Any, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}", f"--web.config.file={config}")
    with socket.create_connection((exp.host, exp.port), timeout=10) as sock:
        sock.sendall(
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = _read_all(sock)
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 401")
    # The next bytes on the connection must be the next response, not the 401's body.
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert rest.endswith(b"\r\n\r\nok\n")


def test_a_request_body_is_never_parsed_as_another_request(start_exporter: Any) -> None:
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}")
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    for framing in (
        b"Content-Length: %d\r\n" % len(smuggled),
        b"Transfer-Encoding: chunked\r\n",
    ):
        with socket.create_connection((exp.host, exp.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + smuggled)
            data = _read_all(sock)
        assert data.startswith(b"HTTP/1.1 200"), data[:80]
        assert data.count(b"HTTP/1.1 ") == 1, data  # no 404 for /smuggled
    # The server still answers normally afterwards.
    assert requests.get(f"{exp.url}/healthz", timeout=30).status_code == 200


def test_sigterm_exits_even_with_a_collector_hung_on_a_source(start_exporter: Any, tmp_path: Path) -> None:
    """A read that never returns (a hung mount; here a FIFO no one writes) must not keep the
    process alive after SIGTERM: systemd and Kubernetes would have to SIGKILL it."""
    sysfs = tmp_path / "sys"
    shutil.copytree(NITRO_V4, sysfs, symlinks=True)
    vendor = sysfs / "devices/pci0000:00/0000:00:1c.0/0000:4f:00.0/vendor"
    vendor.unlink()
    os.mkfifo(vendor)
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={sysfs}", "--scrape.timeout=300ms")
    r = requests.get(f"{exp.url}/metrics", timeout=30)
    assert r.status_code == 200
    assert 'fmdiag_exporter_collector_success{collector="efa"} 0' in r.text
    exp.proc.terminate()
    deadline = time.monotonic() + 8.0
    while exp.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    rc = exp.proc.poll()
    if rc is None:
        exp.proc.kill()
        exp.proc.wait()
    assert rc == 0, "the exporter did not exit within 8 s of SIGTERM"


def test_connections_over_the_cap_are_refused_and_served_again_once_slots_free(start_exporter: Any) -> None:
    """--web.max-connections: idle connections each hold a thread; one more is answered 503."""
    exp = start_exporter(*EFA_ONLY, f"--path.sysfs={NITRO_V4}", "--web.max-connections=3")
    idle = [socket.create_connection((exp.host, exp.port), timeout=10) for _ in range(3)]
    try:
        # Accepted in order after the three idle ones, so it finds no free slot.
        with socket.create_connection((exp.host, exp.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = _read_all(sock)
        assert data == b"" or data.startswith(b"HTTP/1.1 503 "), data[:80]  # refused, never served
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 20
    status = 0
    while time.monotonic() < deadline and status != 200:
        try:
            status = requests.get(f"{exp.url}/healthz", timeout=5).status_code
        except requests.ConnectionError:
            time.sleep(0.1)
    assert status == 200
    assert "refused a connection from 127.0.0.1: 3 connections open (--web.max-connections)" in exp.log()


def test_max_connections_must_not_be_negative(start_exporter: Any) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "fmdiag", "exporter", "--web.max-connections=-1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "--web.max-connections" in run.stderr
