"""Which watched directories changed since the last look: Linux inotify through ctypes.

Why: checking that a kept device's directories are unchanged with a ``stat`` each cost more
than a fifth of an EFA scrape (six directories per device, ~6 µs a ``stat`` from Python). One
non-blocking ``read`` of an inotify descriptor answers for all of them at once: no event, no
change. Only entry changes and attribute changes are asked for (a file created, deleted,
renamed in or out, its mode, times or links changed; the directory itself deleted or moved),
not writes to a file's contents, which a kept descriptor sees anyway.

sysfs does not report a device's removal through inotify, but there a kept descriptor of a
removed device fails to read (ENODEV), which the reader handles; the trees that are edited
by hand or by the simulator (tmpfs, ext4) report every change. Where inotify cannot be had
(no libc symbol, out of instances or watches) :func:`DirWatch.open` or :meth:`DirWatch.add`
says so and the caller checks with ``stat`` instead.
"""

from __future__ import annotations

import ctypes
import os
import struct
import weakref
from collections.abc import Callable

IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_ONLYDIR = 0x01000000
#: Everything that changes what a directory's entries are, or what they point at.
MASK = IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

#: Returned by :meth:`DirWatch.changed` when the kernel dropped events: assume everything changed.
EVERYTHING = -1


class DirWatch:
    """One inotify instance; :meth:`changed` drains it without blocking."""

    def __init__(self, fd: int, add: Callable[..., int], rm: Callable[..., int]) -> None:
        self.fd = fd
        self._add = add
        self._rm = rm
        # inotify instances are few per user (128 by default, shared with every other program
        # of that user): one that is dropped without close() is closed when collected.
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls) -> DirWatch | None:
        """A new instance, or None where inotify is not available."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add, rm = libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch
        except (OSError, AttributeError):
            return None
        add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)  # IN_NONBLOCK, IN_CLOEXEC
        if fd < 0:
            return None
        return cls(fd, add, rm)

    def add(self, path: str) -> int | None:
        """Watch a directory (following a symlink to it); its watch descriptor, or None."""
        wd = self._add(self.fd, os.fsencode(path), MASK | IN_ONLYDIR)
        return wd if wd >= 0 else None

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails harmlessly for a watch the kernel already dropped

    def changed(self) -> set[int]:
        """The watch descriptors with events since the last call ({EVERYTHING} on overflow)."""
        out: set[int] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            if not data:
                return out
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                out.add(EVERYTHING if mask & IN_Q_OVERFLOW else wd)

    def close(self) -> None:
        if self.fd >= 0:
            self._finalizer()
            self.fd = -1
