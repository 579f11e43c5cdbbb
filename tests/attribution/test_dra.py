"""Dynamic Resource Allocation: GPUs a ResourceClaim holds, attributed to pods through a real gRPC
pod-resources server, their device names resolved to UUIDs through NVML (the fake).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from support.kubelet import PodResourcesServer, pod

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.collectors.kubernetes import KubernetesCollector, assignments, dra_devices
from fmdiag.exporters.gpu_state_file import GpuState, MigDeviceState
from fmdiag.exporters.podresources import api_pb2

REPO = Path(__file__).resolve().parents[2]
UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-aaaa-bbbb-cccc-dddddddddddd" for i in range(3)]
MIG = "MIG-77777777-aaaa-bbbb-cccc-dddddddddddd"
CLAIM_UID = "8e2a7c4b-1a2b-4c3d-9e8f-0123456789ab"
Series = set[tuple[str, tuple[tuple[str, str], ...]]]


def claim_pod(
    name: str, namespace: str, container: str, claim: str, devices: list[api_pb2.ClaimResource]
) -> api_pb2.PodResources:
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container,
                dynamic_resources=[
                    api_pb2.DynamicResource(
                        claim_name=claim, claim_namespace=namespace, claim_resources=devices
                    )
                ],
            )
        ],
    )


def device(name: str, driver: str = "gpu.nvidia.com", *cdi: str) -> api_pb2.ClaimResource:
    """A ClaimResource as kubelets 1.31+ send it: driver/pool/device plus its CDI names."""
    return api_pb2.ClaimResource(
        driver_name=driver,
        pool_name="p5-009",
        device_name=name,
        cdi_devices=[api_pb2.CDIDevice(name=c) for c in cdi],
    )


def cdi_only(*names: str) -> api_pb2.ClaimResource:
    """A ClaimResource as kubelets 1.27-1.30 send it: CDI device names only."""
    return api_pb2.ClaimResource(cdi_devices=[api_pb2.CDIDevice(name=n) for n in names])


def dra_pods() -> list[api_pb2.PodResources]:
    return [
        # Two GPUs named by minor number (gpu-2 is the GPU at NVML index 0: minors need not
        # follow indexes), the triplet form with the standard CDI name beside it.
        claim_pod(
            "trainer-0",
            "training",
            "trainer",
            "trainer-0-gpus",
            [
                device("gpu-2", "gpu.nvidia.com", "k8s.gpu.nvidia.com/device=gpu-2"),
                device("gpu-0"),
            ],
        ),
        # An older kubelet: the standard and the claim's own CDI name of one device -> one series.
        claim_pod(
            "legacy",
            "research",
            "main",
            "legacy-gpu",
            [cdi_only("k8s.gpu.nvidia.com/device=gpu-1", f"k8s.gpu.nvidia.com/claim={CLAIM_UID}-gpu-1")],
        ),
        # A MIG device of GPU minor 1, named by GPU instance profile id and placement.
        claim_pod("slice", "research", "main", "mig-claim", [device("gpu-1-mig-19-6-1")]),
        # Another driver's device is not a GPU.
        claim_pod("nic", "net", "main", "rdma", [device("nic-0", "rdma.example.com")]),
        # A device plugin GPU beside, unchanged.
        pod("plain", "serving", {"server": {"nvidia.com/gpu": [UUIDS[2]]}}),
    ]


def node() -> list[GpuState]:
    """Three GPUs; the one at index 2 (minor 1, see MinorNvml) has MIG on with one device."""
    gpus = [
        GpuState(index=i, uuid=u, pci_bus_id=f"00000000:{0x18 + i:02X}:00.0") for i, u in enumerate(UUIDS)
    ]
    gpus[2].mig_capable = gpus[2].mig_enabled = True
    gpus[2].mig_devices = [
        MigDeviceState(
            index=0, uuid=MIG, gpu_instance_id=13, gi_profile_id=19, placement_start=6, placement_size=1
        )
    ]
    return gpus


class MinorNvml:
    """The fake NVML with minor numbers that differ from the indexes (the state file has none).

    The DRA driver names GPUs by minor number, NVML enumerates them by index, and the two
    differ on real boards; a fake where they coincide could not catch a mix-up.
    """

    MINORS: ClassVar[dict[int, int]] = {0: 2, 1: 0, 2: 1}  # NVML index -> minor number

    def __init__(self, state: Path) -> None:
        from fmdiag.exporters.nvml_stand_in import FakeNvml

        self._fake = FakeNvml(state)

    def nvmlDeviceGetMinorNumber(self, handle: object) -> int:
        return self.MINORS[self._fake.nvmlDeviceGetIndex(handle)]

    def __getattr__(self, name: str) -> object:
        return getattr(self._fake, name)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.json"
    gpu_state_file.write(path, node(), time_s=time.time(), hostname="p5-009")
    return path


@pytest.fixture
def kubelet() -> Iterator[PodResourcesServer]:
    server = PodResourcesServer()
    server.pods = dra_pods()
    server.start()
    yield server
    server.close()


def series(families: object) -> Series:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in families  # type: ignore[attr-defined]
        for s in fam.samples
        if s.name == "fmdiag_gpu_pod_info"
    }


def info(
    uuid: str, device_id: str, name: str, namespace: str, container: str, **extra: str
) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {
        "UUID": uuid,
        "device_id": device_id,
        "resource": "gpu.nvidia.com",
        "pod": name,
        "namespace": namespace,
        "container": container,
        **extra,
    }
    return ("fmdiag_gpu_pod_info", tuple(sorted(labels.items())))


def test_claims_gpus_are_attributed_with_their_uuid_and_claim(
    state: Path, kubelet: PodResourcesServer
) -> None:
    ctx = CollectorContext(nvml=MinorNvml(state), hostname="p5-009")
    gpus = GpuCollector(ctx)
    k8s = KubernetesCollector(dataclasses.replace(ctx, options={"pod-resources-socket": str(kubelet.socket)}))
    try:
        gpus.collect()
        got = series(k8s.collect())
    finally:
        k8s.close()
        gpus.close()
    plain = (
        "fmdiag_gpu_pod_info",
        tuple(
            sorted(
                {
                    "UUID": UUIDS[2],
                    "device_id": UUIDS[2],
                    "resource": "nvidia.com/gpu",
                    "pod": "plain",
                    "namespace": "serving",
                    "container": "server",
                }.items()
            )
        ),
    )
    training = {"claim_name": "trainer-0-gpus", "claim_namespace": "training"}
    assert got == {
        info(UUIDS[0], "gpu-2", "trainer-0", "training", "trainer", **training),
        info(UUIDS[1], "gpu-0", "trainer-0", "training", "trainer", **training),
        info(
            UUIDS[2],
            "gpu-1",
            "legacy",
            "research",
            "main",
            claim_name="legacy-gpu",
            claim_namespace="research",
        ),
        info(
            UUIDS[2],
            "gpu-1-mig-19-6-1",
            "slice",
            "research",
            "main",
            claim_name="mig-claim",
            claim_namespace="research",
            GPU_I_ID="13",
            GPU_I_PROFILE="1g.10gb",
        ),
        plain,
    }


def test_without_nvml_claims_are_listed_with_an_empty_uuid(kubelet: PodResourcesServer) -> None:
    k8s = KubernetesCollector(CollectorContext(options={"pod-resources-socket": str(kubelet.socket)}))
    try:
        got = series(k8s.collect())
    finally:
        k8s.close()
    assert (
        info(
            "",
            "gpu-0",
            "trainer-0",
            "training",
            "trainer",
            claim_name="trainer-0-gpus",
            claim_namespace="training",
        )
        in got
    )
    assert len(got) == 5


def test_dra_can_be_switched_off_and_the_drivers_chosen(kubelet: PodResourcesServer) -> None:
    response = api_pb2.ListPodResourcesResponse(pod_resources=dra_pods())
    gpu_re = re.compile(r"nvidia\.com/gpu")
    assert {a.device_id for a in assignments(response, gpu_re, None, None)} == {UUIDS[2]}
    nics = assignments(response, None, None, re.compile(r"rdma\.example\.com"))
    assert [(a.device_id, a.claim_name, a.dra) for a in nics] == [("nic-0", "rdma", True)]
    k8s = KubernetesCollector(
        CollectorContext(options={"pod-resources-socket": str(kubelet.socket), "dra-gpu-drivers": ""})
    )
    try:
        got = series(k8s.collect())
    finally:
        k8s.close()
    assert {dict(labels)["pod"] for _, labels in got} == {"plain"}


def test_device_names_from_cdi_names() -> None:
    assert dra_devices(cdi_only("k8s.gpu.nvidia.com/device=gpu-3")) == [("gpu.nvidia.com", "gpu-3")]
    assert dra_devices(cdi_only(f"k8s.gpu.nvidia.com/claim={CLAIM_UID}-gpu-0-mig-9-0-4")) == [
        ("gpu.nvidia.com", "gpu-0-mig-9-0-4")
    ]
    assert dra_devices(cdi_only(f"k8s.gpu.nvidia.com/device={UUIDS[1]}")) == [("gpu.nvidia.com", UUIDS[1])]
    assert dra_devices(cdi_only("vendor.com/gpu=gpudevice1")) == [("vendor.com", "gpudevice1")]
    assert dra_devices(cdi_only("not-a-cdi-name")) == []
    # The triplet wins over CDI names when the kubelet sends it.
    assert dra_devices(device("gpu-5", "gpu.nvidia.com", "k8s.gpu.nvidia.com/device=gpu-9")) == [
        ("gpu.nvidia.com", "gpu-5")
    ]


def test_the_proto_matches_upstream_field_numbers() -> None:
    """k8s.io/kubelet pkg/apis/podresources/v1/api.proto (1.31+): the DRA messages' numbers."""
    fields = {
        msg: {f.name: f.number for f in getattr(api_pb2, msg).DESCRIPTOR.fields}
        for msg in ("ContainerResources", "DynamicResource", "ClaimResource", "CDIDevice")
    }
    assert fields["ContainerResources"]["dynamic_resources"] == 5
    assert fields["DynamicResource"] == {
        "class_name": 1,  # sent by kubelets 1.27-1.30, a tombstone upstream since 1.31
        "claim_name": 2,
        "claim_namespace": 3,
        "claim_resources": 4,
    }
    assert fields["ClaimResource"] == {"cdi_devices": 1, "driver_name": 2, "pool_name": 3, "device_name": 4}
    assert fields["CDIDevice"] == {"name": 1}
