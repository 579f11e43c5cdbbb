"""Kineto traces: loadable JSON that keeps DOMAIN.md's rules and agrees with the step records."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fmdiag import steprecord
from fmdiag.simulate.cluster.kineto import NCCL_NEW, NCCL_OLD, KinetoOptions, parse_ranks
from fmdiag.simulate.dump import DumpResult, SimOptions, build_model

DumpOf = Callable[..., tuple[Path, DumpResult]]
US = 1e-6


def _load(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    doc = json.loads(data)
    assert isinstance(doc, dict)
    return doc


def _records(out: Path, rank: int) -> dict[int, steprecord.StepRecord]:
    path = sorted((out / "steps").glob(f"*.rank{rank:05d}.jsonl"))[0]
    return {r.step: r for r in steprecord.read_file(path).records}


@pytest.fixture(scope="module")
def traced(dump_of: DumpOf, small_opts: Callable[..., SimOptions]) -> tuple[Path, DumpResult]:
    """Ranks 0, 1, 5 traced; the test seed throttles one of them (checked here)."""
    model = build_model(small_opts("straggler-thermal"))
    t = model.targets[0]
    assert model.topo.rank(t.node, t.gpu) in (1, 5)
    opts = KinetoOptions(ranks=(0, 1, 5), first_step=4, last_step=9, nccl_naming="alternate", gzip=True)
    return dump_of("straggler-thermal", kineto=opts)


def test_top_level_fields(traced: tuple[Path, DumpResult]) -> None:
    out, res = traced
    files = sorted((out / "kineto").iterdir())
    assert [p.name for p in files] == ["rank0.json.gz", "rank1.json.gz", "rank5.json.gz"]
    for path in files:
        doc = _load(path)
        rank = int(path.name[4:].split(".")[0])
        assert doc["schemaVersion"] == 1
        assert doc["displayTimeUnit"] == "ms"
        assert isinstance(doc["baseTimeNanoseconds"], int)
        info = doc["distributedInfo"]
        assert info["backend"] == "nccl" and info["rank"] == rank and info["world_size"] == 6
        assert info["nccl_version"] and info["pg_config"][0]["ranks"] == list(range(6))
        props = doc["deviceProperties"]
        assert [p["id"] for p in props] == [0, 1] and props[0]["name"] == res.model.hw.gpu_name
        cats = {e.get("cat") for e in doc["traceEvents"]}
        assert {
            "kernel",
            "gpu_memcpy",
            "gpu_memset",
            "cuda_runtime",
            "cpu_op",
            "user_annotation",
            "ac2g",
        } <= cats


def test_profiler_steps_cover_the_range_and_the_last_is_partial(traced: tuple[Path, DumpResult]) -> None:
    out, _ = traced
    doc = _load(out / "kineto" / "rank1.json.gz")
    base = doc["baseTimeNanoseconds"]
    recs = _records(out, 1)
    steps = {e["name"]: e for e in doc["traceEvents"] if e["name"].startswith("ProfilerStep#")}
    assert sorted(steps, key=lambda n: int(n.split("#")[1])) == [f"ProfilerStep#{i}" for i in range(4, 10)]
    for i in range(4, 9):
        e, r = steps[f"ProfilerStep#{i}"], recs[i]
        assert e["cat"] == "user_annotation"
        assert e["ts"] * 1000 == pytest.approx(r.start_ns - base, abs=1)
        assert e["dur"] * US == pytest.approx(r.duration_s, abs=2e-6)
    partial = steps["ProfilerStep#9"]
    assert partial["dur"] * US < recs[9].duration_s
    last_end = max(e["ts"] + e.get("dur", 0) for e in doc["traceEvents"] if e.get("ph") == "X")
    assert last_end == pytest.approx(partial["ts"] + partial["dur"], abs=1e-3)


def test_every_gpu_event_has_its_launch_and_flow(traced: tuple[Path, DumpResult]) -> None:
    out, _ = traced
    doc = _load(out / "kineto" / "rank0.json.gz")
    ev = doc["traceEvents"]
    runtime = {e["args"]["correlation"]: e for e in ev if e.get("cat") == "cuda_runtime"}
    gpu = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    flows: dict[int, set[str]] = defaultdict(set)
    for e in ev:
        if e.get("cat") == "ac2g":
            flows[e["id"]].add(e["ph"])
    assert len(gpu) > 100
    for k in gpu:
        c = k["args"]["correlation"]
        launch = runtime[c]
        assert launch["name"] in ("cudaLaunchKernel", "cudaMemcpyAsync", "cudaMemsetAsync")
        assert launch["ts"] + launch["dur"] <= k["ts"] + 1e-3  # launched before it runs
        assert flows[c] == {"s", "f"}
        assert k["args"]["device"] == k["pid"] == 0 and k["args"]["stream"] == k["tid"]
    for e in ev:
        if e.get("ph") == "X":
            assert e["dur"] >= 0 and isinstance(e["ts"], float | int)


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def test_kernels_agree_with_the_step_records(traced: tuple[Path, DumpResult]) -> None:
    out, res = traced
    for rank in (0, 1, 5):
        doc = _load(out / "kineto" / f"rank{rank}.json.gz")
        base = doc["baseTimeNanoseconds"]
        recs = _records(out, rank)
        ev = doc["traceEvents"]
        for step in range(4, 9):
            r = recs[step]
            lo, hi = (r.start_ns - base) / 1000, (r.end_ns - base) / 1000
            inside = [e for e in ev if e.get("ph") == "X" and lo <= e["ts"] < hi]
            nccl = [e for e in inside if e.get("cat") == "kernel" and "nccl" in e["name"].lower()]
            compute = [e for e in inside if e.get("cat") == "kernel" and "nccl" not in e["name"].lower()]
            memset = [e for e in inside if e.get("cat") == "gpu_memset"]
            assert len(nccl) == 1
            # NCCL kernel = exposed communication including the wait for the last rank.
            assert nccl[0]["dur"] * US == pytest.approx(r.phases["comm_exposed"], abs=2e-6)
            args = nccl[0]["args"]
            assert args["Collective name"] == "allreduce" and args["Group size"] == 6
            assert args["In msg nelems"] == args["Out msg nelems"] == int(res.model.wl.grad_bytes // 2)
            assert args["dtype"] == "BFloat16" and args["Process Group Name"] == "0"
            # Compute kernels fill forward, backward and optimizer (less zero_grad's memset).
            busy = _union([(e["ts"], e["ts"] + e["dur"]) for e in compute]) * US
            want = r.phases["forward"] + r.phases["backward"] + r.phases["optimizer"] - memset[0]["dur"] * US
            assert busy == pytest.approx(want, abs=5e-6)
        names = {e["name"] for e in ev if e.get("cat") == "kernel" and "nccl" in e["name"].lower()}
        assert names == {NCCL_NEW if rank % 2 == 0 else NCCL_OLD}


def test_the_straggler_trace_shows_short_nccl_and_long_compute(traced: tuple[Path, DumpResult]) -> None:
    out, res = traced
    t = res.model.targets[0]
    slow = res.model.topo.rank(t.node, t.gpu)
    peer = 0

    def nccl_total(rank: int) -> float:
        doc = _load(out / "kineto" / f"rank{rank}.json.gz")
        return sum(
            e["dur"] for e in doc["traceEvents"] if e.get("cat") == "kernel" and "nccl" in e["name"].lower()
        )

    assert nccl_total(slow) < 0.5 * nccl_total(peer)


def test_plain_json_and_old_naming(tmp_path: Path, dump_of: DumpOf) -> None:
    out, _ = dump_of("network-node", kineto=KinetoOptions(ranks=(2,), nccl_naming="old"))
    path = out / "kineto" / "rank2.json"
    doc = json.loads(path.read_text())
    names = {e["name"] for e in doc["traceEvents"] if e.get("cat") == "kernel" and "ccl" in e["name"]}
    assert names == {NCCL_OLD}
    steps = [e for e in doc["traceEvents"] if e["name"].startswith("ProfilerStep#")]
    assert len(steps) == 24  # all steps, none cut: nothing came after the last


def test_rank_lists() -> None:
    assert parse_ranks("0,5", 8) == (0, 5)
    assert parse_ranks("1-3, 7", 8) == (1, 2, 3, 7)
    assert parse_ranks("all", 3) == (0, 1, 2)
    for bad in ("8", "x", "", "2-a"):
        with pytest.raises(ValueError, match="--kineto"):
            parse_ranks(bad, 8)
