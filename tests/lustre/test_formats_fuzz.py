"""Hypothesis fuzzing of every Lustre parser: no input raises, good lines survive bad ones.

Bad input must give a clear error (a LineError naming the line) or a counted skip, and must
not cost the good lines around it; valid input must round-trip exactly.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.exporters.lustre_formats import (
    LctlOutput,
    LineError,
    ReadAheadStats,
    RpcStats,
    StatLine,
    StatsFile,
    canonical_reason,
    parse_instance,
    parse_lctl_output,
    parse_read_ahead_stats,
    parse_rpc_stats,
    parse_stat_line,
    parse_stat_tokens,
    parse_stats,
)
from fmdiag.exporters.lustre_formats import _is_header as is_header

U64 = st.integers(min_value=0, max_value=2**64 - 1)
HUGE = st.integers(min_value=-(10**30), max_value=10**30)
NAME = st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=20).filter(
    lambda s: s not in ("samples", "snapshot_time", "start_time", "elapsed_time")
)
UNIT = st.sampled_from(["reqs", "regs", "bytes", "pages", "usec", "usecs", "secs", "locks/s"])
ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=400) | st.binary(max_size=400).map(
    lambda b: b.decode("utf-8", errors="replace")
)


def _one_line(s: str) -> bool:
    return s.strip() != "" and s.splitlines() == [s]


#: Lines no parser accepts as data: non-blank, no "samples" token, not a header, no digits.
GARBAGE = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="0123456789"), min_size=1, max_size=60
).filter(
    lambda s: (
        _one_line(s)
        and "samples" not in s.split()
        and s.split()[0].rstrip(":") not in ("snapshot_time", "start_time", "elapsed_time")
        and "=" not in s
        and ":" not in s
    )
)


def _check_errors(errors: list[LineError], nlines: int) -> None:
    for e in errors:
        assert isinstance(e, LineError)
        assert 1 <= e.lineno <= max(nlines, 1)
        assert e.reason and str(e)


@st.composite
def stat_lines(draw: st.DrawFn) -> list[StatLine]:
    names = draw(st.lists(NAME, unique=True, max_size=12))
    out = []
    for name in names:
        count = draw(U64)
        unit = draw(UNIT)
        if draw(st.booleans()):
            out.append(StatLine(name, count, unit))
        else:
            vmin = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
            vmax, vsum = draw(U64), draw(U64)
            sumsq = draw(st.none() | U64)
            out.append(StatLine(name, count, unit, vmin, vmax, vsum, sumsq))
    return out


def render_stat(s: StatLine) -> str:
    line = f"{s.name:<25} {s.count} samples [{s.unit}]"
    if s.sum is not None:
        line += f" {s.min} {s.max} {s.sum}"
        if s.sumsq is not None:
            line += f" {s.sumsq}"
    return line


# --- stats ---------------------------------------------------------------------------------
@given(ANY_TEXT)
def test_stats_never_raises(text: str) -> None:
    out = parse_stats(text)
    assert isinstance(out, StatsFile)
    _check_errors(out.errors, len(text.splitlines()))
    for s in out.lines.values():
        assert 0 <= s.count < 2**64
        assert s.sum is None or 0 <= s.sum < 2**64


@given(stat_lines(), st.lists(GARBAGE, max_size=5), st.randoms(use_true_random=False))
def test_stats_round_trip_with_garbage_interleaved(
    lines: list[StatLine], garbage: list[str], rnd: object
) -> None:
    body = [render_stat(s) for s in lines]
    for g in garbage:
        body.insert(rnd.randrange(len(body) + 1), g)  # type: ignore[attr-defined]
    text = "snapshot_time             1700000000.000000001 secs.nsecs\n" + "\n".join(body) + "\n"
    out = parse_stats(text)
    assert list(out.lines.values()) == lines
    assert len(out.errors) == len(garbage)


@given(stat_lines(), st.data())
def test_stats_truncated_keeps_every_complete_line(lines: list[StatLine], data: st.DataObject) -> None:
    text = "snapshot_time 1700000000.5 secs.nsecs\n" + "".join(render_stat(s) + "\n" for s in lines)
    cut = data.draw(st.integers(min_value=0, max_value=len(text)))
    out = parse_stats(text[:cut])
    complete = text[:cut].count("\n") - 1  # stat lines that ended before the cut
    for s in lines[: max(complete, 0)]:
        assert out.lines[s.name] == s


@given(NAME, HUGE, HUGE, HUGE, HUGE)
def test_stats_huge_numbers_are_an_error_or_exact(name: str, c: int, a: int, b: int, d: int) -> None:
    out = parse_stats(f"{name} {c} samples [usecs] {a} {b} {d}\n")
    if name in out.lines:
        s = out.lines[name]
        assert (s.count, s.min, s.max, s.sum) == (c, a, b, d)
        assert 0 <= c < 2**64 and 0 <= b < 2**64 and 0 <= d < 2**64
    else:
        assert len(out.errors) == 1


#: Tokens that make near-valid counter lines, to hit every branch of the line parsers.
TOKEN = st.one_of(
    NAME,
    st.sampled_from(["samples", "samples", "[usecs]", "[reqs]", "[]", "[a b]", "[x", "snapshot_time",
                     "start_time:", "-1", "-0", "+5", "0x10", "１２", "ópen", "a]b]", "[a]b]"]),
    U64.map(str),
    HUGE.map(str),
)  # fmt: skip
SEP = st.sampled_from([" ", "  ", "\t", " \u2003 ", "\x1c", "\xa0"])


NUMBER = st.one_of(U64.map(str), HUGE.map(str), st.sampled_from(["-1", "0", "007"]))


@st.composite
def near_valid_tokens(draw: st.DrawFn) -> list[str]:
    """A well-formed counter line's tokens, then perhaps one token replaced or dropped."""
    tokens = [
        *draw(st.lists(NAME, min_size=1, max_size=3)),
        draw(NUMBER),
        "samples",
        draw(st.sampled_from(["[usecs]", "[reqs]", "[locks/s]", "[]", "[µs]"])),
        *draw(st.sampled_from([[], [NUMBER] * 3, [NUMBER] * 4, [NUMBER] * 2, [NUMBER] * 5])),
    ]
    tokens = [draw(t) if isinstance(t, st.SearchStrategy) else t for t in tokens]
    if draw(st.booleans()):
        i = draw(st.integers(min_value=0, max_value=len(tokens) - 1))
        if draw(st.booleans()):
            tokens[i] = draw(TOKEN)
        else:
            del tokens[i]
    return tokens


@given(
    st.one_of(near_valid_tokens(), st.lists(TOKEN, max_size=9)),
    st.lists(SEP, min_size=12, max_size=12),
    SEP,
    SEP,
)
def test_fast_line_parser_agrees_with_the_reference(
    tokens: list[str], seps: list[str], lead: str, tail: str
) -> None:
    """parse_stat_line's one-regex fast path gives exactly what the token-by-token
    reference parser (the definition of the format) gives, on valid and invalid lines."""
    line = lead + "".join(t + sep for t, sep in zip(tokens, seps, strict=False)) + tail
    parts = line.split()
    expected = None if not parts or is_header(parts[0]) else parse_stat_tokens(parts)
    got = parse_stat_line(line)
    if isinstance(expected, str):
        assert isinstance(got, str)
    else:
        assert got == expected


# --- read_ahead_stats ---------------------------------------------------------------------
#: Reasons as Lustre spells them: words, some with "-" or "_" ("samples" marks the 2.8+
#: format, so it is never a word of a reason).
#: Header lines (``start_time``/``elapsed_time`` from 2.14.56 on) are no read-ahead events.
HEADER_NAMES = ("snapshot_time", "start_time", "elapsed_time")
REASON = (
    st.lists(
        st.text(alphabet=string.ascii_letters + "_-", min_size=1, max_size=10).filter(
            lambda w: w != "samples"
        ),
        min_size=1,
        max_size=4,
    )
    .map(" ".join)
    .filter(lambda r: r.split()[0].rstrip(":") not in HEADER_NAMES)
)


@given(ANY_TEXT)
def test_read_ahead_never_raises(text: str) -> None:
    out = parse_read_ahead_stats(text)
    assert isinstance(out, ReadAheadStats)
    _check_errors(out.errors, len(text.splitlines()))
    for reason, value in out.events.items():
        assert reason == canonical_reason(reason) and reason
        assert 0 <= value < 2**64


@given(st.dictionaries(REASON, U64, max_size=10), st.booleans(), st.lists(GARBAGE, max_size=3))
def test_read_ahead_round_trip(events: dict[str, int], new_format: bool, garbage: list[str]) -> None:
    wanted: dict[str, int] = {}
    lines = ["snapshot_time:         1257876232.478311 (secs.usecs)", "pending issued pages: 4"]
    for reason, value in events.items():
        key = canonical_reason(reason)
        if not key or key in wanted:
            continue
        wanted[key] = value
        lines.append(f"{reason:<25} {value} samples [pages]" if new_format else f"{reason:<25} {value}")
    out = parse_read_ahead_stats("\n".join(lines + garbage) + "\n")
    assert out.events == wanted
    assert len(out.errors) == len(garbage)


# --- rpc_stats ------------------------------------------------------------------------------
@given(ANY_TEXT)
def test_rpc_stats_never_raises(text: str) -> None:
    out = parse_rpc_stats(text)
    assert isinstance(out, RpcStats)
    _check_errors(out.errors, len(text.splitlines()))
    for rows in out.pages_per_rpc.values():
        labels = [label for label, _ in rows]
        assert labels == sorted(set(labels))


@given(
    st.lists(st.tuples(U64, U64), min_size=1, max_size=12),
    st.tuples(U64, U64, U64, U64),
    st.lists(GARBAGE, max_size=3),
)
def test_rpc_stats_round_trip(
    rows: list[tuple[int, int]], scalars: tuple[int, int, int, int], garbage: list[str]
) -> None:
    r_if, w_if, p_w, p_r = scalars
    lines = [
        "snapshot_time:            1700000400.500300000 secs.nsecs",
        f"read RPCs in flight:  {r_if}",
        f"write RPCs in flight: {w_if}",
        f"pending write pages:  {p_w}",
        f"pending read pages:   {p_r}",
        "",
        "\t\t\tread\t\t\twrite",
        "pages per rpc         rpcs   % cum % |       rpcs   % cum %",
    ]
    # A line of only read/write/modify is the column-group line above a table, not garbage.
    garbage = [g for g in garbage if not set(g.split()) <= {"read", "write", "modify"}]
    lines[5:5] = garbage  # before the tables; what follows the histogram is not read
    for i, (r, w) in enumerate(rows):
        lines.append(f"{1 << i}:\t\t{r:10d}   0   0   | {w:10d}   0   0")
    lines += ["", "\t\t\tread\t\t\twrite", "offset                rpcs   % cum % |       rpcs   % cum %"]
    lines += ["0:\t\t         1 100 100   |          1 100 100", "not read"]
    out = parse_rpc_stats("\n".join(lines) + "\n")
    assert out.in_flight == {"read": r_if, "write": w_if}
    assert out.pending_pages == {"write": p_w, "read": p_r}
    assert out.pages_per_rpc["read"] == [(1 << i, r) for i, (r, _) in enumerate(rows)]
    assert out.pages_per_rpc["write"] == [(1 << i, w) for i, (_, w) in enumerate(rows)]
    assert len(out.errors) == len(garbage)


# --- names and lctl -------------------------------------------------------------------------
FSNAME = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=12).filter(
    lambda s: s.strip("-") == s
)
HEXID = st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: f"{n:016x}")


@given(st.sampled_from(["llite", "osc", "mdc", "lov", ""]), ANY_TEXT)
def test_parse_instance_never_raises(kind: str, name: str) -> None:
    inst = parse_instance(kind, name)
    if inst is not None:
        assert inst.name == name and inst.fs and inst.mount_id


@given(FSNAME, HEXID, st.integers(min_value=0, max_value=0xFFFF))
def test_instance_names_round_trip(fs: str, sbid: str, index: int) -> None:
    llite = parse_instance("llite", f"{fs}-{sbid}")
    assert llite is not None and (llite.fs, llite.mount_id) == (fs, sbid)
    osc = parse_instance("osc", f"{fs}-OST{index:04x}-osc-{sbid}")
    assert osc is not None and (osc.fs, osc.target, osc.mount_id) == (fs, f"OST{index:04X}", sbid)
    mdc = parse_instance("mdc", f"{fs}-MDT{index:04x}-mdc-{sbid}")
    assert mdc is not None and (mdc.fs, mdc.target, mdc.mount_id) == (fs, f"MDT{index:04X}", sbid)


@given(ANY_TEXT)
def test_lctl_never_raises(text: str) -> None:
    out = parse_lctl_output(text)
    assert isinstance(out, LctlOutput)
    _check_errors(out.errors, len(text.splitlines()))


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["llite", "osc", "mdc"]),
            FSNAME,
            st.sampled_from(["stats", "rpc_stats"]),
            stat_lines(),
        ),
        max_size=6,
        unique_by=lambda t: (t[0], t[1], t[2]),
    )
)
def test_lctl_round_trip(params: list[tuple[str, str, str, list[StatLine]]]) -> None:
    text = "".join(
        f"{kind}.{inst}.{param}=\n" + "".join(render_stat(s) + "\n" for s in lines)
        for kind, inst, param, lines in params
    )
    out = parse_lctl_output(text)
    assert out.errors == []
    assert [(p.kind, p.instance, p.param) for p in out.params] == [(k, i, p) for k, i, p, _ in params]
    for p, (_, _, _, lines) in zip(out.params, params, strict=True):
        assert list(parse_stats(p.text).lines.values()) == lines or not lines


@settings(max_examples=50)
@given(st.binary(max_size=2000))
def test_every_parser_survives_raw_bytes(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    for parse in (parse_stats, parse_read_ahead_stats, parse_rpc_stats, parse_lctl_output):
        parse(text)
