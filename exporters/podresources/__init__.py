"""The kubelet's pod-resources API (v1): the proto, its committed stubs, and a bounded client.

Which pod holds which GPU or EFA device is known only to the kubelet, which serves it over
gRPC on a unix socket (``/var/lib/kubelet/pod-resources/kubelet.sock``). ``api.proto`` is the
documented v1 API; ``api_pb2*.py`` are generated from it by ``generate.py`` and committed, so
an install needs grpcio and protobuf but never protoc. :mod:`.client` is the only code that
talks to the socket; the ``kubernetes`` collector turns its answers into info series.
"""

from __future__ import annotations

from pathlib import Path

#: Where the kubelet serves the API (its ``--pod-resources`` directory is fixed).
DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


class PodResourcesUnavailableError(Exception):
    """The kubelet's pod-resources API could not be asked; the message says why.

    Defined here, not next to the client, so that code handling it needs no grpc import:
    grpc (~50 ms) is imported only when the ``kubernetes`` collector is switched on.
    """
