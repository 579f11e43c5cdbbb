"""Kineto traces: laid out as PyTorch writes them, keeping DOMAIN.md's rules, agreeing with the model."""

from __future__ import annotations

import gzip
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from fmdiag import steprecord
from fmdiag.cli import cli
from fmdiag.simulate.cluster.kineto import (
    COMPUTE_STREAM,
    KinetoOptions,
    compute_segments,
    compute_windows,
    merge_contiguous,
    parse_ranks,
)
from fmdiag.simulate.cluster.kineto_ops import COLLECTIVE_NAMES, nccl_kernel_name
from fmdiag.simulate.cluster.model import Collective
from fmdiag.simulate.dump import DumpResult, SimOptions, build_model

DumpOf = Callable[..., tuple[Path, DumpResult]]
US = 1e-6
GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
#: Holistic Trace Analysis finds a trace's rank with this, line by line (it needs the space).
HTA_RANK = re.compile(r'"rank":\s+(\d+)')


def _text(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return data.decode()


def _load(path: Path) -> dict[str, Any]:
    doc = json.loads(_text(path))
    assert isinstance(doc, dict)
    return doc


def _records(out: Path, rank: int) -> dict[int, steprecord.StepRecord]:
    path = sorted((out / "steps").glob(f"*.rank{rank:05d}.jsonl"))[0]
    return {r.step: r for r in steprecord.read_file(path).records}


def _is_nccl(e: dict[str, Any]) -> bool:
    return e.get("cat") == "kernel" and "nccl" in e["name"].lower()


@pytest.fixture(scope="module")
def traced(dump_of: DumpOf, small_opts: Callable[..., SimOptions]) -> tuple[Path, DumpResult]:
    """Ranks 0, 1, 5 traced (default: new NCCL names, full detail); the test seed throttles rank 5."""
    model = build_model(small_opts("straggler-thermal"))
    t = model.targets[0]
    assert model.topo.rank(t.node, t.gpu) in (1, 5)
    opts = KinetoOptions(ranks=(0, 1, 5), first_step=4, last_step=9, gzip=True)
    return dump_of("straggler-thermal", kineto=opts)


def test_top_level_fields_and_pytorch_layout(traced: tuple[Path, DumpResult]) -> None:
    out, res = traced
    files = sorted((out / "kineto").iterdir())
    assert [p.name for p in files] == ["rank0.json.gz", "rank1.json.gz", "rank5.json.gz"]
    for path in files:
        text = _text(path)
        doc = json.loads(text)
        rank = int(path.name[4:].split(".")[0])
        assert doc["schemaVersion"] == 1
        assert doc["displayTimeUnit"] == "ms"
        assert isinstance(doc["baseTimeNanoseconds"], int)
        info = doc["distributedInfo"]
        assert info["backend"] == "nccl" and info["rank"] == rank and info["world_size"] == 6
        assert info["nccl_version"] == "2.21.5" and info["pg_config"][0]["ranks"] == list(range(6))
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
            "gpu_user_annotation",
            "ac2g",
            "fwdbwd",
            "Trace",
        } <= cats
        # As PyTorch writes it: a space after each colon, so HTA's line-by-line regex finds the
        # right rank on the first line that has one; times as µs with three decimals; the trace
        # name last.
        first = next(m for line in text.splitlines() if (m := HTA_RANK.search(line)))
        assert int(first.group(1)) == rank
        assert '"rank":' + str(rank) not in text
        assert re.search(r'"ts": \d+\.\d{3}, "dur": \d+\.\d{3}', text)
        assert list(doc)[-1] == "traceName"
        ev = doc["traceEvents"]
        names = {e["name"] for e in ev}
        assert {"PyTorch Profiler (0)", "Iteration Start: PyTorch Profiler", "Record Window End"} <= names
        meta = {e["name"] for e in ev if e.get("ph") == "M"}
        assert {"process_name", "process_labels", "process_sort_index", "thread_name"} <= meta


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
    # Cut in the middle of backward: the step's forward kernels are there, its optimizer's are not.
    r = recs[9]
    lo = (r.start_ns - base) / 1000
    late = [e for e in doc["traceEvents"] if e.get("cat") in GPU_CATS and e["ts"] >= lo]
    assert late and max(e["ts"] + e["dur"] for e in late) * 1000 + base < r.start_ns + 1e9 * (
        r.phases["data_wait"] + r.phases["forward"] + r.phases["backward"]
    )


def test_every_gpu_event_has_its_launch_and_flow(traced: tuple[Path, DumpResult]) -> None:
    out, _ = traced
    doc = _load(out / "kineto" / "rank0.json.gz")
    ev = doc["traceEvents"]
    runtime = {e["args"]["correlation"]: e for e in ev if e.get("cat") == "cuda_runtime"}
    gpu = [e for e in ev if e.get("cat") in GPU_CATS]
    flows: dict[int, set[str]] = defaultdict(set)
    for e in ev:
        if e.get("cat") == "ac2g":
            flows[e["id"]].add(e["ph"])
    assert len(gpu) > 100
    for k in gpu:
        c = k["args"]["correlation"]
        launch = runtime[c]
        assert launch["name"] in (
            "cudaLaunchKernel",
            "cudaLaunchKernelExC",
            "cudaMemcpyAsync",
            "cudaMemsetAsync",
        )
        assert launch["ts"] + launch["dur"] <= k["ts"] + 1e-3  # launched before it runs
        assert launch["args"]["External id"] == k["args"]["External id"]
        assert flows[c] == {"s", "f"}
        assert k["args"]["device"] == k["pid"] == 0 and k["args"]["stream"] == k["tid"]
    for e in ev:
        if e.get("ph") == "X":
            assert e["dur"] >= 0 and isinstance(e["ts"], float | int)
    # A stream runs one kernel at a time; the collectives run beside compute, on their own streams.
    by_stream: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for k in gpu:
        by_stream[k["tid"]].append((k["ts"], k["ts"] + k["dur"]))
    for iv in by_stream.values():
        iv.sort()
        assert all(b[0] >= a[1] - 1e-3 for a, b in itertools.pairwise(iv))
    assert {k["tid"] for k in gpu if _is_nccl(k)}.isdisjoint({COMPUTE_STREAM})


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def test_kernels_agree_with_the_step_records_and_the_collectives(traced: tuple[Path, DumpResult]) -> None:
    out, res = traced
    model, chunk = res.model, res.chunk
    s0 = int(chunk.steps[0])
    for rank in (0, 1, 5):
        doc = _load(out / "kineto" / f"rank{rank}.json.gz")
        base = doc["baseTimeNanoseconds"]
        recs = _records(out, rank)
        ev = doc["traceEvents"]
        start = recs[s0].start_ns - int(chunk.start[0, rank])  # the dump's start time
        for step in range(4, 9):
            r = recs[step]
            lo, hi = (r.start_ns - base) / 1000, (r.end_ns - base) / 1000
            inside = [e for e in ev if e.get("ph") == "X" and lo <= e["ts"] < hi]
            gpu = [e for e in inside if e.get("cat") in GPU_CATS]
            nccl = sorted((e for e in gpu if _is_nccl(e)), key=lambda e: e["ts"])
            # One NCCL kernel per collective of the model, from its start to its end.
            colls = model.collectives(chunk, step - s0, rank)
            assert len(nccl) == len(colls) > 10
            for k, c in zip(nccl, colls, strict=True):
                assert k["ts"] * 1000 == pytest.approx(c.start_ns + start - base, abs=1)
                assert k["dur"] * 1000 == pytest.approx(c.end_ns - c.start_ns, abs=1)
                args = k["args"]
                assert args["Collective name"] == COLLECTIVE_NAMES[c.kind][0]
                assert args["In msg nelems"] == c.in_nelems and args["Out msg nelems"] == c.out_nelems
                assert args["Group size"] == c.group_size == 6
                assert args["dtype"] == "BFloat16" and args["Process Group Name"] == "0"
                assert k["name"] == nccl_kernel_name("new", c.kind, c.dtype, c.nbytes)
            # The compute stream's work tiles forward, backward and optimizer: it starts and
            # ends with each phase; compute kernels cover the model's compute windows but for
            # the memory copies and the ~µs launch gaps between kernels.
            stream7 = sorted((e for e in gpu if e["tid"] == COMPUTE_STREAM), key=lambda e: e["ts"])
            h2d = stream7[0]
            assert h2d["name"].startswith("Memcpy HtoD")
            dw1 = r.start_ns - base + 1e9 * r.phases["data_wait"]
            f1 = dw1 + 1e9 * r.phases["forward"]
            b1 = f1 + 1e9 * r.phases["backward"]
            c1 = b1 + 1e9 * r.phases["comm_exposed"]
            o1 = c1 + 1e9 * r.phases["optimizer"]

            def ns(t: float) -> float:
                return t * 1000

            assert ns(h2d["ts"] + h2d["dur"]) == pytest.approx(dw1, abs=2)
            windows = [
                (a + start - base, b + start - base)
                for a, b in compute_windows(model, chunk, step - s0, rank)
            ]
            assert windows[0][0] >= dw1 - 1 and windows[-1][1] == pytest.approx(o1, abs=2)
            work = [(ns(e["ts"]), ns(e["ts"] + e["dur"])) for e in stream7[1:]]
            for a, b in windows:  # each window starts and ends with a kernel
                assert min(abs(x - a) for x, _ in work) <= 2 and min(abs(y - b) for _, y in work) <= 2
            for x, y in work:  # and every kernel lies in a window: the rest is waiting
                assert any(a - 2 <= x and y <= b + 2 for a, b in windows)
            assert max(y for _, y in work if y <= f1 + 2) == pytest.approx(f1, abs=2)
            assert min(x for x, _ in work if x >= f1 - 2) == pytest.approx(f1, abs=2)
            assert not [e for e in stream7 if b1 + 1 < ns(e["ts"]) < c1 - 1]  # waiting for the network
            compute = [e for e in stream7 if e["cat"] == "kernel"]
            memory = sum(e["dur"] for e in stream7[1:] if e["cat"] != "kernel") * 1000
            busy = _union([(e["ts"], e["ts"] + e["dur"]) for e in compute]) * 1000
            total = sum(b - a for a, b in windows)
            assert total - memory - 0.005 * total <= busy <= total - memory
            phases = 1e9 * (r.phases["forward"] + r.phases["backward"] + r.phases["optimizer"])
            assert total <= phases + 1
        names = {e["name"] for e in ev if _is_nccl(e)}
        assert names and all(n.startswith("ncclDevKernel_") for n in names)


def test_the_straggler_trace_shows_short_nccl_and_long_compute(traced: tuple[Path, DumpResult]) -> None:
    out, res = traced
    t = res.model.targets[0]
    slow = res.model.topo.rank(t.node, t.gpu)
    peer = 0

    def totals(rank: int) -> tuple[float, float]:
        ev = _load(out / "kineto" / f"rank{rank}.json.gz")["traceEvents"]
        nccl = sum(e["dur"] for e in ev if _is_nccl(e))
        compute = sum(e["dur"] for e in ev if e.get("cat") == "kernel" and not _is_nccl(e))
        return nccl, compute

    (slow_nccl, slow_compute), (peer_nccl, peer_compute) = totals(slow), totals(peer)
    assert slow_nccl < 0.5 * peer_nccl
    assert slow_compute > 1.05 * peer_compute


def test_nested_ops_autograd_thread_and_fwdbwd_flows(traced: tuple[Path, DumpResult]) -> None:
    out, _ = traced
    ev = _load(out / "kineto" / "rank0.json.gz")["traceEvents"]
    ops = [e for e in ev if e.get("cat") == "cpu_op"]
    tids = Counter(e["tid"] for e in ops)
    assert len(tids) == 2  # the main thread and the autograd thread
    main = next(e["tid"] for e in ev if e["name"].startswith("ProfilerStep#"))
    autograd = next(t for t in tids if t != main)
    engine = [e for e in ops if e["name"].startswith("autograd::engine::evaluate_function: ")]
    assert len(engine) > 100 and all(e["tid"] == autograd for e in engine)
    # aten::linear > aten::matmul > aten::mm > cudaLaunchKernelExC, on the main thread.
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in ops:
        by_name[e["name"]].append(e)

    def inside(child: dict[str, Any], parent: dict[str, Any]) -> bool:
        return (
            child["tid"] == parent["tid"]
            and parent["ts"] <= child["ts"]
            and child["ts"] + child["dur"] <= parent["ts"] + parent["dur"] + 1e-3
        )

    linear = by_name["aten::linear"][3]
    matmul = next(e for e in by_name["aten::matmul"] if inside(e, linear))
    mm = next(e for e in by_name["aten::mm"] if inside(e, matmul))
    launch = next(e for e in ev if e.get("cat") == "cuda_runtime" and inside(e, mm))
    assert (
        launch["name"] == "cudaLaunchKernelExC" and launch["args"]["External id"] == mm["args"]["External id"]
    )
    # fwdbwd: forward op (main thread) -> its backward (autograd thread), same Sequence number.
    key = {(e["ts"], e["tid"]): e for e in ops}
    pairs: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for e in ev:
        if e.get("cat") == "fwdbwd":
            pairs[e["id"]][e["ph"]] = key[(e["ts"], e["tid"])]
            if e["ph"] == "f":
                assert e["bp"] == "e"
    assert len(pairs) > 100
    for p in pairs.values():
        fwd, bwd = p["s"], p["f"]
        assert fwd["tid"] == main and bwd["tid"] == autograd and fwd["ts"] < bwd["ts"]
        assert fwd["args"]["Sequence number"] == bwd["args"]["Sequence number"]
        assert fwd["args"]["Fwd thread id"] == 0 and bwd["args"]["Fwd thread id"] > 0


def test_streams_synchronise_through_events(traced: tuple[Path, DumpResult]) -> None:
    """Each collective: record_param_comms holds cudaEventRecord (compute stream) and
    cudaStreamWaitEvent (NCCL stream) before the launch; consumers wait back later."""
    out, _ = traced
    ev = _load(out / "kineto" / "rank0.json.gz")["traceEvents"]
    rpc = {e["args"]["External id"]: e for e in ev if e["name"] == "record_param_comms"}
    runtime = [e for e in ev if e.get("cat") == "cuda_runtime"]
    by_ext: dict[int, list[str]] = defaultdict(list)
    for e in sorted(runtime, key=lambda e: e["ts"]):
        by_ext[e["args"].get("External id", 0)].append(e["name"])
    nccl = [e for e in ev if _is_nccl(e)]
    assert len(rpc) >= len(nccl) > 100  # the cut step keeps ops whose kernels had not run
    for k in nccl:
        ext = k["args"]["External id"]
        args = rpc[ext]["args"]
        assert args["Collective name"] == k["args"]["Collective name"]
        assert args["Process Group Ranks"] == str(list(range(6))) and args["Group size"] == 6
        calls = by_ext[ext]
        launch = calls.index("cudaLaunchKernelExC")
        assert calls.index("cudaEventRecord") < calls.index("cudaStreamWaitEvent") < launch
    waits = sum(1 for e in runtime if e["name"] == "cudaStreamWaitEvent")
    assert waits >= 2 * len(nccl)
    assert {e["name"] for e in runtime} >= {
        "cudaStreamIsCapturing",
        "cudaFuncSetAttribute",
        "cudaStreamSynchronize",
    }


def test_gpu_user_annotations_span_their_kernels(traced: tuple[Path, DumpResult]) -> None:
    out, _ = traced
    ev = _load(out / "kineto" / "rank0.json.gz")["traceEvents"]
    spans = [e for e in ev if e.get("cat") == "gpu_user_annotation"]
    names = {e["name"] for e in spans}
    assert {"DistributedDataParallel.forward", "## backward ##", "Optimizer.step#AdamW.step"} <= names
    assert {"nccl:_all_gather_base", "nccl:_reduce_scatter_base"} <= names
    host = {e["args"]["External id"]: e for e in ev if e.get("cat") == "user_annotation"}
    kernels = [e for e in ev if e.get("cat") == "kernel"]
    for s in spans:
        assert "stream" not in s["args"]  # not an activity of its own: readers must not count it
        assert host[s["args"]["External id"]]["name"] == s["name"]
        end = s["ts"] + s["dur"] - 0.002  # the next phase's first kernel may start as this one ends
        covered = [k for k in kernels if k["tid"] == s["tid"] and s["ts"] <= k["ts"] < end]
        assert covered and max(k["ts"] + k["dur"] for k in covered) <= s["ts"] + s["dur"] + 1e-3


def test_full_detail_looks_like_a_real_step(traced: tuple[Path, DumpResult]) -> None:
    out, _ = traced
    doc = _load(out / "kineto" / "rank0.json.gz")
    ev = doc["traceEvents"]
    recs = _records(out, 0)
    base = doc["baseTimeNanoseconds"]
    r = recs[6]
    lo, hi = (r.start_ns - base) / 1000, (r.end_ns - base) / 1000
    step = [e for e in ev if e.get("ph") == "X" and lo <= e["ts"] < hi]
    kernels = [e for e in step if e.get("cat") == "kernel"]
    assert len(kernels) >= 200
    assert len({e["name"] for e in kernels}) >= 20
    assert sum(1 for e in step if e.get("cat") == "cpu_op") > 2 * len(kernels)
    assert len({e["name"] for e in step if e.get("cat") == "cuda_runtime"}) >= 10
    # Memory-bound kernels take hundreds of µs, GEMMs milliseconds; a busy stream's launch
    # gaps are around a microsecond.
    durs = np.array([e["dur"] for e in kernels if not _is_nccl(e)])
    assert durs.min() < 20 and np.median(durs) > 50 and durs.max() > 1000
    s7 = sorted(
        (e for e in step if e.get("tid") == COMPUTE_STREAM and e.get("cat") in GPU_CATS),
        key=lambda e: e["ts"],
    )
    gaps = np.array([b["ts"] - (a["ts"] + a["dur"]) for a, b in itertools.pairwise(s7[1:])])
    assert 0.3 < float(np.median(gaps)) < 5


def test_one_naming_per_job_plain_json_and_old_naming(dump_of: DumpOf) -> None:
    out, res = dump_of("network-node", kineto=KinetoOptions(ranks=(2, 3), nccl_naming="old"))
    for rank in (2, 3):
        doc = json.loads((out / "kineto" / f"rank{rank}.json").read_text())
        assert doc["distributedInfo"]["nccl_version"] == "2.17.1"
        names = {e["name"] for e in doc["traceEvents"] if e.get("cat") == "kernel" and "ccl" in e["name"]}
        assert names and all(n.startswith("ncclKernel_") for n in names)
        colls = [c for i in range(res.chunk.nsteps) for c in res.model.collectives(res.chunk, i, rank)]
        assert names == {nccl_kernel_name("old", c.kind, c.dtype, c.nbytes) for c in colls}
        steps = [e for e in doc["traceEvents"] if e["name"].startswith("ProfilerStep#")]
        assert len(steps) == 24  # all steps, none cut: nothing came after the last


def test_compact_detail_is_smaller_with_the_same_communication(
    traced: tuple[Path, DumpResult], dump_of: DumpOf
) -> None:
    full_out, _ = traced
    out, _ = dump_of(
        "straggler-thermal",
        kineto=KinetoOptions(ranks=(0,), first_step=4, last_step=9, gzip=True, detail="compact"),
    )
    full, compact = (_load(p / "kineto" / "rank0.json.gz")["traceEvents"] for p in (full_out, out))
    n_full = sum(1 for e in full if e.get("cat") == "kernel" and not _is_nccl(e))
    n_compact = sum(1 for e in compact if e.get("cat") == "kernel" and not _is_nccl(e))
    assert n_compact < 0.6 * n_full
    assert (out / "kineto" / "rank0.json.gz").stat().st_size < 0.75 * (
        full_out / "kineto" / "rank0.json.gz"
    ).stat().st_size

    def comm(ev: list[dict[str, Any]]) -> float:
        return _union([(e["ts"], e["ts"] + e["dur"]) for e in ev if _is_nccl(e)])

    def busy(ev: list[dict[str, Any]]) -> float:
        return sum(e["dur"] for e in ev if e.get("tid") == COMPUTE_STREAM and e.get("cat") in GPU_CATS)

    assert comm(compact) == pytest.approx(comm(full), abs=0.01)
    assert busy(compact) == pytest.approx(busy(full), rel=0.005)


def test_same_seed_same_bytes(tmp_path: Path, small_opts: Callable[..., SimOptions]) -> None:
    from fmdiag.simulate.dump import write_dump

    kin = KinetoOptions(ranks=(1,), first_step=2, last_step=4, gzip=True, detail="compact")
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_dump(small_opts("healthy", kineto=kin, steps=6, seed=seed, metrics=False), tmp_path / name)
    a, b, c = ((tmp_path / n / "kineto" / "rank1.json.gz").read_bytes() for n in "abc")
    assert a == b and a != c


def test_compute_segments_follow_the_gates() -> None:
    # Three units of 100 ns: the third waits for its gather until 500, so the phase ends at 600.
    assert compute_segments(0, 600, [0, 100, 500]) == [(0, 100), (100, 200), (500, 600)]
    # The first unit waits for its gather too; no gate: one segment.
    assert compute_segments(0, 350, [50, 60]) == [(50, 200), (200, 350)]
    assert compute_segments(10, 90, []) == [(10, 90)]


def test_compact_merges_only_back_to_back_collectives_of_a_kind() -> None:
    def c(kind: str, a: int, b: int) -> Collective:
        return Collective(kind=kind, start_ns=a, end_ns=b, nbytes=10, in_nelems=5, out_nelems=5, group_size=2)

    merged = merge_contiguous([c("all_reduce", 0, 10), c("all_reduce", 10, 20), c("all_reduce", 25, 30),
                               c("all_gather", 30, 40)])  # fmt: skip
    assert [(m.kind, m.start_ns, m.end_ns, m.in_nelems) for m in merged] == [
        ("all_reduce", 0, 20, 10),
        ("all_reduce", 25, 30, 5),
        ("all_gather", 30, 40, 5),
    ]


def test_options_are_checked(tmp_path: Path) -> None:
    for bad in ({"nccl_naming": "alternate"}, {"detail": "everything"}):
        with pytest.raises(ValueError, match="kineto"):
            KinetoOptions(ranks=(0,), **bad)  # type: ignore[arg-type]
    assert nccl_kernel_name("new", "all_gather", "BFloat16", 1 << 30).startswith(
        "ncclDevKernel_AllGather_RING"
    )
    assert nccl_kernel_name("old", "reduce_scatter", "BFloat16", 1 << 10).startswith(
        "ncclKernel_ReduceScatter_RING_LL_Sum_bfloat16"
    )
    out = tmp_path / "k"
    args = ["simulate", "--scenario", "healthy", "--nodes", "1", "--gpus", "2", "--efa-devices", "1",
            "--steps", "3", "--no-metrics", "--kineto", "1", "--kineto-nccl", "old",
            "--kineto-detail", "compact", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "kineto" / "rank1.json").read_text())
    assert doc["distributedInfo"]["nccl_version"] == "2.17.1"
    result = CliRunner().invoke(cli, [*args[:-2], "--kineto-nccl", "alternate", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "alternate" in result.output


def test_rank_lists() -> None:
    assert parse_ranks("0,5", 8) == (0, 5)
    assert parse_ranks("1-3, 7", 8) == (1, 2, 3, 7)
    assert parse_ranks("all", 3) == (0, 1, 2)
    for bad in ("8", "x", "", "2-a"):
        with pytest.raises(ValueError, match="--kineto"):
            parse_ranks(bad, 8)
