"""Slurm attribution: which Slurm job uses each GPU and EFA device, as info series.

An info series per (GPU, job), joined in PromQL on ``UUID`` (docs/attribution.md), instead of a
job label on every GPU series: the per-GPU ``hpc_job`` label is what made one operator drop
dcgm-exporter's job mapping, because GPU series dominated their storage.

Three sources, in the order they win when they name the same job:

* ``mapping``: dcgm-exporter's convention (``--hpc-job-mapping-dir``), a directory a Slurm prolog
  writes, one file per GPU named by its index (or its UUID), holding the ids of the jobs on it,
  one per line (a second word on the line, such as a uid, is ignored); the epilog removes it.
* ``cgroup``: the job id in the cgroup path of each process NVML lists on the GPU. slurmd puts
  every task under ``.../job_<id>/step_<n>/...`` with cgroup v1 (``/slurm/uid_<u>/job_<id>/``)
  and v2 (``/system.slice/slurmstepd.scope/job_<id>/``) alike.
* ``environ``: ``SLURM_JOB_ID`` in the process environment, for processes outside slurmd's
  cgroups (``proctrack/linuxproc``); readable only by root or the job's user.

The GPU processes and the GPUs' UUIDs come from the ``gpu`` collector's previous scrape
(``CollectorContext.gpu_processes``), so the first scrape after start has none of them.

EFA devices (``fmdiag_efa_slurm_job_info``): the ``/dev/infiniband/uverbsN`` devices a job's GPU
processes hold open (``/proc/<pid>/fd``, readable by root or the job's user), named as the EFA
collector names them through sysfs (``class/infiniband_verbs/uverbsN/ibdev``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client.core import Metric

from fmdiag.exporters.collector import Collector, CollectorContext, register
from fmdiag.exporters.options import optional_text, switch
from fmdiag.exporters.rdma_names import efa_device

_CGROUP_JOB = re.compile(r"(?:^|/)job_([0-9]+)(?:/|$)")
_UVERBS = re.compile(r"/dev/infiniband/uverbs[0-9]+")
_JOB_ID = re.compile(r"[0-9]+(?:_[0-9]+)?")
_ENV_KEYS = (b"SLURM_JOB_ID=", b"SLURM_JOBID=")
#: A mapping file larger than this is not a prolog's list of job ids.
_MAX_MAPPING_BYTES = 64 * 1024
#: Which source wins when two name the same (GPU, job): one series per pair, so joins stay 1:1.
_RANK = {"mapping": 0, "cgroup": 1, "environ": 2}


def job_from_cgroup(text: str) -> str | None:
    """The Slurm job id in a ``/proc/<pid>/cgroup`` file, or None outside slurmd's cgroups.

    Lines are ``hierarchy-id:controllers:path`` (v1 has one per controller, v2 the single
    ``0::path``); the path may contain colons, so only the first two are split off.
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        match = _CGROUP_JOB.search(parts[2].strip())
        if match:
            return match[1]
    return None


def job_from_environ(raw: bytes) -> str | None:
    """``SLURM_JOB_ID`` (or the older ``SLURM_JOBID``) from a NUL-separated environment."""
    for key in _ENV_KEYS:
        for entry in raw.split(b"\0"):
            if entry.startswith(key):
                value = entry[len(key) :].decode(errors="replace").strip()
                if _JOB_ID.fullmatch(value):
                    return value
    return None


def parse_mapping(text: str) -> list[str]:
    """The job ids of one mapping file: the first word of each non-empty line.

    ValueError names the first word that is not a Slurm job id (``123`` or ``123_4``).
    """
    jobs: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if not _JOB_ID.fullmatch(words[0]):
            raise ValueError(f"line {number}: {words[0][:40]!r} is not a Slurm job id")
        if words[0] not in jobs:
            jobs.append(words[0])
    return jobs


MAPPING_DIR = optional_text(
    "mapping-dir",
    "Directory a Slurm prolog writes: one file per GPU (named by index or UUID) listing its job ids "
    "(dcgm-exporter's --hpc-job-mapping-dir).",
    metavar="DIR",
    default_text="none",
)
CGROUP = switch("cgroup", True, "Read the job id from the cgroup path of each GPU process.")
ENVIRON = switch("environ", True, "Read SLURM_JOB_ID from the environment of each GPU process.")
EFA = switch("efa", True, "Attribute the EFA devices a job's GPU processes hold open (/proc/<pid>/fd).")


@register
class SlurmCollector(Collector):
    """Slurm job id of each GPU, from its processes' cgroups or environment or a prolog's mapping files."""

    name = "slurm"
    default_enabled = False
    options = (MAPPING_DIR, CGROUP, ENVIRON, EFA)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        mapping = self.option(MAPPING_DIR)
        self.mapping_dir = Path(mapping) if mapping else None
        self.cgroup = self.option(CGROUP)
        self.environ = self.option(ENVIRON)
        self.efa = self.option(EFA)
        #: (pid, job) -> the EFA devices it holds: a rank keeps its devices open from NCCL's
        #: set-up to its exit, so its fd table (hundreds of entries) is read until one shows up.
        self._efa_seen: dict[tuple[int, str], set[str]] = {}

    def source_problem(self) -> str | None:
        if self.mapping_dir is not None and not self.mapping_dir.is_dir():
            return f"mapping directory {self.mapping_dir} does not exist (--collector.slurm.mapping-dir)"
        if self.mapping_dir is None and self.ctx.gpu_processes.provider is None:
            return "no gpu collector runs and no --collector.slurm.mapping-dir is set: nothing to attribute"
        if self.mapping_dir is None and not (self.cgroup or self.environ):
            return "--no-collector.slurm.cgroup and --no-collector.slurm.environ leave no source"
        return None

    def collect(self) -> Iterable[Metric]:
        identities = self.ctx.gpu_processes.identities
        uuids: dict[int, str] = dict(identities()) if identities is not None else {}
        found: dict[tuple[str, str], str] = {}  # (gpu index, job) -> via
        efas: dict[tuple[str, str], str] = {}  # (EFA device, job) -> via

        def note(gpu: str, job: str, via: str, into: dict[tuple[str, str], str] = found) -> None:
            known = into.get((gpu, job))
            if known is None or _RANK[via] < _RANK[known]:
                into[(gpu, job)] = via

        if self.mapping_dir is not None:
            for gpu, jobs in self._mapping(uuids).items():
                for job in jobs:
                    note(gpu, job, "mapping")
        if self.cgroup or self.environ:
            processes = self._gpu_processes()
            for pid, gpus in processes.items():
                owner, via = self._job_of(pid)
                if owner is None:
                    continue
                for gpu in gpus.split(","):
                    note(gpu, owner, via)
                if self.efa:
                    held = self._efa_seen.get((pid, owner)) or self._efa_devices(pid)
                    if held:
                        self._efa_seen[(pid, owner)] = held
                    for device in held:
                        note(device, owner, via, efas)
            self._efa_seen = {k: v for k, v in self._efa_seen.items() if k[0] in processes}
        fam = self.families()
        for (device, job), via in sorted(efas.items()):
            fam.add("fmdiag_efa_slurm_job_info", 1, {"device": device, "slurm_job_id": job, "via": via})
        by_index = {str(i): u for i, u in uuids.items()}
        for (gpu, job), via in sorted(found.items()):
            uuid = by_index.get(gpu, gpu if not gpu.isdigit() else "")
            index = gpu if gpu.isdigit() else next((i for i, u in by_index.items() if u == gpu), "")
            fam.add(
                "fmdiag_gpu_slurm_job_info", 1, {"gpu": index, "UUID": uuid, "slurm_job_id": job, "via": via}
            )
        return fam

    def _gpu_processes(self) -> Mapping[int, str]:
        provider = self.ctx.gpu_processes.provider
        return provider() if provider is not None else {}

    def _efa_devices(self, pid: int) -> set[str]:
        """EFA devices process ``pid`` holds open, by the names the EFA collector exports."""
        fds = self.ctx.paths.procfs / str(pid) / "fd"
        try:
            entries = os.listdir(fds)
        except (FileNotFoundError, PermissionError):
            return set()  # gone, or another user's process and we are not root
        except OSError as exc:
            self.report(fds, f"cannot list: {exc.strerror or exc}")
            return set()
        devices = set()
        for entry in entries:
            try:
                target = os.readlink(fds / entry)
            except OSError:
                continue  # closed while we listed
            if _UVERBS.fullmatch(target):
                name = efa_device(self.ctx.paths.sysfs, target)
                if name:
                    devices.add(name)
        return devices

    def _job_of(self, pid: int) -> tuple[str | None, str]:
        where = self.ctx.paths.procfs / str(pid)
        if self.cgroup:
            try:
                job = job_from_cgroup((where / "cgroup").read_text(errors="replace"))
            except FileNotFoundError:
                return None, ""  # the process ended since the GPU scrape
            except OSError as exc:
                self.report(where / "cgroup", f"cannot read: {exc.strerror or exc}")
                job = None
            if job is not None:
                return job, "cgroup"
        if self.environ:
            try:
                job = job_from_environ((where / "environ").read_bytes())
            except (FileNotFoundError, PermissionError):
                return None, ""  # gone, or another user's process and we are not root
            except OSError as exc:
                self.report(where / "environ", f"cannot read: {exc.strerror or exc}")
                return None, ""
            if job is not None:
                return job, "environ"
        return None, ""

    def _mapping(self, uuids: Mapping[int, str]) -> dict[str, list[str]]:
        """GPU (index, or UUID when the file is named by one) -> job ids, from the mapping files."""
        assert self.mapping_dir is not None
        out: dict[str, list[str]] = {}
        try:
            names = sorted(os.listdir(self.mapping_dir))
        except OSError as exc:
            self.report(self.mapping_dir, f"cannot list: {exc.strerror or exc}")
            return out
        for name in names:
            if name.startswith("."):
                continue  # a prolog's temporary file before its rename
            path = self.mapping_dir / name
            if not (name.isdigit() or name.startswith(("GPU-", "MIG-"))):
                self.report(path, "not named by a GPU index or UUID")
                continue
            try:
                with open(path, "rb") as f:
                    raw = f.read(_MAX_MAPPING_BYTES + 1)
            except FileNotFoundError:
                continue  # the epilog removed it while we listed
            except OSError as exc:
                self.report(path, f"cannot read: {exc.strerror or exc}")
                continue
            try:
                if len(raw) > _MAX_MAPPING_BYTES:
                    raise ValueError(f"longer than {_MAX_MAPPING_BYTES} bytes")
                jobs = parse_mapping(raw.decode())
            except (ValueError, UnicodeDecodeError) as exc:
                self.report(path, exc)
                continue
            index = name if name.isdigit() else next((str(i) for i, u in uuids.items() if u == name), name)
            out.setdefault(index, []).extend(j for j in jobs if j not in out.get(index, []))
        return out
