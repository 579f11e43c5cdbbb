"""A device directory's sysfs files kept open between scrapes and re-read with ``pread``.

Why: a sysfs attribute read at offset 0 runs the driver's ``show`` again (the kernel's seq_file
restarts at position 0), so ``pread`` on a descriptor kept from the last scrape returns what a
fresh open would, at a third of the system calls. On a p5 (32 EFA devices, ~45 files each) that
is most of what an EFA scrape costs.

A device's kept descriptors are trusted only while every directory they were found through
looks unchanged, checked at the start of each scrape with one ``stat`` per directory (inode,
mtime, ctime, size and link count): the device's own by path, each directory under it through
a kept descriptor when every directory above it is checked too (a replaced one shows in its
parent), else by path (a ``device`` symlink, whose target may be replaced anywhere along the
way). On sysfs none of that changes during a device's life (hot-unplug removes the directory;
a re-plugged device is a new one); in a tree whose files are replaced by rename, as the
simulator writes, every replacement changes its directory, and the device is read afresh.
Like git's index, a directory modified within 50 ms of the opening is not trusted, since
timestamps are coarse. A read that fails on a kept descriptor (ENODEV after a hot-unplug)
drops the device's descriptors and the device is read afresh in the same scrape, so the
collector sees exactly what a fresh read would see.

Nothing leaks: descriptors of devices not read in a scrape are closed at its end, a device
that is not kept closes its files as soon as it is read, and the total stays within a budget
under the process's file limit (beyond it, devices are read afresh each scrape).
"""

from __future__ import annotations

import os
import stat
import time
import weakref
from collections.abc import Iterator

from fmdiag.exporters.dir_watch import EVERYTHING, DirWatch

_O_FILE = os.O_RDONLY | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
#: A directory modified this close to (or after) the moment its files were opened may have
#: changed again within the filesystem's timestamp granularity: its files are not kept.
RACY_NS = 50_000_000

#: (st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_size, st_nlink) of a directory.
Signature = tuple[int, int, int, int, int, int]


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink)


class StaleError(Exception):
    """A kept descriptor could not be read: the device must be read afresh."""


class KeptDevice:
    """What one device's last fresh read opened and found, to re-read with ``pread``."""

    __slots__ = ("dirs", "fd", "files", "groups", "links", "listings", "sig", "wds")

    def __init__(self, fd: int, sig: Signature) -> None:
        self.fd = fd
        self.sig = sig
        #: Directory (relative to the device) whose entries were used -> a descriptor to check it
        #: with (-1: checked by path, as when reached through a symlink) and its signature.
        self.dirs: dict[str, tuple[int, Signature]] = {}
        #: Single attribute (relative path) -> descriptor.
        self.files: dict[str, int] = {}
        #: Directory read whole -> one descriptor per name of its listing (-1: could not be opened).
        self.groups: dict[str, list[int]] = {}
        #: Directory -> its sorted listing.
        self.listings: dict[str, list[str]] = {}
        #: Symlink -> its target.
        self.links: dict[str, str] = {}
        #: inotify watches on its directories (those need no ``stat`` per scrape).
        self.wds: list[int] = []

    def descriptors(self) -> Iterator[int]:
        yield self.fd
        yield from (fd for fd, _ in self.dirs.values() if fd >= 0)
        yield from self.files.values()
        for fds in self.groups.values():
            yield from (fd for fd in fds if fd >= 0)

    def count(self) -> int:
        return sum(1 for _ in self.descriptors())

    def close(self) -> None:
        for fd in list(self.descriptors()):
            try:
                os.close(fd)
            except OSError:  # already gone (EBADF): nothing left to release
                pass
        self.files.clear()
        self.groups.clear()
        self.dirs.clear()
        self.fd = -1


class DeviceReader:
    """Reads under one device directory for one scrape, from kept descriptors where trusted.

    Fresh (``kept`` None): every read opens relative to the device's directory descriptor;
    what was opened is recorded so :meth:`KeptDevices.finish` can keep it. Kept: the values
    were read in one batch by :meth:`prefetch` and are served from there; anything not in
    the batch (a file that could not be opened last time) is opened afresh.
    """

    def __init__(self, fd: int, sig: Signature, kept: KeptDevice | None) -> None:
        self.fd = fd
        self.sig = sig
        self.kept = kept
        self.record = KeptDevice(fd, sig) if kept is None else kept
        self._values: dict[str, bytes] = {}
        self._group_values: dict[str, list[bytes | OSError]] = {}
        self.opened_at = time.time_ns()

    # -- kept ------------------------------------------------------------------------------------
    def prefetch(self, attr_limit: int, group_limit: int) -> None:
        """Read every kept descriptor now (raises :class:`StaleError` when one fails)."""
        kept = self.kept
        assert kept is not None
        pread = os.pread
        try:
            self._values = {rel: pread(fd, attr_limit, 0) for rel, fd in kept.files.items()}
            self._group_values = {
                rel: [pread(fd, group_limit, 0) if fd >= 0 else _NOT_KEPT for fd in fds]
                for rel, fds in kept.groups.items()
            }
        except OSError as exc:
            raise StaleError(str(exc)) from exc

    # -- reads (both modes) ------------------------------------------------------------------------
    def read(self, rel: str, limit: int) -> bytes:
        """One attribute's bytes (at most ``limit``); OSError as a fresh read would raise it."""
        value = self._values.get(rel)
        if value is not None:
            return value
        self._note_dir(rel.rpartition("/")[0])
        fd = os.open(rel, _O_FILE, dir_fd=self.fd)
        try:
            data = os.pread(fd, limit, 0)
        except BaseException:
            os.close(fd)
            raise
        if self.kept is None and rel not in self.record.files:
            self.record.files[rel] = fd
        else:
            os.close(fd)
        return data

    def listdir(self, rel: str) -> list[str]:
        """The sorted names in a directory under the device."""
        if self.kept is not None:
            names = self.kept.listings.get(rel)
            if names is not None:
                return names
        dfd = os.open(rel, _O_DIR, dir_fd=self.fd)
        try:
            names = sorted(os.listdir(dfd))
        finally:
            os.close(dfd)
        if self.kept is None:
            self._note_dir(rel)
            self.record.listings[rel] = names
        return names

    def read_group(self, rel: str, limit: int) -> tuple[list[str], list[bytes | OSError]]:
        """Every file of a directory: its sorted names and, per name, its bytes or the error."""
        names = self.listdir(rel)
        values = self._group_values.get(rel)
        if values is not None:
            out: list[bytes | OSError] = []
            for name, value in zip(names, values, strict=True):
                out.append(self._read_fresh(f"{rel}/{name}", limit) if value is _NOT_KEPT else value)
            return names, out
        fds: list[int] = []
        out = []
        for name in names:
            try:
                fd = os.open(f"{rel}/{name}", _O_FILE, dir_fd=self.fd)
            except OSError as exc:
                fds.append(-1)
                out.append(exc)
                continue
            try:
                out.append(os.pread(fd, limit, 0))
            except OSError as exc:  # not re-read through this descriptor: opened again each scrape
                os.close(fd)
                fds.append(-1)
                out.append(exc)
                continue
            fds.append(fd)
        if self.kept is None and rel not in self.record.groups:
            self.record.groups[rel] = fds
        else:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
        return names, out

    def readlink(self, rel: str) -> str:
        if self.kept is not None:
            target = self.kept.links.get(rel)
            if target is not None:
                return target
        target = os.readlink(rel, dir_fd=self.fd)
        if self.kept is None:
            self._note_dir(rel.rpartition("/")[0])
            self.record.links[rel] = target
        return target

    def _read_fresh(self, rel: str, limit: int) -> bytes | OSError:
        try:
            fd = os.open(rel, _O_FILE, dir_fd=self.fd)
        except OSError as exc:
            return exc
        try:
            return os.pread(fd, limit, 0)
        except OSError as exc:
            return exc
        finally:
            os.close(fd)

    def _note_dir(self, rel: str) -> None:
        """Remember that entries of ``rel`` were used, so its signature guards the kept files."""
        if self.kept is None and rel not in self.record.dirs:
            self.record.dirs[rel] = (-1, _NO_SIG)


class _NotKept(bytes):
    """Marks a name whose file could not be opened in the fresh read: opened again each scrape."""


_NOT_KEPT = _NotKept()
_NO_SIG: Signature = (-1, -1, -1, -1, -1, -1)


def _plain(record: KeptDevice, rel: str) -> bool:
    """Whether ``rel`` can be checked through its own descriptor (``fstat``, a third cheaper
    than a ``stat`` by path): no component is a symlink, and every directory above it is
    checked too, so a replaced one is seen in its parent. Otherwise it is checked by path."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if i < len(parts) and prefix not in record.dirs:
            return False
        if stat.S_ISLNK(os.lstat(prefix, dir_fd=record.fd).st_mode):
            return False
    return True


def _close_all(kept: dict[str, KeptDevice]) -> None:
    for record in kept.values():
        record.close()
    kept.clear()


def _encloses(path: str, rel: str) -> bool:
    """Whether ``rel`` (reached through a symlink) is the device's directory or one above it,
    as a device's ``device`` link points at the PCI device it sits under: then whatever
    replaces a directory on the way to it also replaces the device's own path, which is
    checked by path every scrape, and a watch on it is enough for its entries."""
    target = os.path.realpath(os.path.join(path, rel))
    device = os.path.realpath(path)
    return device == target or device.startswith(target.rstrip("/") + "/")


#: In KeptDevice.dirs: a directory watched through inotify, not checked with ``stat``.
_WATCHED = -2


class KeptDevices:
    """Every device's kept descriptors, by device directory path, within a budget."""

    def __init__(self, budget: int, watch: bool = True) -> None:
        self.budget = max(0, budget)
        self.open_fds = 0
        self._kept: dict[str, KeptDevice] = {}
        self._seen: set[str] = set()
        #: Where inotify is available, directories under a device are watched instead of
        #: checked with a ``stat`` each per scrape (see fmdiag.exporters.dir_watch); the
        #: instance is made when the first device is kept, so a node without one needs none.
        self._want_watch = watch
        self._watch: DirWatch | None = None
        self._watchers: dict[int, set[str]] = {}  # watch descriptor -> device paths
        self._drained = False
        # A collector dropped without close() (a test, a failed start) still closes them.
        weakref.finalize(self, _close_all, self._kept)

    @property
    def watching(self) -> bool:
        """Whether directories are watched with inotify (else checked with ``stat``)."""
        return self._want_watch

    def begin(self, path: str) -> DeviceReader:
        """A reader for the device at ``path``: kept descriptors when everything checks out.

        Raises OSError when the device directory cannot be opened (FileNotFoundError: gone).
        """
        if not self._drained:
            self._drain()
        self._seen.add(path)
        kept = self._kept.get(path)
        if kept is not None:
            if self._still_valid(path, kept):
                return DeviceReader(kept.fd, kept.sig, kept)
            self.drop(path)
        fd = os.open(path, _O_DIR)
        try:
            sig = signature(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return DeviceReader(fd, sig, None)

    def restart(self, path: str) -> DeviceReader:
        """After a :class:`StaleError`: forget the device's descriptors, read it afresh."""
        self.drop(path)
        return self.begin(path)

    def finish(self, path: str, reader: DeviceReader, keep: bool) -> None:
        """End of the device's read: keep what a fresh read opened, or close it."""
        if reader.kept is not None:
            if not keep:
                self.drop(path)
            return
        record = reader.record
        if keep and self._settled(path, reader):
            n = record.count()
            if self.open_fds + n <= self.budget:
                self._kept[path] = record
                self.open_fds += n
                return
        self._unwatch(path, record)
        record.close()

    def drop(self, path: str) -> None:
        kept = self._kept.pop(path, None)
        if kept is not None:
            self.open_fds -= kept.count()
            self._unwatch(path, kept)
            kept.close()

    def end_scrape(self) -> None:
        """Close the descriptors of devices this scrape did not read (removed, now excluded)."""
        for path in [p for p in self._kept if p not in self._seen]:
            self.drop(path)
        self._seen = set()
        self._drained = False

    def close(self) -> None:
        for path in list(self._kept):
            self.drop(path)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._want_watch = False

    def _drain(self) -> None:
        """Once per scrape: drop every kept device a watched directory of which changed."""
        self._drained = True
        if self._watch is None:
            return
        changed = self._watch.changed()
        if EVERYTHING in changed:
            self.close_all_kept()
            return
        for wd in changed:
            for path in list(self._watchers.get(wd, ())):
                self.drop(path)

    def close_all_kept(self) -> None:
        for path in list(self._kept):
            self.drop(path)

    def _unwatch(self, path: str, kept: KeptDevice) -> None:
        for wd in kept.wds:
            users = self._watchers.get(wd)
            if users is None:
                continue
            users.discard(path)
            if not users:
                del self._watchers[wd]
                if self._watch is not None:
                    self._watch.remove(wd)
        kept.wds = []

    def _watch_dir(self, path: str, record: KeptDevice, rel: str) -> bool:
        """Watch one of the device's directories; False where inotify cannot (then: stat)."""
        if self._watch is None:
            if not self._want_watch:
                return False
            self._watch = DirWatch.open()
            if self._watch is None:  # no inotify here, or no instance left: stat from now on
                self._want_watch = False
                return False
        wd = self._watch.add(os.path.join(path, rel) if rel else path)
        if wd is None:
            return False
        record.wds.append(wd)
        self._watchers.setdefault(wd, set()).add(path)
        return True

    def _still_valid(self, path: str, kept: KeptDevice) -> bool:
        try:
            if signature(os.stat(path)) != kept.sig:
                return False
            for rel, (fd, sig) in kept.dirs.items():
                if not rel or fd == _WATCHED:
                    continue  # the device directory: checked just above; watched: events
                st = os.fstat(fd) if fd >= 0 else os.stat(rel, dir_fd=kept.fd)
                if signature(st) != sig:
                    return False
        except OSError:
            return False
        return True

    def _settled(self, path: str, reader: DeviceReader) -> bool:
        """Record each used directory's signature; False when one changed too recently to trust.

        A directory is watched before it is looked at, so a change after this look is an
        event, and one before it is caught by its times.
        """
        record = reader.record
        limit = reader.opened_at - RACY_NS
        try:
            for rel in list(record.dirs):
                plain = not rel or _plain(record, rel)
                watched = (plain or _encloses(path, rel)) and self._watch_dir(path, record, rel)
                st = os.stat(rel, dir_fd=record.fd) if rel else os.fstat(record.fd)
                if max(st.st_mtime_ns, st.st_ctime_ns) >= limit:
                    return False
                if watched:
                    record.dirs[rel] = (_WATCHED, signature(st))
                    continue
                fd = -1
                if rel and plain:
                    fd = os.open(rel, _O_DIR | os.O_NOFOLLOW, dir_fd=record.fd)
                    record.dirs[rel] = (fd, _NO_SIG)  # closed with the record from here on
                    if signature(os.fstat(fd)) != signature(st):
                        return False
                record.dirs[rel] = (fd, signature(st))
            root = os.fstat(record.fd)
        except OSError:
            return False
        return not (max(root.st_mtime_ns, root.st_ctime_ns) >= limit or signature(root) != record.sig)
