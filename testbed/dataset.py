"""The test bed's input files: shards of zlib-compressed samples, written cold to disk.

Faults on input I/O only show if the loader really reads the disk, so the files are fsynced
and their pages dropped from the page cache after writing (and the loader drops what it reads).
A sample stands in for an image or a document: a blob of ``sample_bytes`` whose first
``2 * (seq_len + 1)`` bytes are little-endian uint16 tokens and whose rest is low-entropy
"pixel" filler that the loader decodes with real numeric work. Tokens follow a seeded bigram
chain, so the model has something to learn and its loss falls.

Shard layout (little-endian): the magic ``FMDSHRD1``, the sample count (uint32), one
(offset uint64, length uint32) entry per sample, then the compressed blobs. ``manifest.json``
is written last (atomically), so its presence means the data set is complete.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FMDSHRD1"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<QI")
#: Probability that the next token follows the bigram chain rather than being drawn at random.
_CHAIN_P = 0.8


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


def _tokens(rng: np.random.Generator, successor: np.ndarray[Any, Any], count: int, vocab: int) -> np.ndarray:
    out = np.empty(count, np.uint16)
    out[0] = rng.integers(vocab)
    follow = rng.random(count) < _CHAIN_P
    noise = rng.integers(vocab, size=count)
    for i in range(1, count):
        out[i] = successor[out[i - 1]] if follow[i] else noise[i]
    return out


def _filler(rng: np.random.Generator, size: int) -> bytes:
    """A smooth random walk, like an image row: zlib shrinks it about threefold."""
    walk = np.cumsum(rng.integers(-2, 3, size=size, dtype=np.int64)) + int(rng.integers(256))
    return (walk & 0xFF).astype(np.uint8).tobytes()


def make_sample(
    rng: np.random.Generator, successor: np.ndarray[Any, Any], *, seq_len: int, vocab: int, sample_bytes: int
) -> bytes:
    """One uncompressed sample: seq_len + 1 tokens, then filler up to sample_bytes."""
    tokens = _tokens(rng, successor, seq_len + 1, vocab).astype("<u2").tobytes()
    return tokens + _filler(rng, sample_bytes - len(tokens))


def _drop_cached(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_dataset(
    directory: str | os.PathLike[str],
    *,
    shards: int = 16,
    samples_per_shard: int = 64,
    sample_bytes: int = 131072,
    seq_len: int,
    vocab: int,
    seed: int,
) -> dict[str, Any]:
    """Write the shards and the manifest; returns the manifest (plain JSON data).

    The same arguments always give the same bytes. Defaults: 16 x 64 samples of 128 KiB
    (128 MiB decoded, about 76 MiB on disk; 4 ranks at the default step time read about
    4 MB/s together, so a read throttle well under that starves the loaders).
    """
    if shards < 1 or samples_per_shard < 1:
        raise ValueError("a data set needs at least one shard of one sample")
    if vocab < 2 or vocab > 65536:
        raise ValueError(f"vocab {vocab}: tokens are stored as uint16 (2 to 65536)")
    if sample_bytes < 2 * (seq_len + 1):
        raise ValueError(f"sample_bytes {sample_bytes} cannot hold {seq_len + 1} uint16 tokens")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    successor = np.random.default_rng([seed, 0xC4A1]).integers(vocab, size=vocab)
    stored = 0
    for index in range(shards):
        rng = np.random.default_rng([seed, index])
        # Level 1: as small as level 6 on this filler, at a third of the cost.
        blobs = [
            zlib.compress(
                make_sample(rng, successor, seq_len=seq_len, vocab=vocab, sample_bytes=sample_bytes), 1
            )
            for _ in range(samples_per_shard)
        ]
        offset = len(MAGIC) + _COUNT.size + _ENTRY.size * len(blobs)
        index_bytes = bytearray()
        for blob in blobs:
            index_bytes += _ENTRY.pack(offset, len(blob))
            offset += len(blob)
        path = out / shard_name(index)
        with open(path, "wb") as f:
            f.write(MAGIC + _COUNT.pack(len(blobs)) + bytes(index_bytes))
            for blob in blobs:
                f.write(blob)
            _drop_cached(f)
        stored += offset
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "shards": [shard_name(i) for i in range(shards)],
        "samples_per_shard": samples_per_shard,
        "sample_bytes": sample_bytes,
        "seq_len": seq_len,
        "vocab": vocab,
        "seed": seed,
        "bytes_on_disk": stored,
    }
    tmp = out / f".{MANIFEST}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
        _drop_cached(f)
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"data set {directory}: no readable {MANIFEST} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION:
        raise ValueError(f"data set {directory}: {MANIFEST} is not format {FORMAT_VERSION}")
    return doc


def read_index(header: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every sample, from a shard's first bytes (see ``index_size``)."""
    if header[: len(MAGIC)] != MAGIC:
        raise ValueError("not a test-bed shard (bad magic)")
    (count,) = _COUNT.unpack_from(header, len(MAGIC))
    start = len(MAGIC) + _COUNT.size
    if len(header) < start + count * _ENTRY.size:
        raise ValueError("shard index is truncated")
    return [_ENTRY.unpack_from(header, start + i * _ENTRY.size) for i in range(count)]


def index_size(count: int) -> int:
    return len(MAGIC) + _COUNT.size + count * _ENTRY.size
