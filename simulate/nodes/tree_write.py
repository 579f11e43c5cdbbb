"""Atomic writes under a node-tree root, so a collector reading it mid-render sees old or new.

A live tree is re-rendered every second while exporters scrape it: every file must change in
one step, a new directory must appear complete, and a removed one must vanish at once. The
staging directory keeps temporary files out of the directories collectors list.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGING = ".staging"


@dataclass(frozen=True)
class Link:
    """A symbolic link to create, with a target relative to the link's directory."""

    target: str


Spec = Mapping[str, "str | Link"]


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    False when the platform or filesystem cannot, so the caller falls back.
    """
    global _renameat2
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
            return False
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        _renameat2 = fn
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


class TreeWriter:
    """Writes under one root so a concurrent reader never sees a partial file or directory.

    Temporary files and directories live in ``<root>/.staging`` (same filesystem, so
    ``os.replace``/``os.rename`` into place are atomic) and never inside a directory a
    collector lists, where a half-written ``.tmp`` file could be taken for a counter.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / STAGING
        self.staging.mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def _tmp(self) -> Path:
        self._seq += 1
        return self.staging / f"{os.getpid()}-{threading.get_ident()}-{self._seq}-{uuid.uuid4().hex[:8]}"

    def write(self, path: Path, text: str) -> None:
        """Replace ``path`` with ``text`` unless it already holds exactly that.

        The new content is written to a staging file and swapped in with one
        ``renameat2(RENAME_EXCHANGE)``: a plain ``rename`` over an existing file costs ~1 ms
        on ext4 (its replace-via-rename heuristic forces the new blocks out), which a
        32-device node re-rendered every second cannot afford. Where the exchange is not
        supported, ``os.replace`` does the same job, slower.
        """
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnicodeDecodeError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        if path.is_file() and not path.is_symlink() and _exchange(tmp, path):
            tmp.unlink()  # now the old content, which no reader can reach any more
            return
        if path.is_dir() and not path.is_symlink():
            self.remove(path)
        os.replace(tmp, path)

    def link(self, path: Path, target: str) -> None:
        """Point the symlink ``path`` at ``target``, replacing whatever was there atomically."""
        if path.is_symlink() and os.readlink(path) == target:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp()
        os.symlink(target, tmp)
        if path.is_dir() and not path.is_symlink():
            self.remove(path)
        os.replace(tmp, path)

    def remove(self, path: Path) -> None:
        """Make ``path`` vanish in one step (rename away), then delete it at leisure."""
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
            return
        if not path.exists():
            return
        doomed = self._tmp()
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def _fill(self, base: Path, spec: Spec) -> None:
        for rel, item in spec.items():
            target = base / rel
            if isinstance(item, Link):
                self.link(target, item.target)
            else:
                self.write(target, item)

    @staticmethod
    def _build(base: Path, spec: Spec) -> None:
        """Write ``spec`` into the fresh, unseen staging directory ``base`` (no atomicity needed)."""
        made = {base}
        for rel, item in spec.items():
            target = os.path.join(base, rel)
            parent = Path(os.path.dirname(target))
            if parent not in made:
                parent.mkdir(parents=True, exist_ok=True)
                made.add(parent)
            if isinstance(item, Link):
                os.symlink(item.target, target)
            else:
                with open(target, "w", encoding="utf-8") as f:
                    f.write(item)

    def sync_dir(self, path: Path, spec: Spec) -> None:
        """Make directory ``path`` hold exactly ``spec`` (relative path -> content or Link).

        A new directory is built in staging and renamed into place, so it appears complete;
        an existing one has its changed files replaced one by one (see :meth:`write`) and
        loses the entries the spec no longer has.
        """
        if not path.is_dir() or path.is_symlink():
            if path.is_symlink() or path.exists():
                self.remove(path)
            build = self._tmp()
            build.mkdir()
            self._build(build, spec)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.rename(build, path)
            return
        self._update_in_place(path, spec)

    def _update_in_place(self, path: Path, spec: Spec) -> None:
        self._fill(path, spec)
        wanted = {os.path.normpath(rel) for rel in spec}
        parents: set[str] = set()
        for rel in wanted:
            d = os.path.dirname(rel)
            while d and d not in parents:
                parents.add(d)
                d = os.path.dirname(d)
        base = os.fspath(path)
        for dirpath, dirnames, filenames in os.walk(base, topdown=True):
            rel_dir = os.path.relpath(dirpath, base) if dirpath != base else ""
            for name in list(dirnames):
                rel = os.path.join(rel_dir, name)
                if rel in wanted:  # a symlink to a directory is an entry, not a place to walk
                    dirnames.remove(name)
                elif rel not in parents:
                    self.remove(Path(dirpath) / name)
                    dirnames.remove(name)
            for name in filenames:
                if os.path.join(rel_dir, name) not in wanted:
                    self.remove(Path(dirpath) / name)

    def prune(self, parent: Path, keep: Iterable[str], *, only: str | None = None) -> None:
        """Remove entries of ``parent`` not named in ``keep`` (matching glob ``only`` if given)."""
        if not parent.is_dir():
            return
        keep_set = set(keep)
        for entry in sorted(os.listdir(parent)):
            if entry in keep_set or (only is not None and not fnmatch.fnmatchcase(entry, only)):
                continue
            self.remove(parent / entry)

    def remove_empty_dirs(self, top: Path) -> None:
        if not top.is_dir():
            return
        for dirpath, _dirnames, _filenames in os.walk(top, topdown=False):
            p = Path(dirpath)
            if p != top and not any(p.iterdir()):
                with contextlib.suppress(OSError):
                    p.rmdir()

    def clean_staging(self) -> None:
        for entry in self.staging.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
