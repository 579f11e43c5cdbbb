"""The diagnosis of a run: verdicts, what-if attribution, onsets, aggregates and rank scores.

One function over the merged step records and the node metrics, so the pipeline makes one call
and each part stays a module of its own (``verdicts``, ``attribution``, ``onset``,
``aggregates``, ``rank_scores``) that its tests drive alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fmdiag.analyzers.diagnosis import aggregates, attribution, onset, rank_scores, stages, verdicts
from fmdiag.analyzers.frames import columns, kineto_steps

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Diagnosis:
    verdicts: list[verdicts.Verdict]
    attribution: attribution.Attribution | None
    phases: list[dict[str, Any]] = field(default_factory=list)
    aggregates: dict[str, Any] = field(default_factory=dict)
    change_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: ``rank_scores.COLUMNS`` as numpy columns (the Kineto-only path never loads pandas).
    rank_scores: columns.Columns | None = None
    #: Per pipeline stage (records with ``pp_rank``): :func:`stages.table`; empty without a pipeline.
    stages: list[dict[str, Any]] = field(default_factory=list)


def diagnose(
    steps: pd.DataFrame | columns.Columns,
    metrics: dict[str, pd.DataFrame] | None,
    traced: columns.Columns | None = None,
) -> Diagnosis:
    """``traced``: the (rank, step) rows of the dump's Kineto traces (``kineto_steps.traced_rows``)
    when the verdicts come from step records and some ranks were traced too: they show how long
    the traced ranks' GPUs waited on communication, which host-timed phases hide under FSDP."""
    feats = verdicts.step_features(steps)
    if traced is not None and columns.length(traced):
        verdicts.add_trace_waits(feats, traced)
    view = verdicts.MetricView(metrics or {})
    found = verdicts.classify_features(feats, view)
    if not found:
        return Diagnosis(verdicts=[], attribution=None)
    per_step = kineto_steps.per_step(traced) if traced is not None and columns.length(traced) else None
    attr = attribution.attribute(feats, found, view, per_step)
    change = onset.all_change_points(feats)
    return Diagnosis(
        verdicts=found,
        attribution=attr,
        phases=aggregates.phases(feats, found, attr, change),
        aggregates=aggregates.aggregates(found, attr, feats),
        change_points=change,
        rank_scores=rank_scores.scores(steps, {v.step for v in found if v.cls in ("compute", "straggler")}),
        stages=stages.table(steps),
    )
