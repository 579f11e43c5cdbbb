"""The frame one Kineto trace becomes: fixed columns of numpy arrays, names interned.

Only what the breakdowns need is kept (HTA keeps every field of every event in pandas):

``gpu`` — one row per device-side event with a duration (kernels, memcpy, memset, GPU
annotations, whatever carries a CUDA stream):

=============  =======  ==========================================================================
column         dtype    meaning
=============  =======  ==========================================================================
``ts``         float64  start, µs from the trace's time origin (fractional µs kept)
``dur``        float64  duration, µs
``stream``     int64    ``args.stream`` (else the event's ``tid``); -1 when neither is a number
``device``     int64    ``args.device`` (else the event's ``pid``)
``corr``       int64    ``args.correlation``: the launching runtime call; -1 when absent
``name``       int32    index into :attr:`KinetoTrace.names`
``cat``        int8     :data:`CAT_KERNEL`, :data:`CAT_MEMCPY`, :data:`CAT_MEMSET`, :data:`CAT_OTHER`
``kind``       int8     fmdiag's class of the event: :data:`KIND_COMPUTE`, :data:`KIND_COMM`,
                        :data:`KIND_MEMORY`, :data:`KIND_NONE` (not a GPU activity: annotations)
=============  =======  ==========================================================================

``launch`` — one row per host-side event carrying ``args.correlation`` (the CUDA runtime and
driver calls: ``cudaLaunchKernel``, ``cudaGraphLaunch``, ``cudaMemcpyAsync``, ...): ``corr``,
``ts``, ``dur``, ``name``.

``steps`` — one row per host-side ``ProfilerStep#N`` span: ``step`` (N), ``ts``, ``dur``.

``gpu_steps`` — the same for the GPU-side ``ProfilerStep#N`` spans (``gpu_user_annotation``)
that recent PyTorch writes beside the host ones; empty in older traces.

``loader`` — the DataLoader's host spans (``enumerate(DataLoader)#…__next__``): ``ts``, ``dur``,
``single_process`` (``_SingleProcessDataLoaderIter``: ``num_workers=0``, loading in the training
process itself).

``host_ops`` — every host op span (``cpu_op``, ``user_annotation``, old ``Operator``): ``ts``,
``dur``, ``tid`` (the thread), ``name`` (index into :attr:`KinetoTrace.names`), ``annotation``
(True for ``user_annotation`` spans: ``record_function`` regions, not ops).

``hta_streams`` — for ``--hta-compatible`` only: every event other than a kernel, memcpy or
memset that carries ``args.stream`` (HTA counts those as GPU activity): ``ts``, ``dur``,
``stream``, ``corr``, ``name``, ``cat``.

Times stay in the trace's µs (relative to ``baseTimeNanoseconds`` when the trace has one, which
:attr:`KinetoTrace.base_ns` keeps) so that ``--hta-compatible`` can round them the way HTA does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]

CAT_KERNEL, CAT_MEMCPY, CAT_MEMSET, CAT_OTHER = 0, 1, 2, 3
KIND_COMPUTE, KIND_COMM, KIND_MEMORY, KIND_NONE = 0, 1, 2, 3
KIND_NAMES: dict[int, str] = {KIND_COMPUTE: "compute", KIND_COMM: "comm", KIND_MEMORY: "memory"}

GPU_COLUMNS: tuple[str, ...] = ("ts", "dur", "stream", "device", "corr", "name", "cat", "kind")
LAUNCH_COLUMNS: tuple[str, ...] = ("corr", "ts", "dur", "name")
STEP_COLUMNS: tuple[str, ...] = ("step", "ts", "dur")


@dataclass
class KinetoTrace:
    """One rank's trace as columns; see the module docstring for each table's schema."""

    source: str
    rank: int
    #: ``"distributedInfo"``, ``"--rank-from"``, ``"file name"`` or
    #: :data:`~fmdiag.analyzers.readers.kineto_reader.RANK_ASSUMED`: where :attr:`rank` came from.
    rank_from: str
    base_ns: int | None
    names: list[str]
    gpu: dict[str, Any]
    launch: dict[str, Any]
    steps: dict[str, Any]
    gpu_steps: dict[str, Any] = field(default_factory=dict)
    loader: dict[str, Any] = field(default_factory=dict)
    host_ops: dict[str, Any] = field(default_factory=dict)
    #: The job's world size as the trace states it (``distributedInfo``); None when it does not.
    world_size: int | None = None
    #: The rank's coordinates in the parallel layout (``pp_rank``, ``tp_rank``, ...) from the
    #: trace's named process groups (:func:`~fmdiag.analyzers.readers.kineto_reader.layout_of`).
    layout: dict[str, int] = field(default_factory=dict)
    #: Events read, and how many of each phase/category were kept or ignored.
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: ``--hta-compatible`` only: events other than kernel/memcpy/memset that carry ``args.stream``,
    #: as HTA reads them (:func:`~fmdiag.analyzers.readers.kineto_reader.hta_streams`): ``ts``, ``dur``,
    #: ``stream``, ``corr``, ``name`` and ``cat`` (lists of str).
    hta_streams: dict[str, Any] = field(default_factory=dict)

    @property
    def gpu_events(self) -> int:
        return len(self.gpu["ts"])

    @property
    def cpu_only(self) -> bool:
        """True when the trace recorded no GPU activity (profiled without ``ProfilerActivity.CUDA``)."""
        return not bool(np.any(self.gpu["kind"] != KIND_NONE)) if self.gpu_events else True

    def name_of(self, index: int) -> str:
        return self.names[index]

    def gpu_end(self) -> F64:
        end: F64 = self.gpu["ts"] + self.gpu["dur"]
        return end
