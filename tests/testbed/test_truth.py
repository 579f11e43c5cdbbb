"""The test bed's truth: built from when faults were really on and when steps really ran."""

from __future__ import annotations

from fmdiag import dumpformat
from fmdiag.steprecord import StepRecord
from fmdiag.testbed import truth
from fmdiag.testbed.faults import Target, pick_targets
from fmdiag.testbed.scenarios import SCENARIOS, Fault, Kind, Scenario

S = 1_000_000_000  # ns
RANKS = [
    {"rank": r, "node": f"node-{r // 2:03d}", "local_rank": r % 2, "pp_rank": r // 2, "dp_rank": r % 2}
    for r in range(4)
]


def records(steps: int, ckpt_every: int = 0, slow: tuple[int, ...] = ()) -> list[StepRecord]:
    out = []
    t = 100 * S
    for step in range(steps):
        dur = 3 * S if step in slow else S
        for r in range(4):
            phases = {"checkpoint": 0.2} if ckpt_every and step % ckpt_every == ckpt_every - 1 else {}
            out.append(StepRecord("j", r, RANKS[r]["node"], step, t + r * 1000, t + dur, phases=phases))
        t += dur
    return out


def build(sc: Scenario, recs: list[StepRecord], events: list[tuple[int, str, int]], steps: int = 10) -> dict:
    targets = [Target(rank=3, node="node-001")] * len(sc.faults)
    return truth.build(
        scenario=sc,
        job="j",
        seed=0,
        steps_total=steps,
        records=recs,
        targets=targets,
        events=events,
        ranks=RANKS,
        parameters={},
    )


def test_a_fault_owns_the_steps_it_was_on_for_most_of() -> None:
    sc = Scenario("x", "d", faults=(Fault(Kind.RANK_CPU, start=0.5, params={"cpus": 0.1}),))
    # on 0.3 s into step 5 (most of it still ahead), off at the start of step 8 plus 0.6 s
    doc = build(sc, records(10), [(0, "on", 105 * S + 3 * S // 10), (0, "off", 108 * S + 6 * S // 10)])
    classes = [s["class"] for s in doc["steps"]]
    assert classes == ["compute"] * 5 + ["straggler"] * 4 + ["compute"]
    assert doc["faults"][0]["first_step"] == 5 and doc["faults"][0]["last_step"] == 8
    assert doc["steps"][5]["culprit"] == {"node": "node-001", "rank": 3, "local_rank": 1}
    assert dumpformat.validate_truth(doc) is doc


def test_time_lost_is_estimated_only_against_fault_free_steps() -> None:
    sc = Scenario("x", "d", faults=(Fault(Kind.FABRIC_BANDWIDTH, start=0.5, params={"mbit": 1}),))
    doc = build(sc, records(10, slow=(6,)), [(0, "on", 105 * S)])
    assert doc["nominal"]["step_s"] == 1.0
    assert doc["steps"][6]["lost_s"] == {"0": 2.0} and doc["steps"][5]["lost_s"] == {"0": 0.0}
    whole = build(sc, records(10), [(0, "on", 99 * S)])
    assert whole["nominal"]["step_s"] is None and all("lost_s" not in s for s in whole["steps"])


def test_a_checkpoint_throttle_binds_only_on_checkpoint_steps() -> None:
    sc = SCENARIOS["checkpoint-stall"]
    doc = build(sc, records(10, ckpt_every=5), [(0, "on", 99 * S)])
    assert [s["step"] for s in doc["steps"] if s["class"] == "io"] == [4, 9]
    healthy = build(SCENARIOS["healthy"], records(10, ckpt_every=5), [])
    assert [s["step"] for s in healthy["steps"] if s["checkpoint"]] == [4, 9]
    assert {s["class"] for s in healthy["steps"]} == {"compute"}


def test_the_jobs_own_conditions_hold_on_every_step_with_their_culprit() -> None:
    sc = SCENARIOS["pipeline-imbalance"]
    targets = pick_targets(sc.faults, RANKS, ["node-000", "node-001"], 0)
    doc = truth.build(
        scenario=sc,
        job="j",
        seed=0,
        steps_total=10,
        records=records(10),
        targets=targets,
        events=[],
        ranks=RANKS,
        parameters={},
    )
    assert doc["class_counts"] == {"compute": 10}  # a stage imbalance is the job's shape, not a fault
    assert doc["steps"][0]["culprit"] == {"pp_rank": 1, "node": "node-001"}


def test_intermittent_windows_and_targets_follow_the_seed() -> None:
    fault = SCENARIOS["network-intermittent"].faults[0]
    assert fault.windows(40) == [(8, 13), (18, 23), (28, 33), (38, 40)]
    straggler = SCENARIOS["straggler-cpu"].faults
    picked = {pick_targets(straggler, RANKS, ["node-000", "node-001"], seed)[0].rank for seed in range(20)}
    assert 0 not in picked and len(picked) > 1


def test_a_loader_fault_holds_on_the_steps_that_consumed_batches_made_under_it() -> None:
    sc = Scenario("x", "d", faults=(Fault(Kind.INPUT_READ, start=0.3, params={"bytes_per_s": 1}),))
    # applied before step 3 and removed before step 7, but the prefetch queue held 2 batches
    made = {s: [100 * S + (s - 2) * S] * 4 for s in range(10)}
    doc = truth.build(
        scenario=sc,
        job="j",
        seed=0,
        steps_total=10,
        records=records(10),
        targets=[Target()],
        events=[(0, "on", 103 * S), (0, "off", 107 * S)],
        ranks=RANKS,
        parameters={},
        batches_made=made,
    )
    assert [s["step"] for s in doc["steps"] if s["class"] == "io"] == [5, 6, 7, 8]
