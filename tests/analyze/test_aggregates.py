"""Phases and targets as an operator reads them: the typical step quoted, each GPU listed once."""

from __future__ import annotations

from fmdiag.analyzers.diagnosis import aggregates, attribution
from fmdiag.analyzers.diagnosis.verdicts import StepFeatures, Verdict


def _feats(durations: list[float]) -> list[StepFeatures]:
    return [
        StepFeatures(
            step=i,
            end_s=100.0 + i,
            duration_s=d,
            checkpoint_s=0.0,
            data_wait_median=0.0,
            late_rank=3,
            late_node="node-1",
            late_local_rank=3,
            comm_min=0.0,
            comm_median=0.3 * d,
            compute_late=0.9 * d,
            compute_median=0.6 * d,
        )
        for i, d in enumerate(durations)
    ]


def _straggler(step: int, duration: float, uuid: bool) -> Verdict:
    culprit = {"node": "node-1", "rank": 3, "gpu": 3, **({"gpu_uuid": "GPU-abc"} if uuid else {})}
    return Verdict(
        step=step,
        cls="straggler",
        confidence=0.8,
        culprit=culprit,
        recommendation=f"drain node-1: GPU 3 (step {duration:.2f} s)",
    )


def test_a_phase_and_its_target_quote_the_typical_step_and_list_the_gpu_once() -> None:
    durations = [9.0, 1.0, 1.1, 1.0, 1.05, 1.0, 1.02]  # step 0: a warm-up step, 9x the others
    feats = _feats(durations)
    verdicts = [_straggler(i, d, uuid=i % 2 == 0) for i, d in enumerate(durations)]
    attr = attribution.attribute(feats, verdicts)
    (phase,) = aggregates.phases(feats, verdicts, attr, {})
    assert "9.00" not in phase["recommendation"] and "(step 1.0" in phase["recommendation"]
    agg = aggregates.aggregates(verdicts, attr, feats)
    gpus = [t for t in agg["targets"] if t["target"].get("gpu") == 3]
    assert len(gpus) == 1  # with and without its UUID, it is one GPU to drain
    assert gpus[0]["target"]["gpu_uuid"] == "GPU-abc" and gpus[0]["steps"] == len(durations)
    assert "9.00" not in gpus[0]["recommendation"]


def test_steps_outside_the_metrics_time_range_are_said_so_not_a_job_wide_target() -> None:
    """Metrics that stop halfway through the run: the later network steps cannot name the EFA
    device, and their loss must not become a "whole job" target beside the device's."""
    from analyze.helpers import SAMPLES

    from fmdiag.analyzers import pipeline
    from fmdiag.analyzers.readers import metrics_reader
    from fmdiag.dumpformat import DumpLayout

    dump = SAMPLES / "network-node"
    full = {sub: metrics_reader.read_file(p, sub) for sub, p in DumpLayout(dump).metrics_files().items()}
    start = min(float(f["timestamp"].min()) for f in full.values())
    # samples of the first 30 s only: later steps have no sample after them to look up
    part = {sub: f[f["timestamp"] <= start + 30] for sub, f in full.items()}
    b = pipeline.run(dump, pipeline.Options(workers=1), metrics=part, metrics_source="test")
    late = [v for v in b.verdicts if v.outside_metrics]
    assert late and all(v.step > 10 for v in late) and len(late) < len(b.verdicts)
    assert any("outside the node metrics' time range" in u for v in late for u in v.undecided)
    targets = b.diagnosis.aggregates["targets"]
    assert not [t for t in targets if t["cause"] == "network" and t["target"] == {"job": "whole job"}]
