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

from fmdiag.analyzers import columns

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
    for name in values:
        v_all = np.asarray(frame[name], dtype=np.float64)
        keep = ~np.isnan(v_all)
        if not keep.any():
            continue
        # sort by (step, value, rank): the first row of a step is its min (lowest rank on ties)
        order = np.lexsort((all_ranks[keep], v_all[keep], all_steps[keep]))
        s, v, r = all_steps[keep][order], v_all[keep][order], all_ranks[keep][order]
        starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        ends = np.append(starts[1:], s.size)
        counts = ends - starts
        max_v = v[ends - 1]
        first_max = _first_equal(v, starts, ends, max_v)
        lo_mid = starts + (counts - 1) // 2
        hi_mid = starts + counts // 2
        parts.append(
            {
                "step": s[starts],
                "value": np.full(starts.size, name, dtype=object),
                "ranks": counts,
                "min": v[starts],
                "median": (v[lo_mid] + v[hi_mid]) / 2,
                "max": max_v,
                "min_rank": r[starts],
                "max_rank": r[first_max],
            }
        )
    return columns.concat(parts, DTYPES)


def _first_equal(v: np.ndarray, starts: np.ndarray, ends: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Within each sorted run ``v[starts[i]:ends[i]]``, the first index whose value equals ``target[i]``."""
    run = np.repeat(np.arange(starts.size), ends - starts)
    idx = np.flatnonzero(v == target[run])
    first_of_run = np.concatenate(([True], run[idx][1:] != run[idx][:-1]))
    return idx[first_of_run]
