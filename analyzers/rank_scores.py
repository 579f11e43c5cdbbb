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

import numpy as np
import pandas as pd

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


def compute_time(steps: pd.DataFrame) -> pd.Series:
    """Each record's compute: forward + backward, or what is left of the step without them."""
    fwd = steps.get("forward")
    bwd = steps.get("backward")
    left = steps["duration_s"].copy()
    for col in ("comm_exposed", "data_wait", "checkpoint", "optimizer"):
        if col in steps:
            left = left - steps[col].fillna(0.0)
    if fwd is None or bwd is None:
        return left
    both = fwd + bwd
    return both.where(both.notna(), left)


def scores(
    steps: pd.DataFrame, only_steps: set[int] | None = None, threshold: float = THRESHOLD
) -> pd.DataFrame:
    """One row per rank (:data:`COLUMNS`), the lowest relative score first.

    ``only_steps``: the steps to score on — the diagnosis passes those whose verdict is
    compute or straggler, since on an io, host or network step a rank's compute phases hold
    its waits for the slow data or fabric, not its own speed (all steps when none is left).
    """
    if steps is None or not len(steps):
        return pd.DataFrame({c: [] for c in COLUMNS})
    if only_steps:
        kept = steps[steps["step"].isin(only_steps)]
        steps = kept if len(kept) else steps
    frame = pd.DataFrame(
        {
            "rank": steps["rank"].to_numpy(),
            "step": steps["step"].to_numpy(),
            "compute": compute_time(steps).to_numpy(),
        }
    )
    n_steps = int(frame["step"].nunique())
    block = max(MIN_BLOCK, -(-n_steps // BLOCKS))
    first = int(frame["step"].min())
    frame["block"] = (frame["step"] - first) // block
    fastest = frame.groupby("step")["compute"].transform("min")
    frame["ratio"] = np.where(frame["compute"] > 0, fastest / frame["compute"], np.nan)
    per_block = frame.groupby(["rank", "block"], sort=True)["compute"].median()
    best_block = per_block.groupby(level="rank").min()
    last_block = per_block.groupby(level="rank").last()
    by_rank = frame.groupby("rank", sort=True)
    med = by_rank["compute"].median()
    relative = by_rank["ratio"].median().to_numpy()
    where = steps.drop_duplicates("rank").set_index("rank")
    out = pd.DataFrame(
        {
            "rank": med.index.to_numpy(np.int64),
            "node": where.loc[med.index, "node"].astype(str).to_numpy(),
            "local_rank": (
                where.loc[med.index, "local_rank"].to_numpy(np.int64)
                if "local_rank" in where
                else np.full(len(med), -1)
            ),
            "steps": by_rank["compute"].size().to_numpy(np.int64),
            "compute_median_s": med.to_numpy().round(6),
            "relative_score": np.clip(relative, 0.0, 1.0).round(4),
            "individual_score": np.clip(best_block.to_numpy() / last_block.to_numpy(), 0.0, 1.0).round(4),
        }
    )
    rel = out["relative_score"].to_numpy()
    centre = float(np.nanmedian(rel))
    mad = float(np.nanmedian(np.abs(rel - centre)))
    outlier = (rel < centre - OUTLIER_MADS * mad) & (rel < centre - OUTLIER_GAP)
    own = out["individual_score"].to_numpy()
    # slower than its own past *and* than its peers got: a job-wide slowdown is not a rank's fault
    slowed = (own < INDIVIDUAL_THRESHOLD) & (own < float(np.nanmedian(own)) - OUTLIER_GAP)
    out["flagged"] = (rel < threshold) | outlier | slowed
    return out.sort_values(["relative_score", "rank"], kind="stable").reset_index(drop=True)
