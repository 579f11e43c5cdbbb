"""Step records (a dump's ``steps/``) into one frame, with what is missing or repeated reported.

Each file is read through the core reader (``fmdiag.steprecord.read_file``, the same validation
the exporter's step collector uses) into columns — :func:`read_file` is the per-rank map step a
process pool or Dask runs — and :func:`merge` concatenates them into the frame below.

The frame (one row per (job, rank, step); pandas):

================  ========  =================================================================
column            dtype     meaning
================  ========  =================================================================
``job``           category  the record's ``job``
``node``          category  the record's ``node``
``rank``          int64     global rank
``local_rank``    int64     ``local_rank``, -1 when the record has none
``step``          int64     step number
``start_ns``      int64     wall-clock start (Unix ns, the writer's clock)
``end_ns``        int64     ``start_ns`` + monotonic duration
``duration_s``    float64   ``(end_ns - start_ns) / 1e9``: immune to clock steps
<phase>           float64   each of ``fmdiag.steprecord.PHASES`` in seconds; NaN when not recorded
``tokens``        float64   tokens in the step; NaN when not recorded
``samples``       float64   samples in the step; NaN when not recorded
``gpu_time``      float64   CUDA-event time of the step; NaN when not recorded
``dropped``       int64     records the writer had dropped so far (cumulative)
================  ========  =================================================================

Ranks that restarted append to their file and repeat step numbers: the later record wins and
the superseded ones are counted. A last line without a newline is a step still being written
(left out, noted). A bad line is an error naming file and line; the good lines are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmdiag import steprecord
from fmdiag.analyzers.coverage import StepsCoverage

INT_COLUMNS: tuple[str, ...] = ("rank", "local_rank", "step", "start_ns", "end_ns", "dropped")
FLOAT_COLUMNS: tuple[str, ...] = ("duration_s", *steprecord.PHASES, "tokens", "samples", "gpu_time")
COLUMNS: tuple[str, ...] = ("job", "node", *INT_COLUMNS, *FLOAT_COLUMNS)


@dataclass
class FileSteps:
    """One step file as columns (cheap to send between processes), plus what went wrong in it."""

    source: str
    columns: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    partial_tail: bool = False
    #: Records replaced by a later record of the same (job, rank, step): restarts.
    superseded: int = 0
    #: Valid but implausible records (``fmdiag.steprecord.warnings``): how many, and the first few.
    implausible: int = 0
    implausible_examples: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.columns["step"])


#: Examples of implausible records kept per file.
EXAMPLES = 3


class BinaryStepFileError(ValueError):
    """A file in ``steps/`` that is not text (a core dump, a compressed rotation)."""


def read_file(path: str | Path) -> FileSteps:
    """Read and validate one step file; the later record of a repeated step wins.

    Raises :class:`BinaryStepFileError` (naming the offset) for a file that is not text at all.
    """
    with open(path, "rb") as f:
        why = steprecord.binary_content(f.read())
    if why is not None:
        raise BinaryStepFileError(f"{path}: {why}")
    result = steprecord.read_file(path)
    latest: dict[tuple[str, int, int], steprecord.StepRecord] = {}
    implausible = 0
    examples: list[str] = []
    for rec in result.records:
        latest[(rec.job, rec.rank, rec.step)] = rec
        if rec.phases:
            found = steprecord.warnings(rec)
            if found:
                implausible += 1
                if len(examples) < EXAMPLES:
                    examples.append(f"{path}: rank {rec.rank} step {rec.step}: {found[0]}")
    records = list(latest.values())
    nan = float("nan")
    cols: dict[str, Any] = {
        "job": [r.job for r in records],
        "node": [r.node for r in records],
        "rank": np.fromiter((r.rank for r in records), np.int64, len(records)),
        "local_rank": np.fromiter(
            (-1 if r.local_rank is None else r.local_rank for r in records), np.int64, len(records)
        ),
        "step": np.fromiter((r.step for r in records), np.int64, len(records)),
        "start_ns": np.fromiter((r.start_ns for r in records), np.int64, len(records)),
        "end_ns": np.fromiter((r.end_ns for r in records), np.int64, len(records)),
        "dropped": np.fromiter((r.dropped for r in records), np.int64, len(records)),
    }
    cols["duration_s"] = (cols["end_ns"] - cols["start_ns"]) / 1e9
    for phase in steprecord.PHASES:
        cols[phase] = np.fromiter((r.phases.get(phase, nan) for r in records), np.float64, len(records))
    for name in ("tokens", "samples", "gpu_time"):
        cols[name] = np.fromiter(
            (nan if (v := getattr(r, name)) is None else float(v) for r in records), np.float64, len(records)
        )
    return FileSteps(
        source=str(path),
        columns=cols,
        errors=[str(e) for e in result.errors],
        partial_tail=result.partial_tail,
        superseded=len(result.records) - len(records),
        implausible=implausible,
        implausible_examples=examples,
    )


def _ranges(values: np.ndarray) -> list[list[int]]:
    if values.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [values.size - 1]))
    return [[int(values[s]), int(values[e])] for s, e in zip(starts, ends, strict=True)]


def merge(parts: Sequence[FileSteps]) -> tuple[pd.DataFrame, StepsCoverage]:
    """One frame of every file's records, sorted by (step, rank), and its coverage."""
    cov = StepsCoverage(files=len(parts))
    for p in parts:
        cov.bad_lines.extend(p.errors)
        cov.superseded += p.superseded
        cov.implausible += p.implausible
        cov.implausible_examples.extend(p.implausible_examples[: max(0, 10 - len(cov.implausible_examples))])
        if p.partial_tail:
            cov.partial_tails.append(p.source)
    nonempty = [p for p in parts if p.rows]
    if not nonempty:
        return empty_frame(), cov
    data: dict[str, Any] = {}
    for name in COLUMNS:
        chunks = [p.columns[name] for p in nonempty]
        if name in ("job", "node"):
            data[name] = pd.Categorical(np.concatenate([np.asarray(c, dtype=object) for c in chunks]))
        else:
            data[name] = np.concatenate(chunks)
    frame = pd.DataFrame(data)
    # a (job, rank, step) in two files: the later file (in name order) wins, as within a file.
    # Only possible when a (job, rank) appears in more than one file: checked first, it is cheap.
    keys: list[tuple[str, int]] = []
    mixed = False
    for p in nonempty:
        jobs = set(p.columns["job"])
        mixed = mixed or len(jobs) > 1
        keys.extend((min(jobs), int(r)) for r in np.unique(p.columns["rank"]))
    if mixed or len(keys) != len(set(keys)):
        before = len(frame)
        frame = frame.drop_duplicates(subset=["job", "rank", "step"], keep="last")
        cov.superseded += before - len(frame)
    order = np.lexsort((frame["rank"].to_numpy(), frame["step"].to_numpy()))
    frame = frame.iloc[order].reset_index(drop=True)
    cov.records = len(frame)
    ranks = np.unique(frame["rank"].to_numpy())
    cov.ranks = [int(r) for r in ranks]
    cov.missing_ranks = [int(r) for r in np.setdiff1d(np.arange(int(ranks.max()) + 1), ranks)]
    steps = frame["step"].to_numpy()
    cov.first_step, cov.last_step = int(steps.min()), int(steps.max())
    all_steps = np.unique(steps)
    cov.steps_missing_everywhere = _ranges(
        np.setdiff1d(np.arange(cov.first_step, cov.last_step + 1), all_steps)
    )
    per_rank = frame.groupby("rank", sort=True)["step"].nunique()
    for rank in per_rank.index[per_rank.to_numpy() < all_steps.size]:
        have = frame.loc[frame["rank"] == rank, "step"].to_numpy()
        cov.missing_steps[int(rank)] = _ranges(np.setdiff1d(all_steps, have))
    cov.jobs = sorted(str(j) for j in frame["job"].cat.categories)
    return frame, cov


def empty_frame() -> pd.DataFrame:
    frame = pd.DataFrame({name: pd.Series(dtype="float64") for name in COLUMNS})
    frame = frame.astype({n: "int64" for n in INT_COLUMNS})
    return frame.astype({"job": "category", "node": "category"})
