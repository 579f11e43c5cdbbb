"""Slurm job ids of GPUs: from real cgroup files (v1 and v2), environments and a prolog's mapping dir.

The GPU processes come from the GPU collector on simulated GPUs (the NVML stand-in), handed to
the slurm collector through the shared collector context exactly as in the exporter.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.exporters import gpu_state_file
from fmdiag.exporters.collector import CollectorContext, Paths
from fmdiag.exporters.collectors.gpu import GpuCollector
from fmdiag.exporters.collectors.slurm import (
    SlurmCollector,
    job_from_cgroup,
    job_from_environ,
    parse_mapping,
)
from fmdiag.exporters.gpu_state_file import GpuProcess, GpuState

CGROUPS = Path(__file__).resolve().parents[1] / "fixtures" / "slurm" / "cgroup"


def uuid(i: int) -> str:
    return f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-aaaa-bbbb-cccc-dddddddddddd"


@pytest.mark.parametrize(
    ("fixture", "job"),
    [
        ("v1-task.txt", "4242"),  # cgroup v1: /slurm/uid_<u>/job_<id>/step_<n>/task_<t>, per controller
        ("v2-task.txt", "4243"),  # cgroup v2: /system.slice/slurmstepd.scope/job_<id>/step_<n>/user/task_<t>
        ("v2-batch.txt", "4244"),  # the batch step
        ("kubernetes-pod.txt", None),
        ("not-slurm.txt", None),  # "backup_job_77.service" is not a job_<id> path component
    ],
)
def test_job_id_from_cgroup_files(fixture: str, job: str | None) -> None:
    assert job_from_cgroup((CGROUPS / fixture).read_text()) == job


def test_job_id_from_environment() -> None:
    env = b"PATH=/usr/bin\0SLURM_JOB_ID=981\0SLURM_JOBID=981\0"
    assert job_from_environ(env) == "981"
    assert job_from_environ(b"SLURM_JOBID=77\0HOME=/root") == "77"
    assert job_from_environ(b"XSLURM_JOB_ID=5\0SLURM_JOB_ID=not-a-number\0") is None
    assert job_from_environ(b"") is None


def test_mapping_file_format() -> None:
    assert parse_mapping("4242\n") == ["4242"]
    assert parse_mapping("4242 1000\n\n4250_3 1001\n4242\n") == ["4242", "4250_3"]  # second word: a uid
    with pytest.raises(ValueError, match="line 2: 'x42' is not a Slurm job id"):
        parse_mapping("1\nx42\n")


@given(st.text(max_size=300))
def test_parsers_never_crash_on_garbage(text: str) -> None:
    job_from_cgroup(text)
    job_from_environ(text.encode(errors="replace"))
    try:
        parse_mapping(text)
    except ValueError:
        pass


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[GpuCollector, SlurmCollector, Path]]:
    """Four simulated GPUs, their processes' /proc/<pid> files, and both collectors sharing one context."""
    procfs = tmp_path / "proc"
    layout = {
        4000: ("v1-task.txt", None),
        4001: ("v2-task.txt", None),
        4002: ("kubernetes-pod.txt", b"HOME=/home/u\0SLURM_JOB_ID=4250\0"),  # outside slurmd's cgroups
        4003: ("not-slurm.txt", b"HOME=/root\0"),
        4004: ("v2-batch.txt", None),  # one process on GPUs 0 and 1
    }
    for pid, (cgroup, environ) in layout.items():
        (procfs / str(pid)).mkdir(parents=True)
        shutil.copy(CGROUPS / cgroup, procfs / str(pid) / "cgroup")
        (procfs / str(pid) / "environ").write_bytes(environ or b"")
        (procfs / str(pid) / "fd").mkdir()
    # Open files as the kernel shows them: uverbs nodes of EFA devices, and others.
    sysfs = tmp_path / "sys"
    for node, device in (("uverbs0", "rdmap79s0"), ("uverbs1", "rdmap80s0")):
        (sysfs / "class" / "infiniband_verbs" / node).mkdir(parents=True)
        (sysfs / "class" / "infiniband_verbs" / node / "ibdev").write_text(device + "\n")
    for pid, fd, target in (
        (4000, "7", "/dev/infiniband/uverbs0"),
        (4004, "3", "/dev/null"),
        (4004, "9", "/dev/infiniband/uverbs1"),
        (4004, "10", "/dev/infiniband/uverbs1"),
        (4003, "4", "/dev/infiniband/uverbs0"),  # not a Slurm job's process
        (4001, "5", "/dev/infiniband/uverbs9"),  # a node sysfs does not know
    ):
        (procfs / str(pid) / "fd" / fd).symlink_to(target)
    gpus = [
        GpuState(
            index=i,
            uuid=uuid(i),
            pci_bus_id=f"00000000:{0x18 + i:02X}:00.0",
            processes=[GpuProcess(pid=4000 + i, used_memory_bytes=1 << 30)],
        )
        for i in range(4)
    ]
    for i in (0, 1):
        gpus[i].processes.append(GpuProcess(pid=4004, used_memory_bytes=1 << 30))
    state = tmp_path / "state.json"
    gpu_state_file.write(state, gpus, time_s=time.time(), hostname="n1")
    mapping = tmp_path / "gpujobmap"
    mapping.mkdir()
    shared = CollectorContext(paths=Paths(procfs=procfs, sysfs=sysfs), hostname="n1")
    gpu = GpuCollector(dataclasses.replace(shared, options={"simulated-state": str(state)}))
    slurm = SlurmCollector(dataclasses.replace(shared, options={"mapping-dir": str(mapping)}))
    yield gpu, slurm, mapping
    slurm.close()
    gpu.close()


def jobs(slurm: SlurmCollector) -> set[tuple[str, str, str, str]]:
    return {
        (s.labels["gpu"], s.labels["UUID"], s.labels["slurm_job_id"], s.labels["via"])
        for fam in slurm.collect()
        for s in fam.samples
        if s.name == "fmdiag_gpu_slurm_job_info" and s.value == 1
    }


def test_gpus_are_attributed_to_jobs_from_their_processes(
    node: tuple[GpuCollector, SlurmCollector, Path],
) -> None:
    gpu, slurm, _ = node
    assert jobs(slurm) == set()  # no GPU scrape yet: no processes known
    list(gpu.collect())
    assert jobs(slurm) == {
        ("0", uuid(0), "4242", "cgroup"),
        ("0", uuid(0), "4244", "cgroup"),
        ("1", uuid(1), "4243", "cgroup"),
        ("1", uuid(1), "4244", "cgroup"),
        ("2", uuid(2), "4250", "environ"),
        # GPU 3's process is no Slurm job's: no series.
    }


def test_efa_devices_are_attributed_to_the_jobs_whose_processes_hold_them(
    node: tuple[GpuCollector, SlurmCollector, Path],
) -> None:
    gpu, slurm, _ = node
    list(gpu.collect())
    efas = {
        (s.labels["device"], s.labels["slurm_job_id"], s.labels["via"])
        for fam in slurm.collect()
        for s in fam.samples
        if s.name == "fmdiag_efa_slurm_job_info"
    }
    assert efas == {("rdmap79s0", "4242", "cgroup"), ("rdmap80s0", "4244", "cgroup")}
    # Found once, a process's devices are not looked up again on every scrape (its fd table is
    # long): with its fds gone from view, the attribution stands while the process runs.
    fd = next(iter(slurm.ctx.paths.procfs.glob("4000/fd/*")))
    fd.unlink()
    again = {
        (s.labels["device"], s.labels["slurm_job_id"])
        for fam in slurm.collect()
        for s in fam.samples
        if s.name == "fmdiag_efa_slurm_job_info"
    }
    assert ("rdmap79s0", "4242") in again


def test_the_prolog_mapping_directory_wins_and_bad_files_are_counted(
    node: tuple[GpuCollector, SlurmCollector, Path],
) -> None:
    gpu, slurm, mapping = node
    list(gpu.collect())
    (mapping / "0").write_text("4242 1000\n")  # the same job as the cgroup: one series, via mapping
    (mapping / "3").write_text("5000\n5001\n")  # GPU 3 shared by two jobs
    (mapping / uuid(2)).write_text("4250\n")  # named by UUID (as for MIG devices)
    (mapping / ".0.tmp").write_text("999\n")  # a prolog's file before its rename
    (mapping / "1").write_text("not-a-job\n")
    (mapping / "README").write_text("4242\n")
    got = jobs(slurm)
    assert got == {
        ("0", uuid(0), "4242", "mapping"),
        ("0", uuid(0), "4244", "cgroup"),
        ("1", uuid(1), "4243", "cgroup"),
        ("1", uuid(1), "4244", "cgroup"),
        ("2", uuid(2), "4250", "mapping"),
        ("3", uuid(3), "5000", "mapping"),
        ("3", uuid(3), "5001", "mapping"),
    }
    assert slurm.ctx.errors.count("slurm") == 2  # "not-a-job" in 1, and README not named by a GPU


def test_a_process_that_ended_since_the_gpu_scrape_is_skipped(
    node: tuple[GpuCollector, SlurmCollector, Path],
) -> None:
    gpu, slurm, _ = node
    list(gpu.collect())
    shutil.rmtree(slurm.ctx.paths.procfs / "4001")
    assert ("1", uuid(1), "4243", "cgroup") not in jobs(slurm)
    assert slurm.ctx.errors.count("slurm") == 0


def test_missing_sources_are_reported(tmp_path: Path) -> None:
    alone = SlurmCollector(CollectorContext())
    assert "no gpu collector runs" in (alone.source_problem() or "")
    absent = SlurmCollector(CollectorContext(options={"mapping-dir": str(tmp_path / "nope")}))
    assert (
        absent.source_problem()
        == f"mapping directory {tmp_path / 'nope'} does not exist (--collector.slurm.mapping-dir)"
    )
