"""Attribution, onsets, aggregates and rank scores: on synthetic series, and against the samples'
counterfactual truth (the simulator replays each step without each fault: physics the analyzer
never sees)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmdiag import dumpformat
from fmdiag.analyzers import pipeline
from fmdiag.analyzers.diagnosis import onset, rank_scores
from fmdiag.analyzers.reports import report_json

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def _truth(sample: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SAMPLES / sample / "truth.json").read_text())
    return doc


def _truth_lost(truth: dict[str, Any]) -> dict[str, float]:
    return dumpformat.truth_lost_by_class(truth)


def _truth_runs(truth: dict[str, Any]) -> list[tuple[str, int]]:
    """(class, first step) of each run of one non-compute class in the truth."""
    out: list[tuple[str, int]] = []
    prev = "compute"
    for s in truth["steps"]:
        if s["class"] != prev and s["class"] != "compute":
            out.append((s["class"], s["step"]))
        prev = s["class"]
    return out


@pytest.fixture(scope="module")
def analyses() -> dict[str, pipeline.Analysis]:
    names = [p.name for p in SAMPLES.iterdir() if (p / "truth.json").exists()]
    return {n: pipeline.run(SAMPLES / n, pipeline.Options(workers=1)) for n in names}


# -- change points -------------------------------------------------------------------------------


def test_change_point_found_where_the_mean_shifts() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([1.0 + 0.01 * rng.standard_normal(30), 1.3 + 0.01 * rng.standard_normal(30)])
    assert onset.change_points(x) == [30]


def test_noise_and_constant_series_have_no_change_point() -> None:
    rng = np.random.default_rng(4)
    assert onset.change_points(1.0 + 0.02 * rng.standard_normal(200)) == []
    assert onset.change_points(np.full(50, 1.0)) == []
    # a sub-floor wobble of a perfectly steady signal is not a shift
    x = np.r_[np.full(20, 1.0), np.full(20, 1.0001)]
    assert onset.change_points(x, floor=0.01) == []


def test_several_shifts_are_all_found() -> None:
    rng = np.random.default_rng(5)
    levels = [1.0, 1.5, 1.0, 2.0]
    x = np.concatenate([lv + 0.02 * rng.standard_normal(25) for lv in levels])
    assert onset.change_points(x) == [25, 50, 75]


# -- attribution against the counterfactual truth -------------------------------------------------


@pytest.mark.parametrize("sample", ["mixed", "straggler-ramp", "host-dataloader", "network-intermittent"])
def test_what_if_matches_the_truth_where_the_run_has_healthy_steps(
    analyses: dict[str, pipeline.Analysis], sample: str
) -> None:
    d = analyses[sample].diagnosis
    assert d.attribution.baseline.measured
    got = d.attribution.lost_s()
    for cls, seconds in _truth_lost(_truth(sample)).items():
        assert got[cls] == pytest.approx(seconds, rel=0.2), (cls, got, seconds)


@pytest.mark.parametrize("sample", ["io-lustre"])
def test_whole_run_faults_are_costed_as_lower_bounds(
    analyses: dict[str, pipeline.Analysis], sample: str
) -> None:
    d = analyses[sample].diagnosis
    assert not d.attribution.baseline.measured
    got = d.attribution.lost_s()
    for cls, seconds in _truth_lost(_truth(sample)).items():
        assert 0 < got[cls] <= seconds
    assert all(s.startswith("fixing") and "at least" in s for s in d.attribution.statements())


@pytest.mark.parametrize("sample", ["network-node", "network-degraded", "network-volume"])
def test_whole_run_network_faults_are_costed_from_the_traced_ranks(
    analyses: dict[str, pipeline.Analysis], sample: str
) -> None:
    # no healthy step to compare with; two ranks traced for eight steps measure the exposed
    # communication the step records' host-side phases cannot see
    attr = analyses[sample].diagnosis.attribution
    assert not attr.baseline.measured and attr.network_from_traces
    truth = _truth_lost(_truth(sample))["network"]
    assert attr.lost_s()["network"] == pytest.approx(truth, rel=0.25)
    assert not any("at least" in s for s in attr.statements() if "network" in s)


@pytest.mark.parametrize("sample", ["straggler-thermal", "straggler-power"])
def test_whole_run_straggler_is_costed_by_its_peers_idle_gpu_time(
    analyses: dict[str, pipeline.Analysis], sample: str
) -> None:
    # no healthy step to compare with, but the peers' GPUs idle while they wait for the straggler
    d = analyses[sample].diagnosis
    assert not d.attribution.baseline.measured and d.attribution.straggler_from_activity
    truth = _truth_lost(_truth(sample))["straggler"]
    assert d.attribution.lost_s()["straggler"] == pytest.approx(truth, rel=0.2)
    assert "at least" not in d.attribution.statements()[0]


def test_healthy_and_imbalance_lose_nothing(analyses: dict[str, pipeline.Analysis]) -> None:
    for sample in ("healthy", "imbalance-data"):
        d = analyses[sample].diagnosis
        assert sum(d.attribution.lost_s().values()) == 0.0
        assert d.attribution.statements() == []
        assert d.aggregates["targets"] == []


def test_checkpoint_stall_costs_the_stall_and_a_normal_checkpoint_nothing(
    analyses: dict[str, pipeline.Analysis],
) -> None:
    stall = analyses["checkpoint-stall"].diagnosis.attribution
    assert stall.lost_s()["checkpoint"] > 0.5 * _truth_lost(_truth("checkpoint-stall"))["io"]
    healthy = analyses["healthy"].diagnosis.attribution
    assert healthy.baseline.checkpoint_s > 0  # the healthy sample checkpoints, and it costs nothing
    assert healthy.lost_s()["checkpoint"] == 0.0


def test_overlapping_causes_never_exceed_the_step(analyses: dict[str, pipeline.Analysis]) -> None:
    for a in analyses.values():
        per = a.diagnosis.attribution.per_step
        assert np.all(per["lost_total_s"] <= per["duration_s"] + 1e-9)
        assert np.all(per["lost_total_s"] >= 0)


# -- onsets and phases ----------------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["mixed", "straggler-ramp", "network-intermittent", "host-dataloader"])
def test_onset_within_three_steps_of_the_truth(analyses: dict[str, pipeline.Analysis], sample: str) -> None:
    phases = analyses[sample].diagnosis.phases
    for cls, first in _truth_runs(_truth(sample)):
        onsets = [p["onset"]["step"] for p in phases if p["class"] == cls and "onset" in p]
        assert onsets, (cls, first)
        assert min(abs(o - first) for o in onsets) <= 3, (cls, first, onsets)


def test_phases_cover_every_step_once(analyses: dict[str, pipeline.Analysis]) -> None:
    for a in analyses.values():
        phases = a.diagnosis.phases
        covered = [s for p in phases for s in range(p["first_step"], p["last_step"] + 1)]
        assert covered == [v.step for v in a.verdicts]


# -- aggregates and rank scores -------------------------------------------------------------------


@pytest.mark.parametrize("sample", ["straggler-thermal", "straggler-power", "straggler-ramp"])
def test_straggler_is_the_top_target_and_the_only_flagged_rank(
    analyses: dict[str, pipeline.Analysis], sample: str
) -> None:
    d = analyses[sample].diagnosis
    culprit = _truth(sample)["faults"][0]["culprit"]
    top = d.aggregates["targets"][0]
    assert top["cause"] == "straggler"
    assert (top["target"]["node"], top["target"]["rank"]) == (culprit["node"], culprit["rank"])
    assert d.aggregates["by_node"][0]["node"] == culprit["node"]
    flagged = rank_scores.flagged(d.rank_scores)
    assert list(flagged["rank"]) == [culprit["rank"]]
    assert float(flagged["relative_score"][0]) < float(np.median(d.rank_scores["relative_score"]))


def test_no_rank_flagged_without_a_hardware_straggler(analyses: dict[str, pipeline.Analysis]) -> None:
    for sample in ("healthy", "imbalance-data", "io-lustre", "network-node", "host-dataloader"):
        scores = analyses[sample].diagnosis.rank_scores
        assert not scores["flagged"].any(), (sample, scores["rank"][:3], scores["relative_score"][:3])


def test_mixed_names_each_culprit_with_its_cost(analyses: dict[str, pipeline.Analysis]) -> None:
    d = analyses["mixed"].diagnosis
    causes = [t["cause"] for t in d.aggregates["targets"]]
    assert set(causes) >= {"io", "network", "straggler", "host"}
    fractions = [t["fraction"] for t in d.aggregates["targets"]]
    assert fractions == sorted(fractions, reverse=True)
    assert sum(fractions) <= 1.0


def test_json_document_carries_the_diagnosis(analyses: dict[str, pipeline.Analysis]) -> None:
    doc = json.loads(report_json.dumps(analyses["mixed"]))
    attr = doc["attribution"]
    assert attr["baseline"]["source"] == "healthy steps"
    assert attr["per_step"]["columns"][:3] == ["step", "duration_s", "healthy_s"]
    assert len(attr["per_step"]["rows"]) == len(doc["verdicts"])
    assert attr["statements"][0].startswith("fixing data loading from storage gives back")
    assert [p["class"] for p in doc["phases"] if p["class"] != "compute"] == [
        "io",
        "network",
        "straggler",
        "host",
    ]
    assert doc["rank_scores"]["columns"][0] == "rank"
    assert set(doc["change_points"]) == set(onset.SIGNALS)


def test_every_metric_the_diagnosis_and_report_read_is_kept_by_the_reader() -> None:
    # the pipeline drops every metric not in metric_use.USED before pandas sees it: a name used
    # in the rules or the overlays but missing there would silently read as "no data"
    import re

    from fmdiag.analyzers.diagnosis import metric_use

    root = Path(__file__).resolve().parents[2] / "analyzers"
    named = set()
    for module in ("diagnosis/verdicts.py", "reports/report_html.py"):
        named |= set(re.findall(r'"((?:DCGM_|fmdiag_)[A-Za-z0-9_]+)"', (root / module).read_text()))
    assert named, "no metric names found: the pattern no longer matches"
    assert named <= metric_use.USED, named - metric_use.USED


def test_filtered_metrics_give_the_same_verdicts_and_summaries() -> None:
    from fmdiag.analyzers.diagnosis import verdicts
    from fmdiag.analyzers.readers import metrics_reader
    from fmdiag.dumpformat import DumpLayout

    dump = SAMPLES / "mixed"
    a = pipeline.run(dump, pipeline.Options(workers=1))
    full = {sub: metrics_reader.read_file(p, sub) for sub, p in DumpLayout(dump).metrics_files().items()}
    assert a.metrics == {sub: metrics_reader.summarize(sub, f) for sub, f in full.items()}
    assert sum(len(f) for f in a.metric_frames.values()) < sum(len(f) for f in full.values()) / 2
    # the same rules on the same steps (the pipeline's verdicts also read the traces)
    filtered = [v.to_json() for v in verdicts.classify(a.steps, a.metric_frames)]
    assert [v.to_json() for v in verdicts.classify(a.steps, full)] == filtered


def test_kineto_only_dump_gets_verdicts_and_says_what_it_cannot_check(tmp_path: Path) -> None:
    import shutil

    for sample, expect in (("straggler-thermal", "compute"), ("network-node", "network")):
        dump = tmp_path / sample
        shutil.copytree(SAMPLES / sample / "kineto", dump / "kineto")
        shutil.copytree(SAMPLES / sample / "metrics", dump / "metrics")
        a = pipeline.run(dump, pipeline.Options(workers=1))
        assert a.steps is None and a.verdicts
        assert {v.cls for v in a.verdicts} == {expect}
        assert any("verdicts from Kineto traces" in w for w in a.warnings)
        if sample == "straggler-thermal":
            # the late rank is found, but no trace says which node and GPU it runs on
            assert any("node and GPU are unknown" in u for v in a.verdicts for u in v.undecided)
            culprit = _truth(sample)["faults"][0]["culprit"]["rank"]
            assert list(rank_scores.flagged(a.diagnosis.rank_scores)["rank"]) == [culprit]


def test_network_culprit_names_the_devices_numa_node_and_its_gpus(
    analyses: dict[str, pipeline.Analysis],
) -> None:
    truth = _truth("network-node")["faults"][0]["culprit"]
    v = next(v for v in analyses["network-node"].verdicts if v.culprit)
    assert (v.culprit["node"], v.culprit["efa_device"]) == (truth["node"], truth["efa_device"])
    assert v.culprit["numa_node"] == "0" and v.culprit["gpus_on_numa_node"] == [0, 1]
    assert "(NUMA node 0, with GPUs 0, 1)" in v.recommendation
