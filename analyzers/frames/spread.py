"""Spread across ranks, per step: the small explicit cross-rank reduction of the pipeline.

For each step and each value column: ``min``, ``median``, ``max``, the rank holding the minimum
and the maximum (the lowest rank on ties), and how many ranks reported a value. The per-rank
frame can come from step records (a pandas frame) or from Kineto breakdowns (numpy columns);
only ``step``, ``rank`` and the value columns are read. NaN values (a phase a rank did not
record) are left out of that column's statistics.

Result (long form, numpy columns, one row per (step, value)): ``step``, ``value``, ``ranks``,
``min``, ``median``, ``max``, ``min_rank``, ``max_rank``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fmdiag.analyzers.frames import columns

DTYPES: dict[str, str] = {
    "step": "int64",
    "value": "object",
    "ranks": "int64",
    "min": "float64",
    "median": "float64",
    "max": "float64",
    "min_rank": "int64",
    "max_rank": "int64",
}
COLUMNS: tuple[str, ...] = tuple(DTYPES)


def spread(frame: Any, values: Sequence[str]) -> columns.Columns:
    """Per step, per value column: min / median / max across ranks and which rank is which."""
    parts = []
    all_steps = np.asarray(frame["step"], dtype=np.int64)
    all_ranks = np.asarray(frame["rank"], dtype=np.int64)
    grid = _Grid.of(all_steps, all_ranks)
    for name in values:
        v_all = np.asarray(frame[name], dtype=np.float64)
        keep = ~np.isnan(v_all)
        if not keep.any():
            continue
        if grid is None or _mixed_zeros(v_all):
            parts.append(_by_sorting(name, all_steps[keep], v_all[keep], all_ranks[keep]))
        else:
            parts.append(grid.spread(name, v_all))
    return columns.concat(parts, DTYPES)


def _by_sorting(name: str, steps: np.ndarray, values: np.ndarray, ranks: np.ndarray) -> columns.Columns:
    """The spread of one value column (no NaN) by one sort: for any frame, however ragged."""
    # sort by (step, value, rank): the first row of a step is its min (lowest rank on ties)
    order = np.lexsort((ranks, values, steps))
    s, v, r = steps[order], values[order], ranks[order]
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    ends = np.append(starts[1:], s.size)
    counts = ends - starts
    max_v = v[ends - 1]
    first_max = _first_equal(v, starts, ends, max_v)
    lo_mid = starts + (counts - 1) // 2
    hi_mid = starts + counts // 2
    return {
        "step": s[starts],
        "value": np.full(starts.size, name, dtype=object),
        "ranks": counts,
        "min": v[starts],
        "median": (v[lo_mid] + v[hi_mid]) / 2,
        "max": max_v,
        "min_rank": r[starts],
        "max_rank": r[first_max],
    }


def _first_equal(v: np.ndarray, starts: np.ndarray, ends: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Within each sorted run ``v[starts[i]:ends[i]]``, the first index whose value equals ``target[i]``."""
    run = np.repeat(np.arange(starts.size), ends - starts)
    idx = np.flatnonzero(v == target[run])
    first_of_run = np.concatenate(([True], run[idx][1:] != run[idx][:-1]))
    return idx[first_of_run]


def _mixed_zeros(values: np.ndarray) -> bool:
    """Whether both 0.0 and -0.0 occur: equal, but told apart in the output, so which of them is a
    step's min, median or max depends on the order of ties, which only :func:`_by_sorting` fixes."""
    signs = np.signbit(values[values == 0])
    return bool(signs.any() and not signs.all())


_NO_RANK = np.iinfo(np.int64).max


class _Grid:
    """The rows laid out as a (step, slot) matrix, one row per step, NaN-padded: every step's
    statistics in a few whole-matrix operations (a sort per row in C, masked minima) instead of
    a sort of all rows per value column. Which slot a row takes does not matter: ties are equal."""

    def __init__(self, steps: np.ndarray, counts: np.ndarray, order: np.ndarray | None, ranks: np.ndarray):
        self.steps = steps
        self.shape = (steps.size, int(counts.max()))
        self.order = order
        self.full = order is None and bool((counts == self.shape[1]).all())
        if not self.full:
            self.row = np.repeat(np.arange(steps.size), counts)
            self.col = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        self.ranks = self.layout(ranks, _NO_RANK)

    @classmethod
    def of(cls, steps: np.ndarray, ranks: np.ndarray) -> _Grid | None:
        """The grid of these rows, or None when padding would cost more than it saves (ragged steps)."""
        if steps.size == 0:
            return None
        order = None if bool((steps[1:] >= steps[:-1]).all()) else np.argsort(steps, kind="stable")
        s = steps if order is None else steps[order]
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        counts = np.diff(np.append(starts, s.size))
        if starts.size * int(counts.max()) > 2 * s.size + 1024:
            return None
        return cls(s[starts], counts, order, ranks)

    def layout(self, values: np.ndarray, fill: Any) -> np.ndarray:
        if self.full:
            return values.reshape(self.shape)
        out = np.full(self.shape, fill, dtype=values.dtype)
        out[self.row, self.col] = values if self.order is None else values[self.order]
        return out

    def spread(self, name: str, values: np.ndarray) -> columns.Columns:
        v = self.layout(values, np.nan)
        ranks = self.ranks
        counts = np.count_nonzero(~np.isnan(v), axis=1)
        have = counts > 0
        if not have.all():
            v, ranks, counts = v[have], ranks[have], counts[have]
        s = np.sort(v, axis=1)  # NaN last
        row = np.arange(s.shape[0])
        lo, hi = s[row, 0], s[row, counts - 1]
        return {
            "step": self.steps[have],
            "value": np.full(row.size, name, dtype=object),
            "ranks": counts,
            "min": lo,
            "median": (s[row, (counts - 1) // 2] + s[row, counts // 2]) / 2,
            "max": hi,
            "min_rank": np.where(v == lo[:, None], ranks, _NO_RANK).min(axis=1),
            "max_rank": np.where(v == hi[:, None], ranks, _NO_RANK).min(axis=1),
        }
