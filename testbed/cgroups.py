"""CPU and disk throttles for chosen processes, through cgroup v1 (what this kernel mounts).

Why cgroups rather than ``nice`` or a busy neighbour: a quota is a fact we set (the rank gets
exactly this share of a CPU), so the truth of the fault is known by construction. Groups are
named ``fmtb<owner pid>-<name>`` under each controller, so a SIGKILLed run's groups are found
and removed by the next one (:func:`remove_stale`).

The blkio throttle limits I/O the group's tasks submit to one whole disk. Reads are submitted
by the reading task, so they are throttled once they miss the page cache (the loader drops
its pages after reading); buffered writes are written back by kernel threads and escape a v1
throttle, so the checkpoint writer ``fsync``s, which submits its dirty pages itself.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PREFIX = "fmtb"
_OWNED = re.compile(rf"^{PREFIX}(\d+)-")
CONTROLLERS = ("cpu", "blkio")


class CgroupError(RuntimeError):
    """A group could not be made or written; the message names the file."""


def available() -> str | None:
    """Why throttles cannot work here, or None when they can."""
    for controller in CONTROLLERS:
        path = ROOT / controller
        if not (path / "cgroup.procs").is_file():
            return f"cgroup v1 controller {controller!r} is not mounted at {path}"
    if not (ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return f"{ROOT / 'cpu'} has no cpu.cfs_quota_us (CFS bandwidth control is off)"
    return None


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="ascii")
    except OSError as exc:
        raise CgroupError(f"writing {text.strip()!r} to {path}: {exc.strerror or exc}") from None


class Group:
    """One group under one controller, made on construction and removed by :meth:`remove`."""

    def __init__(self, controller: str, name: str, owner: int | None = None) -> None:
        self.controller = controller
        self.path = ROOT / controller / f"{PREFIX}{owner or os.getpid()}-{name}"
        try:
            self.path.mkdir(exist_ok=True)
        except OSError as exc:
            raise CgroupError(f"making {self.path}: {exc.strerror or exc}") from None

    def add(self, pids: Iterable[int]) -> None:
        for pid in pids:
            try:
                _write(self.path / "cgroup.procs", f"{pid}\n")
            except CgroupError:
                if Path(f"/proc/{pid}").exists():  # a process that already ended is no error
                    raise

    def set(self, name: str, value: str) -> None:
        _write(self.path / name, value + "\n")

    def remove(self) -> bool:
        return _remove_group(self.path)


def _remove_group(path: Path) -> bool:
    """Move the group's tasks back to the root group, then remove it."""
    if not path.is_dir():
        return True
    parent = path.parent / "cgroup.procs"
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                parent.write_text(pid + "\n")
    try:
        path.rmdir()
    except OSError:
        return False
    return True


def cpu_quota(name: str, cpus: float, pids: Iterable[int]) -> Group:
    """Limit ``pids`` (with all their threads) to ``cpus`` CPUs of time together."""
    group = Group("cpu", name)
    period_us = 100_000
    group.set("cpu.cfs_period_us", str(period_us))
    group.set("cpu.cfs_quota_us", str(max(1000, int(cpus * period_us))))
    group.add(pids)
    return group


def disk_of(path: Path) -> str:
    """``MAJ:MIN`` of the whole disk holding ``path`` (blkio throttles whole disks only)."""
    st = os.stat(path)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sys_dev = Path("/sys/dev/block") / dev
    if not sys_dev.exists():
        raise CgroupError(
            f"{path} is on device {dev}, not a block device (overlay, tmpfs or network filesystem?): "
            "a disk throttle needs the test bed's --out on a local disk"
        )
    real = sys_dev.resolve()
    if (real / "partition").exists():
        real = real.parent
    return (real / "dev").read_text(encoding="ascii").strip()


def disk_bandwidth(
    name: str, disk: str, pids: Iterable[int], *, read_bps: int | None = None, write_bps: int | None = None
) -> Group:
    """Limit reads and/or writes that ``pids`` submit to ``disk`` (``MAJ:MIN``), bytes per second."""
    group = Group("blkio", name)
    if read_bps is not None:
        group.set("blkio.throttle.read_bps_device", f"{disk} {int(read_bps)}")
    if write_bps is not None:
        group.set("blkio.throttle.write_bps_device", f"{disk} {int(write_bps)}")
    group.add(pids)
    return group


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def leftovers(*, include_live: bool = False) -> list[Path]:
    found = []
    for controller in CONTROLLERS:
        base = ROOT / controller
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            match = _OWNED.match(path.name)
            if match and path.is_dir() and (include_live or not _alive(int(match.group(1)))):
                found.append(path)
    return found


def remove_stale() -> list[str]:
    return [str(p) for p in leftovers() if _remove_group(p)]


def remove_owned(owner: int) -> list[str]:
    """Remove every group of run ``owner`` (this run's, at its end); returns those that stayed."""
    prefix = f"{PREFIX}{owner}-"
    return [
        str(p) for p in leftovers(include_live=True) if p.name.startswith(prefix) and not _remove_group(p)
    ]
