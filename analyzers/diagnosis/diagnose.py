"""The diagnosis of a run: verdicts, what-if attribution, onsets, aggregates and rank scores.

One function over the merged step records and the node metrics, so the pipeline makes one call
and each part stays a module of its own (``verdicts``, ``attribution``, ``onset``,
``aggregates``, ``rank_scores``) that its tests drive alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fmdiag.analyzers.diagnosis import aggregates, attribution, onset, rank_scores, verdicts
from fmdiag.analyzers.frames import columns

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


def diagnose(
    steps: pd.DataFrame | columns.Columns,
    metrics: dict[str, pd.DataFrame] | None,
    traced: columns.Columns | None = None,
) -> Diagnosis:
    """``traced``: per-step columns of the dump's Kineto traces (``kineto_steps.traced_steps``)
    when the verdicts come from step records and some ranks were traced too."""
    feats = verdicts.step_features(steps)
    view = verdicts.MetricView(metrics or {})
    found = verdicts.classify_features(feats, view)
    if not found:
        return Diagnosis(verdicts=[], attribution=None)
    attr = attribution.attribute(feats, found, view, traced)
    change = onset.all_change_points(feats)
    return Diagnosis(
        verdicts=found,
        attribution=attr,
        phases=aggregates.phases(feats, found, attr, change),
        aggregates=aggregates.aggregates(found, attr, feats),
        change_points=change,
        rank_scores=rank_scores.scores(steps, {v.step for v in found if v.cls in ("compute", "straggler")}),
    )
