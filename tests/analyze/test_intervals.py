"""Interval arithmetic against a brute-force sweep on an integer grid."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fmdiag.analyzers.frames import intervals as iv

spans = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 15)), max_size=25)


def _mask(pairs: list[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(80, dtype=bool)
    for s, d in pairs:
        m[s : s + d] = True
    return m


def _set(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return iv.merge([s for s, _ in pairs], [s + d for s, d in pairs])


@given(spans)
def test_merge_is_sorted_disjoint_and_covers_the_same_time(pairs: list[tuple[int, int]]) -> None:
    s, e = _set(pairs)
    assert np.all(e > s)
    assert np.all(s[1:] > e[:-1])  # touching intervals were joined
    assert iv.total((s, e)) == _mask(pairs).sum()


@given(spans, st.integers(0, 80), st.integers(0, 80))
def test_covered_within_a_window(pairs: list[tuple[int, int]], a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    got = iv.covered_within(_set(pairs), np.array([lo]), np.array([hi]))
    assert got[0] == _mask(pairs)[lo:hi].sum()


@given(spans, spans)
def test_intersection_and_union(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> None:
    sa, sb = _set(a), _set(b)
    assert iv.total(iv.intersect(sa, sb)) == (_mask(a) & _mask(b)).sum()
    assert iv.total(iv.union(sa, sb)) == (_mask(a) | _mask(b)).sum()


@given(spans)
def test_gaps_are_the_holes_between_intervals(pairs: list[tuple[int, int]]) -> None:
    merged = _set(pairs)
    g0, g1 = iv.gaps(merged)
    if merged[0].size:
        hole = ~_mask(pairs)[int(merged[0][0]) : int(merged[1][-1])]
        assert (g1 - g0).sum() == hole.sum()
