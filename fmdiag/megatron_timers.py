"""Megatron-LM's timer logs (also NeMo's, which uses the same timers) into step records.

With ``--timing-log-level 2 --timing-log-option all`` Megatron-LM prints, every log interval, the
iteration line and then each timer's time on every rank::

     [...] iteration       20/    1000 | consumed samples: ... | elapsed time per iteration (ms): 1523.4 | ...
    times across ranks (ms):
      forward-backward:
         rank  0: 1402.11
         rank  1: 1401.96
      forward-compute:
         rank  0: 388.20
    ...

Times are milliseconds per iteration averaged over the log interval (the timers' totals divided
by ``--log-interval``); a rank whose timer stayed at 0 is not listed. ``--timing-log-option
minmax`` (``(min, max) time across ranks (ms):``) and ``max`` print only the extremes across ranks,
which gives no per-rank record: :func:`read_intervals` says so instead of guessing.

The reader streams (a log of thousands of ranks is gigabytes) and takes lines as launchers leave
them: torchrun's ``[default3]:`` and srun ``--label``'s `` 3: `` prefixes, timestamps put in front
by a log collector (``2025-03-01T10:00:41.5Z``, Kubernetes' ``<time> stdout F``), a logger's
``INFO:megatron.core.timers:`` before a header, other processes' lines between. A line that
looks like a rank's time but is not one is an error naming file and line; lenient reading
counts it and goes on. The mapping of timers onto phases, and each rank's place in the parallel
layout, are documented in docs/formats.md ("Megatron-LM timer logs").

Standard library only, like the rest of the core.
"""

from __future__ import annotations

import calendar
import gzip
import json
import re
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fmdiag import steprecord

#: Header of the per-rank format (``--timing-log-option all``).
ALL_RANKS_HEADER = "times across ranks (ms):"
#: Headers of the formats that only carry extremes across ranks (``minmax``, ``max``).
MINMAX_HEADERS: tuple[str, ...] = ("(min, max) time across ranks (ms):", "max time across ranks (ms):")
#: Megatron's rank order when ``--use-tp-pp-dp-mapping`` is not given (parallel_state.RankGenerator):
#: the first dimension varies fastest.
DEFAULT_ORDER = "tp-cp-ep-dp-pp"
#: Where records are placed in time when neither the log nor the user says (2020-01-01T00:00:00Z).
DEFAULT_START_NS = calendar.timegm((2020, 1, 1, 0, 0, 0)) * 1_000_000_000
#: In :attr:`Interval.unknown`: a bad line of a rank that cannot be told.
SOME_RANK = -1
#: Bad lines kept (with their messages) in :class:`ParseStats`; the rest are only counted.
MAX_KEPT_ERRORS = 20

# -- which timers make which phase (docs/formats.md, "Megatron-LM timer logs") -----------------

#: Pipeline point-to-point transfers (p2p_communication.py): a receive includes waiting for the
#: neighbouring stage, so a stage that waits for a slower one shows it here.
P2P_TIMERS: tuple[str, ...] = (
    "forward-recv",
    "forward-send",
    "backward-recv",
    "backward-send",
    "forward-send-forward-recv",
    "forward-send-backward-recv",
    "backward-send-forward-recv",
    "backward-send-backward-recv",
    "forward-backward-send-forward-backward-recv",
)
#: Data-parallel gradient and parameter collectives, and the small all-reduces after backward
#: (finalize_model_grads.py, the distributed optimizer; the first two are the names before 2023-09).
GRAD_COMM_TIMERS: tuple[str, ...] = (
    "grads-all-reduce",
    "grads-reduce-scatter",
    "all-grads-sync",
    "params-all-gather",
    "layernorm-grads-all-reduce",
    "non-tensor-parallel-grads-all-reduce",
    "embedding-grads-all-reduce",
    "conditional-embedder-grads-all-reduce",
)
COMM_TIMERS: tuple[str, ...] = P2P_TIMERS + GRAD_COMM_TIMERS
#: The parts of ``optimizer``, read only when ``optimizer`` itself is not in the log.
OPTIMIZER_PARTS: tuple[str, ...] = (
    "optimizer-copy-to-main-grad",
    "optimizer-unscale-and-check-inf",
    "optimizer-clip-main-grad",
    "optimizer-count-zeros",
    "optimizer-inner-step",
    "optimizer-copy-main-to-model-params",
)
#: Timer names that only Megatron-LM before its 2023-11 optimizer rework logs: there the
#: distributed optimizer's ``params-all-gather`` ran after the ``optimizer`` timer, not inside it.
PRE_2023_11_TIMERS: frozenset[str] = frozenset({"grads-all-reduce", "grads-reduce-scatter"})


class MegatronLogError(ValueError):
    """A log that cannot be read as Megatron-LM timers; ``str()`` names file and line when one is at fault."""

    def __init__(self, message: str, *, source: str = "", line: int = 0) -> None:
        self.source = source
        self.line = line
        self.reason = message
        where = f"{source}:{line}: " if source and line else f"{source}: " if source else ""
        super().__init__(f"{where}{message}")


@dataclass
class Interval:
    """One log interval: the iteration line and the per-rank timer blocks printed after it."""

    source: str
    #: Line of the iteration line in ``source`` (1-based).
    line: int
    #: The iteration number at the end of the interval, and ``--train-iters``.
    iteration: int
    train_iters: int
    #: ``elapsed time per iteration (ms)``: the interval's wall time over its iterations.
    elapsed_ms: float
    #: The time on the iteration line (Megatron's own ``[YYYY-MM-DD HH:MM:SS]`` since 2024-01, or a
    #: collector's prefix), as Unix ns; naive times are taken as UTC. None when it has none.
    timestamp_ns: int | None
    #: timer name -> rank -> milliseconds per iteration, averaged over the interval.
    timers: dict[str, dict[int, float]] = field(default_factory=dict)
    #: timer name -> ranks whose time was on a bad line (lenient reading); :data:`SOME_RANK` when
    #: the line did not say which rank: then every rank the timer does not list is unknown.
    unknown: dict[str, set[int]] = field(default_factory=dict)

    def ranks(self) -> set[int]:
        return {rank for values in self.timers.values() for rank in values}


@dataclass
class ParseStats:
    """What reading saw besides the intervals: the CLI's summary, and why a log gave nothing."""

    files: int = 0
    lines: int = 0
    intervals: int = 0
    #: ``times across ranks`` blocks, and those after no (valid) iteration line: start-up timers
    #: (model setup, checkpoint load), or after a bad iteration line.
    blocks: int = 0
    blocks_outside_intervals: int = 0
    #: ``(min, max)``/``max`` blocks: no per-rank times.
    minmax_blocks: int = 0
    bad_lines: int = 0
    errors: list[MegatronLogError] = field(default_factory=list)
    #: Intervals left out by :func:`to_records`: a run's first-iteration log (see there).
    first_iteration_logs: list[int] = field(default_factory=list)


# -- lines ------------------------------------------------------------------------------------

_TS = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2})?"
#: What launchers and collectors put in front of a line, one piece per match.
_PREFIX = re.compile(
    rf"""\s*(?:
        \[(?P<bracket_ts>{_TS})\]                          # [2025-03-01 10:00:41.123456]
      | (?P<ts>{_TS})(?:\s+(?:stdout|stderr)\s+[FP](?=\s))? # a collector's time; Kubernetes' CRI lines
      | (?P<label>\[[^\]\s]{{1,64}}\]:|\d{{1,6}}:(?=\s))    # torchrun [default3]:, srun --label ' 3: '
    )""",
    re.VERBOSE,
)
_TS_PARTS = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d{1,9}))?(Z|([+-])(\d{2}):?(\d{2}))?"
)
_ITERATION = re.compile(r"\biteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_ELAPSED = re.compile(r"elapsed time per iteration \(ms\):\s*(\S+?)\s*(?:\||$)")
_RANK_LIKE = re.compile(r"\s*rank\s+\S+:")
_RANK_NUMBER = re.compile(r"\s*rank\s+(\d+):")
_RANK = re.compile(r"\s*rank\s+(\d+):\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*")
_TIMER_NAME = re.compile(r"\s*([^\s:]+):\s*")


def parse_timestamp(text: str) -> tuple[int, bool]:
    """(Unix ns, whether ``text`` carries a UTC offset) of an ISO 8601 / RFC 3339 time; naive
    times are UTC. ValueError when ``text`` is not one."""
    m = _TS_PARTS.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a time: expected RFC 3339, e.g. 2025-03-01T10:00:00Z")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"{text!r} is not a valid time")
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    fraction = int((m.group(7) or "0").ljust(9, "0"))
    offset = 0
    if m.group(9):
        offset = (int(m.group(10)) * 3600 + int(m.group(11)) * 60) * (1 if m.group(9) == "+" else -1)
    return (seconds - offset) * 1_000_000_000 + fraction, m.group(8) is not None


def _split_prefix(line: str) -> tuple[str, str, int | None]:
    """(stream label, content, timestamp ns) of a line: the prefixes stripped, the label being
    torchrun's or srun's (which process printed it), the time one with a UTC offset if any, else
    the last one."""
    pos = 0
    labels: list[str] = []
    stamp: int | None = None
    stamp_has_offset = False
    while True:
        m = _PREFIX.match(line, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        if m.group("label"):
            labels.append(m.group("label"))
            continue
        text = m.group("bracket_ts") or m.group("ts")
        try:
            ns, has_offset = parse_timestamp(text)
        except ValueError:
            continue  # a date-like prefix that is no date: still a prefix
        if has_offset or not stamp_has_offset:
            stamp, stamp_has_offset = ns, has_offset
    return "".join(labels), line[pos:], stamp


# -- reading ----------------------------------------------------------------------------------


def open_text(path: str | Path) -> IO[str]:
    """A log as text lines: gzip by its magic bytes (whatever its name); bytes that are not UTF-8 are
    replaced, not fatal; a carriage return ends a line too (progress bars redraw with it)."""
    with Path(path).open("rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return Path(path).open(encoding="utf-8", errors="replace", newline="")


class _Reader:
    """The state machine of one file: outside blocks, in a per-rank block (its current timer), in a
    min/max block."""

    def __init__(self, source: str, lenient: bool, stats: ParseStats) -> None:
        self.source = source
        self.lenient = lenient
        self.stats = stats
        self.current: Interval | None = None
        self.block: str | None = None  # "all", "minmax" or None
        self.block_label = ""
        self.block_timers: set[str] = set()
        self.timer: dict[int, float] | None = None
        self.timer_name = ""

    def bad(self, number: int, message: str) -> None:
        error = MegatronLogError(message, source=self.source, line=number)
        if not self.lenient:
            raise error
        self.stats.bad_lines += 1
        if len(self.stats.errors) < MAX_KEPT_ERRORS:
            self.stats.errors.append(error)

    def feed(self, number: int, line: str) -> Interval | None:
        """Take one line; the interval it closes, if it closes one."""
        line = line.rstrip("\r\n")
        stripped = line.rstrip()
        if stripped.endswith(ALL_RANKS_HEADER):
            self._start_block("all", line)
            return None
        if stripped.endswith(MINMAX_HEADERS):
            self._start_block("minmax", line)
            self.stats.minmax_blocks += 1
            return None
        m = _ITERATION.search(line)
        if m is not None:
            return self._iteration(number, line, m)
        if self.block == "all":
            self._block_line(number, line)
        return None

    def _start_block(self, kind: str, line: str) -> None:
        self.block = kind
        self.block_label = _split_prefix(line)[0]
        self.block_timers = set()
        self.timer = None
        if kind == "all":
            self.stats.blocks += 1
            if self.current is None:
                self.stats.blocks_outside_intervals += 1

    def _iteration(self, number: int, line: str, m: re.Match[str]) -> Interval | None:
        self.block = None
        e = _ELAPSED.search(line, m.end())
        elapsed = _number(e.group(1)) if e else None
        if elapsed is None:
            what = f"{e.group(1)!r} is not a number" if e else "no 'elapsed time per iteration (ms):'"
            self.bad(number, f"iteration line: {what}")
            # the blocks after it belong to no interval: dropped, not added to the one before
            done, self.current = self.current, None
            return done
        done, self.current = (
            self.current,
            Interval(
                source=self.source,
                line=number,
                iteration=int(m.group(1)),
                train_iters=int(m.group(2)),
                elapsed_ms=elapsed,
                timestamp_ns=_split_prefix(line[: m.start()])[2],
            ),
        )
        self.stats.intervals += 1
        return done

    def _block_line(self, number: int, line: str) -> None:
        label, content, _ = _split_prefix(line)
        if label and self.block_label and label != self.block_label:
            return  # another process's line between the block's
        if _RANK_LIKE.match(content):
            m = _RANK.fullmatch(content)
            if m is None:
                self.bad(number, f"not a rank's time (expected 'rank N: <ms>'): {content.strip()[:80]!r}")
                self._unknown(content)
            elif self.timer is None:
                self.bad(number, "a rank's time before any timer name in a 'times across ranks' block")
            else:
                rank = int(m.group(1))
                if rank in self.timer:
                    self.bad(number, f"rank {rank} listed twice for one timer")
                    self._unknown(content)
                else:
                    self.timer[rank] = float(m.group(2))
            return
        name = _TIMER_NAME.fullmatch(content)
        if name is None:
            return  # noise between the block's lines (another process's output)
        timer = name.group(1)
        if self.current is None:  # start-up timers (model setup, checkpoint load): no interval
            self.timer = {}
            return
        if timer not in self.block_timers:
            # a later block of the same interval (a checkpoint save, an evaluation) replaces it
            self.current.timers[timer] = {}
            self.current.unknown.pop(timer, None)
            self.block_timers.add(timer)
        self.timer = self.current.timers[timer]
        self.timer_name = timer

    def _unknown(self, content: str) -> None:
        """Note the rank of a bad line (lenient reading): its phases are left out, not taken as 0."""
        if self.current is None or self.timer is None:
            return
        m = _RANK_NUMBER.match(content)
        self.current.unknown.setdefault(self.timer_name, set()).add(int(m.group(1)) if m else SOME_RANK)

    def finish(self) -> Interval | None:
        done, self.current = self.current, None
        return done


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value >= 0 and value != float("inf") else None


def parse_lines(
    lines: Iterable[str], *, source: str = "", lenient: bool = False, stats: ParseStats | None = None
) -> Iterator[Interval]:
    """The intervals of one log's lines, each yielded once its next iteration line (or the end) is read.

    A bad line raises :class:`MegatronLogError` naming ``source`` and the line, unless ``lenient``:
    then it is counted in ``stats`` (and the first few kept) and reading goes on.
    """
    stats = stats if stats is not None else ParseStats()
    reader = _Reader(source, lenient, stats)
    for number, line in enumerate(lines, start=1):
        stats.lines += 1
        done = reader.feed(number, line)
        if done is not None:
            yield done
    last = reader.finish()
    if last is not None:
        yield last


def read_intervals(
    paths: Iterable[str | Path], *, lenient: bool = False, stats: ParseStats | None = None
) -> Iterator[Interval]:
    """The intervals of one or more logs (plain or gzip), in the order given: the parts of one job's
    log, or the per-process files of torchrun's ``--log-dir`` (only the last rank prints timers)."""
    stats = stats if stats is not None else ParseStats()
    for path in paths:
        stats.files += 1
        with open_text(path) as f:
            lines = _until_truncated(f, str(path), lenient, stats)
            yield from parse_lines(lines, source=str(path), lenient=lenient, stats=stats)


def _until_truncated(f: IO[str], source: str, lenient: bool, stats: ParseStats) -> Iterator[str]:
    """The lines of ``f``; a gzip file cut short (a job still writing, a copy interrupted) is an
    error, or in lenient reading a counted bad line that ends the file."""
    try:
        yield from f
    except EOFError:
        error = MegatronLogError("the compressed file ends early (cut short?)", source=source)
        if not lenient:
            raise error from None
        stats.bad_lines += 1
        if len(stats.errors) < MAX_KEPT_ERRORS:
            stats.errors.append(error)


def check_has_per_rank_times(stats: ParseStats, sources: str) -> None:
    """Raise :class:`MegatronLogError` saying what to change when the logs held no interval with
    per-rank times (the min/max formats, no timers, no iteration lines)."""
    if stats.intervals and stats.blocks > stats.blocks_outside_intervals:
        return
    if not stats.intervals:
        why = "no Megatron-LM iteration lines ('iteration N/ M | ... | elapsed time per iteration (ms): ...')"
    elif stats.minmax_blocks:
        why = (
            "the timers are logged as min/max across ranks (--timing-log-option minmax or max), which"
            " has no per-rank times: per-rank step records need --timing-log-option all"
        )
    else:
        why = (
            "no 'times across ranks (ms):' blocks after an iteration line: run Megatron-LM with"
            " --timing-log-level 2 --timing-log-option all"
        )
    raise MegatronLogError(why, source=sources)


# -- the parallel layout ------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Tensor, context, expert, data and pipeline parallel sizes as Megatron-LM takes them, and the
    ranks per node. The world is ``tp * cp * dp * pp``; expert parallelism splits the ``tp * cp * dp``
    ranks of a stage again (expert tensor parallel = ``tp``, Megatron's default)."""

    tp: int
    pp: int
    dp: int
    ranks_per_node: int
    cp: int = 1
    ep: int | None = None
    order: str = DEFAULT_ORDER

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "cp", "ranks_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.ep is not None and (isinstance(self.ep, bool) or not isinstance(self.ep, int) or self.ep < 1):
            raise ValueError(f"ep must be a positive integer, got {self.ep!r}")
        dims = self.order.lower().split("-")
        if sorted(dims) != sorted(["tp", "cp", "ep", "dp", "pp"]):
            raise ValueError(
                f"order {self.order!r} must name tp, cp, ep, dp and pp once each, e.g. {DEFAULT_ORDER}"
            )
        if self.ep is not None and (self.cp * self.dp) % self.ep:
            raise ValueError(
                f"ep={self.ep} must divide cp*dp={self.cp * self.dp}: expert parallel groups split the"
                " data- and context-parallel ranks of a stage"
            )

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    def coordinates(self, rank: int) -> dict[str, int]:
        """``tp_rank``, ``cp_rank``, ``dp_rank``, ``pp_rank`` (and ``ep_rank`` when ``ep`` is set) of a
        global rank, as parallel_state.RankGenerator decomposes it: along ``order``, first fastest."""
        dims = self.order.lower().split("-")
        sizes = {"tp": self.tp, "cp": self.cp, "ep": 1, "dp": self.dp, "pp": self.pp}
        out = _decompose(rank, dims, sizes)
        coords = {f"{d}_rank": out[d] for d in ("dp", "pp", "tp", "cp")}
        if self.ep is not None:
            # the expert grid: the same order, cp folded into data parallel, ep split off it
            expert = {
                "tp": self.tp,
                "cp": 1,
                "ep": self.ep,
                "dp": self.cp * self.dp // self.ep,
                "pp": self.pp,
            }
            coords["ep_rank"] = _decompose(rank, dims, expert)["ep"]
        return coords

    def node(self, rank: int) -> str:
        return f"node-{rank // self.ranks_per_node:03d}"

    def local_rank(self, rank: int) -> int:
        return rank % self.ranks_per_node


def _decompose(rank: int, dims: list[str], sizes: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    stride = 1
    for d in dims:
        out[d] = (rank // stride) % sizes[d]
        stride *= sizes[d]
    return out


# -- step records -------------------------------------------------------------------------------


def rank_phases(
    timers: Mapping[str, Mapping[int, float]], rank: int, unknown: Mapping[str, set[int]] | None = None
) -> dict[str, float]:
    """A rank's phases in seconds from an interval's timers (docs/formats.md has the table). A
    phase is present when any of its timers is in the interval (a rank the timer does not list
    had 0 in it), and left out when one of them is ``unknown`` for the rank (a bad line)."""
    unknown = unknown or {}

    def ms(name: str) -> float:
        return timers[name].get(rank, 0.0) if name in timers else 0.0

    def known(*names: str) -> bool:
        for name in names:
            bad = unknown.get(name, ())
            if rank in bad or (SOME_RANK in bad and rank not in timers.get(name, {})):
                return False
        return True

    phases: dict[str, float] = {}
    if "batch-generator" in timers and known("batch-generator"):
        phases["data_wait"] = ms("batch-generator")
    if "forward-compute" in timers and known("forward-compute", "batch-generator"):
        # the model's forward_step (which fetches the batch) runs inside forward-compute
        phases["forward"] = max(ms("forward-compute") - ms("batch-generator"), 0.0)
    if "backward-compute" in timers and known("backward-compute"):
        phases["backward"] = ms("backward-compute")
    if "optimizer" in timers:
        nested = not PRE_2023_11_TIMERS.intersection(timers)
        inside = ms("params-all-gather") if nested else 0.0
        if known("optimizer", *(("params-all-gather",) if nested else ())):
            phases["optimizer"] = max(ms("optimizer") - inside, 0.0)
    elif any(name in timers for name in OPTIMIZER_PARTS) and known(*OPTIMIZER_PARTS):
        phases["optimizer"] = sum(ms(name) for name in OPTIMIZER_PARTS)
    if any(name in timers for name in COMM_TIMERS) and known(*COMM_TIMERS):
        phases["comm_exposed"] = sum(ms(name) for name in COMM_TIMERS)
    return {name: round(value / 1000.0, 6) for name, value in phases.items()}


def _check_world(interval: Interval, layout: Layout) -> None:
    ranks = interval.ranks()
    if not ranks:
        return
    top = max(ranks)
    world = layout.world_size
    sizes = f"tp*cp*dp*pp = {layout.tp}*{layout.cp}*{layout.dp}*{layout.pp} = {world}"
    if top >= world:
        raise MegatronLogError(
            f"the timers after this iteration line list rank {top}, outside the layout ({sizes} ranks)",
            source=interval.source,
            line=interval.line,
        )
    if len(ranks) == top + 1 and top + 1 != world:
        raise MegatronLogError(
            f"the timers after this iteration line list all of ranks 0-{top} ({top + 1} ranks), but the"
            f" layout has {sizes}: check --tp/--pp/--dp/--cp",
            source=interval.source,
            line=interval.line,
        )


def _first_iteration_log(
    prev: Interval | None, cur: Interval, nxt: Interval | None, after: Interval | None
) -> bool:
    """Megatron-LM (since 2026-01) also logs after a run's first iteration, with the timers not reset
    but still divided by the log interval: that interval's timer values are 1/log-interval of the
    iteration's, so it is left out. It is the interval off the grid of the log interval (the gap
    between the next two) whose next interval is on it; without two more intervals to tell the
    log interval, one off the grid of the next gap that starts a run (the log's first, a new file,
    or iterations going back)."""
    if nxt is None or nxt.iteration - cur.iteration <= 1:
        return False
    gap = nxt.iteration - cur.iteration
    if cur.iteration % gap == 0:
        return False
    if after is not None and after.source == nxt.source and after.iteration - nxt.iteration > gap:
        every = after.iteration - nxt.iteration
        return cur.iteration % every != 0 and nxt.iteration % every == 0
    return prev is None or prev.source != cur.source or cur.iteration <= prev.iteration


def to_records(
    intervals: Iterable[Interval],
    *,
    job: str,
    layout: Layout,
    start_ns: int | None = None,
    stats: ParseStats | None = None,
) -> Iterator[dict[str, Any]]:
    """One step record (a dict, validated by :func:`fmdiag.steprecord.validate`) per rank per interval.

    ``step`` is the iteration at the end of the interval; the record is one average iteration of
    it (``end_ns - start_ns`` = elapsed time per iteration). Intervals are laid end to end, each
    as long as its iterations times the time per iteration, its record at its end: the first
    interval starts at ``start_ns``, else ends at its iteration line's time, else starts at
    2020-01-01T00:00:00Z.
    """
    stats = stats if stats is not None else ParseStats()
    window: deque[Interval] = deque()
    prev: Interval | None = None  # the interval before (None: a run starts)
    last_gap = 0
    clock: int | None = None
    source = iter(intervals)
    exhausted = False
    while True:
        while not exhausted and len(window) < 3:
            nxt = next(source, None)
            if nxt is None:
                exhausted = True
            else:
                window.append(nxt)
        if not window:
            return
        cur = window.popleft()
        nxt = window[0] if window else None
        after = window[1] if len(window) > 1 else None
        _check_world(cur, layout)
        if _first_iteration_log(prev, cur, nxt, after):
            stats.first_iteration_logs.append(cur.iteration)
            prev = None
            continue
        if prev is not None and prev.source == cur.source and cur.iteration > prev.iteration:
            iterations = cur.iteration - prev.iteration
        elif nxt is not None and nxt.iteration > cur.iteration:
            iterations = min(nxt.iteration - cur.iteration, max(cur.iteration, 1))
        else:
            iterations = last_gap or 1
        last_gap = iterations
        elapsed_ns = round(cur.elapsed_ms * 1e6)
        span = iterations * elapsed_ns
        if clock is None:
            if start_ns is not None:
                clock = start_ns + span
            elif cur.timestamp_ns is not None:
                clock = max(cur.timestamp_ns, elapsed_ns)
            else:
                clock = DEFAULT_START_NS + span
        else:
            clock += span
        prev = cur
        for rank in sorted(cur.ranks()):
            record: dict[str, Any] = {
                "v": steprecord.FORMAT_VERSION,
                "job": job,
                "rank": rank,
                "node": layout.node(rank),
                "local_rank": layout.local_rank(rank),
                "step": cur.iteration,
                "start_ns": clock - elapsed_ns,
                "end_ns": clock,
                **rank_phases(cur.timers, rank, cur.unknown),
                **layout.coordinates(rank),
            }
            steprecord.validate(record, source=cur.source, line=cur.line)
            yield record


class StepFileWriter:
    """Records into ``<dir>/<job>.rank<NNNNN>.jsonl`` (:func:`fmdiag.steprecord.file_name`), buffered
    per rank and appended in batches: thousands of ranks need neither thousands of open files nor
    the whole job in memory. Lines go to ``<file>.partial`` (which no reader takes for a step file)
    until :meth:`commit` renames them into place, so a failed import leaves the folder as it was."""

    def __init__(self, directory: str | Path, job: str, *, flush_bytes: int = 32 << 20) -> None:
        self.directory = Path(directory)
        self.job = job
        self.flush_bytes = flush_bytes
        self.records = 0
        self._partial: dict[int, Path] = {}
        self._pending: dict[int, list[str]] = {}
        self._size = 0

    def existing(self) -> list[Path]:
        """This job's step files already in the directory."""
        name = steprecord.file_name(self.job, 0)
        return sorted(self.directory.glob(name[: -len("00000.jsonl")] + "*.jsonl"))

    def add(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        self._pending.setdefault(int(record["rank"]), []).append(line)
        self._size += len(line)
        self.records += 1
        if self._size >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for rank, lines in self._pending.items():
            path = self._partial.get(rank)
            if path is None:
                path = self._partial[rank] = self.directory / (
                    steprecord.file_name(self.job, rank) + ".partial"
                )
                path.unlink(missing_ok=True)  # left by an import that was killed
            with path.open("a", encoding="utf-8") as f:
                f.write("".join(lines))
        self._pending.clear()
        self._size = 0

    def commit(self) -> list[Path]:
        """Put the files in place, replacing this job's files that were there (all of them: a rank
        the new import lacks must not keep an old file). The files written, sorted."""
        self.flush()
        written = {path.with_suffix(""): path for path in self._partial.values()}
        for old in self.existing():
            if old not in written:
                old.unlink()
        for final, partial in written.items():
            partial.replace(final)
        self._partial.clear()
        return sorted(written)

    def discard(self) -> None:
        """Take back what this writer wrote."""
        self._pending.clear()
        self._size = 0
        for path in self._partial.values():
            path.unlink(missing_ok=True)
        self._partial.clear()
