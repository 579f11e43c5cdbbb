"""Collector options as declarations: one :class:`Option` per ``--collector.<name>.<option>`` flag.

A collector lists its options once (name, parser, default, help); from that one list the CLI
builds the flag, its ``--help`` line and its start-up validation, and the collector gets the
parsed, typed value. So a flag cannot be documented with one default and read with another,
every collector rejects unknown options the same way, and a bad value is refused before the
exporter listens, in a message that names the flag, instead of at the first scrape.

Values travel as the text the operator typed (``CollectorContext.options``): the collector
parses them with the same declarations whether it was started by the CLI or by a test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fmdiag.durations import format_duration, parse_duration

T = TypeVar("T")

#: The text of a switch in ``CollectorContext.options`` (the CLI writes "on" and "off").
_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})


class OptionError(ValueError):
    """An unknown option, or a value its parser refuses; the message names the flag."""


@dataclass(frozen=True)
class Option(Generic[T]):
    """One ``--collector.<collector>.<name>`` flag.

    ``parse`` turns the flag's text into the value the collector uses, raising ValueError
    with the reason (the flag is named by whoever reports it); ``default`` is the value when
    the flag is absent; ``default_text`` is how ``--help`` shows it ("" shows none); a
    ``switch`` is a boolean written as a ``--X/--no-X`` flag pair rather than ``--X=VALUE``.
    """

    name: str
    parse: Callable[[str], T]
    default: T
    help: str
    metavar: str = "TEXT"
    default_text: str = ""
    switch: bool = False

    def flag(self, collector: str) -> str:
        return f"--collector.{collector}.{self.name}"

    def read(self, collector: str, text: str) -> T:
        """The parsed value of ``text``, or an OptionError naming the flag and the value."""
        try:
            return self.parse(text)
        except ValueError as exc:
            raise OptionError(f"{self.flag(collector)}={text!r}: {exc}") from None


def resolve(collector: str, declared: Sequence[Option[Any]], given: Mapping[str, str]) -> dict[str, Any]:
    """Every declared option's value: parsed from ``given`` where present, else its default.

    An option in ``given`` that ``declared`` does not name is an OptionError listing the
    known ones, so a typo never silently leaves a default in force.
    """
    names = {o.name for o in declared}
    unknown = sorted(set(given) - names)
    if unknown:
        raise OptionError(
            f"--collector.{collector}: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names)) or 'none'}"
        )
    return {o.name: o.read(collector, given[o.name]) if o.name in given else o.default for o in declared}


# --- declarations by kind ------------------------------------------------------------------------


def duration(name: str, default_s: float, help: str, *, at_most: float | None = None) -> Option[float]:
    """Seconds, written as a duration (``30s``, ``5m``, ``1h30m``) or a plain number of seconds."""

    def parse(text: str) -> float:
        value = parse_duration(text)
        if at_most is not None and value > at_most:
            raise ValueError(f"expected seconds in (0, {at_most:g}], got {value:g}")
        return value

    return Option(name, parse, default_s, help, "DURATION", format_duration(default_s))


def integer(name: str, default: int, help: str, *, minimum: int) -> Option[int]:
    """A whole number of at least ``minimum`` (counts and bounds: no unit, no fraction)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return Option(name, parse, default, help, "INTEGER", str(default))


def switch(name: str, default: bool, help: str) -> Option[bool]:
    """On or off: the flag pair ``--collector.C.N`` / ``--no-collector.C.N``."""

    def parse(text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"expected on or off, got {text!r}")

    return Option(name, parse, default, help, "", "on" if default else "off", switch=True)


def regex(name: str, default: str, help: str) -> Option[re.Pattern[str] | None]:
    """A regular expression; the empty string is no expression at all (None)."""

    def parse(text: str) -> re.Pattern[str] | None:
        try:
            return re.compile(text) if text else None
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None

    return Option(name, parse, parse(default), help, "REGEX", default)


def choice(name: str, choices: Iterable[str], default: str, help: str) -> Option[str]:
    """One word out of ``choices``."""
    allowed = tuple(choices)

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return Option(name, parse, default, help, "[" + "|".join(allowed) + "]", default)


def optional_text(
    name: str, help: str, *, metavar: str = "TEXT", default_text: str = ""
) -> Option[str | None]:
    """Free text (a path, a command); None when absent, so the collector picks its own default.

    ``default_text`` says in ``--help`` what that default is, for defaults found at run time
    (an environment variable, a program on ``PATH``).
    """

    def parse(value: str) -> str | None:
        return value or None

    return Option(name, parse, None, help, metavar, default_text)
