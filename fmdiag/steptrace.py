"""Record each training step from inside the training loop, one JSON line per step per rank.

    from fmdiag import steptrace

    tracer = steptrace.StepTracer()            # job/rank/node from torchrun or Slurm env
    for batch_idx in range(num_steps):
        with tracer.step(tokens=tokens_per_step) as step:
            with step.phase("data_wait"):
                batch = next(loader)
            with step.phase("forward"):
                loss = model(batch)
            ...
    tracer.close()

Guarantees, and why they matter to a training job:

* A line is whole or absent. Each record goes to the file in one ``write(2)`` on an
  ``O_APPEND`` descriptor; if a crash ever leaves a fragment, the next writer to open the file
  ends it with a newline first, so the fragment stays one bad line, not a corrupted neighbour.
* A process killed mid-run loses at most the step in progress. ``end_step`` hands the line
  to a writer thread and waits for it to reach the kernel — microseconds on a healthy
  filesystem — so a completed step is in the page cache before training continues.
* A slow filesystem never stalls training for long. The wait above is bounded
  (``handoff_timeout``, 50 ms); past it the line stays queued in a bounded buffer, and when the
  buffer is full the record is dropped and counted (``dropped`` in every later record, and the
  exporter's ``fmdiag_step_records_dropped_total``).
* No torch import: CUDA-event timing is used only when the training script has already
  imported torch and CUDA is available (or ``cuda_events=True``).
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import math
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fmdiag.steprecord import FORMAT_VERSION, LAYOUT_FIELDS, MAX_INT, PHASES, file_name, spool_dir

log = logging.getLogger("fmdiag.steptrace")

_JOB_ENV = ("FMDIAG_JOB", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID")
_RANK_ENV = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_RANK_ENV = ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_NODE_ENV = ("FMDIAG_NODE", "SLURMD_NODENAME", "NODE_NAME")


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        # torchrun sets TORCHELASTIC_RUN_ID=none when no rendezvous id was given.
        if value and value.lower() != "none":
            return value
    return None


def _int_env(env: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            try:
                number = int(value)
            except ValueError:
                raise ValueError(f"environment variable {name}={value!r} is not an integer rank") from None
            if number < 0:
                raise ValueError(f"environment variable {name}={value!r} is not a rank (negative)")
            return number
    return None


def identity(
    job: str | None = None,
    rank: int | None = None,
    local_rank: int | None = None,
    node: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, int, int | None, str]:
    """(job, rank, local_rank, node): arguments first, then torchrun/Slurm/MPI variables."""
    env = os.environ if env is None else env
    return (
        job or _first(env, _JOB_ENV) or "local",
        rank if rank is not None else (_int_env(env, _RANK_ENV) or 0),
        local_rank if local_rank is not None else _int_env(env, _LOCAL_RANK_ENV),
        node or _first(env, _NODE_ENV) or socket.gethostname(),
    )


class _Writer(threading.Thread):
    """Owns the file descriptor; the only thread that touches the filesystem."""

    def __init__(self, path: Path, buffer_size: int) -> None:
        super().__init__(name="fmdiag-steptrace-writer", daemon=True)
        self.path = path
        self.queue: queue.Queue[tuple[_Pending, threading.Event | None] | None] = queue.Queue(buffer_size)
        self.write_errors = 0
        self._fd: int | None = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        size = os.fstat(fd).st_size
        if size:
            with open(self.path, "rb") as f:  # end a fragment left by a crashed writer
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(fd, b"\n")
        return fd

    def _write(self, line: bytes) -> None:
        if self._fd is None:
            self._fd = self._open()
        view = memoryview(line)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                break
            pending, done = item
            try:
                self._write(pending.render())
            except OSError as exc:
                self.write_errors += 1
                if self.write_errors == 1 or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    log.warning("steptrace: cannot write %s: %s", self.path, exc)
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
            finally:
                if done is not None:
                    done.set()
        if self._fd is not None:
            os.close(self._fd)


class Step:
    """One step in progress: phases add up, fields are set until the step ends."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.start_ns = time.time_ns()
        self._t0 = time.perf_counter_ns()
        self.phases: dict[str, float] = {}
        self.fields: dict[str, int | float] = {}
        self.cuda_start: Any = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; entering the same phase twice in a step adds the durations."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_phase(name, time.perf_counter() - t0)

    def add_phase(self, name: str, seconds: float) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; phases are {', '.join(PHASES)}")
        value = float(seconds)
        if not math.isfinite(value):  # would make the whole line invalid for every reader
            raise ValueError(f"phase {name!r}: {seconds!r} is not a finite number of seconds")
        self.phases[name] = self.phases.get(name, 0.0) + max(0.0, value)

    def set(self, *, tokens: int | None = None, samples: int | None = None) -> None:
        for name, value in (("tokens", tokens), ("samples", samples)):
            if value is not None:
                number = int(value)
                if not 0 <= number <= MAX_INT:  # readers refuse the line, losing the step
                    raise ValueError(f"{name}={value!r}: must be an integer from 0 to 2**63-1")
                self.fields[name] = number


def _check_layout(layout: Mapping[str, int]) -> dict[str, int]:
    unknown = sorted(set(layout) - set(LAYOUT_FIELDS))
    if unknown:
        raise ValueError(
            f"layout: unknown coordinate(s) {', '.join(unknown)}; known: {', '.join(LAYOUT_FIELDS)}"
        )
    checked: dict[str, int] = {}
    for name in LAYOUT_FIELDS:  # the format's order, so every record spells them alike
        if name in layout:
            value = layout[name]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT:
                raise ValueError(f"layout: {name}={value!r} must be an integer from 0 to 2**63-1")
            checked[name] = value
    return checked


class StepTracer:
    """Writes this rank's step records to ``<spool>/<job>.rank<NNNNN>.jsonl``."""

    def __init__(
        self,
        spool: str | os.PathLike[str] | None = None,
        *,
        job: str | None = None,
        rank: int | None = None,
        local_rank: int | None = None,
        node: str | None = None,
        cuda_events: bool | str = "auto",
        buffer_size: int = 1024,
        handoff_timeout: float = 0.05,
        layout: Mapping[str, int] | None = None,
    ) -> None:
        """``layout``: the rank's coordinates in the parallel layout (``dp_rank``, ``pp_rank``,
        ``tp_rank``, ``cp_rank``, ``ep_rank``), written into every record so the analyzer can name
        a late pipeline stage or tensor-parallel group rather than a rank."""
        self.job, self.rank, self.local_rank, self.node = identity(job, rank, local_rank, node)
        if not 0 <= self.rank <= MAX_INT or not 0 <= (self.local_rank or 0) <= MAX_INT:
            raise ValueError(f"rank {self.rank} / local_rank {self.local_rank}: ranks are non-negative")
        self.layout = _check_layout(layout or {})
        self.path = spool_dir(spool) / file_name(self.job, self.rank)
        self.handoff_timeout = handoff_timeout
        self.dropped = 0
        self._next_step = 0
        self._current: Step | None = None
        self._torch = self._cuda_module(cuda_events)
        self._writer = _Writer(self.path, buffer_size)
        self._writer.start()
        self._closed = False
        #: Orders close() against a record being queued from another thread: every record
        #: accepted is queued before the writer's stop mark, every later one is counted.
        self._lock = threading.Lock()
        #: A forked child (a DataLoader worker) inherits this object but not the writer thread.
        self._pid = os.getpid()

    @property
    def pending(self) -> int:
        """Records queued and not yet handed to the kernel (non-zero while storage is slow)."""
        return self._writer.queue.qsize()

    @staticmethod
    def _cuda_module(cuda_events: bool | str) -> Any:
        """torch, when CUDA events should be recorded; never imports torch on "auto"."""
        if cuda_events is False:
            return None
        torch = sys.modules.get("torch")
        if torch is None and cuda_events is True:
            torch = importlib.import_module("torch")
        try:
            return torch if torch is not None and torch.cuda.is_available() else None
        except Exception:  # a broken CUDA setup must not stop training
            return None

    def begin_step(self, step: int | None = None) -> Step:
        if self._closed:
            raise RuntimeError(f"tracer for {self.path} is closed")
        if os.getpid() != self._pid:
            raise RuntimeError(
                f"this tracer belongs to process {self._pid}; a forked child (pid {os.getpid()}) has no "
                "writer thread: create a StepTracer in the child if it records steps"
            )
        if self._current is not None:
            raise RuntimeError(f"step {self._current.number} has not ended")
        number = self._next_step if step is None else int(step)
        if not 0 <= number <= MAX_INT:
            raise ValueError(f"step {step!r}: step numbers are integers from 0 to 2**63-1")
        current = Step(number)
        if self._torch is not None:
            current.cuda_start = self._torch.cuda.Event(enable_timing=True)
            current.cuda_start.record()
        self._current = current
        return current

    def end_step(self, *, tokens: int | None = None, samples: int | None = None) -> dict[str, Any]:
        """Finish the current step and hand its record to the writer; returns the record."""
        current = self._current
        if current is None:
            raise RuntimeError("end_step() without begin_step()")
        self._current = None
        self._next_step = current.number + 1
        current.set(tokens=tokens, samples=samples)
        end_ns = current.start_ns + (time.perf_counter_ns() - current._t0)
        cuda_end = None
        if current.cuda_start is not None:
            cuda_end = self._torch.cuda.Event(enable_timing=True)
            cuda_end.record()
        record: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "job": self.job,
            "rank": self.rank,
            "node": self.node,
            "step": current.number,
            "start_ns": current.start_ns,
            "end_ns": end_ns,
            "pid": os.getpid(),
        }
        if self.local_rank is not None:
            record["local_rank"] = self.local_rank
        record.update(self.layout)
        record.update({k: round(v, 9) for k, v in current.phases.items()})
        record.update(current.fields)
        # Records the kernel refused (ENOSPC, EIO) are as lost as those the full buffer dropped.
        dropped = self.dropped + self._writer.write_errors
        if dropped:
            record["dropped"] = dropped
        self._submit(record, current.cuda_start, cuda_end)
        return record

    def _submit(self, record: dict[str, Any], cuda_start: Any, cuda_end: Any) -> None:
        # With CUDA events the record waits for the GPU in the writer thread, so training is
        # not made to wait for it here either.
        done = threading.Event() if cuda_end is None else None
        with self._lock:
            try:
                if self._closed:  # close() ran while this step was in progress
                    raise queue.Full
                self._writer.queue.put_nowait((_Pending(record, cuda_start, cuda_end), done))
            except queue.Full:
                self.dropped += 1
                return
        if done is not None:
            done.wait(self.handoff_timeout)

    @contextmanager
    def step(
        self, step: int | None = None, *, tokens: int | None = None, samples: int | None = None
    ) -> Iterator[Step]:
        """A step as a ``with`` block; a step that raises is not recorded (it did not complete)."""
        current = self.begin_step(step)
        try:
            yield current
        except BaseException:
            self._current = None
            raise
        self.end_step(tokens=tokens, samples=samples)

    def close(self, timeout: float = 5.0) -> None:
        """Flush queued records (waiting at most ``timeout``) and stop the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._writer.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._writer.join(timeout)

    def __enter__(self) -> StepTracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pending:
    """A record on its way to the file; ``gpu_time`` is filled once the GPU passes the end event."""

    __slots__ = ("cuda_end", "cuda_start", "record")

    def __init__(self, record: dict[str, Any], cuda_start: Any, cuda_end: Any) -> None:
        self.record, self.cuda_start, self.cuda_end = record, cuda_start, cuda_end

    def render(self) -> bytes:
        if self.cuda_end is not None:
            self.cuda_end.synchronize()  # blocks the writer thread only
            self.record["gpu_time"] = round(self.cuda_start.elapsed_time(self.cuda_end) / 1e3, 9)
        return (json.dumps(self.record, separators=(",", ":")) + "\n").encode()
