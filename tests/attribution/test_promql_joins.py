"""Every PromQL join in docs/attribution.md, run by the real Prometheus on a real exporter.

The exporter serves simulated GPUs (NVML stand-in), a fixture EFA sysfs tree, the pods of a
real gRPC pod-resources server and a Slurm mapping directory; Prometheus scrapes it and each
documented query must answer with the owner labels it promises.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from support import exporter_proc, prom
from support.kubelet import PodResourcesServer, pod

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState, MigDeviceState
from fmdiag.exporters.podresources import api_pb2

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "attribution.md"
EFA_TREE = REPO / "tests" / "fixtures" / "efa" / "nitro_v4" / "sys"
UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-0000-1111-2222-333333333333" for i in range(5)]
MIG_A = "MIG-aaaaaaaa-0000-1111-2222-333333333333"
MIG_B = "MIG-bbbbbbbb-0000-1111-2222-333333333333"


def documented_queries() -> list[str]:
    return re.findall(r"```promql\n(.*?)\n```", DOC.read_text(), re.S)


def test_the_doc_has_the_joins() -> None:
    queries = documented_queries()
    assert len(queries) == 8
    assert any('GPU_I_ID!=""' in q for q in queries)
    assert any("claim_name" in q for q in queries)
    assert any("fmdiag_efa_pod_info" in q for q in queries)
    assert any("fmdiag_gpu_slurm_job_info" in q for q in queries)
    assert any("fmdiag_efa_slurm_job_info" in q for q in queries)


def owners(result: list[dict[str, Any]], *labels: str) -> set[tuple[str, ...]]:
    return {tuple(r["metric"].get(label, "") for label in labels) for r in result}


def test_documented_joins_answer_with_owners(tmp_path: Path) -> None:
    if shutil.which(prom.PROMETHEUS) is None and not Path(prom.PROMETHEUS).exists():
        pytest.fail("Prometheus is not installed (apt-get install prometheus; .ci/run does it)")
    state = tmp_path / "state.json"
    gpus = [
        GpuState(
            index=i,
            uuid=u,
            pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
            util_gpu_pct=10 * (i + 1),
            fb_used_mib=1000 * (i + 1),
            temperature_c=50 + i,
        )
        for i, u in enumerate(UUIDS)
    ]
    # GPU 3 is split by MIG into two pods' devices; GPU 4 is a DRA claim's (device gpu-4).
    gpus[3].mig_capable = gpus[3].mig_enabled = True
    gpus[3].mig_devices = [
        MigDeviceState(index=0, uuid=MIG_A, gpu_instance_id=9, profile="1g.10gb"),
        MigDeviceState(index=1, uuid=MIG_B, gpu_instance_id=2, profile="3g.40gb", gi_profile_id=9),
    ]
    # Job 4242's process on GPU 0 holding an EFA device open (cgroup v2 path, fd to uverbs0).
    gpus[0].processes.append(GpuProcess(pid=7001, used_memory_bytes=1 << 30))
    procfs = tmp_path / "proc"
    (procfs / "7001" / "fd").mkdir(parents=True)
    (procfs / "7001" / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n")
    (procfs / "7001" / "environ").write_bytes(b"")
    (procfs / "7001" / "fd" / "12").symlink_to("/dev/infiniband/uverbs0")
    gpu_state_file.write(state, gpus, time_s=time.time(), hostname="p5-001")
    sysfs = tmp_path / "sys"
    shutil.copytree(EFA_TREE, sysfs, symlinks=True)
    verbs = sysfs / "class" / "infiniband_verbs" / "uverbs0"
    verbs.mkdir(parents=True)
    (verbs / "ibdev").write_text("rdmap79s0\n")
    mapping = tmp_path / "jobs"
    mapping.mkdir()
    (mapping / "0").write_text("4242\n")
    (mapping / "1").write_text("4242\n")
    (mapping / "2").write_text("5151\n")
    kubelet = PodResourcesServer()
    kubelet.pods = [
        pod(
            "llama-0",
            "training",
            {"trainer": {"nvidia.com/gpu": [UUIDS[0], UUIDS[1]], "vpc.amazonaws.com/efa": ["rdmap79s0"]}},
        ),
        pod("notebook", "research", {"lab": {"nvidia.com/gpu": [f"{UUIDS[2]}::0"]}}),
        pod("infer", "serving", {"server": {"nvidia.com/gpu": [f"{UUIDS[2]}::1"]}}),
        pod("small", "research", {"main": {"nvidia.com/mig-1g.10gb": [MIG_A]}}),
        pod("medium", "research", {"main": {"nvidia.com/mig-3g.40gb": [MIG_B]}}),
        api_pb2.PodResources(
            name="dra-job",
            namespace="training",
            containers=[
                api_pb2.ContainerResources(
                    name="worker",
                    dynamic_resources=[
                        api_pb2.DynamicResource(
                            claim_name="dra-job-gpu",
                            claim_namespace="training",
                            claim_resources=[
                                api_pb2.ClaimResource(
                                    driver_name="gpu.nvidia.com", pool_name="p5-001", device_name="gpu-4"
                                )
                            ],
                        )
                    ],
                )
            ],
        ),
    ]
    kubelet.start()
    args = [
        "--collector.disable-defaults",
        "--collector.gpu",
        f"--collector.gpu.simulated-state={state}",
        "--no-collector.gpu.events",
        "--collector.efa",
        "--collector.kubernetes",
        f"--collector.kubernetes.pod-resources-socket={kubelet.socket}",
        "--collector.slurm",
        f"--collector.slurm.mapping-dir={mapping}",
        f"--path.sysfs={sysfs}",
        f"--path.procfs={procfs}",
    ]
    try:
        with (
            exporter_proc.ExporterProcess(args) as exp,
            prom.Prometheus(tmp_path / "prom", [exp.address]) as server,
        ):
            server.wait_for("fmdiag_gpu_slurm_job_info", min_results=3)
            server.wait_for("count_over_time(fmdiag_efa_tx_bytes_total[1m]) > 1")
            server.wait_for("fmdiag_efa_slurm_job_info")
            # MIG and DRA devices appear once the GPU collector has scraped NVML once.
            server.wait_for('fmdiag_gpu_pod_info{GPU_I_ID!=""}', min_results=2)
            server.wait_for('fmdiag_gpu_pod_info{claim_name!=""}')
            exclusive, any_gpu, memory, mig, dra, efa, slurm, slurm_efa = documented_queries()
            assert owners(server.query(exclusive), "UUID", "pod", "namespace", "container") == {
                (UUIDS[0], "llama-0", "training", "trainer"),
                (UUIDS[1], "llama-0", "training", "trainer"),
                (UUIDS[4], "dra-job", "training", "worker"),
            }
            shared = server.query(any_gpu)
            assert owners(shared, "UUID", "pod", "gpu") == {
                (UUIDS[0], "llama-0", "0"),
                (UUIDS[1], "llama-0", "1"),
                (UUIDS[2], "notebook", "2"),
                (UUIDS[2], "infer", "2"),
                (UUIDS[3], "small", "3"),
                (UUIDS[3], "medium", "3"),
                (UUIDS[4], "dra-job", "4"),
            }
            sliced = server.query(mig)
            assert owners(sliced, "UUID", "device_id", "pod", "GPU_I_ID", "GPU_I_PROFILE", "gpu") == {
                (UUIDS[3], MIG_A, "small", "9", "1g.10gb", "3"),
                (UUIDS[3], MIG_B, "medium", "2", "3g.40gb", "3"),
            }
            assert {float(r["value"][1]) for r in sliced} == {53.0}  # the physical GPU's temperature
            assert {
                (r["metric"]["claim_namespace"], r["metric"]["claim_name"]): float(r["value"][1])
                for r in server.query(dra)
            } == {("training", "dra-job-gpu"): 50.0}
            assert {
                r["metric"]["pod"]: float(r["value"][1]) for r in shared if r["metric"]["UUID"] == UUIDS[2]
            } == {
                "notebook": 30.0,
                "infer": 30.0,
            }
            assert {r["metric"]["pod"]: float(r["value"][1]) for r in server.query(memory)} == {
                "llama-0": 3000.0,
                "dra-job": 5000.0,
            }
            assert owners(server.query(efa), "namespace", "pod") == {("training", "llama-0")}
            assert {r["metric"]["slurm_job_id"]: float(r["value"][1]) for r in server.query(slurm)} == {
                "4242": 15.0,
                "5151": 30.0,
            }
            assert owners(server.query(slurm_efa), "slurm_job_id") == {("4242",)}
    finally:
        kubelet.close()
