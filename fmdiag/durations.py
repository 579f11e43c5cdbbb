"""Durations as operators type them: Prometheus' units (``500ms``, ``30s``, ``5m``, ``1h30m``) or seconds.

One parser for every command-line flag that takes a duration, so ``--scrape.timeout``,
``--collector.steps.stale-after`` and the rest accept the same spellings and reject the
same mistakes with the same words. Standard library only: the CLI imports it at start-up.

Units follow Prometheus (``y`` is 365 days, ``w`` 7 days); as in Prometheus each unit
appears at most once, largest first (``1h30m``, not ``30m1h``). Unlike Prometheus a number
may have a fraction (``1.5h``) and a bare number is seconds (``90``, ``0.25``), because
these flags took plain seconds before they took units.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

#: Seconds per unit, largest first: the order units must appear in.
UNITS: dict[str, float] = {
    "y": 365 * 86400.0,
    "w": 7 * 86400.0,
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SECONDS = re.compile(rf"{_NUMBER}")
# "ms" before "m", so "500ms" is not read as 500 minutes followed by garbage.
_PART = re.compile(rf"({_NUMBER})(ms|[ywdhms])")
_RANK = {unit: i for i, unit in enumerate(UNITS)}
_HINT = "expected seconds (90, 2.5) or a duration such as 500ms, 30s, 5m, 1h30m"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: positive and finite, or a ValueError that quotes ``text``."""
    s = text.strip()
    if _SECONDS.fullmatch(s):
        value = float(s)
    else:
        value = 0.0
        pos, last_rank = 0, -1
        for match in _PART.finditer(s):
            rank = _RANK[match[2]]
            if match.start() != pos:
                break
            if rank <= last_rank:
                raise ValueError(f"{text!r} is not a duration: units go largest first, each once (1h30m)")
            value += float(match[1]) * UNITS[match[2]]
            pos, last_rank = match.end(), rank
        if pos == 0 or pos != len(s):
            raise ValueError(f"{text!r} is not a duration; {_HINT}")
    if math.isinf(value):
        raise ValueError(f"{text!r}: expected a finite number of seconds")
    if not value > 0:
        raise ValueError(f"{text!r}: expected seconds > 0")
    return value


def format_duration(seconds: float) -> str:
    """The shortest spelling :func:`parse_duration` reads back as ``seconds`` (``300`` -> ``5m``).

    For ``--help`` lines, so a default reads the way an operator would type it. A value that
    is not a whole number of milliseconds is written as plain seconds.
    """
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{seconds!r}: only positive, finite durations can be formatted")
    ms = round(seconds * 1000)
    if ms == 0 or not math.isclose(ms / 1000, seconds, rel_tol=0, abs_tol=1e-9):
        return format(Decimal(repr(seconds)), "f")  # positional: parse_duration reads no exponents
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = round(UNITS[unit] * 1000)
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
