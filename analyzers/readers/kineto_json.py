"""Streaming reader of one Chrome-trace JSON document (a Kineto trace): events one at a time.

Why not ``json.load`` (HTA) or ijson: a whole-file parse holds the decompressed text and every
event dict at once (HTA needs ~6x the decompressed size); ijson's event-by-event callbacks
build each dict through Python calls. This module keeps one bounded window of decompressed text
(``CHUNK_BYTES`` of compressed input at a time) and turns it into events two ways:

- fast path: the window is cut after its last ``}`` that is followed by ``,`` and ``{`` — a
  candidate boundary between two events — and ``[`` + that text + ``]`` is decoded in one call
  by msgspec into :class:`Event` structs that keep only the fields the analyzer reads (the
  rest of each event, most of its bytes, is skipped in C). A cut inside a string or inside a
  nested object cannot decode (the string or the brackets would not close), so a successful
  decode is always a run of whole events;
- exact path: when no cut decodes (the last events of the list, an event larger than the
  window, or bad input), the standard library's C scanner reads one event at a time, so a
  malformed file fails at the exact offset.

The top-level keys other than ``traceEvents`` (``distributedInfo``, ``baseTimeNanoseconds``,
``deviceProperties``, ``traceName``, ...) are small; they may come before or after the events
(PyTorch writes ``traceName`` last), so they land in :attr:`TraceStream.meta` as they are met
and the dict is complete once the events are exhausted.

Bad input raises :class:`~fmdiag.analyzers.errors.InputError` naming the file and the offset in
the decompressed text (characters; bytes for ASCII traces) where parsing stopped.
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import msgspec

from fmdiag.analyzers.errors import InputError

#: Compressed bytes read per refill; the text window is about this size times the ratio.
CHUNK_BYTES = 1 << 18
_WS = re.compile(r"[ \t\n\r]*")
_GZIP_MAGIC = b"\x1f\x8b"
#: A candidate boundary between two events: ``}`` then ``,`` then ``{`` (whitespace allowed).
_BOUNDARY = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")
#: The fast path wants at least this much text in the window before it cuts.
_MIN_WINDOW = 1 << 16


class Args(msgspec.Struct, gc=False):
    """The ``args`` fields the analyzer reads; the others are skipped while decoding.

    ``gc=False``: events hold no cycles, and leaving millions of them out of the cyclic garbage
    collector's lists keeps it from sweeping them over and over during a parse."""

    correlation: Any = None
    stream: Any = None
    device: Any = None


class Event(msgspec.Struct, gc=False):
    """The fields of a trace event the analyzer reads (values unchecked: the reader checks them)."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    args: Args | None = None


_BATCH = msgspec.json.Decoder(list[Event])
#: The C scanner behind ``json.loads``: ``scan_once(text, index) -> (value, end)``.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def decompressed(raw: io.BufferedReader) -> IO[bytes]:
    """The file's bytes, decompressed when they start with the gzip magic (whatever its name)."""
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


class TraceStream:
    """Iterate over a trace's events; :attr:`meta` holds the other top-level keys met so far."""

    def __init__(self, path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = Path(path)
        self.source = str(path)
        self.meta: dict[str, Any] = {}
        self.events_seen = 0
        self._chunk = chunk_bytes
        self._text = ""
        self._pos = 0
        self._base = 0  # characters consumed before ``_text``
        self._eof = False
        self._file: IO[bytes] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    # -- the window ------------------------------------------------------------------------------

    def _fail(self, reason: str, pos: int | None = None) -> InputError:
        offset = self._base + (self._pos if pos is None else pos)
        return InputError(self.source, reason, f"offset {offset}")

    def _refill(self) -> bool:
        """Append the next chunk to the window (dropping what was consumed); False at end of file."""
        if self._eof:
            return False
        assert self._file is not None
        try:
            data = self._file.read(self._chunk)
            text = self._decoder.decode(data, final=not data)
        except (OSError, EOFError, zlib.error) as exc:
            raise self._fail(f"cannot read (truncated or corrupt compressed data?): {exc}") from None
        except UnicodeDecodeError as exc:
            raise self._fail(f"not UTF-8 text: {exc.reason}") from None
        if not data:
            self._eof = True
        self._base += self._pos
        self._text = self._text[self._pos :] + text
        self._pos = 0
        return True

    def _skip_ws(self) -> str:
        """Skip whitespace; the next character, or "" at end of input."""
        while True:
            m = _WS.match(self._text, self._pos)
            assert m is not None
            self._pos = m.end()
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._refill():
                return ""

    def _expect(self, chars: str, what: str) -> str:
        c = self._skip_ws()
        if not c or c not in chars:
            found = repr(c) if c else "end of file"
            raise self._fail(f"expected {what}, found {found}")
        self._pos += 1
        return c

    def _value(self) -> Any:
        """Scan one JSON value at the next non-blank position, refilling until it is whole."""
        self._skip_ws()
        while True:
            try:
                obj, end = _SCAN(self._text, self._pos)
            except StopIteration:
                if self._refill():
                    continue
                raise self._fail("expected a JSON value") from None
            except json.JSONDecodeError as exc:
                if self._refill():
                    continue
                raise self._fail(f"invalid JSON: {exc.msg}", exc.pos) from None
            # A number cut by the window's end still scans ("12" of "123"): insist on a follower.
            if end < len(self._text) or self._eof:
                self._pos = end
                return obj
            if not self._refill():
                self._pos = end
                return obj

    # -- the document ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Event]:
        for batch in self.batches():
            yield from batch

    def batches(self) -> Iterator[list[Event]]:
        """The events in runs as they are decoded (one generator step per window, not per event)."""
        try:
            raw = self.path.open("rb")
        except OSError as exc:
            raise InputError(self.source, f"cannot open: {exc.strerror or exc}") from None
        with raw:
            self._file = decompressed(raw)
            try:
                yield from self._document()
            finally:
                self._file.close()

    def _document(self) -> Iterator[list[Event]]:
        self._refill()
        if self._text.startswith("\ufeff"):
            self._pos = 1
        self._expect("{", "a JSON object (a Chrome trace starts with '{')")
        if self._skip_ws() == "}":
            self._pos += 1
        else:
            while True:
                if self._skip_ws() != '"':
                    raise self._fail("expected a key string")
                key = self._value()
                self._expect(":", "':' after a key")
                if key == "traceEvents":
                    yield from self._events()
                else:
                    self.meta[key] = self._value()
                if self._expect(",}", "',' or '}' between top-level keys") == "}":
                    break
        if self._skip_ws():
            raise self._fail("unexpected data after the end of the trace object")

    def _last_boundary(self) -> int:
        """Index just after the last ``}`` of the window that may end an event; -1 if none."""
        text, pos = self._text, self._pos
        k = len(text)
        for _ in range(64):  # a few inner "}" (args objects) come before each boundary
            k = text.rfind("}", pos, k)
            if k < 0:
                return -1
            if _BOUNDARY.match(text, k):
                return k + 1
        return -1

    def _batch(self) -> list[Event] | None:
        """Fast path: the window's whole events decoded at once, or None (then take the exact path)."""
        if len(self._text) - self._pos < _MIN_WINDOW and not self._eof:
            self._refill()
        cut = self._last_boundary()
        if cut <= self._pos:
            return None
        try:
            events = _BATCH.decode("[" + self._text[self._pos : cut] + "]")
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        self._pos = cut
        return events

    def _one(self) -> Event:
        """Exact path: one event with the standard library's scanner; errors name the offset."""
        start = self._pos
        obj = self._value()
        if not isinstance(obj, dict):
            raise self._fail(f"event {self.events_seen} is a {type(obj).__name__}, not an object", start)
        try:
            return msgspec.convert(obj, Event)
        except msgspec.ValidationError as exc:
            raise self._fail(f"event {self.events_seen}: {exc}", start) from None

    def _events(self) -> Iterator[list[Event]]:
        self._expect("[", "'[' (traceEvents must be a list)")
        if self._skip_ws() == "]":
            self._pos += 1
            return
        while True:
            batch = self._batch()
            if batch is None:
                batch = [self._one()]
            self.events_seen += len(batch)
            yield batch
            if self._expect(",]", "',' or ']' between events") == "]":
                return
