"""What the step records of a dump cover and lack (pandas-free, so reports can use it without the frame)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepsCoverage:
    """What the step records cover, and what they lack."""

    files: int = 0
    records: int = 0
    ranks: list[int] = field(default_factory=list)
    #: Ranks below the highest one seen that have no records at all.
    missing_ranks: list[int] = field(default_factory=list)
    first_step: int | None = None
    last_step: int | None = None
    #: rank -> steps some other rank recorded but this one has no record of, as [first, last] ranges.
    missing_steps: dict[int, list[list[int]]] = field(default_factory=dict)
    #: Steps between first and last that no rank recorded, as [first, last] ranges.
    steps_missing_everywhere: list[list[int]] = field(default_factory=list)
    superseded: int = 0
    #: Valid but implausible records (a phase longer than its step), and up to 10 examples.
    implausible: int = 0
    implausible_examples: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    partial_tails: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def as_ranges(values: list[int]) -> list[list[int]]:
    """Sorted integers as ``[first, last]`` runs: [0, 1, 2, 5] -> [[0, 2], [5, 5]]."""
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def ranges_text(ranges: list[list[int]]) -> str:
    """``0-2, 5`` for [[0, 2], [5, 5]]: how reports name many ranks or steps on one line."""
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)
