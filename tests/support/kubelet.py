"""A real gRPC server speaking the kubelet's pod-resources v1 API on a unix socket.

Built from the same api.proto as the exporter's client (the committed stubs), serving the
pods a test sets; ``hold`` makes List wait until released, as a wedged kubelet does. Unix
socket paths are limited to ~107 bytes, so the socket lives in a short directory under /tmp
rather than in pytest's long tmp_path.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from concurrent import futures
from pathlib import Path

import grpc

from fmdiag.exporters.podresources import api_pb2, api_pb2_grpc


def pod(name: str, namespace: str, containers: dict[str, dict[str, list[str]]]) -> api_pb2.PodResources:
    """A PodResources message: container name -> resource name -> device ids."""
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=cname,
                devices=[api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in res.items()],
            )
            for cname, res in containers.items()
        ],
    )


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: PodResourcesServer) -> None:
        self.kubelet = kubelet

    def List(
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.kubelet.calls += 1
        self.kubelet.released.wait()
        return api_pb2.ListPodResourcesResponse(pod_resources=list(self.kubelet.pods))


class PodResourcesServer:
    """The kubelet's pod-resources endpoint, on ``socket`` (start/stop may repeat)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))
        self.socket = self.dir / "kubelet.sock"
        self.pods: list[api_pb2.PodResources] = []
        self.calls = 0
        self.released = threading.Event()
        self.released.set()
        self._server: grpc.Server | None = None

    def start(self) -> PodResourcesServer:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server
        return self

    def hold(self) -> None:
        """From now on List does not answer until :meth:`release`."""
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        self.socket.unlink(missing_ok=True)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
