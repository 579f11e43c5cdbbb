"""Pipeline parallelism: the 1F1B schedule's physics, its step records, traces and truth."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmdiag import dumpformat, steprecord
from fmdiag.simulate.cluster import pipeline
from fmdiag.simulate.cluster.kineto import KinetoOptions
from fmdiag.simulate.cluster.model import ClusterModel
from fmdiag.simulate.cluster.physics import get_job
from fmdiag.simulate.cluster.scenarios import PP_JOB, FaultKind
from fmdiag.simulate.cluster.truth import culprit
from fmdiag.simulate.dump import DEFAULT_START_NS, DumpResult, SimOptions, build_model, write_dump

DumpOf = Callable[..., tuple[Path, DumpResult]]
#: 4 stages of 3 ranks (on 3 nodes x 4 GPUs: stages straddle nodes, as Megatron allows).
PP = {"nodes": 3, "gpus": 4}


@pytest.mark.parametrize(("stages", "micro"), [(2, 1), (4, 8), (4, 3), (8, 16)])
def test_1f1b_warm_up_and_dependency_order(stages: int, micro: int) -> None:
    plan = pipeline.Plan(stages, micro)
    for s, ops in enumerate(plan.ops):
        warm = next((k for k, (kind, _) in enumerate(ops) if kind == pipeline.BACKWARD), len(ops))
        # Stage s runs p - s - 1 forwards before its first backward, then one forward more.
        assert warm == min(stages - s, micro)
        assert sorted(ops) == sorted((kind, j) for kind in (0, 1) for j in range(micro))
    seen: set[tuple[int, int, int]] = set()
    for s, k in plan.order:
        kind, j = plan.ops[s][k]
        dep = plan.dependency(s, kind, j)
        assert dep is None or dep in seen
        if kind == pipeline.BACKWARD:
            assert (s, pipeline.FORWARD, j) in seen
        seen.add((s, kind, j))


@pytest.mark.parametrize(("stages", "micro"), [(4, 8), (4, 16), (2, 4)])
def test_even_stages_lose_the_textbook_bubble(stages: int, micro: int) -> None:
    """(p - 1) / (m + p - 1) of the step idles when stages are even and transfers are free."""
    plan = pipeline.Plan(stages, micro)
    f, b = 1_000, 2_000
    t = pipeline.run(
        plan, np.zeros((stages, 2), np.int64), np.full((stages, 2), f), np.full((stages, 2), b), 0
    )
    step = int(t.last_end().max())
    assert step == (micro + stages - 1) * (f + b)
    bubble = 1 - micro * (f + b) / step
    assert bubble == pytest.approx((stages - 1) / (micro + stages - 1))


def test_a_receive_waits_for_the_neighbour_and_pays_the_transfer() -> None:
    plan = pipeline.Plan(2, 2)
    slow = np.array([[5_000], [1_000]], np.int64)  # stage 0 forwards slowly
    t = pipeline.run(plan, np.zeros((2, 1), np.int64), slow, np.full((2, 1), 1_000), 300)
    k = plan.index(1, pipeline.FORWARD, 0)
    # Stage 1 posts its first receive at 0 and gets the activations when stage 0 is done + 300 ns.
    assert t.recv_post[1, k, 0] == 0 and t.start[1, k, 0] == 5_000 + 300
    # Stage 0's send of micro-batch 0 lasts from its forward's end to the transfer's end.
    k0 = plan.index(0, pipeline.FORWARD, 0)
    assert (t.send_a[0, k0, 0], t.send_b[0, k0, 0]) == (5_000, 5_300)


def _pp_model(scenario: str, **kw: Any) -> ClusterModel:
    return build_model(SimOptions(scenario=scenario, efa_devices=2, osts=2, steps=24, seed=3, **{**PP, **kw}))


def test_the_preset_fits_and_its_last_stage_computes_longest() -> None:
    job = get_job(PP_JOB)
    job.validate(12)
    w = job.stage_weights()
    assert sum(w) == pytest.approx(len(w)) and w[-1] == max(w) and w[-1] > 1.1
    # Moving layers to the last stage takes them from the others, FLOPs unchanged.
    moved = job.stage_weights(3.0)
    assert sum(moved) == pytest.approx(len(w)) and moved[-1] > w[-1] and moved[0] < w[0]
    with pytest.raises(ValueError, match="multiple of pp"):
        job.validate(10)


def test_step_records_carry_the_layout_and_add_up(dump_of: DumpOf) -> None:
    out, res = dump_of("pp-stage-imbalance", **PP)
    m = res.model
    D = m.dp_ranks
    for path in sorted((out / "steps").iterdir()):
        rec = steprecord.validate(json.loads(path.read_text().splitlines()[5]))
        assert (rec.pp_rank, rec.dp_rank, rec.tp_rank) == (rec.rank // D, rec.rank % D, 0)
        assert sum(rec.phases.values()) == pytest.approx(rec.duration_s, abs=1e-8)
    # A plain data-parallel job writes no layout fields (its records stay as they were).
    flat = dump_of("healthy")[0]
    assert '"pp_rank"' not in next((flat / "steps").iterdir()).read_text()
    # Tensor parallel inside the node: tp_rank is the local rank, data parallel across nodes.
    tp8, _ = dump_of("healthy", nodes=4, gpus=8, steps=3, job_preset="llama-70b-fsdp-tp8", metrics=False)
    for path in sorted((tp8 / "steps").iterdir())[::5]:
        rec = steprecord.validate(json.loads(path.read_text().splitlines()[0]))
        assert (rec.tp_rank, rec.dp_rank, rec.pp_rank) == (rec.rank % 8, rec.rank // 8, 0)


def test_other_stages_wait_for_the_heavy_last_stage(dump_of: DumpOf) -> None:
    _, res = dump_of("pp-stage-imbalance", **PP)
    c, m = res.chunk, res.model
    ph = {k: v[5:].astype(float) for k, v in c.phases().items()}
    compute = (ph["forward"] + ph["backward"]).reshape(-1, m.wl.pp, m.dp_ranks).mean(axis=(0, 2))
    wait = ph["comm_exposed"].reshape(-1, m.wl.pp, m.dp_ranks).mean(axis=(0, 2))
    job = get_job(PP_JOB)
    w = job.stage_weights(3.0)
    # Compute follows the layer split; the last stage waits least, the others make up the difference.
    assert compute[-1] / compute[0] == pytest.approx(w[-1] / w[0], rel=0.05)
    assert wait[-1] == min(wait) and wait[0] - wait[-1] > 0.5 * (compute[-1] - compute[0])


def test_stage_imbalance_truth_is_compute_with_its_counterfactual(dump_of: DumpOf) -> None:
    out, res = dump_of("pp-stage-imbalance", **PP)
    truth = dumpformat.read_truth(out / dumpformat.TRUTH_FILE)
    assert truth["faults"][0]["kind"] == FaultKind.STAGE_IMBALANCE.value
    assert truth["faults"][0]["class"] == "compute"
    assert truth["faults"][0]["culprit"] == {"pp_rank": 3, "node": "node-002"}
    # A last stage that spans two nodes is named by its stage alone.
    wide = _pp_model("pp-stage-imbalance", nodes=6, gpus=2)
    assert culprit(wide, wide.scenario.faults[0], wide.targets[0]) == {"pp_rank": 3}
    steps = truth["steps"]
    assert all(s["class"] == "compute" for s in steps)
    assert sum(s["fault"] == 0 for s in steps) >= len(steps) - 2
    # The counterfactual is the same job with an even split: rerun it and compare the time.
    m = res.model
    even = ClusterModel(m.hw, m.wl, dataclasses.replace(m.scenario, faults=()), m.seed, m.period)
    lost = sum(s["lost_s"].get("0", 0.0) for s in steps)
    gained = (res.chunk.end.max() - even.run(m.period).end.max()) / 1e9
    assert lost == pytest.approx(gained, rel=1e-3)


def test_a_pipeline_straggler_holds_its_stage_and_the_pipeline(dump_of: DumpOf) -> None:
    out, res = dump_of("pp-straggler", **PP)
    m, c = res.model, res.chunk
    t = m.targets[0]
    slow = m.topo.rank(t.node, t.gpu)
    stage = m.stage_of(slow)
    truth = dumpformat.read_truth(out / dumpformat.TRUTH_FILE)
    assert {s["class"] for s in truth["steps"][3:]} == {"straggler"}
    assert truth["steps"][10]["culprit"]["rank"] == slow and truth["steps"][10]["culprit"]["pp_rank"] == stage
    comm = c.phases()["comm_exposed"][5:]
    peers = [r for r in range(stage * m.dp_ranks, (stage + 1) * m.dp_ranks) if r != slow]
    # It waits least among its stage's ranks: they wait for it in the all-reduce.
    assert np.all(comm[:, slow] < comm[:, peers].min(axis=1))


def _trace(out: Path, rank: int) -> dict[str, Any]:
    doc = json.loads(gzip.decompress((out / "kineto" / f"rank{rank}.json.gz").read_bytes()))
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("naming", ["new", "old"])
def test_traces_carry_p2p_kernels_and_process_groups(dump_of: DumpOf, naming: str) -> None:
    kin = KinetoOptions(
        ranks=(0, 11), first_step=6, last_step=8, detail="compact", gzip=True, nccl_naming=naming
    )
    out, res = dump_of("pp-stage-imbalance", kineto=kin, **PP)
    m, c = res.model, res.chunk
    for rank in (0, 11):
        doc = _trace(out, rank)
        groups = {g["pg_desc"]: g["ranks"] for g in doc["distributedInfo"]["pg_config"]}
        stage, rep = divmod(rank, m.dp_ranks)
        assert groups["DATA_PARALLEL_GROUP"] == list(range(stage * 3, stage * 3 + 3))
        assert groups["PIPELINE_MODEL_PARALLEL_GROUP"] == [rep + 3 * s for s in range(4)]
        kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
        p2p = [e for e in kernels if "SendRecv" in e["name"]]
        name = "ncclDevKernel_SendRecv(" if naming == "new" else "ncclKernel_SendRecv_RING_SIMPLE_Sum_int8_t("
        assert p2p and all(e["name"].startswith(name) for e in p2p)
        assert {e["args"]["Collective name"] for e in p2p} == {"send", "recv"}
        assert {e["args"]["Process Group Description"] for e in p2p} == {"PIPELINE_MODEL_PARALLEL_GROUP"}
        # Per traced step and micro-batch: one receive and one send each way but at the ends.
        per_step = 2 * m.wl.microbatches * (1 if stage in (0, 3) else 2)
        assert len(p2p) >= 2 * per_step
        # On p2p streams of their own: no two kernels of a stream overlap.
        by_stream: dict[int, list[tuple[float, float]]] = {}
        for e in kernels:
            by_stream.setdefault(e["tid"], []).append((float(e["ts"]), float(e["ts"]) + float(e["dur"])))
        for spans in by_stream.values():
            spans.sort()
            assert all(b[0] >= a[1] - 1e-3 for a, b in itertools.pairwise(spans))
    # The first stage's receives (of gradients from stage 1) are mostly waiting for the heavy last
    # stage: far longer than one transfer.
    recv = [e for e in _trace(out, 0)["traceEvents"] if e.get("args", {}).get("Collective name") == "recv"]
    transfer_us = int(c.p2p_ns[6]) / 1e3
    assert np.median([float(e["dur"]) for e in recv if e.get("cat") == "kernel"]) > 5 * transfer_us


def test_trace_compute_matches_the_step_records(dump_of: DumpOf) -> None:
    kin = KinetoOptions(ranks=(4,), first_step=6, last_step=8, detail="compact", gzip=True)
    out, res = dump_of("pp-straggler", kineto=kin, **PP)
    c = res.chunk
    doc = _trace(out, 4)
    base = doc["baseTimeNanoseconds"]
    a, b = c.dw_end[6, 4] + DEFAULT_START_NS, c.coll_end[6, 4] + DEFAULT_START_NS
    busy = 0.0
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel" and e.get("tid") == 7 and "nccl" not in e["name"]:
            t0 = base + float(e["ts"]) * 1e3
            if a <= t0 < b:
                busy += float(e["dur"]) * 1e3
    compute = float(c.compute_ns[6, 4])
    assert busy == pytest.approx(compute, rel=0.02)


def test_write_dump_refuses_a_world_the_pipeline_cannot_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of pp"):
        write_dump(SimOptions(scenario="pp-straggler", nodes=1, gpus=6, steps=4), tmp_path / "x")
    # An uneven pipeline split needs a pipeline to split.
    with pytest.raises(ValueError, match="pipeline preset"):
        build_model(
            SimOptions(scenario="pp-stage-imbalance", nodes=2, gpus=2, steps=4, job_preset="gpt-1.3b-ddp")
        )


def test_uneven_sequences_slow_a_whole_replica_and_move_from_step_to_step(dump_of: DumpOf) -> None:
    out, res = dump_of("pp-seq-imbalance", **PP)
    m, c = res.model, res.chunk
    compute = c.compute_ns[4:].astype(float).reshape(-1, m.wl.pp, m.dp_ranks)
    # A replica's micro-batches are long on every stage it flows through.
    per_stage = compute / compute.mean(axis=2, keepdims=True)
    assert np.corrcoef(per_stage[:, 0].ravel(), per_stage[:, -1].ravel())[0, 1] > 0.9
    slowest = compute.sum(axis=1).argmax(axis=1)
    assert len(set(slowest.tolist())) == m.dp_ranks  # every replica is the slowest now and then
    truth = dumpformat.read_truth(out / dumpformat.TRUTH_FILE)
    assert truth["faults"] == [] and {s["class"] for s in truth["steps"]} == {"compute"}
