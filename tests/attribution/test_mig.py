"""MIG devices mapped to their physical GPU: the fake NVML, the GPU collector's MIG series, and a
pod's MIG device attributed to its parent GPU's UUID through a real gRPC pod-resources server.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pynvml
import pytest
from support.kubelet import PodResourcesServer, pod

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext, GpuInventory, MigInstance
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.collectors.kubernetes import Assignment, KubernetesCollector, resolve_gpu
from fmdiag.exporters.gpu_state_file import GpuState, GpuStateError, MigDeviceState
from fmdiag.exporters.nvml_stand_in import FakeNvml

MIG_GPU = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
PLAIN_GPU = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
MIG_A = "MIG-0a0a0a0a-5555-6666-7777-888888888888"  # 1g.10gb, GI 9, slot 0
MIG_B = "MIG-0b0b0b0b-5555-6666-7777-888888888888"  # 3g.40gb, GI 2, slot 2
Series = set[tuple[str, tuple[tuple[str, str], ...]]]


def node() -> list[GpuState]:
    """GPU 0: H100 with MIG on, two MIG devices in slots 0 and 2 (slot 1 empty); GPU 1: no MIG."""
    return [
        GpuState(
            index=0,
            uuid=MIG_GPU,
            pci_bus_id="00000000:18:00.0",
            mig_capable=True,
            mig_enabled=True,
            mig_devices=[
                MigDeviceState(
                    index=0,
                    uuid=MIG_A,
                    gpu_instance_id=9,
                    profile="1g.10gb",
                    gi_profile_id=19,
                    placement_start=6,
                    placement_size=1,
                ),
                MigDeviceState(
                    index=2,
                    uuid=MIG_B,
                    gpu_instance_id=2,
                    profile="3g.40gb",
                    gi_profile_id=9,
                    placement_start=0,
                    placement_size=4,
                ),
            ],
        ),
        GpuState(index=1, uuid=PLAIN_GPU, pci_bus_id="00000000:2A:00.0", name="NVIDIA L40S"),
    ]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.json"
    gpu_state_file.write(path, node(), time_s=time.time(), hostname="p5-007")
    return path


@pytest.fixture
def nvml(state: Path) -> Iterator[FakeNvml]:
    fake = FakeNvml(state)
    fake.nvmlInit()
    yield fake
    fake.nvmlShutdown()


def series(families: object, name: str) -> Series:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in families  # type: ignore[attr-defined]
        for s in fam.samples
        if s.name == name
    }


def values(families: object, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in families  # type: ignore[attr-defined]
        for s in fam.samples
        if s.name == name
    }


# --- the fake NVML answers as pynvml does -----------------------------------------------------


def test_fake_nvml_walks_mig_devices_like_pynvml(nvml: FakeNvml) -> None:
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMigMode(gpu) == [pynvml.NVML_DEVICE_MIG_ENABLE, pynvml.NVML_DEVICE_MIG_ENABLE]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert isinstance(mig, pynvml.c_nvmlDevice_t)
    assert nvml.nvmlDeviceGetUUID(mig) == MIG_A
    assert nvml.nvmlDeviceGetName(mig) == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert (nvml.nvmlDeviceGetGpuInstanceId(mig), nvml.nvmlDeviceGetComputeInstanceId(mig)) == (9, 0)
    assert nvml.nvmlDeviceIsMigDeviceHandle(mig).value == 1  # pynvml returns the c_uint itself
    assert nvml.nvmlDeviceIsMigDeviceHandle(gpu).value == 0
    parent = nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(mig)
    assert nvml.nvmlDeviceGetUUID(parent) == MIG_GPU
    info = nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceGetGpuInstanceById(gpu, 9))
    assert isinstance(info, pynvml.c_nvmlGpuInstanceInfo_t)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (9, 19, 6, 1)
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByUUID(MIG_B)) == MIG_B


def test_fake_nvml_errors_are_pynvml_errors(nvml: FakeNvml) -> None:
    gpu, plain = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotFound):  # an empty slot
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # beyond the maximum
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 7)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # a GPU without MIG
        nvml.nvmlDeviceGetMigMode(plain)
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(plain) == 0  # NVML's documented answer
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetGpuInstanceId(plain)  # a full GPU is no MIG device
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(gpu)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetGpuInstanceById(gpu, 5)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # per-GPU queries are the parent's
        nvml.nvmlDeviceGetTemperature(mig, pynvml.NVML_TEMPERATURE_GPU)


def test_a_destroyed_instance_and_a_lost_parent(state: Path, nvml: FakeNvml) -> None:
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), 2)
    gpus = node()
    gpus[0].mig_devices = gpus[0].mig_devices[:1]  # the 3g.40gb instance is destroyed
    gpu_state_file.write(state, gpus, time_s=time.time())
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetUUID(mig)
    gpus[0].lost = True
    gpu_state_file.write(state, gpus, time_s=time.time())
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetUUID(mig)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mig_capable": False}, "not mig_capable"),
        ({"mig_enabled": False, "mig_capable": True}, "MIG is not enabled"),
        ({"mig_devices": [{"index": 7, "uuid": "MIG-x", "gpu_instance_id": 1}]}, "slot indexes"),
        ({"mig_devices": [{"index": 0, "uuid": "GPU-x", "gpu_instance_id": 1}]}, "does not start with MIG-"),
        ({"mig_devices": [{"index": 0, "uuid": "MIG-x", "gpu_instance_id": "1"}]}, "expected int"),
        ({"mig_devices": [{"index": 0, "uuid": "MIG-x", "gpu_instance_id": 1, "gi": 2}]}, "unknown field"),
    ],
)
def test_state_file_refuses_inconsistent_mig(tmp_path: Path, change: dict[str, object], message: str) -> None:
    import json

    doc = gpu_state_file.to_dict(gpu_state_file.GpuStateDoc(time_s=1.0, gpus=node()))
    doc["gpus"][0].update(change)
    with pytest.raises(GpuStateError, match=message):
        gpu_state_file.loads(json.dumps(doc), "state.json")


def test_state_file_round_trips_mig_devices(state: Path) -> None:
    assert gpu_state_file.read(state).gpus == node()


# --- the GPU collector ------------------------------------------------------------------------


def test_gpu_collector_maps_mig_devices_to_their_gpu(state: Path) -> None:
    collector = GpuCollector(CollectorContext(options={"simulated-state": str(state)}, hostname="p5-007"))
    try:
        families = list(collector.collect())
        again = list(collector.collect())
    finally:
        collector.close()
    info = {
        (
            "fmdiag_gpu_mig_info",
            (
                ("GPU_CI_ID", "0"),
                ("GPU_I_ID", gi),
                ("GPU_I_PROFILE", profile),
                ("UUID", MIG_GPU),
                ("gpu", "0"),
                ("hostname", "p5-007"),
                ("mig_uuid", mig),
            ),
        )
        for gi, profile, mig in (("9", "1g.10gb", MIG_A), ("2", "3g.40gb", MIG_B))
    }
    assert series(families, "fmdiag_gpu_mig_info") == info
    assert series(again, "fmdiag_gpu_mig_info") == info  # asked again every scrape
    modes = {dict(k)["UUID"]: v for k, v in values(families, "fmdiag_gpu_mig_enabled").items()}
    assert modes == {MIG_GPU: 1}  # the L40S answers NOT_SUPPORTED: no series
    # NOT_SUPPORTED on the L40S and the empty slot's NOT_FOUND are answers, not errors.
    errors = values(again, "fmdiag_gpu_nvml_errors_total")
    assert not [k for k in errors if dict(k)["call"].startswith("mig")], errors
    inventory = collector.gpu_inventory()
    assert inventory.scraped
    assert inventory.by_minor == {0: MIG_GPU, 1: PLAIN_GPU}
    assert inventory.migs[MIG_B] == MigInstance(
        uuid=MIG_B,
        parent_uuid=MIG_GPU,
        parent_index=0,
        gpu_instance_id=2,
        compute_instance_id=0,
        profile="3g.40gb",
        gi_profile_id=9,
        placement_start=0,
        placement_size=4,
    )


def test_mig_mode_off_is_0_and_lists_no_devices(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    gpus = node()
    gpus[0].mig_enabled, gpus[0].mig_devices = False, []
    gpu_state_file.write(path, gpus, time_s=time.time())
    collector = GpuCollector(CollectorContext(options={"simulated-state": str(path)}))
    try:
        families = list(collector.collect())
    finally:
        collector.close()
    assert {dict(k)["UUID"]: v for k, v in values(families, "fmdiag_gpu_mig_enabled").items()} == {MIG_GPU: 0}
    assert series(families, "fmdiag_gpu_mig_info") == set()


def test_a_failing_mig_call_is_counted_and_the_device_still_mapped(state: Path) -> None:
    """The GPU instance info (needed for DRA names only) fails: the MIG map stays."""
    fake = FakeNvml(state, not_supported={"nvmlGpuInstanceGetInfo"})
    collector = GpuCollector(CollectorContext(nvml=fake))
    try:
        families = list(collector.collect())
    finally:
        collector.close()
    assert len(series(families, "fmdiag_gpu_mig_info")) == 2
    errors = {dict(k)["call"]: v for k, v in values(families, "fmdiag_gpu_nvml_errors_total").items()}
    assert errors.get("mig_gpu_instance_info") == 1  # tried once, then skipped
    mig = collector.gpu_inventory().migs[MIG_A]
    assert (mig.parent_uuid, mig.gi_profile_id) == (MIG_GPU, None)


def test_a_lost_mig_gpu_is_reported_lost(state: Path) -> None:
    gpus = node()
    collector = GpuCollector(CollectorContext(options={"simulated-state": str(state)}))
    try:
        collector.collect()
        gpus[0].lost = True
        gpu_state_file.write(state, gpus, time_s=time.time())
        families = list(collector.collect())
    finally:
        collector.close()
    lost = {dict(k)["UUID"]: v for k, v in values(families, "fmdiag_gpu_lost").items()}
    assert lost == {MIG_GPU: 1, PLAIN_GPU: 0}
    assert series(families, "fmdiag_gpu_mig_info") == set()
    assert MIG_A not in collector.gpu_inventory().migs


# --- a pod's MIG device, through the kubelet's gRPC API ---------------------------------------


def mig_pods() -> list[object]:
    return [
        # mixed strategy: one resource per profile
        pod("small", "research", {"main": {"nvidia.com/mig-1g.10gb": [MIG_A]}}),
        # single strategy: MIG devices under nvidia.com/gpu, here time-sliced too
        pod("medium", "research", {"main": {"nvidia.com/gpu": [f"{MIG_B}::1"]}}),
        pod("whole", "training", {"trainer": {"nvidia.com/gpu": [PLAIN_GPU]}}),
    ]


@pytest.fixture
def kubelet() -> Iterator[PodResourcesServer]:
    server = PodResourcesServer()
    server.pods = mig_pods()  # type: ignore[assignment]
    server.start()
    yield server
    server.close()


def pod_info(
    uuid: str, device_id: str, resource: str, name: str, namespace: str, container: str, **extra: str
) -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {
        "UUID": uuid,
        "device_id": device_id,
        "resource": resource,
        "pod": name,
        "namespace": namespace,
        "container": container,
        **extra,
    }
    return ("fmdiag_gpu_pod_info", tuple(sorted(labels.items())))


def test_a_pods_mig_device_carries_its_parent_gpus_uuid(
    state: Path, kubelet: PodResourcesServer, tmp_path: Path
) -> None:
    ctx = CollectorContext(options={"simulated-state": str(state)}, hostname="p5-007")
    gpus = GpuCollector(ctx)
    k8s = KubernetesCollector(dataclasses.replace(ctx, options={"pod-resources-socket": str(kubelet.socket)}))
    try:
        # Before the GPU collector's first scrape only the whole GPU is attributed: a MIG
        # device's UUID is not known yet, and is not exported as something else meanwhile.
        assert series(k8s.collect(), "fmdiag_gpu_pod_info") == {
            pod_info(PLAIN_GPU, PLAIN_GPU, "nvidia.com/gpu", "whole", "training", "trainer")
        }
        gpus.collect()
        k8s.clock = lambda: time.monotonic() + 60  # past the refresh interval
        got = series(k8s.collect(), "fmdiag_gpu_pod_info")
    finally:
        k8s.close()
        gpus.close()
    assert got == {
        pod_info(
            MIG_GPU,
            MIG_A,
            "nvidia.com/mig-1g.10gb",
            "small",
            "research",
            "main",
            GPU_I_ID="9",
            GPU_I_PROFILE="1g.10gb",
        ),
        pod_info(
            MIG_GPU,
            f"{MIG_B}::1",
            "nvidia.com/gpu",
            "medium",
            "research",
            "main",
            GPU_I_ID="2",
            GPU_I_PROFILE="3g.40gb",
        ),
        pod_info(PLAIN_GPU, PLAIN_GPU, "nvidia.com/gpu", "whole", "training", "trainer"),
    }


def test_without_the_gpu_collector_a_mig_device_keeps_its_own_uuid(kubelet: PodResourcesServer) -> None:
    k8s = KubernetesCollector(CollectorContext(options={"pod-resources-socket": str(kubelet.socket)}))
    try:
        got = series(k8s.collect(), "fmdiag_gpu_pod_info")
    finally:
        k8s.close()
    assert pod_info(MIG_A, MIG_A, "nvidia.com/mig-1g.10gb", "small", "research", "main") in got


def test_legacy_mig_ids_name_their_parent() -> None:
    """R450/R460 device plugins: MIG-<GPU UUID>/<GI>/<CI>; the parent needs no NVML."""
    legacy = Assignment("gpu", f"MIG-{MIG_GPU}/2/0", "nvidia.com/gpu", "p", "ns", "c")
    assert resolve_gpu(legacy, None) == (MIG_GPU, None)
    mig = MigInstance(MIG_B, MIG_GPU, 0, 2, 0, "3g.40gb")
    assert resolve_gpu(legacy, GpuInventory(migs={MIG_B: mig}, scraped=True)) == (MIG_GPU, mig)
