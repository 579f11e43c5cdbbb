"""The rank's input pipeline: worker processes that read, decode and batch, like a DataLoader.

It behaves like PyTorch's ``DataLoader(num_workers=N)`` on purpose, because the faults the test
bed injects are the ones such a loader suffers: each worker is a separate process (so a CPU
cgroup on the workers starves decoding without touching the training process), reads its
samples from disk with plain ``open``/``read`` (so a blkio throttle hits it), decodes with real
CPU work, and hands whole batches over a bounded queue (so a slow loader shows up as the
training loop's ``data_wait``, and a healthy one is hidden by prefetching).

Batch ``b`` of a data-parallel rank is built by worker ``b % workers`` from a deterministic
stream of that rank's samples (its shards are those with ``index % dp == dp_rank``, reshuffled
each epoch from the seed), so every pipeline stage of one data-parallel group sees the same
batches, and the parent takes batches strictly in order from per-worker queues.

Workers are started with the "spawn" context: the rank has imported JAX, and forking a process
with XLA's threads running is unsafe. They exit when the loader is closed, and when the rank
dies (PR_SET_PDEATHSIG, backed by a parent-pid check), so no orphan keeps reading.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import queue
import signal
import time
import zlib
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fmdiag.testbed import dataset

_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1
#: Rows of 256 "pixels" the decode work runs over; a fixed transform keeps the cost per byte fixed.
_ROW = 256

Batch = np.ndarray[Any, np.dtype[np.int32]]


class LoaderError(RuntimeError):
    """A loader worker failed or died; the message says which and why."""


def shards_of(manifest: dict[str, Any], dp: int, dp_rank: int) -> list[str]:
    """The shard files one data-parallel rank reads: disjoint between dp ranks."""
    names: list[str] = list(manifest["shards"])
    if len(names) < dp:
        raise ValueError(f"data set has {len(names)} shards, fewer than dp={dp}: a dp rank would have none")
    return names[dp_rank::dp]


def batch_samples(
    batch_index: int, *, batch: int, shards: int, per_shard: int, seed: int, dp_rank: int
) -> list[tuple[int, int]]:
    """(shard position, sample index) of each sequence of a batch, from an endless shuffled stream."""
    total = shards * per_shard
    out = []
    for position in range(batch_index * batch, (batch_index + 1) * batch):
        epoch, at = divmod(position, total)
        order = np.random.default_rng([seed, dp_rank, epoch]).permutation(total)
        out.append(divmod(int(order[at]), per_shard))
    return out


def _transform() -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(0x5EED)
    matrix: np.ndarray[Any, np.dtype[np.float32]] = (
        rng.standard_normal((_ROW, _ROW)) / np.sqrt(_ROW)
    ).astype(np.float32)
    return matrix


def decode_sample(
    blob: bytes, *, seq_len: int, rounds: int, transform: np.ndarray[Any, np.dtype[np.float32]] | None = None
) -> Batch:
    """Tokens of one stored sample, after ``rounds`` of numeric work on its "pixels".

    The work stands in for image decoding or tokenising; its result is not used, only its cost.
    """
    raw = zlib.decompress(blob)
    need = 2 * (seq_len + 1)
    if len(raw) < need:
        raise ValueError(f"sample holds {len(raw) // 2} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    tokens = np.frombuffer(raw, "<u2", count=seq_len + 1).astype(np.int32)
    pixels = np.frombuffer(raw, np.uint8)
    usable = len(pixels) // _ROW * _ROW
    if rounds and usable:
        matrix = _transform() if transform is None else transform
        x = pixels[:usable].reshape(-1, _ROW).astype(np.float32) / 255.0
        for _ in range(rounds):
            x = np.tanh(x @ matrix)
    return tokens


class _ShardReader:
    """Open shard files of one worker; every read goes to the disk, not the page cache."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.directory, self.names = directory, names
        self.files: dict[int, tuple[Any, list[tuple[int, int]]]] = {}

    def _open(self, shard: int) -> tuple[Any, list[tuple[int, int]]]:
        f = open(self.directory / self.names[shard], "rb", buffering=0)  # noqa: SIM115 (kept open)
        # No readahead: a read fetches the sample's pages and no more, as a random-access
        # loader over large files does, so the bytes read equal the bytes the loader needs.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        head = self._read(f, 0, dataset.index_size(0))
        count = int.from_bytes(head[len(dataset.MAGIC) :], "little")
        index = dataset.read_index(self._read(f, 0, dataset.index_size(count)))
        self.files[shard] = (f, index)
        return f, index

    @staticmethod
    def _read(f: Any, offset: int, length: int) -> bytes:
        f.seek(offset)
        chunks, left = [], length
        while left:
            chunk = f.read(left)
            if not chunk:
                raise ValueError(f"{f.name}: truncated at {offset + length - left}")
            chunks.append(chunk)
            left -= len(chunk)
        # Drop the pages just read from the page cache. Without this, the second epoch (and
        # every other rank reading the same node's files) is served from memory, and a cgroup
        # blkio read throttle, which only sees requests that reach the block device, never bites.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return b"".join(chunks)

    def sample(self, shard: int, index: int) -> bytes:
        f, entries = self.files.get(shard) or self._open(shard)
        offset, length = entries[index]
        return self._read(f, offset, length)

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()
        self.files.clear()


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent-pid check below still ends the worker
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(0)


def _work(
    worker: int,
    workers: int,
    parent: int,
    out: Queue[tuple[int, Batch, int] | tuple[int, str, int]],
    stop: Event,
    settings: dict[str, Any],
) -> None:
    """One worker process: batches worker, worker + workers, ... until stopped or orphaned."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the rank's to handle
    out.cancel_join_thread()  # exit without waiting for a reader to drain the queue
    reader = _ShardReader(Path(settings["data_dir"]), settings["shards"])
    transform = _transform()
    b = worker
    try:
        while not stop.is_set():
            picks = batch_samples(
                b,
                batch=settings["batch"],
                shards=len(settings["shards"]),
                per_shard=settings["per_shard"],
                seed=settings["seed"],
                dp_rank=settings["dp_rank"],
            )
            rows = [
                decode_sample(
                    reader.sample(shard, index),
                    seq_len=settings["seq_len"],
                    rounds=settings["decode_rounds"],
                    transform=transform,
                )
                for shard, index in picks
            ]
            # When the batch was ready: a fault of the loader's path (CPU, disk) binds on the steps
            # that consume batches made while it was on (the test bed's truth reads this).
            item: tuple[int, Batch, int] = (b, np.stack(rows), time.time_ns())
            while not stop.is_set():
                if os.getppid() != parent:
                    return
                try:
                    out.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            b += workers
    except Exception as exc:
        # The parent raises this as a LoaderError naming the worker.
        out.put((-1, f"{type(exc).__name__}: {exc}", 0))
    finally:
        reader.close()


class Loader:
    """Batches of shape (batch, seq_len + 1), int32, in a fixed order, from worker processes."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        dp: int,
        dp_rank: int,
        batch: int,
        seq_len: int,
        vocab: int,
        workers: int,
        prefetch: int,
        decode_rounds: int,
        seed: int,
    ) -> None:
        manifest = dataset.read_manifest(data_dir)
        if manifest["seq_len"] < seq_len:
            raise ValueError(
                f"data set {data_dir} has sequences of {manifest['seq_len']} tokens, not {seq_len}"
            )
        if manifest["vocab"] > vocab:
            raise ValueError(f"data set {data_dir} has a vocabulary of {manifest['vocab']}, over {vocab}")
        if workers < 1:
            raise ValueError("a loader needs at least one worker process")
        self.workers = workers
        self._settings: dict[str, Any] = {
            "data_dir": str(data_dir),
            "shards": shards_of(manifest, dp, dp_rank),
            "per_shard": int(manifest["samples_per_shard"]),
            "batch": batch,
            "seq_len": seq_len,
            "decode_rounds": decode_rounds,
            "seed": seed,
            "dp_rank": dp_rank,
        }
        self._ctx = multiprocessing.get_context("spawn")
        depth = max(1, -(-prefetch // workers))  # ``prefetch`` batches in flight, over all workers
        self._queues: list[Queue[Any]] = [self._ctx.Queue(depth) for _ in range(workers)]
        self._stop = self._ctx.Event()
        self._procs: list[BaseProcess] = []
        self._next = 0
        #: Unix ns at which the batch :meth:`next` returned last was ready in its worker.
        self.last_made_ns = 0

    def start(self) -> Loader:
        parent = os.getpid()
        for w in range(self.workers):
            proc = self._ctx.Process(
                target=_work,
                args=(w, self.workers, parent, self._queues[w], self._stop, self._settings),
                name=f"fmdiag-loader-{w}",
                daemon=True,
            )
            proc.start()
            self._procs.append(proc)
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def next(self) -> Batch:
        """The next batch, waiting for it as long as it takes (a live worker is never abandoned)."""
        b = self._next
        w = b % self.workers
        while True:
            try:
                got, data, made_ns = self._queues[w].get(timeout=_POLL_S)
                break
            except queue.Empty:
                proc = self._procs[w]
                if not proc.is_alive():
                    raise LoaderError(
                        f"loader worker {w} (pid {proc.pid}) exited with {proc.exitcode}"
                    ) from None
        if got == -1:
            raise LoaderError(f"loader worker {w} failed: {data}")
        if got != b:
            raise LoaderError(f"loader worker {w} sent batch {got}, expected {b}")
        self._next += 1
        self.last_made_ns = made_ns
        result: Batch = data
        return result

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next()

    def close(self, timeout: float = 3.0) -> None:
        """Stop the workers: ask, then terminate, then kill; never leaves one running."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for proc in self._procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(1.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for q in self._queues:
            q.cancel_join_thread()
            q.close()
        self._procs.clear()

    def __enter__(self) -> Loader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
