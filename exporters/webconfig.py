"""``--web.config.file``: TLS and basic auth in the format of Prometheus' exporter-toolkit.

The same file that secures node_exporter secures fmdiag's exporter::

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12
    http_server_config:
      headers: {X-Frame-Options: deny}
    basic_auth_users:
      prometheus: $2y$10$...          # bcrypt hash, e.g. from `htpasswd -nBC 10 ""`

Unknown keys are errors naming the key (exporter-toolkit is just as strict), so a typo cannot
silently leave an endpoint open. The file is re-read when it changes, like exporter-toolkit
does, so certificates and users rotate without a restart; a broken new version is logged
and the previous one stays in force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

log = logging.getLogger("fmdiag.exporter")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
#: exporter-toolkit's client_auth_type values Python's ssl module can honour exactly.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Accepted by exporter-toolkit, but not implementable with Python's ssl module.
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert")
#: The response headers exporter-toolkit lets a web config set.
_ALLOWED_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version")
_TLS_KEYS_UNSUPPORTED = (
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
    "cert",
    "key",
)
_HTTP_KEYS = ("headers", "http2")


class WebConfigError(ValueError):
    """A web config that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class TLSConfig:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str | None = None


@dataclass(frozen=True)
class WebConfig:
    tls: TLSConfig | None = None
    #: user -> bcrypt hash
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _check_keys(
    d: dict[str, Any], allowed: tuple[str, ...], where: str, unsupported: tuple[str, ...] = ()
) -> None:
    for key in d:
        if key in unsupported:
            raise WebConfigError(f"{where}.{key}: not supported by fmdiag's exporter")
        if key not in allowed:
            raise WebConfigError(f"{where}.{key}: unknown field (allowed: {', '.join(allowed)})")


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise WebConfigError(f"{where}: expected a non-empty string")
    return value


def parse_web_config(text: str, base_dir: Path, source: str = "web config") -> WebConfig:
    """Validate a web-config document; relative file paths resolve against ``base_dir``."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{source}: not valid YAML: {exc}") from None
    top = _mapping(doc, source)
    _check_keys(top, _TOP_KEYS, source)

    tls: TLSConfig | None = None
    tls_doc = _mapping(top.get("tls_server_config"), f"{source}: tls_server_config")
    if tls_doc:
        where = f"{source}: tls_server_config"
        _check_keys(tls_doc, _TLS_KEYS, where, _TLS_KEYS_UNSUPPORTED)
        if "cert_file" not in tls_doc or "key_file" not in tls_doc:
            raise WebConfigError(f"{where}: cert_file and key_file are both required")
        auth = str(tls_doc.get("client_auth_type", "NoClientCert"))
        if auth in _CLIENT_AUTH_UNSUPPORTED:
            raise WebConfigError(
                f"{where}.client_auth_type: {auth} is not supported (use one of {', '.join(_CLIENT_AUTH)})"
            )
        if auth not in _CLIENT_AUTH:
            raise WebConfigError(f"{where}.client_auth_type: unknown value {auth!r}")
        ca = tls_doc.get("client_ca_file")
        if auth != "NoClientCert" and not ca:
            raise WebConfigError(f"{where}.client_ca_file: required by client_auth_type {auth}")
        versions = {}
        for key in ("min_version", "max_version"):
            if key in tls_doc:
                v = str(tls_doc[key])
                if v not in _TLS_VERSIONS:
                    raise WebConfigError(
                        f"{where}.{key}: unknown TLS version {v!r} (one of {', '.join(_TLS_VERSIONS)})"
                    )
                versions[key] = v

        def resolve(p: object, key: str) -> Path:
            path = Path(_string(p, f"{where}.{key}"))
            return path if path.is_absolute() else base_dir / path

        tls = TLSConfig(
            cert_file=resolve(tls_doc["cert_file"], "cert_file"),
            key_file=resolve(tls_doc["key_file"], "key_file"),
            client_auth_type=auth,
            client_ca_file=resolve(ca, "client_ca_file") if ca else None,
            min_version=versions.get("min_version", "TLS12"),
            max_version=versions.get("max_version"),
        )

    http_doc = _mapping(top.get("http_server_config"), f"{source}: http_server_config")
    _check_keys(http_doc, _HTTP_KEYS, f"{source}: http_server_config")
    headers: dict[str, str] = {}
    for name, value in _mapping(http_doc.get("headers"), f"{source}: http_server_config.headers").items():
        canonical = next((h for h in _ALLOWED_HEADERS if h.lower() == name.lower()), None)
        if canonical is None:
            raise WebConfigError(
                f"{source}: http_server_config.headers.{name}: "
                f"header not allowed (allowed: {', '.join(_ALLOWED_HEADERS)})"
            )
        headers[canonical] = _string(value, f"{source}: http_server_config.headers.{name}")

    users: dict[str, bytes] = {}
    for user, hashed in _mapping(top.get("basic_auth_users"), f"{source}: basic_auth_users").items():
        where = f"{source}: basic_auth_users.{user}"
        h = _string(hashed, where).encode()
        if not h.startswith((b"$2a$", b"$2b$", b"$2y$")) or len(h) != 60 or not h[4:6].isdigit():
            raise WebConfigError(f"{where}: not a bcrypt hash ($2a$/$2b$/$2y$, 60 characters)")
        if not 4 <= int(h[4:6]) <= 31:
            # bcrypt cannot check such a hash, and the dummy hash for unknown users would
            # take hours at the clamped cost 31.
            raise WebConfigError(f"{where}: bcrypt cost {int(h[4:6])} is outside 4..31")
        if ":" in user:
            raise WebConfigError(f"{where}: a user name cannot contain ':'")
        users[user] = h
    return WebConfig(tls=tls, users=users, headers=headers)


def load_web_config(path: Path) -> WebConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(f"{path}: cannot read web config: {exc}") from None
    config = parse_web_config(text, path.parent, str(path))
    if config.tls is not None:
        build_ssl_context(config.tls, str(path))  # fail at load, not at the first connection
    return config


def build_ssl_context(tls: TLSConfig, source: str = "web config") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    if tls.max_version is not None:
        ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"{source}: tls_server_config: cannot load cert_file {tls.cert_file} "
            f"/ key_file {tls.key_file}: {exc}"
        ) from None
    ctx.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if tls.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(
                f"{source}: tls_server_config.client_ca_file {tls.client_ca_file}: {exc}"
            ) from None
    return ctx


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, caching successes.

    bcrypt is deliberately slow (~50 ms at cost 10); Prometheus sends the same credentials
    every scrape, so verified (user, password) pairs are remembered, keyed by a SHA-256
    digest rather than the password itself, as exporter-toolkit does.
    """

    _CACHE_MAX = 256

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._dummy = b""
        if users:
            # Same cost as a real hash, so an unknown user costs as much time as a known one.
            cost = int(next(iter(users.values()))[4:6].decode() or "10")
            self._dummy = bcrypt.hashpw(b"fmdiag-no-such-user", bcrypt.gensalt(rounds=max(4, min(cost, 31))))
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def check(self, header: str | None) -> bool:
        if not self._users:
            return True
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_b, sep, password = decoded.partition(b":")
        if not sep:
            return False
        user = user_b.decode("utf-8", "replace")
        key = hashlib.sha256(user_b + b"\0" + password).digest()
        with self._lock:
            if key in self._ok:
                self._ok.move_to_end(key)
                return True
        hashed = self._users.get(user)
        # Spend the same bcrypt time on unknown users so timing does not reveal who exists.
        try:
            ok = bcrypt.checkpw(password, hashed if hashed is not None else self._dummy)
        except ValueError:
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                self._ok[key] = None
                if len(self._ok) > self._CACHE_MAX:
                    self._ok.popitem(last=False)
        return ok


@dataclass(frozen=True)
class ActiveConfig:
    """What the server applies to a connection: built once per version of the file."""

    config: WebConfig
    ssl_context: ssl.SSLContext | None
    auth: BasicAuth


_FileStamp = tuple[int, int, int] | None


def _file_stamp(path: Path) -> _FileStamp:
    try:
        st = os.stat(path)  # follows symlinks: a Kubernetes Secret swaps its ..data link
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class WebConfigSource:
    """The current web config, re-read when it or its TLS files change (checked ≤ 1/s)."""

    _CHECK_INTERVAL_S = 1.0

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[_FileStamp, ...] = ()
        self._checked = 0.0
        self._active = self._load() if path is not None else ActiveConfig(WebConfig(), None, BasicAuth({}))

    @property
    def tls_enabled(self) -> bool:
        return self._active.ssl_context is not None

    def _stat(self, config: WebConfig) -> tuple[_FileStamp, ...]:
        """The web config's stamp and its TLS files' (cert-manager rotates those alone)."""
        assert self._path is not None
        files = [self._path]
        if config.tls is not None:
            files += [config.tls.cert_file, config.tls.key_file]
            if config.tls.client_ca_file is not None:
                files.append(config.tls.client_ca_file)
        return tuple(_file_stamp(f) for f in files)

    def _load(self) -> ActiveConfig:
        assert self._path is not None
        main = _file_stamp(self._path)
        config = load_web_config(self._path)
        # Stamped before the context used is built: a change after this is seen next time.
        self._stamp = (main, *self._stat(config)[1:])
        ctx = build_ssl_context(config.tls, str(self._path)) if config.tls is not None else None
        return ActiveConfig(config, ctx, BasicAuth(config.users))

    def current(self) -> ActiveConfig:
        if self._path is None:
            return self._active
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self._CHECK_INTERVAL_S:
                return self._active
            self._checked = now
            stamp = self._stat(self._active.config)
            if stamp == self._stamp:
                return self._active
            try:
                new = self._load()
            except WebConfigError as exc:
                self._stamp = stamp  # do not retry a broken file until it changes again
                log.error("web config changed but cannot be used, keeping the previous one: %s", exc)
                return self._active
            if (new.ssl_context is None) != (self._active.ssl_context is None):
                log.error(
                    "web config %s: switching TLS on or off needs a restart; keeping the previous config",
                    self._path,
                )
                return self._active
            log.info("web config %s reloaded", self._path)
            self._active = new
            return new
