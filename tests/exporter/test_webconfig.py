"""Web config parsing (exporter-toolkit format), basic auth and reloads, without a server."""

from __future__ import annotations

import base64
import os
import textwrap
from pathlib import Path
from unittest import mock

import bcrypt
import pytest

from fmdiag.exporters import webconfig
from fmdiag.exporters.webconfig import BasicAuth, WebConfigError, WebConfigSource, parse_web_config

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()


def parse(text: str, base: Path = Path("/etc/fmdiag")) -> webconfig.WebConfig:
    return parse_web_config(textwrap.dedent(text), base, "web.yml")


def test_full_config() -> None:
    cfg = parse(f"""
        tls_server_config:
          cert_file: server.crt
          key_file: /abs/server.key
          client_auth_type: RequireAndVerifyClientCert
          client_ca_file: ca.crt
          min_version: TLS13
        http_server_config:
          headers:
            x-frame-options: deny
        basic_auth_users:
          prometheus: '{HASH}'
    """)
    assert cfg.tls is not None
    assert cfg.tls.cert_file == Path("/etc/fmdiag/server.crt")
    assert cfg.tls.key_file == Path("/abs/server.key")
    assert cfg.tls.client_ca_file == Path("/etc/fmdiag/ca.crt")
    assert cfg.tls.min_version == "TLS13"
    assert cfg.headers == {"X-Frame-Options": "deny"}
    assert cfg.users == {"prometheus": HASH.encode()}


def test_empty_file_means_no_tls_no_auth() -> None:
    cfg = parse("")
    assert cfg.tls is None and cfg.users == {} and cfg.headers == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_config: {}", "tls_config: unknown field"),
        ("tls_server_config: {cert_file: a}", "cert_file and key_file are both required"),
        (
            "tls_server_config: {cert_file: a, key_file: b, certfile: c}",
            "tls_server_config.certfile: unknown field",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, cipher_suites: [x]}",
            "cipher_suites: not supported",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAnyClientCert, "
            "client_ca_file: c}",
            "RequireAnyClientCert is not supported",
        ),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Maybe}", "unknown value 'Maybe'"),
        (
            "tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}",
            "client_ca_file: required",
        ),
        (
            "tls_server_config: {cert_file: a, key_file: b, min_version: SSL3}",
            "min_version: unknown TLS version",
        ),
        ("tls_server_config: {cert_file: '', key_file: b}", "cert_file: expected a non-empty string"),
        ("basic_auth_users: {alice: plaintext}", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users: [alice]", "basic_auth_users: expected a mapping"),
        ("http_server_config: {headers: {Server: x}}", "headers.Server: header not allowed"),
        ("http_server_config: {gzip: true}", "http_server_config.gzip: unknown field"),
        ("tls_server_config: [", "not valid YAML"),
        ("- a\n- b", "expected a mapping"),
    ],
)
def test_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(WebConfigError, match=r"web\.yml") as info:
        parse(text)
    assert message in str(info.value)


def test_missing_cert_file_fails_at_load(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config: {cert_file: nope.crt, key_file: nope.key}\n")
    with pytest.raises(WebConfigError, match=r"nope\.crt"):
        webconfig.load_web_config(path)
    with pytest.raises(WebConfigError, match="cannot read web config"):
        webconfig.load_web_config(tmp_path / "absent.yml")


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth() -> None:
    auth = BasicAuth({"prom": HASH.encode()})
    assert auth.enabled
    assert auth.check(header("prom", "secret"))
    assert not auth.check(header("prom", "wrong"))
    assert not auth.check(header("other", "secret"))
    for bad in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert not auth.check(bad)
    assert BasicAuth({}).check(None)


def test_basic_auth_caches_successes_only() -> None:
    auth = BasicAuth({"prom": HASH.encode()})
    with mock.patch.object(webconfig.bcrypt, "checkpw", wraps=bcrypt.checkpw) as checkpw:
        for _ in range(5):
            assert auth.check(header("prom", "secret"))
            assert not auth.check(header("prom", "bad"))
    assert checkpw.call_count == 1 + 5


def test_htpasswd_2y_hashes_work() -> None:
    hashed = "$2y$" + HASH[4:]
    auth = BasicAuth({"prom": hashed.encode()})
    assert auth.check(header("prom", "secret"))


def test_source_reloads_changed_file_and_keeps_old_on_error(tmp_path: Path) -> None:
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users: {{a: '{HASH}'}}\n")
    src = WebConfigSource(path)
    src._CHECK_INTERVAL_S = 0.0
    assert list(src.current().config.users) == ["a"]
    path.write_text(f"basic_auth_users: {{b: '{HASH}'}}\n")
    os.utime(path, ns=(1, 10**18))
    assert list(src.current().config.users) == ["b"]
    path.write_text("basic_auth_users: {b: broken}\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert list(src.current().config.users) == ["b"]  # broken file: previous config stays


def test_no_file_means_plain_http() -> None:
    src = WebConfigSource(None)
    assert not src.tls_enabled
    assert not src.current().auth.enabled
