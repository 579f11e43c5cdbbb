"""A pipeline's stages side by side, and what repartitioning it would give back."""

from __future__ import annotations

import pandas as pd
import pytest

from fmdiag.analyzers.diagnosis import diagnose, stages

T0 = 1_750_000_000.0


def _pipeline(n: int, last: float) -> pd.DataFrame:
    """Four stages of two ranks on four nodes; the last stage computes ``last`` times the others
    and the others wait the difference in their p2p receives."""
    rows = []
    for step in range(n):
        for rank in range(8):
            pp = rank // 2
            mine = last if pp == 3 else 1.0
            rows.append(
                {
                    "step": step,
                    "rank": rank,
                    "node": f"node-{pp:03d}",
                    "local_rank": rank % 2,
                    "pp_rank": pp,
                    "end_ns": int((T0 + 2.0 * (step + 1)) * 1e9),
                    "duration_s": 2.0,
                    "data_wait": 0.002,
                    "forward": 0.4 * mine,
                    "backward": 0.8 * mine,
                    "comm_exposed": 0.05 + 1.2 * (last - mine),
                    "checkpoint": 0.0,
                }
            )
    return pd.DataFrame(rows)


def test_the_stage_table_shows_the_stage_the_others_wait_for() -> None:
    rows = stages.table(_pipeline(10, 1.5))
    assert [r["pp_rank"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["nodes"] == ["node-003"] and rows[3]["ranks"] == 2
    assert rows[3]["compute_s"] == pytest.approx(1.8)
    assert rows[3]["vs_median_stage"] == pytest.approx(0.5)
    assert rows[0]["wait_share"] == pytest.approx((0.05 + 0.6) / 2.0)
    assert list(rows[0]) == list(stages.FIELDS)


def test_no_pipeline_no_table() -> None:
    frame = _pipeline(4, 1.5)
    assert stages.table(frame.drop(columns="pp_rank")) == []
    assert stages.table(frame.assign(pp_rank=0)) == []


def test_a_stage_imbalance_costs_what_an_even_partition_gives_back() -> None:
    # the last stage at 2x: every slot lasts 2.4 s of compute where the mean stage needs 1.5;
    # the others idle 1 - 1.5 / 2.4 = 37.5% of the step
    d = diagnose.diagnose(_pipeline(12, 2.0), {})
    assert {v.reason for v in d.verdicts} == {"stage_imbalance"}
    attr = d.attribution
    assert attr is not None
    lost = attr.per_step["lost_stage_s"]
    assert lost[5] == pytest.approx(0.375 * 2.0)
    assert attr.statements()[0].startswith("fixing the pipeline partition")
    assert "gives back up to 37.5%" in attr.statements()[0]
    top = d.aggregates["targets"][0]
    assert top["cause"] == "stage" and top["target"] == {"pp_rank": 3, "node": "node-003"}
    assert d.stages and d.stages[3]["vs_median_stage"] == pytest.approx(1.0)
