"""Step records: the format (docs/formats.md), one line's validation, and a file reader.

The exporter's step collector and ``fmdiag analyze`` both go through :func:`parse_line`,
so a record one accepts the other accepts too. Validation is strict about the fields that
decide a verdict (identity and timestamps) and tolerant of unknown fields, so the format
can grow without breaking old readers.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The version this code writes; readers accept any version up to it.
FORMAT_VERSION = 1
REQUIRED_INT_FIELDS: tuple[str, ...] = ("rank", "step", "start_ns", "end_ns")
REQUIRED_STR_FIELDS: tuple[str, ...] = ("job", "node")
PHASES: tuple[str, ...] = (
    "data_wait",
    "forward",
    "backward",
    "optimizer",
    "comm_exposed",
    "checkpoint",
)
#: Optional numeric fields besides the phases: name -> (integer only, description).
OPTIONAL_NUMBERS: dict[str, bool] = {
    "local_rank": True,
    "tokens": True,
    "samples": True,
    "dropped": True,  # records this writer has dropped so far (cumulative, so a lost line loses no count)
    "pid": True,
    "gpu_time": False,  # seconds between CUDA events at step begin and end
    # The rank's place in the parallel layout (data, pipeline, tensor, context, expert parallel):
    # a straggling pipeline stage or a tensor-parallel group is named by these, not by the rank.
    "dp_rank": True,
    "pp_rank": True,
    "tp_rank": True,
    "cp_rank": True,
    "ep_rank": True,
}
#: The parallel-layout coordinates a record may carry (all optional integers).
LAYOUT_FIELDS: tuple[str, ...] = ("dp_rank", "pp_rank", "tp_rank", "cp_rank", "ep_rank")
#: Lines longer than this are refused before JSON parsing: no record is anywhere near it.
MAX_LINE_BYTES = 64 * 1024
#: Integers are int64 (Unix ns fits until 2262). JSON integers are unbounded, and one past
#: this would raise OverflowError wherever it becomes a float (durations, metric samples).
MAX_INT = 2**63 - 1


class StepRecordError(ValueError):
    """A line that is not a valid step record; ``str()`` names file, line and field."""

    def __init__(self, message: str, *, source: str = "", line: int = 0, field_name: str = "") -> None:
        self.source = source
        self.line = line
        self.field_name = field_name
        self.reason = message
        where = f"{source}:{line}" if source else f"line {line}"
        what = f" field {field_name!r}" if field_name else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True, slots=True)
class StepRecord:
    job: str
    rank: int
    node: str
    step: int
    start_ns: int
    end_ns: int
    v: int = FORMAT_VERSION
    local_rank: int | None = None
    phases: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None
    samples: int | None = None
    dropped: int = 0
    gpu_time: float | None = None
    #: The writing process: tells a restarted writer (whose ``dropped`` restarts at 0) apart.
    pid: int | None = None
    dp_rank: int | None = None
    pp_rank: int | None = None
    tp_rank: int | None = None
    cp_rank: int | None = None
    ep_rank: int | None = None

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


#: The values of a valid record as :func:`validate_row` returns them: the fields of
#: :class:`StepRecord` in its order, with ``phases`` spread out as one value per phase (None when
#: the record has none). Readers that want columns, not objects, take these.
ROW_FIELDS: tuple[str, ...] = (
    "job",
    "rank",
    "node",
    "step",
    "start_ns",
    "end_ns",
    "v",
    "local_rank",
    *PHASES,
    "tokens",
    "samples",
    "dropped",
    "gpu_time",
    "pid",
    *LAYOUT_FIELDS,
)
Row = tuple[Any, ...]
_PHASES_AT = ROW_FIELDS.index(PHASES[0])
_PHASES_END = _PHASES_AT + len(PHASES)
_INF = float("inf")
_OPTIONAL = tuple(OPTIONAL_NUMBERS)


def _is_int(value: object) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _is_number(value: object) -> bool:
    # An integer is finite, but float() of one past 1e308 raises: bound ints as int64 instead.
    if _is_int(value):
        return abs(value) <= MAX_INT  # type: ignore[arg-type]
    return isinstance(value, float) and math.isfinite(value)


def validate(obj: object, *, source: str = "", line: int = 0) -> StepRecord:
    """A :class:`StepRecord` from a decoded JSON value, or :class:`StepRecordError` saying why not.

    The error raised is the line's first problem; :func:`problems` lists them all.
    """
    return from_row(validate_row(obj, source=source, line=line))


def validate_row(obj: object, *, source: str = "", line: int = 0) -> Row:
    """:func:`validate` without building the object: the record's values in :data:`ROW_FIELDS` order."""
    row, errors = _check(obj, source, line)
    if row is None:
        raise errors[0]
    return row


def from_row(row: Row) -> StepRecord:
    """The :class:`StepRecord` of a row from :func:`validate_row`."""
    job, rank, node, step, start_ns, end_ns, v, local_rank = row[:_PHASES_AT]
    tokens, samples, dropped, gpu_time, pid, *layout = row[_PHASES_END:]
    values = row[_PHASES_AT:_PHASES_END]
    phases = {name: value for name, value in zip(PHASES, values, strict=True) if value is not None}
    record = (job, rank, node, step, start_ns, end_ns, v, local_rank)
    return StepRecord(*record, phases, tokens, samples, dropped, gpu_time, pid, *layout)


def problems(obj: object, *, source: str = "", line: int = 0) -> list[StepRecordError]:
    """Every problem of one decoded line, in field order (``fmdiag steps check`` prints them all,
    so a writer bug is fixed in one round instead of one field per run)."""
    return _check(obj, source, line)[1]


def _check(obj: object, source: str, line: int) -> tuple[Row | None, list[StepRecordError]]:
    # The one set of rules, run millions of times by `fmdiag analyze`: written for speed (no
    # helper calls for the common exact types, problems collected as (message, field) and turned
    # into exceptions only when there are some).
    if not isinstance(obj, dict):
        return None, [
            StepRecordError(f"expected a JSON object, got {type(obj).__name__}", source=source, line=line)
        ]
    found: list[tuple[str, str]] = []
    get = obj.get
    version = get("v", FORMAT_VERSION)
    if not (type(version) is int or _is_int(version)) or version < 1:
        found.append((f"must be a positive integer, got {version!r}", "v"))
    elif version > FORMAT_VERSION:
        found.append(
            (f"format version {version} is newer than this reader ({FORMAT_VERSION}); upgrade fmdiag", "v")
        )
    job = get("job")
    if not isinstance(job, str) or not job:
        found.append(("missing" if job is None else f"must be a non-empty string, got {job!r}", "job"))
    node = get("node")
    if not isinstance(node, str) or not node:
        found.append(("missing" if node is None else f"must be a non-empty string, got {node!r}", "node"))
    ints: list[Any] = list(map(get, REQUIRED_INT_FIELDS))
    times_ok = True
    for i, value in enumerate(ints):
        if not (type(value) is int or _is_int(value)) or not 0 <= value <= MAX_INT:
            name = REQUIRED_INT_FIELDS[i]
            times_ok = times_ok and name not in ("start_ns", "end_ns")
            why = "missing" if value is None else f"must be an integer from 0 to 2**63-1, got {_show(value)}"
            found.append((why, name))
    rank, step, start_ns, end_ns = ints
    if times_ok and end_ns < start_ns:
        found.append((f"ends before it starts ({end_ns} < start_ns {start_ns})", "end_ns"))
    phases: list[Any] = list(map(get, PHASES))
    for i, value in enumerate(phases):
        if value is None or (type(value) is float and 0.0 <= value < _INF):  # NaN and infinities fail
            continue
        if _is_number(value) and value >= 0:
            phases[i] = float(value)
        else:
            found.append((f"must be a non-negative number of seconds, got {value!r}", PHASES[i]))
    extra: list[Any] = list(map(get, _OPTIONAL))
    for i, value in enumerate(extra):
        if value is None or (type(value) is int and 0 <= value <= MAX_INT):
            continue
        name = _OPTIONAL[i]
        integer = OPTIONAL_NUMBERS[name]
        if not (_is_int(value) and 0 <= value <= MAX_INT if integer else _is_number(value) and value >= 0):
            kind_text = "integer up to 2**63-1" if integer else "number"
            found.append((f"must be a non-negative {kind_text}, got {_show(value)}", name))
    if found:
        return None, [StepRecordError(m, source=source, line=line, field_name=n) for m, n in found]
    local_rank, tokens, samples, dropped, pid, gpu_time, *layout = extra
    return (
        job,
        rank,
        node,
        step,
        start_ns,
        end_ns,
        version,
        local_rank,
        *phases,
        tokens,
        samples,
        0 if dropped is None else dropped,
        None if gpu_time is None else float(gpu_time),
        pid,
        *layout,
    ), []


def warnings(record: StepRecord) -> list[str]:
    """What is valid but implausible: a phase longer than the whole step (a timer that spans
    steps, or seconds written as milliseconds). Not an error: the analyzer still reads it."""
    duration = record.duration_s
    limit = longest_phase(duration)
    return [
        f"field {name!r}: {seconds:g} s is longer than the step itself ({duration:g} s)"
        for name, seconds in record.phases.items()
        if seconds > limit
    ]


def longest_phase(duration_s: Any) -> Any:
    """The longest plausible phase of a step of ``duration_s`` seconds (:func:`warnings` flags
    longer ones): a float, or a numpy array of them, for a reader that checks columns at once."""
    return duration_s * (1 + 1e-9) + 1e-9


def binary_content(data: bytes) -> str | None:
    """Why ``data`` is not text step records (a NUL byte, invalid UTF-8), or None when it is text.

    A binary file (a core dump, a compressed rotation) must be reported as such, not as a file
    whose last line is still being written.
    """
    nul = data.find(b"\0")
    if nul >= 0:
        return f"binary file: NUL byte at offset {nul}"
    try:
        data[: data.rfind(b"\n") + 1].decode("utf-8")  # a last line being written may end mid-character
    except UnicodeDecodeError as exc:
        return f"binary file: not UTF-8 at offset {exc.start}"
    return None


def _show(value: object) -> str:
    """A value for an error message, cut short: a 4000-digit number must not flood the log."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_line(text: str | bytes, *, source: str = "", line: int = 0) -> StepRecord:
    """Parse and validate one line (without its newline)."""
    return from_row(_parse(text, source, line, _decoder()))


def _parse(text: str | bytes, source: str, line: int, decode: Callable[[str | bytes], Any]) -> Row:
    """One line's row; ``decode`` is :func:`_decoder`'s."""
    if len(text) > MAX_LINE_BYTES:
        raise StepRecordError(
            f"line is {len(text)} bytes, over the {MAX_LINE_BYTES} limit", source=source, line=line
        )
    try:
        obj = decode(text)
    except Exception:  # whatever the fast decoder refuses, json decides: accepted or why not
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StepRecordError(f"not valid JSON: {exc}", source=source, line=line) from None
    row, errors = _check(obj, source, line)
    if row is None:
        raise errors[0]
    return row


@functools.cache
def _decoder() -> Callable[[str | bytes], Any]:
    """``json.loads``, or msgspec's decoder where msgspec is installed (the analyze extra): 4x
    faster on a record, and the same value on every line it decodes. It refuses some lines json
    accepts (NaN, a UTF-8 BOM, a lone surrogate, 1e400), and words errors differently: :func:`_parse`
    gives every line it refuses to json, so what is accepted and every message stay json's."""
    try:
        import msgspec  # noqa: PLC0415 - optional; not on the exporter's or training nodes' installs
    except ImportError:
        return json.loads
    decode: Callable[[str | bytes], Any] = msgspec.json.Decoder().decode
    return decode


@dataclass
class ReadResult:
    records: list[StepRecord] = field(default_factory=list)
    errors: list[StepRecordError] = field(default_factory=list)
    #: True when the file ends without a newline: its last line is a step still being written.
    partial_tail: bool = False


@dataclass
class RowsResult:
    """:func:`read_rows`: :class:`ReadResult` with rows (:data:`ROW_FIELDS`) for records."""

    rows: list[Row] = field(default_factory=list)
    errors: list[StepRecordError] = field(default_factory=list)
    partial_tail: bool = False


def iter_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line) for every complete line; blank lines are skipped."""
    for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
        stripped = raw.strip()
        if stripped:
            yield number, stripped


def read_file(path: str | Path) -> ReadResult:
    """Every valid record of a step file, and an error naming file and line for each bad one.

    A last line without a newline is a write in progress (or one cut by a crash), not an
    error: it is reported through ``partial_tail`` and left out.
    """
    path = Path(path)
    rows = read_rows(path.read_bytes(), source=str(path))
    return ReadResult([from_row(r) for r in rows.rows], rows.errors, rows.partial_tail)


def read_rows(data: bytes, *, source: str = "") -> RowsResult:
    """:func:`read_file` of a file's contents, with rows for records (no object per record)."""
    result = RowsResult(partial_tail=bool(data) and not data.endswith(b"\n"))
    rows, errors = result.rows, result.errors
    decode = _decoder()
    for number, raw in iter_lines(data):
        try:
            rows.append(_parse(raw, source, number, decode))
        except StepRecordError as exc:
            errors.append(exc)
    return result


# -- where step records live: one file per rank in a spool directory -----------------------

ENV_SPOOL_DIR = "FMDIAG_SPOOL_DIR"
#: Survives reboots of the exporter, writable by unprivileged training users, node-local.
DEFAULT_SPOOL_DIR = "/var/tmp/fmdiag/steps"


def spool_dir(explicit: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Path:
    """The spool directory: the argument, else ``$FMDIAG_SPOOL_DIR``, else the default."""
    env = os.environ if env is None else env
    return Path(explicit or env.get(ENV_SPOOL_DIR) or DEFAULT_SPOOL_DIR)


def file_name(job: str, rank: int) -> str:
    """One file per rank; the job id is made safe for a file name but stays recognisable."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", job)[:128]
    return f"{safe}.rank{rank:05d}.jsonl"


def step_files(root: str | Path) -> list[Path]:
    """The step files under a spool directory or a dump's ``steps/`` folder, sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.jsonl") if p.is_file())
