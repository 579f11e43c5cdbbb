"""Interval arithmetic on numpy arrays: the one place unions, overlaps and gaps are computed.

Every breakdown reduces to lengths of unions of kernel intervals inside a window, so they are
done here once, vectorised, and property-tested against a brute-force sweep. An interval set is
a pair ``(starts, ends)``; :func:`merge` makes it sorted and disjoint (touching intervals join,
as in HTA's ``merge_kernel_intervals``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def merge(starts: npt.ArrayLike, ends: npt.ArrayLike) -> tuple[F64, F64]:
    """The union of intervals as sorted, disjoint ``(starts, ends)``; empty intervals are dropped."""
    s = np.asarray(starts, dtype=np.float64)
    e = np.asarray(ends, dtype=np.float64)
    keep = e > s
    s, e = s[keep], e[keep]
    if s.size == 0:
        return s, e
    order = np.argsort(s, kind="stable")
    s, e = s[order], e[order]
    reach = np.maximum.accumulate(e)
    # a new group starts where an interval begins after everything before it has ended
    new = np.empty(s.size, dtype=bool)
    new[0] = True
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:], s.size) - 1
    return s[first], reach[last]


def total(merged: tuple[F64, F64]) -> float:
    s, e = merged
    return float(np.sum(e - s))


def covered_before(merged: tuple[F64, F64], t: npt.ArrayLike) -> F64:
    """For each time in ``t``, how much of the (merged) set lies before it: C(t) = |U ∩ (-inf, t]|."""
    s, e = merged
    t = np.asarray(t, dtype=np.float64)
    if s.size == 0:
        return np.zeros(t.shape, dtype=np.float64)
    lengths = e - s
    before = np.concatenate(([0.0], np.cumsum(lengths)))
    i = np.searchsorted(s, t, side="right") - 1
    inside = np.clip(t - s[np.maximum(i, 0)], 0.0, lengths[np.maximum(i, 0)])
    out: F64 = np.where(i >= 0, before[np.maximum(i, 0)] + inside, 0.0)
    return out


def covered_within(merged: tuple[F64, F64], lo: npt.ArrayLike, hi: npt.ArrayLike) -> F64:
    """How much of the set lies inside each window ``[lo[i], hi[i])``."""
    out: F64 = covered_before(merged, hi) - covered_before(merged, lo)
    return out


def union(*sets: tuple[F64, F64]) -> tuple[F64, F64]:
    return merge(np.concatenate([s for s, _ in sets]), np.concatenate([e for _, e in sets]))


def intersect(a: tuple[F64, F64], b: tuple[F64, F64]) -> tuple[F64, F64]:
    """The intersection of two merged sets, merged."""
    if a[0].size == 0 or b[0].size == 0:
        return np.empty(0), np.empty(0)
    # each interval of b overlaps a contiguous run of a's intervals
    lo = np.searchsorted(a[1], b[0], side="right")
    hi = np.searchsorted(a[0], b[1], side="left")
    counts = np.maximum(hi - lo, 0)
    if counts.sum() == 0:
        return np.empty(0), np.empty(0)
    bi = np.repeat(np.arange(b[0].size), counts)
    ai = np.concatenate([np.arange(x, y) for x, y in zip(lo, hi, strict=True) if y > x])
    s = np.maximum(a[0][ai], b[0][bi])
    e = np.minimum(a[1][ai], b[1][bi])
    return merge(s, e)


def gaps(merged: tuple[F64, F64]) -> tuple[F64, F64]:
    """The holes between consecutive intervals of a merged set."""
    s, e = merged
    return e[:-1].copy(), s[1:].copy()
