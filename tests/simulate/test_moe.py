"""Mixture of experts with expert parallelism: all-to-all on the critical path, a hot expert."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fmdiag import dumpformat, steprecord
from fmdiag.simulate.cluster.kineto import KinetoOptions
from fmdiag.simulate.cluster.model import EP_DESC, ClusterModel
from fmdiag.simulate.cluster.physics import get_job
from fmdiag.simulate.cluster.scenarios import MOE_JOB, FaultKind
from fmdiag.simulate.dump import DEFAULT_START_NS, DumpResult

DumpOf = Callable[..., tuple[Path, DumpResult]]
MOE = {"nodes": 2, "gpus": 8, "efa_devices": 2, "steps": 16}


def test_the_preset_computes_with_its_active_parameters_and_fits() -> None:
    job = get_job(MOE_JOB)
    job.validate(8)
    dense = dataclasses.replace(job, experts=0)
    assert job.compute_s() < 0.3 * dense.compute_s()  # 2.8B of 16.4B parameters per token
    # Each token's hidden state goes to 6 experts, 7 in 8 of them on other ranks.
    assert job.a2a_bytes() == pytest.approx(job.tokens_per_rank * 6 * job.hidden * 2 * 7 / 8)
    with pytest.raises(ValueError, match="ep=8"):
        job.validate(12)


def test_records_carry_the_expert_rank(dump_of: DumpOf) -> None:
    out, _ = dump_of("moe-expert-imbalance", **MOE)
    for path in sorted((out / "steps").iterdir())[::3]:
        rec = steprecord.validate(json.loads(path.read_text().splitlines()[4]))
        assert (rec.ep_rank, rec.dp_rank, rec.tp_rank) == (rec.rank % 8, rec.rank, 0)


def test_the_hot_expert_computes_longer_and_its_group_waits_in_the_all_to_all(dump_of: DumpOf) -> None:
    _, res = dump_of("moe-expert-imbalance", **MOE)
    m, c = res.model, res.chunk
    t = m.targets[0]
    hot = m.topo.rank(t.node, t.gpu)
    group = [r for r in range(t.node * 8, t.node * 8 + 8) if r != hot]
    late = slice(4, None)
    compute = c.compute_ns[late].astype(float)
    # Expert MLPs are 60% of its FLOPs and it gets 1.8x the tokens: 1 + 0.6 x 0.8 = 1.48x.
    ratio = np.median(compute[:, hot] / np.median(compute[:, group], axis=1))
    assert ratio == pytest.approx(1.48, rel=0.05)
    a2a = (c.a2a_fwd_ns + c.a2a_bwd_ns)[late].astype(float)
    transfer = 2 * m.a2a_transfer_s() * 1e9
    # It waits only for the transfers; its group waits for it on top of them.
    assert np.all(a2a[:, hot] == pytest.approx(transfer, rel=1e-6))
    assert np.all(
        a2a[:, group].min(axis=1) - transfer > 0.3 * (compute[:, hot] - np.median(compute[:, group]))
    )


def test_truth_is_compute_with_the_hot_rank_and_its_counterfactual(dump_of: DumpOf) -> None:
    out, res = dump_of("moe-expert-imbalance", **MOE)
    truth = dumpformat.read_truth(out / dumpformat.TRUTH_FILE)
    m = res.model
    t = m.targets[0]
    fault = truth["faults"][0]
    assert fault["kind"] == FaultKind.EXPERT_IMBALANCE.value and fault["class"] == "compute"
    assert fault["culprit"] == {
        "node": m.topo.hostnames[t.node],
        "rank": m.topo.rank(t.node, t.gpu),
        "local_rank": t.gpu,
        "ep_rank": t.gpu,
    }
    assert {s["class"] for s in truth["steps"]} == {"compute"}
    assert sum(s["fault"] == 0 for s in truth["steps"]) >= len(truth["steps"]) - 2
    even = ClusterModel(m.hw, m.wl, dataclasses.replace(m.scenario, faults=()), m.seed, m.period)
    lost = sum(s["lost_s"].get("0", 0.0) for s in truth["steps"])
    assert lost == pytest.approx((res.chunk.end.max() - even.run(m.period).end.max()) / 1e9, rel=1e-3)


def test_the_trace_draws_the_all_to_alls_on_the_expert_group(dump_of: DumpOf) -> None:
    _, probe = dump_of("moe-expert-imbalance", **MOE)
    t = probe.model.targets[0]
    rank = t.node * 8 + (t.gpu + 1) % 8  # a rank that waits for the hot one
    kin = KinetoOptions(ranks=(rank,), first_step=6, last_step=7, detail="compact")
    out, res = dump_of("moe-expert-imbalance", kineto=kin, **MOE)
    doc = json.loads((out / "kineto" / f"rank{rank}.json").read_text())
    groups = {g["pg_desc"]: g["ranks"] for g in doc["distributedInfo"]["pg_config"]}
    assert groups[EP_DESC] == list(range(t.node * 8, t.node * 8 + 8))
    c, base = res.chunk, doc["baseTimeNanoseconds"]
    a, b = int(c.dw_end[6, rank]) + DEFAULT_START_NS, int(c.arrive[6, rank]) + DEFAULT_START_NS
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]

    def spans(tid: int) -> list[tuple[int, int]]:
        out_ = []
        for e in kernels:
            t0 = base + round(float(e["ts"]) * 1e3)
            if e["tid"] == tid and a <= t0 < b:
                out_.append((t0, t0 + round(float(e["dur"]) * 1e3)))
        return out_

    a2a = [e for e in kernels if e["tid"] == 16]
    assert a2a and {e["name"].split("(")[0] for e in a2a} == {"ncclDevKernel_SendRecv"}
    assert {e["args"]["Collective name"] for e in a2a} == {"all_to_allv"}
    total = sum(y - x for x, y in spans(16))
    assert total == pytest.approx(int(c.a2a_fwd_ns[6, rank] + c.a2a_bwd_ns[6, rank]), abs=2 * len(a2a))
    compute = spans(7)
    for x, y in spans(16):  # the compute stream waits for each all-to-all
        assert not any(p < y - 2 and q > x + 2 for p, q in compute)
