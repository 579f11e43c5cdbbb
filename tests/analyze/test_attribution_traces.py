"""A whole-run network fault costed from the traces' exposed communication, not as a lower bound."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmdiag import dumpformat
from fmdiag.analyzers import pipeline
from fmdiag.analyzers.diagnosis import attribution
from fmdiag.analyzers.diagnosis.verdicts import StepFeatures, Verdict
from fmdiag.analyzers.frames import kineto_steps

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _feats(n: int, duration: float) -> list[StepFeatures]:
    return [
        StepFeatures(
            step=i,
            end_s=100.0 + i,
            duration_s=duration,
            checkpoint_s=0.0,
            data_wait_median=0.0,
            late_rank=0,
            late_node="node-0",
            late_local_rank=0,
            # the records' comm phase shows a sliver of the wait (FSDP books it to forward)
            comm_min=0.05,
            comm_median=0.05,
            compute_late=1.3,
            compute_median=1.3,
        )
        for i in range(n)
    ]


def _traced(steps: list[int], span: float, exposed: float) -> dict[str, np.ndarray]:
    k = len(steps)
    return {
        "step": np.asarray(steps, np.int64),
        "ranks": np.full(k, 2, np.int64),
        "span_s": np.full(k, span),
        "compute_s": np.full(k, span - exposed),
        "comm_s": np.full(k, 1.8),
        "comm_exposed_s": np.full(k, exposed + 0.1),
        "comm_exposed_min_s": np.full(k, exposed),
    }


def test_a_whole_run_network_fault_is_costed_by_the_traced_exposed_communication() -> None:
    feats = _feats(10, 2.0)
    verdicts = [Verdict(step=i, cls="network", confidence=0.8) for i in range(10)]
    bound = attribution.attribute(feats, verdicts)
    assert not bound.baseline.measured and not bound.network_from_traces
    assert bound.lost_s()["network"] < 1.0
    assert "at least" in bound.statements()[0]

    got = attribution.attribute(feats, verdicts, traced=_traced([3, 4], 2.0, 0.8))
    assert got.network_from_traces
    # traced steps: their own exposed communication; the others: the same 40% share of the step
    assert got.per_step["lost_network_s"][3] == 0.8
    assert np.allclose(got.per_step["lost_network_s"], 0.8)
    assert got.statements()[0].startswith("fixing the network gives back 40.0% of step time")
    assert got.to_json(dict)["network_from_traces"] is True


def test_traced_steps_without_a_network_cause_leave_the_cost_as_it_was() -> None:
    feats = _feats(10, 2.0)
    verdicts = [Verdict(step=i, cls="network" if i < 5 else "compute", confidence=0.8) for i in range(10)]
    plain = attribution.attribute(feats, verdicts)
    # traced steps 7-8 are compute: they give no share for the network steps 0-4
    got = attribution.attribute(feats, verdicts, traced=_traced([7, 8], 2.0, 0.8))
    assert not got.network_from_traces
    assert got.lost_s() == plain.lost_s()


def test_traced_steps_are_renumbered_as_the_records_that_hold_them() -> None:
    # the profiler counted from its own start (ProfilerStep#0, #1, #2) while training was at 40-42;
    # its window closed 1 s into step 42 without marking it partial; rank 1 waits longer on step 40
    kb = {
        "rank": np.array([0, 0, 0, 1]),
        "step": np.array([0, 1, 2, 0]),
        "partial": np.array([False, False, False, False]),
        "start_us": np.array([0.0, 2e6, 4e6, 0.0]),
        "span_s": np.array([2.0, 2.0, 1.0, 2.0]),
        "compute_s": np.array([1.0, 1.2, 0.5, 0.8]),
        "comm_s": np.array([1.5, 1.5, 0.5, 1.5]),
        "comm_exposed_s": np.array([1.0, 0.8, 0.5, 1.2]),
    }
    base = 10**18
    rec = (
        np.array([40, 41, 42]),
        base + np.array([0, 2, 4]) * 10**9,
        base + np.array([2, 4, 6]) * 10**9,
    )
    got = kineto_steps.traced_steps(kb, {0: rec, 1: rec}, {0: base, 1: base})
    assert got["step"].tolist() == [40, 41]
    assert got["ranks"].tolist() == [2, 1]
    assert got["comm_exposed_s"].tolist() == [1.1, 0.8]
    assert got["comm_exposed_min_s"].tolist() == [1.0, 0.8]
    # no record of the rank or no base time: the numbers stand, and a short step cannot be told
    assert kineto_steps.traced_steps(kb, {}, {0: base})["step"].tolist() == [0, 1, 2]
    assert kineto_steps.traced_steps(kb, {0: rec}, {})["step"].tolist() == [0, 1, 2]


def test_the_fsdp_network_sample_is_costed_within_a_quarter_of_its_truth() -> None:
    # every EFA path at 8% of its bandwidth for the whole run: no healthy step to compare with;
    # the step records' comm_exposed sees ~5% of the wait, the two traced ranks see all of it
    dump = SAMPLES / "network-degraded"
    a = pipeline.run(dump, pipeline.Options(workers=1))
    assert a.diagnosis is not None and a.diagnosis.attribution is not None
    attr = a.diagnosis.attribution
    truth = dumpformat.truth_lost_by_class(dumpformat.read_truth(dump / "truth.json"))["network"]
    assert attr.network_from_traces
    assert abs(attr.lost_s()["network"] - truth) / truth < 0.25
