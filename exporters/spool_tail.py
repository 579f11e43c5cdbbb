"""Follows the append-only files of a spool directory, returning only the lines added since
the previous poll.

Why not re-read whole files: a rank's step file grows by one line per step for the whole
job (hundreds of MB over a week) and the exporter is scraped every few seconds, so each poll
must cost what was appended, not what exists. Why not keep files open: a file deleted by
the operator would keep its disk space while the exporter holds it. So each poll lists the
directory, identifies files by ``(st_dev, st_ino)`` and reads from the remembered offset
with ``pread``:

* a file that appears after the first poll is read from its start, at most ``read_budget``
  bytes per poll; a file already there at the first poll (the exporter restarted under a
  running job) and larger than the budget is joined at its last ``read_budget`` bytes,
  from the next line boundary, so a restart never re-reads days of history in one scrape;
* a renamed file keeps its identity, offset and pending bytes;
* a truncated file (size below the offset), or one rewritten in place (the bytes just before
  the offset changed), is read again from the start;
* a replaced file (same name, new inode) is a new file; the old identity is reported gone;
* the last line without its newline stays pending until the newline arrives; it is never
  returned early and never called an error;
* a line longer than ``max_line`` is returned as ``None`` (too long) once its newline is
  seen, without buffering it.

Line splitting is :class:`LineBuffer`, a pure state machine fuzzed on its own.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Bytes remembered before the offset to notice a file rewritten in place.
_SIGNATURE_BYTES = 32

FileKey = tuple[int, int]


class LineBuffer:
    """Splits a byte stream fed in arbitrary chunks into complete lines.

    ``feed`` returns ``(line number, line)`` for each line completed by the chunk: the line
    without its newline and surrounding whitespace, or ``None`` when it was longer than
    ``max_line`` bytes (its bytes are dropped as they arrive, so memory stays bounded).
    Blank lines are counted but not returned, as :func:`fmdiag.steprecord.iter_lines` does.
    """

    def __init__(self, max_line: int, *, skip_first: bool = False, first_line: int = 1) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be positive, got {max_line}")
        self.max_line = max_line
        self._pending = bytearray()
        self._overlong = False
        #: Drop everything up to the first newline silently (joined mid-line).
        self._skip = skip_first
        #: Number the next completed line will get.
        self.next_line = first_line

    def at_line_start(self) -> None:
        """The stream joined exactly at a line boundary: nothing to skip after all."""
        self._skip = False

    @property
    def pending(self) -> int:
        """Bytes held for the unterminated last line."""
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[tuple[int, bytes | None]]:
        out: list[tuple[int, bytes | None]] = []
        start = 0
        size = len(chunk)
        while start < size:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self._hold(chunk, start, size)
                break
            if self._skip:
                self._skip = False
            elif self._overlong or len(self._pending) + (nl - start) > self.max_line:
                out.append((self.next_line, None))
                self.next_line += 1
            else:
                if self._pending:
                    self._pending += chunk[start:nl]
                    line = bytes(self._pending).strip()
                else:
                    line = chunk[start:nl].strip()
                if line:
                    out.append((self.next_line, line))
                self.next_line += 1
            self._pending.clear()
            self._overlong = False
            start = nl + 1
        return out

    def _hold(self, chunk: bytes, start: int, end: int) -> None:
        if self._skip or self._overlong:
            return
        if len(self._pending) + (end - start) > self.max_line:
            self._pending.clear()
            self._overlong = True
            return
        self._pending += chunk[start:end]


@dataclass
class TailedFile:
    key: FileKey
    path: Path
    buffer: LineBuffer
    offset: int = 0
    signature: bytes = b""
    #: False when the file was joined mid-way: line numbers then count from that point.
    numbered_from_start: bool = True
    error_reported: bool = False


@dataclass
class Chunk:
    """The lines a poll found appended to one file."""

    key: FileKey
    path: Path
    lines: list[tuple[int, bytes | None]]
    numbered_from_start: bool
    #: True when the file was read again from its start (truncated or rewritten).
    restarted: bool = False


@dataclass
class PollResult:
    chunks: list[Chunk] = field(default_factory=list)
    #: Files followed before and gone now (deleted, or renamed out of the pattern).
    vanished: list[FileKey] = field(default_factory=list)
    #: (path, error) for files or directories that could not be read; each reported once.
    errors: list[tuple[str, str]] = field(default_factory=list)
    #: Files beyond ``max_files`` that are not followed.
    refused: int = 0


class SpoolTail:
    """Incremental reader of ``*<suffix>`` regular files under ``root`` (recursively)."""

    def __init__(
        self,
        root: Path,
        *,
        suffix: str = ".jsonl",
        max_files: int = 1024,
        read_budget: int = 1 << 20,
        max_line: int = 64 * 1024,
    ) -> None:
        if max_files < 1 or read_budget < 1:
            raise ValueError("max_files and read_budget must be positive")
        self.root = root
        self.suffix = suffix
        self.max_files = max_files
        self.read_budget = read_budget
        self.max_line = max_line
        self.files: dict[FileKey, TailedFile] = {}
        self._first_poll = True
        #: Paths whose open/read failure was already reported (cleared when they recover).
        self._reported: set[str] = set()

    def poll(self) -> PollResult:
        result = PollResult()
        found: dict[FileKey, tuple[Path, int]] = {}
        for path, st in self._scan(result):
            key = (st.st_dev, st.st_ino)
            if key not in found:
                found[key] = (path, st.st_size)
        for key, (path, size) in found.items():
            tailed = self.files.get(key)
            if tailed is None:
                if len(self.files) >= self.max_files:
                    result.refused += 1
                    self._report_once(
                        result, str(path), f"not followed: over the limit of {self.max_files} files"
                    )
                    continue
                tailed = self._start(key, path, size)
                self.files[key] = tailed
            tailed.path = path
            chunk = self._read(tailed, result)
            if chunk is not None:
                result.chunks.append(chunk)
        for key in [k for k in self.files if k not in found]:
            del self.files[key]
            result.vanished.append(key)
        self._first_poll = False
        if len(self._reported) > 4 * self.max_files:  # bound memory when names churn
            self._reported.clear()
        return result

    def _scan(self, result: PollResult) -> Iterator[tuple[Path, os.stat_result]]:
        stack = [self.root]
        listed = 0
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue  # no spool yet: nothing has been written on this node
            except OSError as exc:
                self._report_once(result, str(directory), f"cannot list: {exc.strerror or exc}")
                continue
            self._reported.discard(str(directory))
            for entry in sorted(entries, key=lambda e: e.name):
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                        continue
                    if not entry.name.endswith(self.suffix) or not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished between listing and stat
                listed += 1
                if listed > 4 * self.max_files:
                    return  # a runaway directory must not make the scrape unbounded
                yield Path(entry.path), st

    def _start(self, key: FileKey, path: Path, size: int) -> TailedFile:
        if self._first_poll and size > self.read_budget:
            # Joining a long file: read only its tail, from the next line boundary.
            return TailedFile(
                key,
                path,
                LineBuffer(self.max_line, skip_first=True),
                offset=size - self.read_budget,
                numbered_from_start=False,
            )
        return TailedFile(key, path, LineBuffer(self.max_line))

    def _restart(self, tailed: TailedFile) -> None:
        tailed.buffer = LineBuffer(self.max_line)
        tailed.offset = 0
        tailed.signature = b""
        tailed.numbered_from_start = True

    def _read(self, tailed: TailedFile, result: PollResult) -> Chunk | None:
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(tailed.path, flags)
        except FileNotFoundError:
            return None  # removed since the scan; the next poll reports it gone
        except OSError as exc:
            self._report_once(result, str(tailed.path), _describe(exc))
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != tailed.key:
                return None  # replaced since the scan; picked up as a new file next poll
            restarted = False
            if not tailed.signature and tailed.offset > 0 and os.pread(fd, 1, tailed.offset - 1) == b"\n":
                tailed.buffer.at_line_start()
            if st.st_size < tailed.offset:
                self._restart(tailed)
                restarted = True
            elif tailed.signature:
                before = os.pread(fd, len(tailed.signature), tailed.offset - len(tailed.signature))
                if before != tailed.signature:
                    self._restart(tailed)
                    restarted = True
            want = min(st.st_size - tailed.offset, self.read_budget)
            data = os.pread(fd, want, tailed.offset) if want > 0 else b""
        except OSError as exc:
            self._report_once(result, str(tailed.path), _describe(exc))
            return None
        finally:
            os.close(fd)
        self._reported.discard(str(tailed.path))
        tailed.offset += len(data)
        tailed.signature = (tailed.signature + data)[-_SIGNATURE_BYTES:]
        lines = tailed.buffer.feed(data)
        if not lines and not restarted:
            return None
        return Chunk(tailed.key, tailed.path, lines, tailed.numbered_from_start, restarted)

    def _report_once(self, result: PollResult, where: str, error: str) -> None:
        if where not in self._reported:
            self._reported.add(where)
            result.errors.append((where, error))


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link; step files must be regular files"
    return f"cannot read: {exc.strerror or exc}"
