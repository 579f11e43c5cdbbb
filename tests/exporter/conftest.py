"""Fixtures for exporter tests: real exporter subprocesses on loopback ports, writable EFA trees."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def efa_tree(tmp_path: Path) -> Callable[[str], Path]:
    """A writable copy of tests/fixtures/efa/<name>/sys (symlinks kept), for fault injection."""

    def copy(name: str) -> Path:
        dest = tmp_path / name / "sys"
        shutil.copytree(FIXTURES / "efa" / name / "sys", dest, symlinks=True)
        return dest

    return copy


def _openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-signed server certificate for 127.0.0.1, and a client CA with one client cert."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "server.key",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        cwd=d,
    )
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=fmdiag test client CA",
        cwd=d,
    )
    _openssl(
        "req", "-new", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=prometheus", cwd=d
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
        cwd=d,
    )
    return {name: d / name for name in ("server.crt", "server.key", "ca.crt", "client.crt", "client.key")}
