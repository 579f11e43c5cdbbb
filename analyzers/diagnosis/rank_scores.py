"""Per-rank performance scores in the manner of NVIDIA Resiliency Extension's straggler detector.

NVRx scores each rank twice, both in (0, 1], 1 being best: **relative** — the best rank's time
over this rank's, so a rank slower than its peers scores below 1 — and **individual** — the rank's
own best time over its recent time, so a rank that got slower than it used to be scores below 1
even when the whole job is uniform. A rank whose score falls under a threshold is reported.

Here the time is the rank's compute (``forward + backward``; the step minus exposed
communication and data wait when a writer did not record them). Under FSDP a rank's forward
and backward also hold its waits for the all-gathers of slower peers, so a run whose phases
slow different ranks at different times would skew a plain per-rank median: the relative score
is instead taken *per step* (the step's fastest rank over this rank) and its median over the
steps is the rank's score. For the same reason a hardware straggler's peers look slow too and
its score stays near 1 (0.95 for a GPU at 64% clock): a rank is also flagged when its score is
a clear outlier among its peers' (:data:`OUTLIER_MADS` median absolute deviations below the
median rank and :data:`OUTLIER_GAP` under it). The individual score compares blocks of
consecutive steps, medians per block, so one slow step (a GC pause, an eval) does not mark a
rank: the best block's median over the last block's, flagged under NVRx's 0.7 when the rank
also slowed more than its peers did (a job-wide slowdown is not one rank's fault).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmdiag.analyzers.frames import columns

#: Relative score under which a rank is flagged whatever its peers score.
THRESHOLD = 0.9
#: NVRx's default threshold, for the individual score.
INDIVIDUAL_THRESHOLD = 0.7
OUTLIER_MADS = 6.0
OUTLIER_GAP = 0.04
#: Steps per block; at least this many blocks when the run is long enough.
MIN_BLOCK = 5
BLOCKS = 10

COLUMNS = (
    "rank",
    "node",
    "local_rank",
    "steps",
    "compute_median_s",
    "relative_score",
    "individual_score",
    "flagged",
)


def _col(steps: Any, name: str, n: int) -> np.ndarray:
    return np.asarray(steps[name], dtype=np.float64) if name in steps else np.full(n, np.nan)


def _take(column: Any, rows: np.ndarray) -> np.ndarray:
    """``np.asarray(column)[rows]`` without converting the whole column first (a categorical
    pandas column would become an object array of millions of references)."""
    taken: np.ndarray = np.asarray(column.iloc[rows]) if hasattr(column, "iloc") else np.asarray(column)[rows]
    return taken


def compute_time(steps: Any) -> np.ndarray:
    """Each record's compute: forward + backward, or what is left of the step without them."""
    n = len(steps["step"])
    left = np.asarray(steps["duration_s"], dtype=np.float64).copy()
    for name in ("comm_exposed", "data_wait", "checkpoint", "optimizer"):
        left -= np.nan_to_num(_col(steps, name, n), nan=0.0)
    both = _col(steps, "forward", n) + _col(steps, "backward", n)
    return np.where(np.isnan(both), left, both)


def _segment_medians(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct key (ascending): the key, the first row holding it, and the median of its
    values ignoring NaN (NaN when it has none) — one lexsort instead of a median per group."""
    order = np.lexsort((np.isnan(values), values, keys))  # per key: values ascending, NaN last
    k, v = keys[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(k)) + 1]
    ends = np.r_[starts[1:], len(k)]
    valid = np.add.reduceat(~np.isnan(v), starts) if len(k) else np.array([], int)
    lo = starts + np.maximum(valid - 1, 0) // 2
    hi = starts + np.maximum(valid, 1) // 2 - (valid == 0)
    hi = np.minimum(np.maximum(hi, lo), ends - 1)
    med = np.where(valid > 0, (v[lo] + v[hi]) / 2.0, np.nan)
    first = np.minimum.reduceat(order, starts) if len(k) else np.array([], int)
    return k[starts], first, med


def scores(steps: Any, only_steps: set[int] | None = None, threshold: float = THRESHOLD) -> columns.Columns:
    """One row per rank (:data:`COLUMNS`), the lowest relative score first.

    ``steps``: the merged step records (a pandas frame or numpy columns). ``only_steps``: the
    steps to score on — the diagnosis passes those whose verdict is compute or straggler, since
    on an io, host or network step a rank's compute phases hold its waits for the slow data or
    fabric, not its own speed (all steps when none is left).
    """
    n = len(steps["step"]) if steps is not None else 0
    empty = {c: np.array([]) for c in COLUMNS}
    if not n:
        return empty
    step = np.asarray(steps["step"], dtype=np.int64)
    keep = np.isin(step, list(only_steps)) if only_steps else np.ones(n, bool)
    if not keep.any():
        keep = np.ones(n, bool)
    idx = np.flatnonzero(keep)
    step = step[idx]
    rank = np.asarray(steps["rank"], dtype=np.int64)[idx]
    local = (
        np.nan_to_num(np.asarray(steps["local_rank"], dtype=np.float64), nan=-1.0).astype(np.int64)[idx]
        if "local_rank" in steps
        else np.full(len(idx), -1, np.int64)
    )
    compute = compute_time(steps)[idx]
    # per step, the fastest rank's compute over each rank's
    by_step = np.argsort(step, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(step[by_step])) + 1]
    fastest = np.empty(len(idx))
    fastest[by_step] = np.repeat(np.fmin.reduceat(compute[by_step], starts), np.diff(np.r_[starts, len(idx)]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(compute > 0, fastest / compute, np.nan)
    n_steps = len(np.unique(step))
    block = max(MIN_BLOCK, -(-n_steps // BLOCKS))
    blocks = (step - step.min()) // block
    # medians per rank and per (rank, block), in one sort each (4,096 ranks x 10 blocks)
    ranks, first_rows, med = _segment_medians(rank, compute)
    ratio_med = _segment_medians(rank, ratio)[2]
    span = int(blocks.max()) + 1
    rb_keys, _, rb_med = _segment_medians(rank * span + blocks, compute)
    rb_rank = rb_keys // span
    best = np.full(len(ranks), np.inf)
    last = np.full(len(ranks), np.nan)
    at = np.searchsorted(ranks, rb_rank)
    np.fmin.at(best, at, rb_med)
    last[at] = rb_med  # keys are sorted, so the last write per rank is its last block
    counts = np.bincount(np.searchsorted(ranks, rank), minlength=len(ranks))
    cols: columns.Columns = {
        "rank": ranks.astype(np.int64),
        # only each rank's first row's node as text: not 4 million strings to keep 4,096
        "node": _take(steps["node"], idx[first_rows]).astype(str).astype(object),
        "local_rank": local[first_rows].astype(np.int64),
        "steps": counts.astype(np.int64),
        "compute_median_s": np.round(med, 6),
        "relative_score": np.round(np.clip(ratio_med, 0.0, 1.0), 4),
        "individual_score": np.round(np.clip(best / last, 0.0, 1.0), 4),
    }
    rel, own = cols["relative_score"], cols["individual_score"]
    centre = float(np.nanmedian(rel))
    mad = float(np.nanmedian(np.abs(rel - centre)))
    outlier = (rel < centre - OUTLIER_MADS * mad) & (rel < centre - OUTLIER_GAP)
    # slower than its own past *and* than its peers got: a job-wide slowdown is not a rank's fault
    slowed = (own < INDIVIDUAL_THRESHOLD) & (own < float(np.nanmedian(own)) - OUTLIER_GAP)
    cols["flagged"] = (rel < threshold) | outlier | slowed
    order = np.lexsort((cols["rank"], rel))
    return {c: v[order] for c, v in cols.items()}


def flagged(cols: columns.Columns) -> columns.Columns:
    return columns.select(cols, np.asarray(cols["flagged"], bool))
