"""Parsers for the Lustre client's text formats: pure functions from text to records, no I/O.

Every parser takes the whole text of one source (a file, or one parameter of
``lctl get_param`` output) and returns what it could read plus a list of
:class:`LineError` for what it could not, so one garbled line costs that line and no
more; none of them raises on bad input. The formats, as the Lustre source prints them:

* ``stats`` (``lprocfs_stats_seq_show``): a header (``snapshot_time``, and from 2.14.56/2.15.0
  on ``start_time``/``elapsed_time``, also in some vendor 2.14 builds, and a switch can turn
  them off), then per counter with a non-zero count
  ``<name> <count> samples [<unit>] [<min> <max> <sum> [<sumsq>]]``. Units come from
  ``lprocfs_counter_config_units`` and the callers: ``reqs``, ``regs``, ``bytes``,
  ``pages``, ``locks``, ``locks/s``, ``secs``, ``usec``, ``usecs``.
* ``read_ahead_stats``: the same ``stats`` format already in 2.5-2.10 (names may contain
  spaces: ``miss inside window 5 samples [pages]``); clients before that print
  ``<reason padded to 25> <value>`` lines after ``pending issued pages: N``. From 2.16,
  ``readahead_pages`` carries min/max/sum of pages per read-ahead: its sum is the page count.
* ``openclosetime`` (llite ``stats``, 2.15+) is the time between closing a file and opening
  it again, in usecs: not an operation's latency (its sum dwarfs every real latency), so the
  collector exports it apart.
* ``rpc_stats`` (``osc_rpc_stats_seq_show``): ``read RPCs in flight: N``-style scalars,
  then tables such as ``pages per rpc`` with ``rpcs % cum %`` columns for read and write
  split by ``|``. Rows are labelled ``1:``, ``2:``, ``4:``, ...; the kernel's
  ``lprocfs_oh_tally_log2`` puts a value v in the row labelled ``2**ceil(log2 v)``, so a
  row label is the *inclusive upper* bound of its bucket.
* ``lctl get_param`` output: ``<type>.<instance>.<param>=`` followed by the value's lines
  (multi-line values), ``<param>=<value>`` on one line for one-line values, or, with
  ``--header``-style output, every line prefixed by ``<param>=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Units per second for the stats units that measure time (latency sums and maxima);
#: dividing by these (rather than multiplying by 1e-6) keeps 3393651 usecs at 3.393651 s.
TIME_UNITS: dict[str, float] = {
    "usec": 1e6,
    "usecs": 1e6,
    "msec": 1e3,
    "msecs": 1e3,
    "nsec": 1e9,
    "nsecs": 1e9,
    "sec": 1.0,
    "secs": 1.0,
}

#: Lustre counters are 64-bit; a longer number is corruption, not a value (and would not
#: survive conversion to a float sample anyway).
_MAX_DIGITS = 20
_HEADER_FIELDS = ("snapshot_time", "start_time", "elapsed_time")
#: Counter names are ASCII words, joined by single spaces in read_ahead_stats reasons.
_COUNTER_NAME = re.compile(r"[!-~]+(?: [!-~]+)*")


@dataclass(frozen=True)
class LineError:
    """One line a parser skipped: its 1-based number, a shortened copy, and why."""

    lineno: int
    line: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.lineno} {self.line!r}: {self.reason}"


def _err(lineno: int, line: str, reason: str) -> LineError:
    return LineError(lineno, line if len(line) <= 120 else line[:117] + "...", reason)


def _uint(token: str) -> int | None:
    """A non-negative decimal that fits Lustre's 64-bit counters, else None."""
    if not token.isdigit() or not token.isascii() or len(token) > _MAX_DIGITS:
        return None
    value = int(token)
    return value if value < 2**64 else None


def _sint(token: str) -> int | None:
    if token.startswith("-"):
        mag = _uint(token[1:])
        return None if mag is None else -mag
    return _uint(token)


# --- stats ---------------------------------------------------------------------------------
@dataclass(slots=True)
class StatLine:
    """One counter of a stats file; ``min``/``max``/``sum`` are None on count-only lines.

    Not frozen: a node builds hundreds per scrape, and a frozen dataclass's ``__init__``
    costs three times as much."""

    name: str
    count: int
    unit: str
    min: int | None = None
    max: int | None = None
    sum: int | None = None
    sumsq: int | None = None


@dataclass
class StatsFile:
    snapshot_time: float | None = None
    #: Counters by name, in file order.
    lines: dict[str, StatLine] = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)


def _header_time(rest: str) -> float | None:
    """The seconds of a header value; tolerant of old kernels' unpadded or space-padded fractions."""
    value = rest.split("secs", 1)[0].split("(", 1)[0].strip()
    secs, _, frac = value.partition(".")
    frac = frac.replace(" ", "")
    if _uint(secs) is None or (frac and _uint(frac) is None):
        return None
    return float(f"{secs}.{frac or '0'}")


def _is_header(first: str) -> bool:
    return first.rstrip(":") in _HEADER_FIELDS


def parse_stat_tokens(parts: list[str]) -> StatLine | str:
    """One ``<name> <count> samples [<unit>] [<min> <max> <sum> [<sumsq>]]`` line, split on
    whitespace; the reason it is not one when it is not."""
    try:
        at = parts.index("samples", 2)
    except ValueError:
        return "no '<count> samples' field"
    name = " ".join(parts[: at - 1])
    if not _COUNTER_NAME.fullmatch(name):
        return f"counter name {name!r} is not printable ASCII"
    count = _uint(parts[at - 1])
    if count is None:
        return f"count {parts[at - 1]!r} is not a 64-bit unsigned number"
    rest = parts[at + 1 :]
    unit = ""
    if rest and rest[0].startswith("["):
        token = rest[0]
        if not token.endswith("]") or len(token) < 2:
            return f"unit {token!r} is not '[unit]'"
        unit = token[1:-1]
        rest = rest[1:]
    if not rest:
        return StatLine(name, count, unit)
    if len(rest) not in (3, 4):
        return f"expected min max sum [sumsq] after the unit, got {len(rest)} numbers"
    nums = [_sint(t) for t in rest]
    if any(n is None for n in nums):
        bad = next(t for t, n in zip(rest, nums, strict=True) if n is None)
        return f"{bad!r} is not a 64-bit number"
    vmin, vmax, vsum = nums[0], nums[1], nums[2]
    assert vmin is not None and vmax is not None and vsum is not None
    if vsum < 0 or vmax < 0:
        return "negative sum or max"
    return StatLine(name, count, unit, vmin, vmax, vsum, nums[3] if len(nums) == 4 else None)


#: The common shape of a counter line, matched whole in one go; anything it does not
#: accept goes through :func:`parse_stat_tokens`, which is the definition and names the fault.
_STAT_LINE = re.compile(
    r"\s*(\S+(?:\s+\S+)*?)\s+([0-9]{1,20})\s+samples\s+\[([^\]\s]*)\]"
    r"(?:\s+(-?[0-9]{1,20})\s+([0-9]{1,20})\s+([0-9]{1,20})(?:\s+([0-9]{1,20}))?)?\s*"
)
_U64 = 2**64


def parse_stat_line(line: str) -> StatLine | str | None:
    """One line of a stats file: a counter, the reason it is not one, or None for a blank
    or header line."""
    m = _STAT_LINE.fullmatch(line)
    if m is not None:
        raw_name, count, unit, vmin, vmax, vsum, sumsq = m.groups()
        words = raw_name.split()
        name = words[0] if len(words) == 1 else " ".join(words)
        if (
            name.isascii()
            and name.isprintable()
            and "samples" not in words
            and words[0].rstrip(":") not in _HEADER_FIELDS
        ):
            n = int(count)
            if vsum is None:
                if n < _U64:
                    return StatLine(name, n, unit)
            else:
                lo, hi, total = int(vmin), int(vmax), int(vsum)
                sq = int(sumsq) if sumsq is not None else None
                if n < _U64 and -_U64 < lo < _U64 and hi < _U64 and total < _U64 and (sq or 0) < _U64:
                    return StatLine(name, n, unit, lo, hi, total, sq)
    parts = line.split()
    if not parts or _is_header(parts[0]):
        return None
    return parse_stat_tokens(parts)


def parse_stats(text: str) -> StatsFile:
    """A ``stats`` file (llite, osc, mdc, and read_ahead_stats from 2.5 on)."""
    out = StatsFile()
    if not text.strip():
        out.errors.append(_err(1, text, "empty: a stats file always has a snapshot_time line"))
        return out
    for lineno, line in enumerate(text.splitlines(), 1):
        stat = parse_stat_line(line)
        if stat is None:
            if line.lstrip().startswith("snapshot_time"):
                parts = line.split(None, 1)
                out.snapshot_time = _header_time(parts[1] if len(parts) > 1 else "")
            continue
        if isinstance(stat, str):
            out.errors.append(_err(lineno, line, stat))
        elif stat.name in out.lines:
            out.errors.append(_err(lineno, line, f"counter {stat.name!r} appears twice"))
        else:
            out.lines[stat.name] = stat
    return out


# --- read_ahead_stats -----------------------------------------------------------------------
@dataclass
class ReadAheadStats:
    #: Event counts by reason, snake_cased in the 2.14.52+ spelling (``miss inside window`` ->
    #: ``miss_inside_window``, ``read-ahead to EOF`` -> ``readahead_to_eof``).
    events: dict[str, int] = field(default_factory=dict)
    #: Pages read ahead: the sum of 2.16+'s ``readahead_pages`` line (its count is the number of
    #: read-ahead requests, not pages), None when the file has no such sum.
    pages: int | None = None
    errors: list[LineError] = field(default_factory=list)


_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def snake_case(reason: str) -> str:
    """``failed grab_cache_page`` -> ``failed_grab_cache_page``, ``read-ahead to EOF`` ->
    ``read_ahead_to_eof``: one spelling across the versions that use spaces or underscores."""
    return _NON_ALNUM.sub("_", reason.lower()).strip("_")


#: Reasons renamed in 2.14.52 (when the names became snake_case), mapped to the new names
#: so one event has one label whatever the client release.
_RA_RENAMED = {"read_ahead_to_eof": "readahead_to_eof", "hit_max_r_a_issue": "hit_max_readahead_issue"}


def canonical_reason(reason: str) -> str:
    """The label of a read-ahead reason: snake_case in the 2.14.52+ spelling."""
    snake = snake_case(reason)
    return _RA_RENAMED.get(snake, snake)


def parse_read_ahead_stats(text: str) -> ReadAheadStats:
    """``read_ahead_stats`` in either format (stats lines from 2.5 on, or older ``<reason> <value>``).

    Lines ending their name with ``:`` (``pending issued pages:``) are gauges of the
    read-ahead state, not events, and are left out.
    """
    out = ReadAheadStats()
    if not text.strip():
        out.errors.append(_err(1, text, "empty: read_ahead_stats always has a snapshot_time line"))
        return out
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts or _is_header(parts[0]):
            continue
        if "samples" in parts[2:]:
            stat = parse_stat_line(line)
            if stat is None:
                continue
            if isinstance(stat, str):
                out.errors.append(_err(lineno, line, stat))
                continue
            reason_text, value = stat.name, stat.count
            if canonical_reason(reason_text) == "readahead_pages" and stat.sum is not None:
                if out.pages is not None:
                    out.errors.append(_err(lineno, line, "reason 'readahead_pages' appears twice"))
                else:
                    out.pages = stat.sum
                continue
        else:
            if len(parts) < 2:
                out.errors.append(_err(lineno, line, "expected '<reason> <count>'"))
                continue
            reason_text = " ".join(parts[:-1])
            if reason_text.endswith(":"):
                continue
            if not _COUNTER_NAME.fullmatch(reason_text):
                out.errors.append(_err(lineno, line, "reason is not printable ASCII"))
                continue
            num = _uint(parts[-1])
            if num is None:
                out.errors.append(_err(lineno, line, f"{parts[-1]!r} is not a 64-bit unsigned count"))
                continue
            value = num
        reason = canonical_reason(reason_text)
        if not reason:
            out.errors.append(_err(lineno, line, "reason has no letters or digits"))
        elif reason in out.events:
            out.errors.append(_err(lineno, line, f"reason {reason!r} appears twice"))
        else:
            out.events[reason] = value
    return out


# --- rpc_stats ------------------------------------------------------------------------------
@dataclass
class RpcStats:
    #: ``read``/``write`` (and ``dio`` on newer clients) RPCs in flight now.
    in_flight: dict[str, int] = field(default_factory=dict)
    #: ``read``/``write`` pages waiting to be sent.
    pending_pages: dict[str, int] = field(default_factory=dict)
    #: "pages per rpc" rows per direction: (row label = inclusive upper page bound, RPCs),
    #: labels strictly increasing. Empty when the table is absent or was unreadable.
    pages_per_rpc: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    errors: list[LineError] = field(default_factory=list)


_IN_FLIGHT = re.compile(r"(read|write|dio) rpcs in flight:\s*(\S+)", re.IGNORECASE)
_PENDING = re.compile(r"pending (read|write) pages:\s*(\S+)", re.IGNORECASE)
_SCALAR = re.compile(r"[A-Za-z][^:|]*:\s*-?\d+")
_TABLE_TITLE = re.compile(r"(?P<title>\S.*?)\s+(?:rpcs|count)\s+%%?\s+cum\s*%%?(?:\s*\|.*)?")
_ROW = re.compile(r"(?P<label>\d+):(?P<cols>.*)")
_PAGES_PER_RPC = "pages per rpc"
#: A full two-sided row, the common case, matched in one go (else :func:`_side_count`).
_FULL_ROW = re.compile(
    r"([0-9]{1,20}):\s+([0-9]{1,20})\s+[0-9]{1,20}\s+[0-9]{1,20}\s*\|"
    r"\s*([0-9]{1,20})\s+[0-9]{1,20}\s+[0-9]{1,20}"
)


def _side_count(side: str) -> int | None:
    """The RPC count of one ``rpcs % cum %`` side of a row (the percentages are derived)."""
    tokens = side.split()
    if not 1 <= len(tokens) <= 3 or any(_uint(t) is None for t in tokens):
        return None
    return _uint(tokens[0])


def _header_value(stripped: str, out: RpcStats) -> str | None:
    """Store an ``RPCs in flight`` / ``pending pages`` header line: None when the line is
    neither, "" when stored, else the error message."""
    for pattern, target in ((_IN_FLIGHT, out.in_flight), (_PENDING, out.pending_pages)):
        if m := pattern.fullmatch(stripped):
            value = _uint(m.group(2))
            if value is None:
                return f"{m.group(2)!r} is not a count"
            target[m.group(1).lower()] = value
            return ""
    return None


def parse_rpc_stats(text: str) -> RpcStats:
    """``osc.*.rpc_stats``: in-flight and pending scalars and the pages-per-RPC histogram.

    A bad row in the pages-per-rpc table drops that table (reported once): a cumulative
    histogram missing a row would be wrong, not just incomplete. Reading stops at the table
    after it (rpcs in flight, offset, RPC latency: not exported), which halves the cost of
    the file that dominates a scrape; rows of tables before it are shape-checked only.
    """
    out = RpcStats()
    if not text.strip():
        out.errors.append(_err(1, text, "empty: rpc_stats always has RPCs-in-flight lines"))
        return out
    table: str | None = None
    rows: dict[str, list[tuple[int, int]]] = {"read": [], "write": []}
    read_rows, write_rows = rows["read"], rows["write"]
    table_bad = False
    previous = -1
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if table == _PAGES_PER_RPC and not table_bad:
            # The common row, taken whole; anything else (a bad or out-of-order row) goes on
            # to the general path below, which names the fault.
            fast = _FULL_ROW.fullmatch(stripped)
            if fast is not None:
                row, reads, writes = int(fast[1]), int(fast[2]), int(fast[3])
                if previous < row < _U64 and reads < _U64 and writes < _U64:
                    read_rows.append((row, reads))
                    write_rows.append((row, writes))
                    previous = row
                    continue
        if m := _ROW.fullmatch(stripped):
            if table != _PAGES_PER_RPC or table_bad:
                continue
            label = _uint(m.group("label"))
            fast = _FULL_ROW.fullmatch(stripped)
            if fast is not None:
                counts: list[int | None] = [_uint(fast.group(2)), _uint(fast.group(3))]
            else:
                sides = m.group("cols").split("|")
                counts = [_side_count(s) for s in sides] if len(sides) == 2 else [None]
            previous = rows["read"][-1][0] if rows["read"] else -1
            if label is None or any(c is None for c in counts) or label <= previous:
                why = (
                    "rows must be increasing"
                    if label is not None and label <= previous
                    else "expected 'N: rpcs % cum % | rpcs % cum %'"
                )
                out.errors.append(_err(lineno, line, f"pages per rpc table dropped: {why}"))
                table_bad = True
                continue
            read_n, write_n = counts
            assert read_n is not None and write_n is not None
            read_rows.append((label, read_n))
            write_rows.append((label, write_n))
            previous = label
            continue
        first = stripped.split(None, 1)[0]
        if _is_header(first):
            continue
        header = _header_value(stripped, out)
        if header is not None:
            if header:
                out.errors.append(_err(lineno, line, header))
            continue
        if m := _TABLE_TITLE.fullmatch(stripped):
            if table == _PAGES_PER_RPC:
                break  # the tables after it (rpcs in flight, offset, latency) are not used
            table = " ".join(m.group("title").split()).lower()
            continue
        if set(stripped.split()) <= {"read", "write", "modify"}:
            continue  # the column-group line above each table
        if _SCALAR.fullmatch(stripped):
            continue  # another "<name>: N" scalar (modify_RPCs_in_flight, newer additions)
        out.errors.append(_err(lineno, line, "not a scalar, table header or table row"))
    if rows["read"] and not table_bad:
        out.pages_per_rpc = rows
    return out


# --- instance names -------------------------------------------------------------------------
@dataclass(frozen=True)
class Instance:
    """A client device: its kind, and the labels its name carries."""

    kind: str  # "llite", "osc" or "mdc"
    name: str
    fs: str
    mount_id: str
    target: str = ""  # "OST0003" / "MDT0000"; empty for llite


_HEX = re.compile(r"[0-9a-fA-F]+")
#: Device names are printable ASCII without spaces (fsnames are at most 8 of [A-Za-z0-9_-]).
_NAME_OK = re.compile(r"[!-~]+")
_TARGET_NAME = {
    "osc": re.compile(r"(?P<fs>.+)-(?P<target>OST[0-9a-fA-F]{4,8})-osc-(?P<sbid>[0-9a-fA-F]+)"),
    "mdc": re.compile(r"(?P<fs>.+)-(?P<target>MDT[0-9a-fA-F]{4,8})-mdc-(?P<sbid>[0-9a-fA-F]+)"),
}


def parse_instance(kind: str, name: str) -> Instance | None:
    """The labels in a client device name, or None for names that are not a client mount's.

    Fsnames may contain dashes, so every name is taken apart from the right:
    ``lustre-fs-ffff8810`` is fs ``lustre-fs``; ``a-b-OST0003-osc-ffff8810`` is fs ``a-b``.
    """
    if not _NAME_OK.fullmatch(name):
        return None
    if kind == "llite":
        fs, sep, sbid = name.rpartition("-")
        if not sep or not fs or not _HEX.fullmatch(sbid):
            return None
        return Instance("llite", name, fs, sbid)
    pattern = _TARGET_NAME.get(kind)
    m = pattern.fullmatch(name) if pattern is not None else None
    if m is None:
        return None
    return Instance(kind, name, m.group("fs"), m.group("sbid"), m.group("target").upper())


# --- lctl get_param output ------------------------------------------------------------------
@dataclass(frozen=True)
class LctlParam:
    kind: str
    instance: str
    param: str
    text: str


@dataclass
class LctlOutput:
    params: list[LctlParam] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


#: ``<kind>.<instance>.<param>=``; a kind may contain a dash (``osd-ldiskfs.fs-OST0003.stats=``).
_LCTL_HEADER = re.compile(
    r"(?P<kind>[a-z][a-z0-9_-]*)\.(?P<instance>[^\s=]+)\.(?P<param>[A-Za-z0-9_]+)=(?P<rest>.*)"
)
_LCTL_PLAIN = re.compile(r"[A-Za-z0-9_]+=.*")


def parse_lctl_output(text: str) -> LctlOutput:
    """Split ``lctl get_param`` output into one text per ``<kind>.<instance>.<param>``.

    Handles both the default layout (``name=`` then the value's lines) and the header
    layout (every line ``name=<line>``: consecutive lines of one name are joined). One-line
    parameters without an instance (``version=2.14.0``) are recognised and left out. Lines
    before the first parameter name cannot be attributed and are reported.
    """
    out = LctlOutput()
    current: tuple[str, str, str] | None = None
    body: list[str] = []

    def flush() -> None:
        if current is not None:
            kind, instance, param = current
            out.params.append(LctlParam(kind, instance, param, "\n".join(body) + "\n"))

    for lineno, line in enumerate(text.splitlines(), 1):
        m = _LCTL_HEADER.fullmatch(line)
        if m:
            key = (m.group("kind"), m.group("instance"), m.group("param"))
            rest = m.group("rest")
            if key == current:
                body.append(rest)  # header layout: one more line of the same parameter
                continue
            flush()
            current, body = key, ([rest] if rest else [])
            continue
        if _LCTL_PLAIN.fullmatch(line):
            flush()
            current, body = None, []
            continue
        if current is None:
            if line.strip():
                out.errors.append(_err(lineno, line, "not under any 'type.instance.param=' line"))
            continue
        body.append(line)
    flush()
    return out
