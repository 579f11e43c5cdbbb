"""Kubernetes attribution: which pod and container holds each GPU and EFA device.

dcgm-exporter's most reported gap is empty pod labels, and where they work they sit on every
GPU series, which multiplies storage until operators drop them. Here ownership is its own
info series, ``fmdiag_gpu_pod_info{UUID, pod, namespace, container}`` and
``fmdiag_efa_pod_info{device, ...}``, joined in PromQL (docs/attribution.md), so the GPU and
EFA series stay one per device.

The source is the kubelet's pod-resources API (v1 ``List`` over its unix socket, see
:mod:`fmdiag.exporters.podresources`). Assignments change when pods start and stop, so the
answer is cached for ``refresh`` and each call is bounded by ``timeout``: a scrape never waits
longer than that on the kubelet. When the kubelet cannot be asked, the collector reports
success 0 with the reason and keeps serving the last answer for ``max-stale``; after that it
serves none rather than a stale owner.

Device ids are the device plugin's: GPU UUIDs (``GPU-...``), ``GPU-...::N`` for a time-sliced
replica (the UUID is the part before ``::``), ``MIG-...`` for a MIG device; EFA ids are the
RDMA device name or a ``uverbsN`` node, resolved to the device name through sysfs.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from fmdiag.exporters.collector import Collector, CollectorContext, SourceUnavailableError, register
from fmdiag.exporters.options import Option, duration, regex
from fmdiag.exporters.podresources import DEFAULT_SOCKET, PodResourcesUnavailableError
from fmdiag.exporters.rdma_names import efa_device

if TYPE_CHECKING:
    from fmdiag.exporters.podresources import api_pb2


@dataclass(frozen=True, order=True)
class Assignment:
    """One device of one container, as the kubelet reports it."""

    kind: str  # "gpu" or "efa"
    device_id: str
    resource: str
    pod: str
    namespace: str
    container: str


def assignments(
    response: api_pb2.ListPodResourcesResponse,
    gpu_resources: re.Pattern[str] | None,
    efa_resources: re.Pattern[str] | None,
) -> list[Assignment]:
    """The GPU and EFA devices in a List answer, sorted and without duplicates.

    Resources matching neither pattern (CPUs, hugepages, other device plugins) are left out;
    so are dynamic (DRA) claims, whose CDI names do not identify a GPU by UUID.
    """
    found: set[Assignment] = set()
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                resource = devices.resource_name
                if gpu_resources is not None and gpu_resources.fullmatch(resource):
                    kind = "gpu"
                elif efa_resources is not None and efa_resources.fullmatch(resource):
                    kind = "efa"
                else:
                    continue
                for device_id in devices.device_ids:
                    found.add(Assignment(kind, device_id, resource, pod.name, pod.namespace, container.name))
    return sorted(found)


def gpu_uuid(device_id: str) -> str:
    """The UUID a GPU device id names: ``GPU-x::3`` (a time-sliced replica) -> ``GPU-x``."""
    return device_id.split("::", 1)[0]


SOCKET: Option[Path] = Option(
    "pod-resources-socket",
    Path,
    DEFAULT_SOCKET,
    "The kubelet's pod-resources socket (mount its directory read-only into the exporter's pod).",
    metavar="PATH",
    default_text=str(DEFAULT_SOCKET),
)
REFRESH = duration(
    "refresh", 5.0, "Ask the kubelet again after this long; scrapes in between use its last answer."
)
TIMEOUT = duration("timeout", 1.0, "Longest wait for the kubelet's answer.", at_most=60.0)
MAX_STALE = duration(
    "max-stale", 60.0, "While the kubelet cannot be asked, keep serving its last answer for this long."
)
GPU_RESOURCES = regex(
    "gpu-resources", r"nvidia\.com/(gpu|mig-.+)", "Resource names whose devices are GPUs (whole name)."
)
EFA_RESOURCES = regex(
    "efa-resources", r"vpc\.amazonaws\.com/efa", "Resource names whose devices are EFAs (whole name)."
)


@register
class KubernetesCollector(Collector):
    """Pod, namespace and container of each GPU and EFA device, from the kubelet's pod-resources API."""

    name = "kubernetes"
    default_enabled = False
    options = (SOCKET, REFRESH, TIMEOUT, MAX_STALE, GPU_RESOURCES, EFA_RESOURCES)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.refresh_s = self.option(REFRESH)
        self.max_stale_s = self.option(MAX_STALE)
        self.gpu_resources = self.option(GPU_RESOURCES)
        self.efa_resources = self.option(EFA_RESOURCES)
        # grpc is imported only here, when the collector is switched on: ~50 ms of start-up
        # that nodes without Kubernetes never pay.
        from fmdiag.exporters.podresources.client import PodResourcesClient  # noqa: PLC0415

        self.client = PodResourcesClient(self.option(SOCKET), self.option(TIMEOUT))
        self.clock: Callable[[], float] = time.monotonic
        self._lock = threading.Lock()
        self._assignments: list[Assignment] = []
        self._answered_at: float | None = None
        self._asked_at: float | None = None
        self._error: str | None = None

    def _refresh(self) -> None:
        now = self.clock()
        if self._asked_at is not None and now - self._asked_at < self.refresh_s:
            return
        self._asked_at = now
        try:
            response = self.client.list()
        except PodResourcesUnavailableError as exc:
            self._error = str(exc)
            return
        self._assignments = assignments(response, self.gpu_resources, self.efa_resources)
        self._answered_at = now
        self._error = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self._refresh()
            fresh = self._answered_at is not None and self.clock() - self._answered_at <= self.max_stale_s
            current = self._assignments if fresh else []
            error = self._error
        fam = self.families()
        sysfs = self.ctx.paths.sysfs
        for a in current:
            owner = {
                "device_id": a.device_id,
                "resource": a.resource,
                "pod": a.pod,
                "namespace": a.namespace,
                "container": a.container,
            }
            if a.kind == "gpu":
                fam.add("fmdiag_gpu_pod_info", 1, {"UUID": gpu_uuid(a.device_id), **owner})
            else:
                fam.add("fmdiag_efa_pod_info", 1, {"device": efa_device(sysfs, a.device_id), **owner})
        families = list(fam)
        if error is not None:
            raise SourceUnavailableError(error, families)
        return families

    def close(self) -> None:
        self.client.close()
