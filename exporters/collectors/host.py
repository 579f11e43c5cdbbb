"""Host collector: node CPU time by mode, pressure stall (PSI), and the training processes.

Only what node_exporter does not already give in a usable shape: CPU time summed over all
CPUs (8 series instead of 8 per CPU on a 192-CPU node) and per-process figures for the
processes that train. Memory, disks and per-CPU times stay node_exporter's.

Training processes are the GPU users when the GPU collector runs (it provides them from NVML
through ``CollectorContext.gpu_processes``), plus the
processes whose command line matches ``--collector.host.process-pattern``: data-loader
workers hold no GPU context yet are the first suspects of a host-bound step. An empty
pattern keeps only the GPU users. At most ``max-processes`` are exported, GPU users first;
``fmdiag_host_training_processes`` counts all found, so found minus exported is what the
bound left out.

/proc/stat and /proc/pressure/* are parsed here by pure functions; per-process figures come
from psutil. psutil reads the procfs root from a module global (``psutil.PROCFS_PATH``), so
every use is wrapped in :func:`psutil_procfs`, which holds :data:`PSUTIL_LOCK`: any other
code of the exporter calling psutil must hold that lock too.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.core import Metric

from fmdiag.exporters.collector import Collector, CollectorContext, register
from fmdiag.exporters.families import Families
from fmdiag.exporters.options import integer, regex

DEFAULT_PROCESS_PATTERN = r"python.*(train|torchrun|deepspeed|megatron)"
DEFAULT_MAX_PROCESSES = 64
#: /proc/stat "cpu" columns in kernel order (guest time is already inside user and nice).
CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
PSI_RESOURCES = ("cpu", "memory", "io")
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: Serialises every use of psutil in the exporter process (see the module docstring).
PSUTIL_LOCK = threading.Lock()


@contextmanager
def psutil_procfs(procfs: Path) -> Iterator[None]:
    """Point psutil at ``procfs`` for the duration of the block, holding :data:`PSUTIL_LOCK`."""
    with PSUTIL_LOCK:
        previous = psutil.PROCFS_PATH
        psutil.PROCFS_PATH = str(procfs)
        try:
            yield
        finally:
            psutil.PROCFS_PATH = previous


# --- pure parsers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuStat:
    seconds: dict[str, float]
    cpus: int


def parse_proc_stat(text: str, user_hz: int = USER_HZ) -> CpuStat:
    """The aggregate ``cpu`` line in seconds by mode, and the number of ``cpuN`` lines.

    Raises ValueError naming what is wrong when the ``cpu`` line is missing or garbled.
    """
    seconds: dict[str, float] | None = None
    cpus = 0
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, _, rest = line.partition(" ")
        if name == "cpu":
            fields = rest.split()
            if len(fields) < 4:
                raise ValueError(f"'cpu' line has {len(fields)} fields, expected at least 4")
            values: dict[str, float] = {}
            for mode, raw in zip(CPU_MODES, fields, strict=False):
                if not (raw.isascii() and raw.isdigit()):
                    raise ValueError(f"'cpu' line: {mode} is {raw!r}, not a tick count")
                values[mode] = int(raw) / user_hz
            seconds = values
        elif name[3:].isascii() and name[3:].isdigit():
            cpus += 1
    if seconds is None:
        raise ValueError("no aggregate 'cpu' line")
    return CpuStat(seconds, cpus)


def parse_pressure(text: str) -> dict[str, int]:
    """``some``/``full`` -> ``total=`` in microseconds from one /proc/pressure file."""
    out: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        kind = fields[0]
        if kind not in ("some", "full"):
            raise ValueError(f"line {number}: expected 'some' or 'full', got {kind[:40]!r}")
        for item in fields[1:]:
            key, sep, value = item.partition("=")
            if key == "total":
                if not sep or not (value.isascii() and value.isdigit()):
                    raise ValueError(f"line {number}: total={value[:40]!r} is not a count of microseconds")
                out[kind] = int(value)
                break
        else:
            raise ValueError(f"line {number}: no total= field")
    return out


def cmdline_text(raw: bytes) -> str:
    """/proc/<pid>/cmdline (NUL-separated) as one space-separated string for matching."""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


# --- the collector ----------------------------------------------------------------------------


@dataclass
class ProcessSample:
    pid: int
    name: str
    gpu: str
    user_s: float
    system_s: float
    iowait_s: float
    rss_bytes: int
    threads: int
    start_time_s: float
    read_bytes: int | None
    write_bytes: int | None


PROCESS_PATTERN = regex(
    "process-pattern",
    DEFAULT_PROCESS_PATTERN,
    "Regular expression searched in a process's command line to call it a training process "
    "(besides GPU users); empty for GPU users only.",
)
MAX_PROCESSES = integer(
    "max-processes", DEFAULT_MAX_PROCESSES, "Most training processes exported, GPU users first.", minimum=0
)


@register
class HostCollector(Collector):
    """CPU time by mode, PSI, and CPU/memory/IO of the training processes (psutil)."""

    name = "host"
    options = (PROCESS_PATTERN, MAX_PROCESSES)

    def __init__(self, ctx: CollectorContext) -> None:
        super().__init__(ctx)
        self.pattern = self.option(PROCESS_PATTERN)
        self.max_processes = self.option(MAX_PROCESSES)
        self.procfs = ctx.paths.procfs
        #: (pid, start ticks) whose unreadable /proc/<pid>/io was already reported.
        self._io_denied: set[tuple[int, float]] = set()

    def source_problem(self) -> str | None:
        if not (self.procfs / "stat").is_file():
            return (
                f"{self.procfs}/stat does not exist: is procfs mounted there (--path.procfs, --path.rootfs)?"
            )
        return None

    def collect(self) -> Iterable[Metric]:
        fam = self.families()
        self._cpu(fam)
        self._pressure(fam)
        self._processes(fam)
        return fam

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.EOPNOTSUPP:  # PSI compiled in but switched off (psi=0)
                return None
            self.report(path, f"cannot read: {exc.strerror or exc}")
            return None

    def _cpu(self, fam: Families) -> None:
        path = self.procfs / "stat"
        text = self._read(path)
        if text is None:
            return
        try:
            stat = parse_proc_stat(text)
        except ValueError as exc:
            self.report(path, exc)
            return
        for mode, seconds in stat.seconds.items():
            fam.add("fmdiag_host_cpu_seconds_total", seconds, {"mode": mode})
        if stat.cpus:
            fam.add("fmdiag_host_cpus", stat.cpus)

    def _pressure(self, fam: Families) -> None:
        for resource in PSI_RESOURCES:
            path = self.procfs / "pressure" / resource
            text = self._read(path)
            if text is None:
                continue
            try:
                totals = parse_pressure(text)
            except ValueError as exc:
                self.report(path, exc)
                continue
            for kind, micros in totals.items():
                fam.add(
                    "fmdiag_host_pressure_stall_seconds_total",
                    micros / 1e6,
                    {"resource": resource, "kind": kind},
                )

    # --- processes ------------------------------------------------------------------------

    def _gpu_users(self) -> dict[int, str]:
        provider = self.ctx.gpu_processes.provider
        if provider is None:
            return {}
        try:
            return {int(pid): str(gpu) for pid, gpu in provider().items()}
        except Exception as exc:  # a broken provider must not cost the CPU and PSI metrics
            self.report("gpu-process-provider", exc)
            return {}

    def _own_pids(self) -> set[int]:
        """This exporter, as seen in ``procfs`` too: its own command line matches the pattern."""
        own = {os.getpid()}
        try:
            own.add(int(os.readlink(self.procfs / "self")))
        except (OSError, ValueError):
            pass
        return own

    def _pattern_matches(self, exclude: set[int]) -> list[int]:
        if self.pattern is None:
            return []
        try:
            names = os.listdir(self.procfs)
        except OSError as exc:
            self.report(self.procfs, f"cannot list: {exc.strerror or exc}")
            return []
        found = []
        base = str(self.procfs)
        flags = os.O_RDONLY | os.O_CLOEXEC
        # Every process is looked at on every scrape (a wrapper may exec into python at any
        # time), so this loop uses bare file descriptors: ~3 µs per process.
        for entry in names:
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in exclude:
                continue
            try:
                fd = os.open(f"{base}/{entry}/cmdline", flags)
                try:
                    raw = os.read(fd, 8192)
                finally:
                    os.close(fd)
            except OSError:
                continue  # exited since the listing
            if raw and self.pattern.search(cmdline_text(raw)):
                found.append(pid)
        return sorted(found)

    def _processes(self, fam: Families) -> None:
        gpu_users = self._gpu_users()
        own = self._own_pids()
        matched = [p for p in self._pattern_matches(own | set(gpu_users)) if p not in gpu_users]
        candidates = [(pid, gpu_users[pid]) for pid in sorted(gpu_users) if pid not in own]
        candidates += [(pid, "") for pid in matched]
        samples = []
        if candidates and self.max_processes:
            with psutil_procfs(self.procfs):
                for pid, gpu in candidates:
                    sample = self._sample(pid, gpu)
                    if sample is not None:
                        samples.append(sample)
                        if len(samples) >= self.max_processes:
                            break
        fam.add("fmdiag_host_training_processes", len(candidates))
        for s in samples:
            labels = {"pid": str(s.pid), "name": s.name, "gpu": s.gpu}
            for mode, seconds in (("user", s.user_s), ("system", s.system_s), ("iowait", s.iowait_s)):
                fam.add("fmdiag_process_cpu_seconds_total", seconds, {**labels, "mode": mode})
            fam.add("fmdiag_process_resident_memory_bytes", s.rss_bytes, labels)
            if s.read_bytes is not None and s.write_bytes is not None:
                fam.add("fmdiag_process_read_bytes_total", s.read_bytes, labels)
                fam.add("fmdiag_process_write_bytes_total", s.write_bytes, labels)
            fam.add("fmdiag_process_threads", s.threads, labels)
            fam.add("fmdiag_process_start_time_seconds", s.start_time_s, labels)

    def _sample(self, pid: int, gpu: str) -> ProcessSample | None:
        """One process's figures; None when it exited meanwhile or its files are garbled."""
        where = self.procfs / str(pid)
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                name = proc.name()
                times = proc.cpu_times()
                rss = proc.memory_info().rss
                threads = proc.num_threads()
                start = proc.create_time()
                read_bytes = write_bytes = None
                try:
                    io = proc.io_counters()
                    read_bytes, write_bytes = io.read_bytes, io.write_bytes
                except psutil.AccessDenied:
                    key = (pid, start)
                    if key not in self._io_denied:
                        if len(self._io_denied) > 4096:
                            self._io_denied.clear()
                        self._io_denied.add(key)
                        self.report(
                            where / "io",
                            "permission denied (needs the process's user or CAP_SYS_PTRACE); "
                            "read/write bytes left out",
                        )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None  # exited between the listing and now: nothing to report
        except psutil.AccessDenied as exc:
            self.report(where, f"permission denied: {exc}")
            return None
        except (OSError, ValueError, IndexError, KeyError, RuntimeError) as exc:
            self.report(where, f"{type(exc).__name__}: {exc}")
            return None
        return ProcessSample(
            pid=pid,
            name=name,
            gpu=gpu,
            user_s=times.user,
            system_s=times.system,
            iowait_s=getattr(times, "iowait", 0.0),
            rss_bytes=rss,
            threads=threads,
            start_time_s=start,
            read_bytes=read_bytes,
            write_bytes=write_bytes,
        )
