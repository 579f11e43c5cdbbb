"""Where the per-rank work runs: in this process, a local process pool, or a Dask cluster.

The only module that knows about process pools and Dask. A map function takes one input file
and returns a small, picklable result (one rank's columns or breakdown, never its raw events),
so the parent holds reductions and each worker at most one rank's working set.

The pool uses the ``forkserver`` start method: forking a process that has threads (Dask,
pyarrow's pools, a logging handler) can deadlock the child, which is one of HTA's faults.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def map_items(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int | None = None,
    scheduler: str | None = None,
    advance: Callable[[int], None] | None = None,
) -> list[R]:
    """``[fn(x) for x in items]``, in order, on Dask at ``scheduler``, else on ``workers`` processes.

    ``advance(n)`` is called as results come in (``n`` items done since the last call): a
    progress bar's hook.
    """
    if not items:
        return []
    tick = advance or (lambda n: None)
    if scheduler:
        out = _dask_map(fn, items, scheduler)
        tick(len(out))
        return out
    workers = default_workers() if workers is None else workers
    workers = min(workers, len(items))
    if workers <= 1:
        results = []
        for x in items:
            results.append(fn(x))
            tick(1)
        return results
    # Chunks amortise the round trips over many small files (4,096 step files), and small enough
    # that the last one does not leave the other workers idle for long (~0.5 s of step files).
    chunksize = max(1, math.ceil(len(items) / (workers * 16)))
    # the pool's modules load only when there is a pool (a small Kineto analysis has none)
    import multiprocessing  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        results = []
        for r in pool.map(fn, items, chunksize=chunksize):
            results.append(r)
            tick(1)
        return results


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim, or no way to ask
        return None
    return trim


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    The per-file results of a map are thousands of small arrays (one step file: 8 KB a column),
    which glibc allocates on its heap, not as separate mappings: freed, their pages stay with
    the process. Called once they are merged, so the process' memory is what it holds (0.6 GB
    less at 4,096 ranks), not what it once held.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _dask_map(fn: Callable[[T], R], items: Sequence[T], scheduler: str) -> list[R]:
    # Dask is its own extra and starts threads on import: load it only when a scheduler is given.
    from distributed import Client  # noqa: PLC0415

    with Client(scheduler, set_as_default=False) as client:  # type: ignore[no-untyped-call]
        futures = client.map(fn, list(items), pure=False)
        results: list[R] = client.gather(futures)
    return results
