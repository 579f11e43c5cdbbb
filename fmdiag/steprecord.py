"""Step records: the format (docs/formats.md), one line's validation, and a file reader.

The exporter's step collector and ``fmdiag analyze`` both go through :func:`parse_line`,
so a record one accepts the other accepts too. Validation is strict about the fields that
decide a verdict (identity and timestamps) and tolerant of unknown fields, so the format
can grow without breaking old readers.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
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
}
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

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    # An integer is finite, but float() of one past 1e308 raises: bound ints as int64 instead.
    if _is_int(value):
        return abs(value) <= MAX_INT  # type: ignore[arg-type]
    return isinstance(value, float) and math.isfinite(value)


def validate(obj: object, *, source: str = "", line: int = 0) -> StepRecord:
    """A :class:`StepRecord` from a decoded JSON value, or :class:`StepRecordError` saying why not.

    The error raised is the line's first problem; :func:`problems` lists them all.
    """
    record, errors = _check(obj, source, line)
    if errors:
        raise errors[0]
    assert record is not None
    return record


def problems(obj: object, *, source: str = "", line: int = 0) -> list[StepRecordError]:
    """Every problem of one decoded line, in field order (``fmdiag steps check`` prints them all,
    so a writer bug is fixed in one round instead of one field per run)."""
    return _check(obj, source, line)[1]


def _check(obj: object, source: str, line: int) -> tuple[StepRecord | None, list[StepRecordError]]:
    errors: list[StepRecordError] = []

    def fail(message: str, name: str = "") -> None:
        errors.append(StepRecordError(message, source=source, line=line, field_name=name))

    if not isinstance(obj, dict):
        fail(f"expected a JSON object, got {type(obj).__name__}")
        return None, errors
    version = obj.get("v", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        fail(f"must be a positive integer, got {version!r}", "v")
    elif version > FORMAT_VERSION:
        fail(f"format version {version} is newer than this reader ({FORMAT_VERSION}); upgrade fmdiag", "v")
    for name in REQUIRED_STR_FIELDS:
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            fail("missing" if value is None else f"must be a non-empty string, got {value!r}", name)
    times_ok = True
    for name in REQUIRED_INT_FIELDS:
        value = obj.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT:
            times_ok = times_ok and name not in ("start_ns", "end_ns")
            fail(
                "missing" if value is None else f"must be an integer from 0 to 2**63-1, got {_show(value)}",
                name,
            )
    if times_ok and obj["end_ns"] < obj["start_ns"]:
        fail(f"ends before it starts ({obj['end_ns']} < start_ns {obj['start_ns']})", "end_ns")
    phases: dict[str, float] = {}
    for name in PHASES:
        if name in obj and obj[name] is not None:
            value = obj[name]
            if not _is_number(value) or value < 0:
                fail(f"must be a non-negative number of seconds, got {value!r}", name)
            else:
                phases[name] = float(value)
    extra: dict[str, Any] = {}
    for name, integer in OPTIONAL_NUMBERS.items():
        value = obj.get(name)
        if value is None:
            continue
        ok = _is_int(value) if integer else _is_number(value)
        if not ok or value < 0 or (integer and value > MAX_INT):  # type: ignore[operator]
            kind = "integer up to 2**63-1" if integer else "number"
            fail(f"must be a non-negative {kind}, got {_show(value)}", name)
        else:
            extra[name] = value
    if errors:
        return None, errors
    record = StepRecord(
        job=obj["job"],
        rank=obj["rank"],
        node=obj["node"],
        step=obj["step"],
        start_ns=obj["start_ns"],
        end_ns=obj["end_ns"],
        v=version,
        local_rank=extra.get("local_rank"),
        phases=phases,
        tokens=extra.get("tokens"),
        samples=extra.get("samples"),
        dropped=extra.get("dropped", 0),
        gpu_time=float(extra["gpu_time"]) if "gpu_time" in extra else None,
        pid=extra.get("pid"),
    )
    return record, errors


def warnings(record: StepRecord) -> list[str]:
    """What is valid but implausible: a phase longer than the whole step (a timer that spans
    steps, or seconds written as milliseconds). Not an error: the analyzer still reads it."""
    duration = record.duration_s
    return [
        f"field {name!r}: {seconds:g} s is longer than the step itself ({duration:g} s)"
        for name, seconds in record.phases.items()
        if seconds > duration * (1 + 1e-9) + 1e-9
    ]


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
    if len(text) > MAX_LINE_BYTES:
        raise StepRecordError(
            f"line is {len(text)} bytes, over the {MAX_LINE_BYTES} limit", source=source, line=line
        )
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StepRecordError(f"not valid JSON: {exc}", source=source, line=line) from None
    return validate(obj, source=source, line=line)


@dataclass
class ReadResult:
    records: list[StepRecord] = field(default_factory=list)
    errors: list[StepRecordError] = field(default_factory=list)
    #: True when the file ends without a newline: its last line is a step still being written.
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
    data = path.read_bytes()
    result = ReadResult(partial_tail=bool(data) and not data.endswith(b"\n"))
    for number, raw in iter_lines(data):
        try:
            result.records.append(parse_line(raw, source=str(path), line=number))
        except StepRecordError as exc:
            result.errors.append(exc)
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
