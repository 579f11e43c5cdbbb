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

Every GPU series is keyed by the physical GPU's UUID, so a MIG device's info series carries
its parent's UUID (and dcgm-exporter's ``GPU_I_ID``/``GPU_I_PROFILE``), taken from the GPU
collector's NVML inventory (``CollectorContext.gpu_processes.inventory``): the operator's
join stays one ``on(UUID)``. Dynamic Resource Allocation claims (``dynamic_resources``) name
devices by driver and device name (``gpu.nvidia.com``, ``gpu-0``: the GPU with minor number
0) or by CDI name; the same inventory turns those into UUIDs, and the claim's name and
namespace are labels of the info series.
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

from fmdiag.exporters.collector import (
    Collector,
    CollectorContext,
    GpuInventory,
    MigInstance,
    SourceUnavailableError,
    register,
)
from fmdiag.exporters.options import Option, duration, regex
from fmdiag.exporters.podresources import DEFAULT_SOCKET, PodResourcesUnavailableError
from fmdiag.exporters.rdma_names import efa_device

if TYPE_CHECKING:
    from fmdiag.exporters.podresources import api_pb2


@dataclass(frozen=True, order=True)
class Assignment:
    """One device of one container, as the kubelet reports it.

    For a DRA device, ``resource`` is the DRA driver (``gpu.nvidia.com``), ``device_id`` its
    device name (``gpu-0``) and ``claim_*`` the ResourceClaim that holds it.
    """

    kind: str  # "gpu" or "efa"
    device_id: str
    resource: str
    pod: str
    namespace: str
    container: str
    claim_name: str = ""
    claim_namespace: str = ""
    dra: bool = False


#: NVIDIA's DRA driver names a GPU ``gpu-<minor>`` and a MIG device
#: ``gpu-<minor>-mig-<GPU instance profile id>-<placement start>-<placement size>``; a
#: claim's own CDI device is ``<claim UID>-<that name>``.
_DRA_GPU_NAME = re.compile(r"(?:^|-)(gpu-(\d+)(?:-mig-(\d+)-(\d+)-(\d+))?)$")
#: The MIG device ids of device plugins on R450/R460 drivers: ``MIG-<GPU UUID>/<GI>/<CI>``.
_LEGACY_MIG = re.compile(r"MIG-(GPU-[0-9A-Za-z-]+)/(\d+)/(\d+)")


def dra_devices(resource: api_pb2.ClaimResource) -> list[tuple[str, str]]:
    """(driver, device name) of one allocated DRA device.

    Kubelets 1.31+ send the driver/pool/device triplet; older ones only the device's CDI
    names (``k8s.gpu.nvidia.com/device=gpu-0``, ``k8s.gpu.nvidia.com/claim=<uid>-gpu-0``),
    whose vendor is ``k8s.`` + the driver in NVIDIA's driver and whose name ends in the
    device name. Several CDI names of one device come out as one name.
    """
    if resource.device_name:
        return [(resource.driver_name, resource.device_name)]
    found: list[tuple[str, str]] = []
    for cdi in resource.cdi_devices:
        kind, sep, name = cdi.name.partition("=")
        if not sep or not name:
            continue
        driver = resource.driver_name or kind.split("/", 1)[0].removeprefix("k8s.")
        match = _DRA_GPU_NAME.search(name)
        device = (driver, match[1] if match else name)
        if device not in found:
            found.append(device)
    return found


def assignments(
    response: api_pb2.ListPodResourcesResponse,
    gpu_resources: re.Pattern[str] | None,
    efa_resources: re.Pattern[str] | None,
    dra_gpu_drivers: re.Pattern[str] | None = None,
) -> list[Assignment]:
    """The GPU and EFA devices in a List answer, sorted and without duplicates.

    Resources matching neither pattern (CPUs, hugepages, other device plugins) are left out,
    and so are DRA devices of drivers not matching ``dra_gpu_drivers``.
    """
    found: set[Assignment] = set()
    for pod in response.pod_resources:
        for container in pod.containers:
            owner = (pod.name, pod.namespace, container.name)
            for devices in container.devices:
                resource = devices.resource_name
                if gpu_resources is not None and gpu_resources.fullmatch(resource):
                    kind = "gpu"
                elif efa_resources is not None and efa_resources.fullmatch(resource):
                    kind = "efa"
                else:
                    continue
                for device_id in devices.device_ids:
                    found.add(Assignment(kind, device_id, resource, *owner))
            if dra_gpu_drivers is None:
                continue
            for claim in container.dynamic_resources:
                for allocated in claim.claim_resources:
                    for driver, device in dra_devices(allocated):
                        if dra_gpu_drivers.fullmatch(driver):
                            found.add(
                                Assignment(
                                    "gpu",
                                    device,
                                    driver,
                                    *owner,
                                    claim_name=claim.claim_name,
                                    claim_namespace=claim.claim_namespace,
                                    dra=True,
                                )
                            )
    return sorted(found)


def gpu_uuid(device_id: str) -> str:
    """The UUID a GPU device id names: ``GPU-x::3`` (a time-sliced replica) -> ``GPU-x``."""
    return device_id.split("::", 1)[0]


def needs_inventory(a: Assignment) -> bool:
    """Whether only NVML can tell which physical GPU this device is (a MIG or DRA device)."""
    ident = gpu_uuid(a.device_id)
    return ident.startswith("MIG-") or (a.dra and not ident.startswith("GPU-"))


def resolve_gpu(a: Assignment, inventory: GpuInventory | None) -> tuple[str, MigInstance | None]:
    """The physical GPU's UUID of an assigned device, and its MIG device if it is one.

    A MIG device NVML does not know (no GPU collector in this exporter, or before its first
    scrape) keeps its own ``MIG-...`` UUID; a DRA device name NVML cannot resolve has an
    empty UUID (it names no GPU by itself).
    """
    ident = gpu_uuid(a.device_id)
    if ident.startswith("MIG-"):
        legacy = _LEGACY_MIG.fullmatch(ident)
        if legacy is not None:  # the parent is in the id itself
            parent = legacy[1]
            found = inventory.mig_of_instance(parent, int(legacy[2]), int(legacy[3])) if inventory else None
            return parent, found
        mig = inventory.migs.get(ident) if inventory is not None else None
        return (mig.parent_uuid, mig) if mig is not None else (ident, None)
    if ident.startswith("GPU-") or not a.dra:
        return ident, None
    name = _DRA_GPU_NAME.search(ident)
    if name is None or inventory is None:
        return "", None
    parent = inventory.by_minor.get(int(name[2]), "")
    if name[3] is None or not parent:
        return parent, None
    return parent, inventory.mig_at(parent, int(name[3]), int(name[4]), int(name[5]))


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
DRA_GPU_DRIVERS = regex(
    "dra-gpu-drivers",
    r"gpu\.nvidia\.com",
    "Dynamic Resource Allocation drivers whose devices are GPUs (whole name); empty: claims not read.",
)


@register
class KubernetesCollector(Collector):
    """Pod, namespace and container of each GPU and EFA device, from the kubelet's pod-resources API."""

    name = "kubernetes"
    default_enabled = False
    options = (SOCKET, REFRESH, TIMEOUT, MAX_STALE, GPU_RESOURCES, EFA_RESOURCES, DRA_GPU_DRIVERS)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.refresh_s = self.option(REFRESH)
        self.max_stale_s = self.option(MAX_STALE)
        self.gpu_resources = self.option(GPU_RESOURCES)
        self.efa_resources = self.option(EFA_RESOURCES)
        self.dra_gpu_drivers = self.option(DRA_GPU_DRIVERS)
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
        self._assignments = assignments(
            response, self.gpu_resources, self.efa_resources, self.dra_gpu_drivers
        )
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
        # Read per scrape, not per kubelet answer: MIG devices are reconfigured at run time.
        provider = self.ctx.gpu_processes.inventory
        inventory = provider() if provider is not None else None
        # Before the GPU collector's first scrape, MIG and DRA devices are left out rather
        # than exported under a UUID that changes one scrape later.
        waiting = inventory is not None and not inventory.scraped
        for a in current:
            owner = {
                "device_id": a.device_id,
                "resource": a.resource,
                "pod": a.pod,
                "namespace": a.namespace,
                "container": a.container,
            }
            if a.kind == "gpu":
                if waiting and needs_inventory(a):
                    continue
                uuid, mig = resolve_gpu(a, inventory)
                labels = {"UUID": uuid, **owner}
                if mig is not None:
                    labels["GPU_I_ID"] = str(mig.gpu_instance_id)
                    labels["GPU_I_PROFILE"] = mig.profile
                if a.dra:
                    labels["claim_name"] = a.claim_name
                    labels["claim_namespace"] = a.claim_namespace
                fam.add("fmdiag_gpu_pod_info", 1, labels)
            else:
                fam.add("fmdiag_efa_pod_info", 1, {"device": efa_device(sysfs, a.device_id), **owner})
        families = list(fam)
        if error is not None:
            raise SourceUnavailableError(error, families)
        return families

    def close(self) -> None:
        self.client.close()
