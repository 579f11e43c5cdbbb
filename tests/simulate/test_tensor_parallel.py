"""Tensor parallelism inside a node: its all-reduces of activations drawn as NCCL kernels."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fmdiag.simulate.cluster.kineto import KinetoOptions, carve_tp, comm_windows, compute_windows
from fmdiag.simulate.cluster.model import TP_DESC
from fmdiag.simulate.dump import DEFAULT_START_NS, DumpResult

DumpOf = Callable[..., tuple[Path, DumpResult]]
TP8 = {
    "nodes": 4,
    "gpus": 8,
    "efa_devices": 2,
    "steps": 6,
    "metrics": False,
    "job_preset": "llama-70b-fsdp-tp8",
}
RANK, STEP = 9, 3


def test_carving_keeps_every_nanosecond() -> None:
    segs = [(0, 1_000), (1_500, 1_800), (2_000, 5_000)]
    compute, tp = carve_tp(segs, 437)
    assert sum(b - a for a, b in tp) == 437
    assert sum(b - a for a, b in compute) + 437 == sum(b - a for a, b in segs)
    # Each segment ends with its all-reduce, in proportion to its length.
    assert [c[1] for c in compute] == [t[0] for t in tp] and [t[1] for t in tp] == [1_000, 1_800, 5_000]
    assert carve_tp(segs, 0) == (segs, [])


@pytest.fixture(scope="module")
def traced(dump_of: DumpOf) -> tuple[dict[str, Any], DumpResult]:
    kin = KinetoOptions(ranks=(RANK,), first_step=STEP, last_step=STEP + 1, detail="compact")
    out, res = dump_of("healthy", kineto=kin, **TP8)
    doc = json.loads((out / "kineto" / f"rank{RANK}.json").read_text())
    assert isinstance(doc, dict)
    return doc, res


def _in_step(doc: dict[str, Any], res: DumpResult, tid: int) -> list[tuple[int, int]]:
    c, base = res.chunk, doc["baseTimeNanoseconds"]
    a, b = int(c.dw_end[STEP, RANK]) + DEFAULT_START_NS, int(c.arrive[STEP, RANK]) + DEFAULT_START_NS
    out = []
    for e in doc["traceEvents"]:
        if e.get("cat") == "kernel" and e["tid"] == tid:
            t0 = base + round(float(e["ts"]) * 1e3)
            if a <= t0 < b:
                out.append((t0, t0 + round(float(e["dur"]) * 1e3)))
    return sorted(out)


def test_tp_all_reduces_are_kernels_on_the_node_s_group(traced: tuple[dict[str, Any], DumpResult]) -> None:
    doc, res = traced
    groups = {g["pg_desc"]: g["ranks"] for g in doc["distributedInfo"]["pg_config"]}
    assert groups[TP_DESC] == list(range(8, 16))  # rank 9's node
    tp = [e for e in doc["traceEvents"] if e.get("cat") == "kernel" and e["tid"] == 16]
    assert tp and all(e["name"].startswith("ncclDevKernel_AllReduce_Sum_bf16") for e in tp)
    assert {e["args"]["Process Group Description"] for e in tp} == {TP_DESC}
    assert {e["args"]["Group size"] for e in tp} == {8}
    # They hold exactly the TP time the model put in forward and backward.
    c = res.chunk
    total = sum(b - a for a, b in _in_step(doc, res, 16))
    assert total == pytest.approx(int(c.tp_fwd_ns[STEP, RANK] + c.tp_bwd_ns[STEP, RANK]), abs=len(tp) * 2)


def test_compute_waits_for_them_and_is_no_longer_counted_with_them(
    traced: tuple[dict[str, Any], DumpResult],
) -> None:
    doc, res = traced
    compute, tp = _in_step(doc, res, 7), _in_step(doc, res, 16)
    # On the critical path: no compute kernel runs while a TP all-reduce does.
    for a, b in tp:
        assert not any(x < b - 2 and y > a + 2 for x, y in compute)
    busy = sum(b - a for a, b in compute)
    assert busy == pytest.approx(float(res.chunk.compute_ns[STEP, RANK]), rel=0.01)
    # The model's windows say the same: compute and TP partition the rank's forward and backward
    # but for FSDP's gather waits.
    m, c = res.model, res.chunk
    windows = [w for w in compute_windows(m, c, STEP, RANK) if w[0] < c.arrive[STEP, RANK]]
    tp_model = [
        w for w in comm_windows(m, c, STEP, RANK) if (w[0] + DEFAULT_START_NS, w[1] + DEFAULT_START_NS) in tp
    ]
    assert len(tp_model) == len(tp)
    assert sum(b - a for a, b in windows) == pytest.approx(float(c.compute_ns[STEP, RANK]), rel=1e-6)
