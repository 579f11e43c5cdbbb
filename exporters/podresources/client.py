"""A pod-resources client that cannot stall a scrape: every call is bounded by a timeout.

The kubelet answers ``List`` in milliseconds, but it restarts, its socket may be missing (a
DaemonSet without the hostPath mount, a bare-metal node) and a wedged kubelet may accept the
connection and never answer. So a call either returns within ``timeout_s`` or raises
:class:`PodResourcesUnavailableError` with a reason an operator can act on; the channel is dropped
after a failure, so a kubelet that comes back on a new socket is reconnected to at once
instead of after gRPC's reconnect back-off.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Any

import grpc

from fmdiag.exporters.podresources import PodResourcesUnavailableError, api_pb2, api_pb2_grpc

__all__ = ["PodResourcesClient", "PodResourcesUnavailableError"]


class PodResourcesClient:
    """``List`` over the kubelet's unix socket, one channel reused while it works."""

    def __init__(self, socket_path: Path, timeout_s: float) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None

    def _stub(self) -> Any:  # the generated grpc module is untyped (no .pyi from grpcio-tools)
        if self._channel is None:
            # An absolute path after "unix:" (gRPC's unix:///abs form needs three slashes).
            self._channel = grpc.insecure_channel(
                f"unix:{os.path.abspath(self.socket_path)}",
                options=[("grpc.max_receive_message_length", 16 << 20)],
            )
        return api_pb2_grpc.PodResourcesListerStub(self._channel)  # type: ignore[no-untyped-call]

    def _check_socket(self) -> None:
        try:
            mode = os.stat(self.socket_path).st_mode
        except FileNotFoundError:
            raise PodResourcesUnavailableError(
                f"{self.socket_path} does not exist (not a Kubernetes node, or the kubelet's "
                "pod-resources directory is not mounted into the exporter)"
            ) from None
        except OSError as exc:
            raise PodResourcesUnavailableError(f"{self.socket_path}: {exc.strerror or exc}") from None
        if not stat.S_ISSOCK(mode):
            raise PodResourcesUnavailableError(f"{self.socket_path} is not a unix socket")

    def list(self) -> api_pb2.ListPodResourcesResponse:
        """Every pod's devices, or PodResourcesUnavailableError within ``timeout_s``."""
        with self._lock:
            self._check_socket()
            try:
                response: api_pb2.ListPodResourcesResponse = self._stub().List(
                    api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s
                )
                return response
            except grpc.RpcError as exc:
                self._close_locked()
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code is grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise PodResourcesUnavailableError(
                        f"{self.socket_path}: no answer to List within {self.timeout_s:g} s"
                    ) from None
                detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                name = code.name if code is not None else "error"
                raise PodResourcesUnavailableError(
                    f"{self.socket_path}: List failed: {name}: {detail}"
                ) from None

    def _close_locked(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()
