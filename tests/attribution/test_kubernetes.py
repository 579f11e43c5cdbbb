"""Pods and containers of GPUs and EFAs, from a real gRPC server on a unix socket.

The server (support.kubelet) is built from the same api.proto as the exporter's client and
serves what the kubelet's List serves; nothing in the client is replaced.
"""

from __future__ import annotations

import filecmp
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from support import exporter_proc
from support.kubelet import PodResourcesServer, pod

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext, Paths, SourceUnavailableError
from fmdiag.exporters.collectors.kubernetes import KubernetesCollector, assignments
from fmdiag.exporters.gpu_state_file import GpuState
from fmdiag.exporters.podresources import api_pb2
from fmdiag.exporters.rdma_names import efa_device

REPO = Path(__file__).resolve().parents[2]
UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
UUID1 = "GPU-11111111-1111-2222-3333-444444444444"
UUID2 = "GPU-22222222-1111-2222-3333-444444444444"
MIG = "MIG-9b1c2d3e-0000-5555-6666-777777777777"


def training_pods() -> list[api_pb2.PodResources]:
    return [
        pod(
            "llama-0",
            "training",
            {
                "trainer": {
                    "nvidia.com/gpu": [UUID0, UUID1],
                    "vpc.amazonaws.com/efa": ["rdmap16s27", "uverbs1"],
                }
            },
        ),
        pod("notebook", "research", {"lab": {"nvidia.com/gpu": [f"{UUID2}::0"], "cpu": ["3"]}}),
        pod(
            "infer",
            "serving",
            {"server": {"nvidia.com/gpu": [f"{UUID2}::1"]}, "sidecar": {"example.com/fpga": ["f0"]}},
        ),
        pod("mig-job", "research", {"main": {"nvidia.com/mig-1g.10gb": [MIG]}}),
    ]


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    for name in ("rdmap16s27", "rdmap32s27"):
        (root / "class" / "infiniband" / name).mkdir(parents=True)
    verbs = root / "class" / "infiniband_verbs" / "uverbs1"
    verbs.mkdir(parents=True)
    (verbs / "ibdev").write_text("rdmap32s27\n")
    return root


@pytest.fixture
def kubelet() -> Iterator[PodResourcesServer]:
    server = PodResourcesServer()
    server.pods = training_pods()
    server.start()
    yield server
    server.close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(socket: Path, sysfs: Path, **options: str) -> tuple[KubernetesCollector, Clock]:
    ctx = CollectorContext(paths=Paths(sysfs=sysfs), options={"pod-resources-socket": str(socket), **options})
    collector = KubernetesCollector(ctx)
    clock = Clock()
    collector.clock = clock
    return collector, clock


Series = set[tuple[str, tuple[tuple[str, str], ...]]]


def series(families: object) -> Series:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for fam in families  # type: ignore[attr-defined]
        for s in fam.samples
        if s.value == 1
    }


def info(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def unavailable(collector: KubernetesCollector) -> tuple[str, Series]:
    with pytest.raises(SourceUnavailableError) as exc:
        collector.collect()
    return exc.value.reason, series(exc.value.families)


EXPECTED = {
    info(
        "fmdiag_gpu_pod_info",
        UUID=UUID0,
        device_id=UUID0,
        resource="nvidia.com/gpu",
        pod="llama-0",
        namespace="training",
        container="trainer",
    ),
    info(
        "fmdiag_gpu_pod_info",
        UUID=UUID1,
        device_id=UUID1,
        resource="nvidia.com/gpu",
        pod="llama-0",
        namespace="training",
        container="trainer",
    ),
    # Time-sliced replicas of one GPU: one info series per pod, both under the GPU's UUID.
    info(
        "fmdiag_gpu_pod_info",
        UUID=UUID2,
        device_id=f"{UUID2}::0",
        resource="nvidia.com/gpu",
        pod="notebook",
        namespace="research",
        container="lab",
    ),
    info(
        "fmdiag_gpu_pod_info",
        UUID=UUID2,
        device_id=f"{UUID2}::1",
        resource="nvidia.com/gpu",
        pod="infer",
        namespace="serving",
        container="server",
    ),
    info(
        "fmdiag_gpu_pod_info",
        UUID=MIG,
        device_id=MIG,
        resource="nvidia.com/mig-1g.10gb",
        pod="mig-job",
        namespace="research",
        container="main",
    ),
    info(
        "fmdiag_efa_pod_info",
        device="rdmap16s27",
        device_id="rdmap16s27",
        resource="vpc.amazonaws.com/efa",
        pod="llama-0",
        namespace="training",
        container="trainer",
    ),
    # A uverbs node handed out by the device plugin, resolved to its RDMA device through sysfs.
    info(
        "fmdiag_efa_pod_info",
        device="rdmap32s27",
        device_id="uverbs1",
        resource="vpc.amazonaws.com/efa",
        pod="llama-0",
        namespace="training",
        container="trainer",
    ),
}


def test_gpus_and_efas_are_attributed_to_pods_and_containers(
    kubelet: PodResourcesServer, sysfs: Path
) -> None:
    collector, _ = make(kubelet.socket, sysfs)
    try:
        got = series(collector.collect())
    finally:
        collector.close()
    assert got == EXPECTED  # CPUs and other device plugins' resources are left out


def test_answers_are_cached_for_the_refresh_interval(kubelet: PodResourcesServer, sysfs: Path) -> None:
    collector, clock = make(kubelet.socket, sysfs, refresh="5s")
    try:
        collector.collect()
        kubelet.pods = kubelet.pods[:1]  # the notebook, inference and MIG pods end
        clock.now += 4.9
        assert series(collector.collect()) == EXPECTED  # within refresh: no call to the kubelet
        assert kubelet.calls == 1
        clock.now += 0.1
        got = series(collector.collect())
        assert kubelet.calls == 2
        assert {labels for _, labels in got if ("pod", "llama-0") not in labels} == set()
        assert len(got) == 4
    finally:
        collector.close()


def test_an_absent_socket_is_success_0_with_the_reason(tmp_path: Path, sysfs: Path) -> None:
    missing = tmp_path / "pod-resources" / "kubelet.sock"
    collector, _ = make(missing, sysfs)
    try:
        reason, served = unavailable(collector)
    finally:
        collector.close()
    assert str(missing) in reason and "does not exist" in reason
    assert served == set()


def test_a_wedged_kubelet_costs_at_most_the_timeout_and_the_last_answer_is_kept(
    kubelet: PodResourcesServer, sysfs: Path
) -> None:
    collector, clock = make(kubelet.socket, sysfs, refresh="5s", timeout="200ms", **{"max-stale": "1m"})
    try:
        assert series(collector.collect()) == EXPECTED
        kubelet.hold()  # accepts the call and never answers
        clock.now += 5
        reason, served = unavailable(collector)
        assert "no answer to List within 0.2 s" in reason
        assert served == EXPECTED  # the last answer, younger than max-stale
        clock.now += 56  # 61 s after the last answer: older than max-stale, so nothing is served
        kubelet.release()
        kubelet.stop()
        reason, served = unavailable(collector)
        assert "does not exist" in reason
        assert served == set()
    finally:
        collector.close()


def test_a_restarted_kubelet_on_a_new_socket_is_reconnected_to(
    kubelet: PodResourcesServer, sysfs: Path
) -> None:
    collector, clock = make(kubelet.socket, sysfs, refresh="1s")
    try:
        assert series(collector.collect()) == EXPECTED
        kubelet.stop()
        clock.now += 1
        unavailable(collector)
        kubelet.pods = kubelet.pods[3:]
        kubelet.start()  # a new socket file at the same path, as after a kubelet restart
        clock.now += 1
        assert series(collector.collect()) == {
            info(
                "fmdiag_gpu_pod_info",
                UUID=MIG,
                device_id=MIG,
                resource="nvidia.com/mig-1g.10gb",
                pod="mig-job",
                namespace="research",
                container="main",
            )
        }
    finally:
        collector.close()


def test_a_file_in_place_of_the_socket_is_named(tmp_path: Path, sysfs: Path) -> None:
    path = tmp_path / "kubelet.sock"
    path.write_text("")
    collector, _ = make(path, sysfs)
    try:
        reason, _ = unavailable(collector)
    finally:
        collector.close()
    assert reason == f"{path} is not a unix socket"


def test_resource_patterns_are_options() -> None:
    response = api_pb2.ListPodResourcesResponse(pod_resources=training_pods())
    import re

    only_full_gpus = assignments(response, re.compile(r"nvidia\.com/gpu"), None)
    assert {a.device_id for a in only_full_gpus} == {UUID0, UUID1, f"{UUID2}::0", f"{UUID2}::1"}
    assert {a.kind for a in assignments(response, None, re.compile(r"example\.com/fpga"))} == {"efa"}


def test_efa_ids_sysfs_does_not_know_keep_an_empty_device(sysfs: Path) -> None:
    assert efa_device(sysfs, "rdmap16s27") == "rdmap16s27"
    assert efa_device(sysfs, "/dev/infiniband/uverbs1") == "rdmap32s27"
    assert efa_device(sysfs, "uverbs7") == ""
    assert efa_device(sysfs, "efa-3") == ""
    assert efa_device(sysfs, "..") == ""


def test_the_exporter_serves_pod_info_and_honest_success(
    kubelet: PodResourcesServer, sysfs: Path, tmp_path: Path
) -> None:
    """The real exporter process, scraped over HTTP, next to a GPU collector on simulated GPUs."""
    state = tmp_path / "state.json"
    gpu_state_file.write(
        state,
        [
            GpuState(index=i, uuid=u, pci_bus_id=f"00000000:{0x18 + i:02X}:00.0")
            for i, u in enumerate((UUID0, UUID1))
        ],
        time_s=time.time(),
        hostname="p5-001",
    )
    common = [
        "--collector.disable-defaults",
        "--collector.kubernetes",
        "--collector.gpu",
        f"--collector.gpu.simulated-state={state}",
        f"--path.sysfs={sysfs}",
    ]
    with exporter_proc.ExporterProcess(
        [*common, f"--collector.kubernetes.pod-resources-socket={kubelet.socket}"]
    ) as exp:
        found = exporter_proc.samples(requests.get(f"{exp.url}/metrics", timeout=10).text)
    assert exporter_proc.value(found, "fmdiag_exporter_collector_success", collector="kubernetes") == 1
    assert (
        exporter_proc.value(found, "fmdiag_gpu_pod_info", UUID=UUID0, pod="llama-0", namespace="training")
        == 1
    )
    assert exporter_proc.value(found, "fmdiag_efa_pod_info", device="rdmap32s27", container="trainer") == 1

    absent = tmp_path / "absent.sock"
    with exporter_proc.ExporterProcess(
        [*common, f"--collector.kubernetes.pod-resources-socket={absent}"]
    ) as exp:
        found = exporter_proc.samples(requests.get(f"{exp.url}/metrics", timeout=10).text)
        requests.get(f"{exp.url}/metrics", timeout=10)
    assert exporter_proc.value(found, "fmdiag_exporter_collector_success", collector="kubernetes") == 0
    assert exporter_proc.value(found, "fmdiag_exporter_collector_success", collector="gpu") == 1
    # The reason is logged once, not once per scrape.
    assert (
        exp.log().count(f"collector kubernetes: no data, reporting success 0: {absent} does not exist") == 1
    )


def test_committed_stubs_are_generated_from_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(REPO / "exporters/podresources/generate.py"), str(tmp_path)], check=True
    )
    for name in ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py"):
        assert filecmp.cmp(tmp_path / name, REPO / "exporters/podresources" / name, shallow=False), name


def test_grpc_is_imported_only_when_the_kubernetes_collector_runs() -> None:
    """Nodes without Kubernetes never pay grpc's import (~50 ms) at exporter start."""
    from support.imports import cli_code, probe

    run = probe(cli_code("exporter", "--help"))
    assert run.returncode == 0, run.stderr
    assert "fmdiag.exporters.collectors.kubernetes" in run.new_modules  # the collector is there
    assert "grpc" not in run.new_modules and "fmdiag.exporters.podresources.client" not in run.new_modules
