"""The verdict rules' thresholds as data: ``rules.toml``, each with the verdict it decides, the
evidence it reads and why it sits where it does.

A threshold tuned in code next to the logic that reads it drifts without anyone seeing why; as
one table the reasons stay beside the numbers, the documentation (docs/verdict-rules.md) is
rendered from it, and a change to a value is a change to a data file whose diff names the rule.
The verdicts keep reading module constants of the same names (``verdicts.STRAGGLER_WAIT_FRACTION``
is ``value("STRAGGLER_WAIT_FRACTION")``), so the rules' code reads as before.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TABLE = "rules.toml"
FIELDS: tuple[str, ...] = ("name", "value", "decides", "reads", "why")
#: What ``decides`` may name: verdict classes, several joined by ", ", or every verdict.
DECIDES: frozenset[str] = frozenset({"compute", "network", "io", "host", "straggler", "all"})
_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


class RulesError(ValueError):
    """The rules table is malformed; the message names the entry and the field."""


@dataclass(frozen=True)
class Rule:
    name: str
    value: float
    decides: str
    reads: str
    why: str


def parse(text: str, source: str = TABLE) -> dict[str, Rule]:
    """The table's rules by name, checked: every field present and typed, names unique."""
    try:
        raw = tomllib.loads(text).get("rule", [])
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: {exc}") from exc
    out: dict[str, Rule] = {}
    for i, entry in enumerate(raw, 1):
        where = f"{source}: rule {i}"
        if not isinstance(entry, dict):
            raise RulesError(f"{where}: not a table")
        extra = set(entry) - set(FIELDS)
        if extra:
            raise RulesError(f"{where}: unknown field {sorted(extra)[0]!r}")
        for f in FIELDS:
            if f not in entry:
                raise RulesError(f"{where}: field {f!r} missing")
        name, value = entry["name"], entry["value"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RulesError(f"{where}: field 'name' must be an UPPER_CASE identifier, not {name!r}")
        where = f"{source}: rule {name}"
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise RulesError(f"{where}: field 'value' must be a number >= 0, not {value!r}")
        decides = entry["decides"]
        if not isinstance(decides, str) or not set(decides.split(", ")) <= DECIDES:
            raise RulesError(f"{where}: field 'decides' must name verdict classes or 'all', not {decides!r}")
        for f in ("reads", "why"):
            if not isinstance(entry[f], str) or not entry[f].strip():
                raise RulesError(f"{where}: field {f!r} must be a non-empty string")
        if name in out:
            raise RulesError(f"{where}: defined twice")
        out[name] = Rule(name, value, decides, entry["reads"], entry["why"])
    return out


@functools.cache
def table() -> dict[str, Rule]:
    """The shipped table (package data beside this module)."""
    path = Path(__file__).with_name(TABLE)
    return parse(path.read_text(encoding="utf-8"), str(path))


def value(name: str) -> Any:
    """One threshold by name; a name not in the table is a programming error (KeyError)."""
    return table()[name].value


def markdown_table() -> str:
    """docs/verdict-rules.md's table, one row per rule in the file's order."""
    rows = ["| rule | value | decides | reads | why |", "|---|---|---|---|---|"]
    for r in table().values():
        shown = hex(int(r.value)) if r.name.endswith("_BITS") else repr(r.value)
        cells = (f"`{r.name}`", shown, r.decides, r.reads, r.why)
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
