"""Pipeline point-to-point: numpy arrays over one TCP connection between neighbouring stages.

Activations go forward and their gradients come back over the same connection, as
NCCL send/recv pairs do between pipeline stages. Sends are asynchronous (a sender thread and a
queue, like ``isend``): a 1F1B schedule has both stages sending before they receive, and
blocking sends could deadlock it. Receives block, and the caller counts their wait as
communication, as real per-op timings do (a receive includes waiting for the neighbour).

A frame is a 4-byte big-endian header length, a JSON header ``{"tag", "dtype", "shape"}`` and
the array's raw bytes. The tag names what the sender meant (``act/STEP/MICRO``), so a schedule
bug is an error naming both tags rather than a silently wrong gradient. Connecting starts with
a hello frame both ways, so a rank that reached the wrong peer says so at once.
"""

from __future__ import annotations

import json
import math
import queue
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Any

import numpy as np

from fmdiag.testbed.worker_config import split_address

_LENGTH = struct.Struct("!I")
_MAX_HEADER = 64 * 1024
_RETRY_S = 0.2
_HELLO = "hello"


class P2PError(RuntimeError):
    """The pipeline connection failed; the message names the peer."""


def encode_header(tag: str, array: np.ndarray[Any, Any]) -> bytes:
    header = json.dumps({"tag": tag, "dtype": array.dtype.str, "shape": list(array.shape)}).encode()
    return _LENGTH.pack(len(header)) + header


def decode_header(raw: bytes) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    doc = json.loads(raw)
    dtype = np.dtype(doc["dtype"])
    if dtype.kind not in "biuf":  # no object arrays or other surprises from a socket
        raise P2PError(f"frame of dtype {dtype} refused")
    shape = tuple(int(n) for n in doc["shape"])
    if any(n < 0 for n in shape):
        raise P2PError(f"frame of shape {shape} refused")
    return str(doc["tag"]), dtype, shape


class Link:
    """One connected neighbour: ``send`` queues and returns, ``recv`` waits for the next frame."""

    def __init__(self, sock: socket.socket, peer: str, timeout: float) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout)
        self.sock, self.peer = sock, peer
        self.bytes_sent = 0
        self.bytes_received = 0
        self._outbox: queue.Queue[tuple[bytes, np.ndarray[Any, Any]] | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._sender = threading.Thread(target=self._send_loop, name=f"p2p-send-{peer}", daemon=True)
        self._sender.start()

    # --- connecting ---------------------------------------------------------------------
    @classmethod
    def connect(cls, address: str, *, hello: str, timeout: float) -> Link:
        """Connect to a listening neighbour, retrying until ``timeout`` (it may start later)."""
        host, port = split_address(address)
        deadline = time.monotonic() + timeout
        last: OSError | None = None
        while time.monotonic() < deadline:
            try:
                sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            except OSError as exc:
                last = exc
                time.sleep(_RETRY_S)
                continue
            return cls(sock, address, timeout)._greet(hello)
        raise P2PError(f"cannot connect to pipeline peer {address} within {timeout:.0f} s: {last}")

    @classmethod
    def listen(cls, address: str) -> socket.socket:
        """Bind ``address`` now (before connecting onwards), to ``accept`` later."""
        host, port = split_address(address)
        server = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            server.bind((host, port))
        except OSError as exc:
            server.close()
            raise P2PError(f"cannot listen on {address} for the previous pipeline stage: {exc}") from None
        server.listen(1)
        return server

    @classmethod
    def accept(cls, server: socket.socket, address: str, *, hello: str, timeout: float) -> Link:
        """The previous stage's connection on ``server`` (bound to ``address``), then close it."""
        server.settimeout(timeout)
        try:
            sock, (peer_host, peer_port, *_) = server.accept()
        except TimeoutError:
            raise P2PError(
                f"no previous pipeline stage connected to {address} within {timeout:.0f} s"
            ) from None
        finally:
            server.close()
        return cls(sock, f"{peer_host}:{peer_port}", timeout)._greet(hello)

    def _greet(self, hello: str) -> Link:
        self.send(_HELLO, np.frombuffer(hello.encode(), np.uint8))
        theirs = self.recv(_HELLO).tobytes().decode(errors="replace")
        if theirs != hello:
            self.close()
            raise P2PError(f"pipeline peer {self.peer} is {theirs!r}, expected {hello!r}")
        return self

    # --- sending ------------------------------------------------------------------------
    def send(self, tag: str, array: np.ndarray[Any, Any]) -> None:
        """Queue ``array`` for sending and return at once (a copy is sent, not a view)."""
        if self._failure is not None:
            raise P2PError(f"send to pipeline peer {self.peer} failed: {self._failure}")
        data = np.array(array, order="C", copy=True)  # keeps 0-d arrays 0-d, unlike ascontiguousarray
        self._outbox.put((encode_header(tag, data), data))

    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is None:
                return
            header, data = item
            try:
                self.sock.sendall(header)
                self.sock.sendall(data.reshape(-1).view(np.uint8).data)
                self.bytes_sent += len(header) + data.nbytes
            except Exception as exc:  # reported by the next send or flush
                self._failure = exc
                return

    def flush(self, timeout: float) -> None:
        """Wait until every queued frame is handed to the kernel (or the sender failed)."""
        self._outbox.put(None)
        self._sender.join(timeout)
        if self._failure is not None:
            raise P2PError(f"send to pipeline peer {self.peer} failed: {self._failure}")

    # --- receiving ----------------------------------------------------------------------
    def _exactly(self, size: int) -> bytearray:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise P2PError(
                    f"pipeline peer {self.peer} sent nothing for {self.sock.gettimeout():.0f} s"
                ) from None
            except OSError as exc:
                raise P2PError(f"receive from pipeline peer {self.peer} failed: {exc}") from None
            if n == 0:
                raise P2PError(f"pipeline peer {self.peer} closed the connection")
            got += n
        self.bytes_received += size
        return buf

    def recv(self, expect: str | None = None) -> np.ndarray[Any, Any]:
        """The next array; with ``expect``, its tag must be that one."""
        (length,) = _LENGTH.unpack(self._exactly(_LENGTH.size))
        if length > _MAX_HEADER:
            raise P2PError(f"pipeline peer {self.peer} sent a {length}-byte header: not a p2p frame")
        tag, dtype, shape = decode_header(bytes(self._exactly(length)))
        if expect is not None and tag != expect:
            raise P2PError(f"pipeline peer {self.peer} sent {tag!r} where {expect!r} was due")
        payload = self._exactly(math.prod(shape) * dtype.itemsize)
        return np.frombuffer(payload, dtype).reshape(shape)

    # --- closing ------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> None:
        """Hand what is queued to the kernel (waiting at most ``timeout``), then close.

        The kernel still delivers those bytes after ``close``; a schedule that ran to the end
        has nothing unread on its side, so the close is an orderly end of stream, not a reset.
        """
        try:
            self.flush(timeout)
        except P2PError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
