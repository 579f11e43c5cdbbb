"""Per-step, per-rank breakdown from step records, with node clock offsets taken out.

The breakdown of a record is the phases it carries (``data_wait``, ``forward``, ``backward``,
``optimizer``, ``comm_exposed``, ``checkpoint``) plus ``unattributed_s``: the step's duration
minus the phases recorded (negative when a writer's phases overlap; NaN-phases count as 0).

Steps are aligned by step number, never by wall clock alone: node clocks can be off by
milliseconds or more. In synchronous data-parallel training every rank leaves a step at the same
collective boundary, so a node's clock offset is the median, over steps, of how far its ranks'
``end_ns`` lies from that step's median ``end_ns`` across all ranks. :func:`clock_offsets` gives
it per node; :func:`breakdown` adds ``aligned_start_ns``/``aligned_end_ns`` with it removed
(durations come from the monotonic clock and need no correction).

Frame :func:`breakdown` returns: ``step``, ``rank``, ``node``, ``duration_s``, each phase,
``unattributed_s``, ``aligned_start_ns``, ``aligned_end_ns`` (one row per (rank, step)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmdiag import steprecord

COLUMNS: tuple[str, ...] = (
    "step",
    "rank",
    "node",
    "duration_s",
    *steprecord.PHASES,
    "unattributed_s",
    "aligned_start_ns",
    "aligned_end_ns",
)
#: The per-step values whose spread across ranks is reported.
SPREAD_VALUES: tuple[str, ...] = ("duration_s", *steprecord.PHASES, "unattributed_s")


def clock_offsets(steps: pd.DataFrame) -> dict[str, float]:
    """Node -> clock offset in seconds (positive: the node's clock runs ahead of the median)."""
    if steps.empty:
        return {}
    ref = steps.groupby("step", sort=False)["end_ns"].transform("median")
    delta = (steps["end_ns"] - ref) / 1e9
    per_node = delta.groupby(steps["node"], observed=True).median()
    return {str(node): float(v) for node, v in per_node.items()}


def breakdown(steps: pd.DataFrame, offsets: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per (rank, step): duration, phases, unattributed time, clock-aligned times.

    ``offsets`` is :func:`clock_offsets` of ``steps`` when the caller has it already.
    """
    if steps.empty:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS})
    if offsets is None:
        offsets = clock_offsets(steps)
    shift_ns = (steps["node"].map(offsets).astype("float64").fillna(0.0) * 1e9).round().astype("int64")
    # Phases not recorded count as 0, added in PHASES order: numpy on the columns, not a row-wise
    # pandas sum over a NaN-filled copy of them (a copy of six 4-million-row columns at scale).
    recorded = np.zeros(len(steps))
    for phase in steprecord.PHASES:
        values = steps[phase].to_numpy(dtype=np.float64)
        recorded += np.where(np.isnan(values), 0.0, values)
    end_ns = steps["end_ns"].to_numpy()
    aligned_end = end_ns - shift_ns.to_numpy()
    # A selection, not a copy: pandas copies on write, so the caller's frame is never changed.
    out = steps[["step", "rank", "node", "duration_s", *steprecord.PHASES]]
    out = out.assign(
        unattributed_s=steps["duration_s"].to_numpy() - recorded,
        aligned_start_ns=aligned_end - (end_ns - steps["start_ns"].to_numpy()),
        aligned_end_ns=aligned_end,
    )
    return out[list(COLUMNS)]
