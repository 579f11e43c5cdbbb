"""Per pipeline stage: where its time goes, for jobs whose records (or traces) carry ``pp_rank``.

A pipeline's cost is in how its stages line up: in 1F1B's steady state every micro-batch slot
lasts as long as the longest stage, so every other stage idles the difference — in its p2p
receives (which step records book to ``comm_exposed``, and Megatron's timers to
``forward-recv``/``backward-recv``) — and the warm-up/cool-down bubble adds ``(p - 1) / (m + p - 1)``
of the step with ``m`` micro-batches. The table says, per stage: its ranks and nodes, its median
compute and exposed communication per step, the share of the step it idles (neither computing
nor waiting for its input), and how much longer it computes than the median stage. The stage the
others wait for is the one to repartition (``stage_imbalance`` verdicts name it by ``pp_rank``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Columns a stage row has, in order.
FIELDS: tuple[str, ...] = (
    "pp_rank",
    "ranks",
    "nodes",
    "compute_s",
    "comm_exposed_s",
    "step_s",
    "compute_share",
    "wait_share",
    "vs_median_stage",
)


def table(steps: Any) -> list[dict[str, Any]]:
    """One row per stage (medians over its ranks' steps); empty without ``pp_rank`` or with one
    stage. ``steps``: merged step records (pandas) or the same columns as numpy arrays."""
    if "pp_rank" not in steps or not len(steps["step"]):
        return []
    pp = np.asarray(steps["pp_rank"], dtype=np.float64)
    known = np.isfinite(pp) & (pp >= 0)
    stages = np.unique(pp[known]).astype(np.int64)
    if len(stages) < 2:
        return []

    def col(name: str) -> np.ndarray:
        if name not in steps:
            return np.zeros(len(pp))
        return np.nan_to_num(np.asarray(steps[name], dtype=np.float64), nan=0.0)

    compute = col("forward") + col("backward")
    comm = col("comm_exposed")
    work = np.asarray(steps["duration_s"], dtype=np.float64) - col("checkpoint")
    rank = np.asarray(steps["rank"], dtype=np.int64)
    node = np.asarray(steps["node"]).astype(str) if "node" in steps else np.full(len(pp), "")
    rows: list[dict[str, Any]] = []
    computes: list[float] = []
    for s in stages:
        mine = known & (pp == s)
        step_s = float(np.median(work[mine]))
        c, x = float(np.median(compute[mine])), float(np.median(comm[mine]))
        computes.append(c)
        rows.append(
            {
                "pp_rank": int(s),
                "ranks": len(np.unique(rank[mine])),
                "nodes": sorted({n for n in node[mine].tolist() if n}),
                "compute_s": round(c, 6),
                "comm_exposed_s": round(x, 6),
                "step_s": round(step_s, 6),
                "compute_share": round(c / step_s, 6) if step_s > 0 else 0.0,
                "wait_share": round(x / step_s, 6) if step_s > 0 else 0.0,
            }
        )
    typical = float(np.median(computes))
    for r, c in zip(rows, computes, strict=True):
        r["vs_median_stage"] = round(c / typical - 1, 6) if typical > 0 else 0.0
    return rows
