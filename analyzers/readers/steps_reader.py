"""Step records (a dump's ``steps/``) into one frame, with what is missing or repeated reported.

Each file is read with the core's rules (``fmdiag.steprecord``: the same validation the
exporter's step collector uses) into numpy columns — checked a field at a time across the file
when it is the plain case (:func:`_fast_fields`), else through ``steprecord.read_rows``, which
names every bad line — :func:`read_file` is the per-rank map step a process pool or Dask runs,
and needs numpy alone — and :func:`merge` gathers them into the frame below, sorted, without a
Python step per row (``benchmarks/analyze_scale.py`` times 4,096 ranks x 1,000 steps).

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

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmdiag import steprecord
from fmdiag.analyzers import executors
from fmdiag.analyzers.readers.coverage import StepsCoverage

if TYPE_CHECKING:
    import pandas as pd

#: ``pp_rank``: the rank's pipeline stage (-1: not recorded), so stages are compared as stages.
INT_COLUMNS: tuple[str, ...] = ("rank", "local_rank", "step", "start_ns", "end_ns", "dropped", "pp_rank")
FLOAT_COLUMNS: tuple[str, ...] = ("duration_s", *steprecord.PHASES, "tokens", "samples", "gpu_time")
COLUMNS: tuple[str, ...] = ("job", "node", *INT_COLUMNS, *FLOAT_COLUMNS)


@dataclass
class FileSteps:
    """One step file as numpy columns (cheap to send between processes), plus what went wrong in it.

    ``job`` and ``node`` are int32 codes into ``categories[name]`` (a file has one or a few of
    each, so strings are not sent once per record); :func:`merge` makes them categoricals.
    """

    source: str
    columns: dict[str, np.ndarray]
    categories: dict[str, list[str]] = field(default_factory=dict)
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
#: Where each field is in a ``steprecord.validate_row`` row.
_AT = {name: i for i, name in enumerate(steprecord.ROW_FIELDS)}
_CATEGORICAL = ("job", "node")


class BinaryStepFileError(ValueError):
    """A file in ``steps/`` that is not text (a core dump, a compressed rotation)."""


def read_file(path: str | Path) -> FileSteps:
    """Read and validate one step file; the later record of a repeated step wins.

    Raises :class:`BinaryStepFileError` (naming the offset) for a file that is not text at all.
    """
    with open(path, "rb") as f:
        data = f.read()
    why = steprecord.binary_content(data)
    if why is not None:
        raise BinaryStepFileError(f"{path}: {why}")
    fields: Sequence[Sequence[Any]] | None = _fast_fields(data)
    if fields is not None:
        errors: list[str] = []
        partial_tail = False
        count = len(fields[0])
        columns = fields

        def row_of(i: int) -> steprecord.Row:
            return tuple(column[i] for column in columns)
    else:
        result = steprecord.read_rows(data, source=str(path))
        rows = result.rows
        # Transposed once in C: one tuple per field, then numpy columns without a Python step per value.
        fields = list(zip(*rows, strict=True)) if rows else [()] * len(_AT)
        errors = [str(e) for e in result.errors]
        partial_tail = result.partial_tail
        count = len(rows)

        def row_of(i: int) -> steprecord.Row:
            return rows[i]

    cols: dict[str, np.ndarray] = {}
    categories: dict[str, list[str]] = {}
    for name in _CATEGORICAL:
        categories[name], cols[name] = _codes(fields[_AT[name]])
    for name in INT_COLUMNS:
        values = fields[_AT[name]]
        if name in ("local_rank", "pp_rank") and None in values:
            values = tuple(-1 if v is None else v for v in values)
        cols[name] = np.array(values, dtype=np.int64)
    cols["duration_s"] = (cols["end_ns"] - cols["start_ns"]) / 1e9
    for name in (*steprecord.PHASES, "tokens", "samples", "gpu_time"):
        cols[name] = np.array(fields[_AT[name]], dtype=np.float64)  # None -> NaN
    implausible, examples = _implausible(str(path), count, row_of, cols)
    keep = _latest(cols)
    if keep is not None:
        cols = {name: values[keep] for name, values in cols.items()}
        for name in _CATEGORICAL:  # a node only superseded records had is not one of the file's
            used = np.unique(cols[name])
            if used.size < len(categories[name]):
                categories[name] = [categories[name][i] for i in used]
                cols[name] = np.searchsorted(used, cols[name]).astype(np.int32)
    return FileSteps(
        source=str(path),
        columns={name: cols[name] for name in COLUMNS},
        categories=categories,
        errors=errors,
        partial_tail=partial_tail,
        superseded=count - len(cols["step"]),
        implausible=implausible,
        implausible_examples=examples,
    )


#: The record's fields as :func:`_fast_fields` checks them: (name, default when absent, kind).
_INT, _NUMBER, _STRING = "int", "number", "string"
_FIELD_KINDS: tuple[tuple[str, Any, str], ...] = (
    ("job", None, _STRING),
    ("rank", None, _INT),
    ("node", None, _STRING),
    ("step", None, _INT),
    ("start_ns", None, _INT),
    ("end_ns", None, _INT),
    ("v", steprecord.FORMAT_VERSION, _INT),
    *((name, None, _INT if integer else _NUMBER) for name, integer in steprecord.OPTIONAL_NUMBERS.items()),
    *((name, None, _NUMBER) for name in steprecord.PHASES),
)
_REQUIRED = frozenset((*steprecord.REQUIRED_INT_FIELDS, *steprecord.REQUIRED_STR_FIELDS, "v"))


@functools.cache
def _record_decoder() -> Callable[[bytes], Any] | None:
    """A msgspec decoder of one line into a struct of the record's fields, each as decoded (any
    JSON value, None when absent or null; ``v`` its default when absent), or None without msgspec.

    It reads a line as ``steprecord``'s msgspec decoder reads it into a dict (the same parser; a
    repeated key: the last wins; unknown keys skipped) and refuses whatever is not a JSON object;
    it also accepts a few lines that decoder refuses and the standard library's parser then
    accepts, with the same values (a number out of range in an unknown field). Attributes are
    read a field at a time across the file, several times faster than a dict's ``get``.
    """
    try:
        import msgspec  # noqa: PLC0415 - optional: the analyze extra has it
    except ImportError:
        return None
    record = msgspec.defstruct("_StepFields", [(name, Any, default) for name, default, _ in _FIELD_KINDS])
    decode: Callable[[bytes], Any] = msgspec.json.Decoder(record).decode
    return decode


def _fast_fields(data: bytes) -> list[list[Any]] | None:
    """The file's records as one sequence per :data:`~fmdiag.steprecord.ROW_FIELDS` entry (what
    transposing ``steprecord.read_rows``' rows gives), checked a field at a time across all
    records instead of a record at a time. None whenever the file is
    not the plain case — a line that is blank, too long or not msgspec's JSON, a record that
    fails or nearly fails any rule, a last line being written — and ``steprecord.read_rows``
    then reads it, so what is accepted and every message stay its own. The rules are those of
    ``steprecord._check``: a field absent or null is None; identity and times are integers in
    0..2**63-1 (never a bool) with ``end_ns >= start_ns``; the version 1..FORMAT_VERSION; job and
    node non-empty strings; phases and ``gpu_time`` finite non-negative numbers (integers become
    floats); the optional integers in 0..2**63-1. Three times faster than a record at a time,
    and the step records' reading is most of a large analysis.
    """
    decode = _record_decoder()
    if decode is None or not data.endswith(b"\n"):
        return None
    lines = data.split(b"\n")
    lines.pop()
    try:
        objs = [decode(line) for line in lines]  # blank lines fail here too
    except Exception:  # any refusal: the exact reader decides, and words it
        return None
    if not objs or max(map(len, lines)) > steprecord.MAX_LINE_BYTES:
        return None
    values: dict[str, list[Any]] = {}
    with_ints: set[str] = set()
    for name, _, kind in _FIELD_KINDS:
        column = list(map(operator.attrgetter(name), objs))
        types = _valid_types(column, kind, required=name in _REQUIRED)
        if types is None:
            return None
        values[name] = column
        if int in types:
            with_ints.add(name)
    version = np.array(values["v"], dtype=np.int64)
    if (version < 1).any() or (version > steprecord.FORMAT_VERSION).any():
        return None
    if (np.array(values["end_ns"], dtype=np.int64) < np.array(values["start_ns"], dtype=np.int64)).any():
        return None
    if None in values["dropped"]:
        values["dropped"] = [0 if v is None else v for v in values["dropped"]]
    for name in (*steprecord.PHASES, "gpu_time"):  # integers as floats
        if name in with_ints:
            values[name] = [float(v) if type(v) is int else v for v in values[name]]
    return [values[name] for name in steprecord.ROW_FIELDS]


def _valid_types(column: list[Any], kind: str, required: bool) -> set[type] | None:
    """The types of one field's values when every value passes its rule (see
    :func:`_fast_fields`), else None."""
    types = set(map(type, column))
    if kind == _STRING:
        return types if types == {str} and all(column) else None
    allowed: set[type] = {int} if kind == _INT else {int, float}
    if not required:
        allowed.add(type(None))
    if not types <= allowed:
        return None
    if int in types:
        ints = column if types == {int} else [v for v in column if type(v) is int]
        if min(ints) < 0 or max(ints) > steprecord.MAX_INT:
            return None
    if float in types:
        floats = np.array(column if types == {float} else [v for v in column if type(v) is float])
        if not (np.isfinite(floats).all() and (floats >= 0).all()):
            return None
    return types


def _codes(values: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(distinct values in order of appearance, int32 code of each value)."""
    if values and values.count(values[0]) == len(values):  # one job, one node: the usual file
        return [values[0]], np.zeros(len(values), dtype=np.int32)
    seen: dict[str, int] = {}
    codes = [seen.setdefault(v, len(seen)) for v in values]
    return list(seen), np.array(codes, dtype=np.int32)


def _implausible(
    source: str, count: int, row_of: Callable[[int], steprecord.Row], cols: dict[str, np.ndarray]
) -> tuple[int, list[str]]:
    """How many records have a phase longer than the step (``steprecord.warnings``), and examples."""
    if not count:
        return 0, []
    phases = np.column_stack([cols[name] for name in steprecord.PHASES])
    # The rule's threshold from the core, on all records at once; NaN (no phase) never exceeds it.
    flagged = np.flatnonzero((phases > steprecord.longest_phase(cols["duration_s"])[:, None]).any(axis=1))
    examples = []
    for i in flagged[:EXAMPLES]:
        record = steprecord.from_row(row_of(int(i)))
        examples.append(f"{source}: rank {record.rank} step {record.step}: {steprecord.warnings(record)[0]}")
    return int(flagged.size), examples


def _latest(cols: dict[str, np.ndarray]) -> np.ndarray | None:
    """Indices of the record kept for each (job, rank, step), in order of first appearance, the
    later record winning; None when no key repeats (the usual file: one rank, steps ascending)."""
    steps = cols["step"]
    if steps.size < 2:
        return None
    job, rank = cols["job"], cols["rank"]
    if (job == job[0]).all() and (rank == rank[0]).all() and (np.diff(steps) > 0).all():
        return None
    latest: dict[tuple[int, int, int], int] = {}
    for i, key in enumerate(zip(job.tolist(), rank.tolist(), steps.tolist(), strict=True)):
        latest[key] = i
    if len(latest) == steps.size:
        return None
    return np.fromiter(latest.values(), dtype=np.intp, count=len(latest))


def _ranges(values: np.ndarray) -> list[list[int]]:
    if values.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [values.size - 1]))
    return [[int(values[s]), int(values[e])] for s, e in zip(starts, ends, strict=True)]


def merge(parts: Sequence[FileSteps], *, release: bool = False) -> tuple[pd.DataFrame, StepsCoverage]:
    """One frame of every file's records, sorted by (step, rank), and its coverage.

    ``release``: take each column out of the files' parts once the frame holds it (the parts
    are left without columns), so the files' columns and the frame are not both held whole: at
    4,096 ranks x 1,000 steps each is 0.6 GB.
    """
    import pandas as pd  # noqa: PLC0415 - only here: the per-file workers need numpy alone

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
    codes: dict[str, np.ndarray] = {}
    categories: dict[str, list[str]] = {}
    for name in _CATEGORICAL:  # each file's codes into codes of the sorted union of the files' values
        categories[name] = sorted({c for p in nonempty for c in p.categories[name]})
        index = {c: i for i, c in enumerate(categories[name])}
        remap = [np.array([index[c] for c in p.categories[name]], dtype=np.int32) for p in nonempty]
        if any(r.size > 1 or r[0] != 0 for r in remap):
            codes[name] = np.concatenate([r[p.columns[name]] for r, p in zip(remap, nonempty, strict=True)])
        else:
            codes[name] = np.concatenate([p.columns[name] for p in nonempty])
    steps = np.concatenate([p.columns["step"] for p in nonempty])
    ranks = np.concatenate([p.columns["rank"] for p in nonempty])
    # a (job, rank, step) in two files: the later file (in name order) wins, as within a file.
    # Only possible when a (job, rank) appears in more than one file: checked first, it is cheap.
    keys: list[tuple[str, int]] = []
    mixed = False
    file_ranks = []
    for p in nonempty:
        jobs = p.categories["job"]
        mixed = mixed or len(jobs) > 1
        file_ranks.append(np.unique(p.columns["rank"]))
        keys.extend((min(jobs), int(r)) for r in file_ranks[-1])
    if mixed or len(keys) != len(set(keys)):
        key_frame = pd.DataFrame({"job": codes["job"], "rank": ranks, "step": steps})
        kept = np.flatnonzero(~key_frame.duplicated(keep="last").to_numpy())
        cov.superseded += steps.size - kept.size
        order = kept[np.lexsort((ranks[kept], steps[kept]))]
    else:
        order = np.lexsort((ranks, steps))
    if release:
        for p in nonempty:
            for name in _CATEGORICAL:
                del p.columns[name]
    frame = _frame(nonempty, order, codes, categories, release)
    _coverage(cov, steps[order], ranks[order], np.unique(np.concatenate(file_ranks)))
    cov.jobs = list(categories["job"])
    return frame, cov


def _frame(
    parts: Sequence[FileSteps],
    order: np.ndarray,
    codes: dict[str, np.ndarray],
    categories: dict[str, list[str]],
    release: bool = False,
) -> pd.DataFrame:
    """The merged frame: row ``i`` is row ``order[i]`` of the files' columns end to end.

    Memory is the cost at this size (4 million rows, 22 columns), so each column is gathered
    straight into the frame's own 2-D block through one scratch buffer, with no intermediate
    column and no consolidating copy by pandas afterwards; with ``release`` (see :func:`merge`)
    the files' copy of each column is dropped as soon as it is gathered (the block's pages are
    only taken as they are written, so the two are not held whole at once).
    """
    import pandas as pd  # noqa: PLC0415 - see merge

    scratch = np.empty(sum(len(p.columns["step"]) for p in parts), dtype=np.int64)
    blocks = []
    for names, dtype in ((INT_COLUMNS, np.int64), (FLOAT_COLUMNS, np.float64)):
        block = np.empty((len(names), order.size), dtype=dtype)
        flat = scratch.view(dtype)
        for row, name in zip(block, names, strict=True):
            np.concatenate([p.columns[name] for p in parts], out=flat)
            np.take(flat, order, out=row, mode="clip")  # "clip": unbuffered; every index is valid
            if release and name != "step":  # the parts' sizes are read from "step" above
                for p in parts:
                    del p.columns[name]
                executors.trim_heap()
        blocks.append(pd.DataFrame(block.T, columns=list(names), copy=False))
    cats = pd.DataFrame(
        {
            name: pd.Categorical.from_codes(codes[name][order], categories=pd.Index(categories[name]))
            for name in _CATEGORICAL
        }
    )
    return pd.concat([cats, *blocks], axis=1)


def _coverage(cov: StepsCoverage, steps: np.ndarray, ranks: np.ndarray, rank_set: np.ndarray) -> None:
    """Records, ranks and steps present and missing, from the (step, rank)-sorted columns."""
    cov.records = int(steps.size)
    cov.ranks = [int(r) for r in rank_set]
    cov.missing_ranks = [int(r) for r in np.setdiff1d(np.arange(int(rank_set.max()) + 1), rank_set)]
    cov.first_step, cov.last_step = int(steps[0]), int(steps[-1])
    new_step = np.concatenate(([True], steps[1:] != steps[:-1]))
    all_steps = steps[new_step]
    cov.steps_missing_everywhere = _ranges(
        np.setdiff1d(np.arange(cov.first_step, cov.last_step + 1), all_steps)
    )
    # each (step, rank) once (two jobs may share one), then how many steps each rank has
    pair = new_step | np.concatenate(([True], ranks[1:] != ranks[:-1]))
    pair_steps, pair_ranks = steps[pair], ranks[pair]
    have = np.bincount(np.searchsorted(rank_set, pair_ranks), minlength=rank_set.size)
    short = rank_set[have < all_steps.size]
    if short.size:
        lacking = np.isin(pair_ranks, short)
        s, r = pair_steps[lacking], pair_ranks[lacking]
        by_rank = np.argsort(r, kind="stable")
        s, r = s[by_rank], r[by_rank]
        bounds = np.searchsorted(r, short, side="right")
        for rank, begin, end in zip(short, np.concatenate(([0], bounds[:-1])), bounds, strict=True):
            cov.missing_steps[int(rank)] = _ranges(np.setdiff1d(all_steps, s[begin:end]))


def empty_frame() -> pd.DataFrame:
    import pandas as pd  # noqa: PLC0415 - see merge

    frame = pd.DataFrame({name: pd.Series(dtype="float64") for name in COLUMNS})
    frame = frame.astype({n: "int64" for n in INT_COLUMNS})
    return frame.astype({"job": "category", "node": "category"})
