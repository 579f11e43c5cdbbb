"""The exporter's HTTP server: /metrics, /healthz and a landing page, optionally TLS + basic auth.

A ``ThreadingHTTPServer`` with HTTP/1.1 keep-alive: Prometheus keeps its connection open, so
one thread per connection costs nothing per scrape, and the work of a scrape is shared by
concurrent requests (see :mod:`fmdiag.exporters.scrape`). TLS handshakes run in the
connection's own thread, so a slow or broken client cannot stall the accept loop.
"""

from __future__ import annotations

import gzip
import html
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fmdiag import __version__
from fmdiag.exporters.exposition import Format, negotiate
from fmdiag.exporters.scrape import Scraper
from fmdiag.exporters.webconfig import WebConfigSource

log = logging.getLogger("fmdiag.exporter")

#: Responses smaller than this are not worth compressing even when the client accepts gzip.
_GZIP_MIN_BYTES = 1024
_HANDSHAKE_TIMEOUT_S = 10.0
#: How long an idle keep-alive connection is held open (Prometheus scrapes well within it).
_IDLE_TIMEOUT_S = 300.0
#: A GET body up to this size is read and dropped to keep the connection; a larger one closes it.
_MAX_DISCARDED_BODY = 64 * 1024
#: Connections served at once (``--web.max-connections``; node_exporter caps requests at 40 with
#: --web.max-requests). Higher, because here each keep-alive connection holds its thread while
#: idle, and fifty concurrent scrapers of one node are a supported load (tests/exporter/test_load.py).
DEFAULT_MAX_CONNECTIONS = 128
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 41\r\nConnection: close\r\n\r\ntoo many connections to this exporter now\n"
)
_REFUSAL_LOG_INTERVAL_S = 60.0


def parse_listen_address(address: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (every interface) or ``[v6]:port``, as Prometheus flags spell it."""
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(f"listen address {address!r}: expected host:port, :port or [ipv6]:port")
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {address!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


class ExporterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: str,
        scraper: Scraper,
        telemetry_path: str,
        web_config: WebConfigSource,
        collectors: list[str],
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        """``max_connections`` caps the connections (one thread each) served at once; 0: no cap."""
        host, port = parse_listen_address(address)
        if max_connections < 0:
            raise ValueError(f"max connections must be 0 (no limit) or more, got {max_connections}")
        self._slots = threading.BoundedSemaphore(max_connections) if max_connections else None
        self.max_connections = max_connections
        self.refused = 0
        self._last_refusal_log = -_REFUSAL_LOG_INTERVAL_S
        self.scraper = scraper
        self.telemetry_path = telemetry_path
        self.web_config = web_config
        self.collector_names = collectors
        if host == "":
            # Every interface: dual-stack where IPv6 exists, else IPv4.
            if socket.has_dualstack_ipv6():
                self.address_family = socket.AF_INET6
                host = "::"
            else:
                host = "0.0.0.0"
        elif ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    @property
    def bound(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread only while a slot is free.

        Each connection holds a thread for as long as it stays open (keep-alive), so without
        a cap a scrape storm or a client that opens connections and never sends could exhaust
        threads and memory. Over the cap a connection is answered 503 (plain HTTP) or closed
        (TLS: no handshake is spent on it) from the accept loop, and Prometheus retries at
        its next interval.
        """
        if self._slots is not None and not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            if self._slots is not None:
                self._slots.release()

    def _refuse(self, request: Any, client_address: Any) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL_S:
            self._last_refusal_log = now
            log.warning(
                "refused a connection from %s: %d connections open (--web.max-connections); %d refused",
                client_address[0] if client_address else "?",
                self.max_connections,
                self.refused,
            )
        try:
            if self.web_config.current().ssl_context is None:
                request.send(_BUSY, socket.MSG_DONTWAIT)
                request.shutdown(socket.SHUT_WR)
                request.recv(65536, socket.MSG_DONTWAIT)  # what the client sent: avoids an RST
        except OSError:
            pass
        self.shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        ctx = self.web_config.current().ssl_context
        if ctx is not None:
            request.settimeout(_HANDSHAKE_TIMEOUT_S)
            try:
                request = ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response are routine; log at debug, not with a traceback.
        log.debug("error serving %s", client_address, exc_info=True)


_LANDING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fmdiag exporter</title></head>
<body><h1>fmdiag exporter</h1>
<p>Version {version}. GPU, EFA, Lustre, host and step-time metrics for Prometheus.</p>
<ul><li><a href="{path}">{path}</a> &mdash; metrics</li>
<li><a href="/healthz">/healthz</a> &mdash; liveness</li></ul>
<p>Enabled collectors: {collectors}</p>
</body></html>
"""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"fmdiag-exporter/{__version__}"
    timeout = _IDLE_TIMEOUT_S
    # Headers and body leave in one write (flushed after each request) and without Nagle's
    # delay: otherwise a small response waits ~40 ms for the client's delayed ACK.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: ExporterServer

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s - %s", self.address_string(), format % args)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
        head_only: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in self.server.web_config.current().config.headers.items():
            self.send_header(k, v)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _authorized(self, head_only: bool) -> bool:
        auth = self.server.web_config.current().auth
        if not auth.enabled or auth.check(self.headers.get("Authorization")):
            return True
        self._send(
            HTTPStatus.UNAUTHORIZED,
            b"Unauthorized\n",
            "text/plain; charset=utf-8",
            {"WWW-Authenticate": 'Basic realm="fmdiag exporter"'},
            head_only=head_only,
        )
        return False

    def _discard_body(self) -> None:
        """GET and HEAD carry no body here, but one that is sent must not be read as the next
        request on the connection (request smuggling through a proxy): a small body with a
        Content-Length is read and dropped; any other framing closes the connection."""
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            return
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return
        if len(lengths) == 1 and lengths[0].strip().isdigit():
            length = int(lengths[0].strip())
            if length <= _MAX_DISCARDED_BODY:
                while length > 0:
                    chunk = self.rfile.read(min(length, 65536))
                    if not chunk:
                        break
                    length -= len(chunk)
                if length == 0:
                    return
        self.close_connection = True

    def do_GET(self) -> None:
        self._serve(head_only=False)

    def do_HEAD(self) -> None:
        self._serve(head_only=True)

    def _serve(self, head_only: bool) -> None:
        self._discard_body()
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            # Liveness only, so probes need no credentials; it reveals nothing.
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8", head_only=head_only)
            return
        if not self._authorized(head_only):
            return
        if path == self.server.telemetry_path:
            self._metrics(head_only, query)
        elif path == "/":
            body = _LANDING.format(
                version=html.escape(__version__),
                path=html.escape(self.server.telemetry_path),
                collectors=html.escape(", ".join(self.server.collector_names) or "none"),
            ).encode()
            self._send(HTTPStatus.OK, body, "text/html; charset=utf-8", head_only=head_only)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"Not Found\n", "text/plain; charset=utf-8", head_only=head_only)

    def _metrics(self, head_only: bool, query: str) -> None:
        # `?format=text|openmetrics` overrides the Accept header: for browsers, and for
        # Prometheus versions whose scrape config cannot choose the protocol (`params:`).
        forced = urllib.parse.parse_qs(query).get("format", [])
        if forced:
            try:
                fmt = Format(forced[-1])
            except ValueError:
                self._send(
                    HTTPStatus.BAD_REQUEST,
                    b"format must be text or openmetrics\n",
                    "text/plain; charset=utf-8",
                    head_only=head_only,
                )
                return
        else:
            fmt = negotiate(self.headers.get("Accept"))
        try:
            body = self.server.scraper.scrape().render(fmt)
        except Exception:  # a bug, not a bad source: collectors' own failures never get here
            log.exception("scrape failed")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"scrape failed; see the exporter's log\n",
                       "text/plain; charset=utf-8", head_only=head_only)  # fmt: skip
            return
        extra: dict[str, str] = {}
        if len(body) >= _GZIP_MIN_BYTES and _accepts_gzip(self.headers.get("Accept-Encoding")):
            body = gzip.compress(body, compresslevel=1)
            extra["Content-Encoding"] = "gzip"
        extra["Vary"] = "Accept, Accept-Encoding"
        self._send(HTTPStatus.OK, body, fmt.content_type, extra, head_only=head_only)


def _accepts_gzip(header: str | None) -> bool:
    if not header:
        return False
    for entry in header.split(","):
        coding, _, params = entry.strip().partition(";")
        if coding.strip().lower() == "gzip":
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def serve(server: ExporterServer, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (signal handlers set it), then close cleanly."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="http", daemon=True
    )
    thread.start()
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
