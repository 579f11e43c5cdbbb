"""Steps of a Kineto trace whatever markers it has: host and GPU ProfilerStep, kernels launched
before the window, detected iterations, the whole trace; the loader and the host's own wait."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fmdiag.analyzers import pipeline
from fmdiag.analyzers.frames import kineto_breakdown, kineto_steps
from fmdiag.analyzers.frames import kineto_windows as kw
from fmdiag.analyzers.readers.kineto_reader import read_trace

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"


class Trace:
    """A small trace in PyTorch's format: host ops, launches and kernels linked by correlation."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.corr = 0

    def host(self, name: str, ts: float, dur: float, cat: str = "cpu_op", tid: int = 1) -> None:
        self.events.append({"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur})

    def kernel(self, name: str, ts: float, dur: float, launch_at: float | None, stream: int = 7) -> None:
        self.corr += 1
        if launch_at is not None:
            self.events.append(
                {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1,
                 "ts": launch_at, "dur": 3, "args": {"correlation": self.corr}}
            )  # fmt: skip
        self.events.append(
            {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": ts, "dur": dur,
             "args": {"correlation": self.corr, "stream": stream, "device": 0}}
        )  # fmt: skip

    def write(self, path: Path, **meta: Any) -> Path:
        path.write_text(json.dumps({**meta, "traceEvents": self.events}))
        return path


def test_kernels_launched_before_the_window_are_set_apart(tmp_path: Path) -> None:
    """Backward kernels of the step before the profiler started still run at its start: they have
    no launch call in the trace and must not stretch step 1 back to their start."""
    t = Trace()
    for i in range(20):  # queued before the window: 20 x 800 µs from t=0
        t.kernel(GEMM, i * 800.0, 800.0, None)
    t.host("ProfilerStep#1", 15_000, 20_000, cat="user_annotation")
    t.host("ProfilerStep#2", 35_000, 20_000, cat="user_annotation")
    for t0 in (16_000.0, 36_000.0):
        for k in range(10):
            t.kernel(GEMM, t0 + k * 1000.0 + 1000.0, 900.0, t0 + k * 1000.0)
    trace = read_trace(t.write(tmp_path / "rank0.json", distributedInfo={"rank": 0}))
    w = kw.windows(trace)
    assert w.source == kw.HOST and int(w.before_window.sum()) == 20
    frame = kineto_breakdown.breakdown(trace, win=w)
    first = dict(zip(frame["step"].tolist(), frame["start_us"].tolist(), strict=True))
    # the host started step 1 at 15 ms while the leftovers ran until 16 ms: the window opens
    # there, not at the leftover at t=0
    assert first[1] == 16_000.0
    result = pipeline.analyze_trace(str(tmp_path / "rank0.json"), 30.0, False)
    assert isinstance(result, pipeline.TraceResult)
    assert result.before_window == 20 and abs(result.before_window_s - 0.016) < 1e-9
    assert any("before the profiling window" in x for x in result.warnings)


def test_gpu_side_profiler_steps_when_the_host_ones_are_missing(tmp_path: Path) -> None:
    t = Trace()
    for s in range(3):
        t0 = s * 10_000.0
        t.events.append(
            {"ph": "X", "cat": "gpu_user_annotation", "name": f"ProfilerStep#{s + 4}", "pid": 0, "tid": 7,
             "ts": t0, "dur": 9_000, "args": {"device": 0, "stream": 7}}
        )  # fmt: skip
        for k in range(5):
            t.kernel(GEMM, t0 + k * 1500.0, 1000.0, t0 + k * 1500.0 - 50)
    trace = read_trace(t.write(tmp_path / "rank0.json", distributedInfo={"rank": 0}))
    assert trace.gpu_steps["step"].tolist() == [4, 5, 6] and trace.steps["step"].size == 0
    w = kw.windows(trace)
    assert w.source == kw.GPU
    assert sorted(set(kineto_breakdown.breakdown(trace, win=w)["step"].tolist())) == [4, 5, 6]


def test_host_markers_win_over_gpu_markers(tmp_path: Path) -> None:
    t = Trace()
    t.host("ProfilerStep#1", 0, 5_000, cat="user_annotation")
    t.events.append(
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#1", "pid": 0, "tid": 7,
         "ts": 100, "dur": 500, "args": {"device": 0, "stream": 7}}
    )  # fmt: skip
    t.kernel(GEMM, 100, 500, 10)
    t.kernel(GEMM, 4_000, 500, 3_000)  # launched in step 1, after the GPU-side marker's end
    trace = read_trace(t.write(tmp_path / "rank0.json", distributedInfo={"rank": 0}))
    w = kw.windows(trace)
    active = trace.gpu["kind"] != 3
    assert w.source == kw.HOST and w.step[active].tolist() == [1, 1]


def test_detect_iterations_finds_the_repeating_block_not_a_layer() -> None:
    layer = [1, 2, 3, 4]
    iteration = [9, *layer, *layer, *layer, 7, 8]  # embedding, 3 layers, loss and optimizer
    seq = np.array([5, 6, *iteration * 4], dtype=np.int32)  # a prologue, then 4 iterations
    starts = kw.detect_iterations(seq)
    assert starts is not None and starts.tolist() == [2, 17, 32, 47]
    assert kw.detect_iterations(np.arange(40, dtype=np.int32)) is None  # nothing repeats
    assert kw.detect_iterations(np.array([1, 2, 3], dtype=np.int32)) is None


def test_no_markers_detected_iterations_else_the_whole_trace(tmp_path: Path) -> None:
    t = Trace()
    names = [GEMM, "triton_poi_fused_add_0", "void at::native::reduce_kernel<512, 1>", "flash_fwd_kernel"]
    for i in range(3):
        for k, name in enumerate(names * 2):
            at = i * 20_000.0 + k * 1_000.0
            t.kernel(f"{name}{k}", at + 100, 800, at)
    trace = read_trace(t.write(tmp_path / "rank0.json", distributedInfo={"rank": 0}))
    w = kw.windows(trace)
    assert w.source == kw.DETECTED and sorted(set(w.step.tolist())) == [0, 1, 2]
    t = Trace()
    for k in range(12):
        t.kernel(f"kernel_{k}", k * 1000.0 + 100, 800, k * 1000.0)
    trace = read_trace(t.write(tmp_path / "rank0.json", distributedInfo={"rank": 0}))
    w = kw.windows(trace)
    assert w.source == kw.WHOLE and set(w.step.tolist()) == {0}
    assert kineto_breakdown.breakdown(trace, win=w)["step"].tolist() == [0]


def _loader_trace(tmp_path: Path, loader: str | None, loader_us: float, python_gap_us: float) -> Path:
    """Two steps: the host loads (or not), runs Python for a while, launches 5 kernels of 3.9 ms
    back to back and waits for them (the next step starts when the GPU is done)."""
    t = Trace()
    t0 = 0.0
    for s in range(2):
        at = t0 + 100
        if loader:
            t.host(f"enumerate(DataLoader)#{loader}.__next__", at, loader_us, cat="user_annotation")
            at += loader_us
        t.host("aten::item", at, python_gap_us)
        at += python_gap_us
        for k in range(5):
            t.kernel(GEMM, at + 50 + k * 4_000, 3_900, at + k * 10)
        end = at + 50 + 5 * 4_000
        t.host(f"ProfilerStep#{s}", t0, end - t0, cat="user_annotation")
        t0 = end
    return t.write(tmp_path / "rank0.json", distributedInfo={"rank": 0, "world_size": 1})


def test_loader_spans_are_the_data_wait_and_the_rest_is_the_hosts(tmp_path: Path) -> None:
    path = _loader_trace(tmp_path, "_MultiProcessingDataLoaderIter", 500.0, 40_000.0)
    trace = read_trace(path)
    assert trace.loader["ts"].size == 2 and not trace.loader["single_process"].any()
    assert kineto_breakdown.loader_kind(trace) == "workers"
    frame, gaps = kineto_breakdown.breakdown_and_gaps(trace, 30.0, None)
    assert np.allclose(frame["loader_s"], 0.0005)
    ops = kineto_breakdown.host_wait_ops(trace, gaps)
    assert ops and all(v[0][0] == "aten::item" for v in ops.values())
    steps = kineto_steps.step_frame(frame, {0: ops}, None, {0: "workers"})
    assert np.allclose(steps["data_wait"], 0.0005)
    assert (steps["host_wait"] > 0.03).all() and "aten::item" in steps["host_ops"][0]


def test_verdicts_from_a_trace_name_the_host_loop_or_the_in_process_loader(tmp_path: Path) -> None:
    dump = tmp_path / "loop"
    (dump / "kineto").mkdir(parents=True)
    _loader_trace(dump / "kineto", "_MultiProcessingDataLoaderIter", 300.0, 40_000.0)
    a = pipeline.run(dump, pipeline.Options(workers=1))
    assert {v.cls for v in a.verdicts} == {"host"}
    assert "aten::item" in a.verdicts[0].recommendation and "num_workers" not in a.verdicts[0].recommendation
    dump = tmp_path / "loader"
    (dump / "kineto").mkdir(parents=True)
    _loader_trace(dump / "kineto", "_SingleProcessDataLoaderIter", 40_000.0, 100.0)
    a = pipeline.run(dump, pipeline.Options(workers=1))
    assert {v.cls for v in a.verdicts} == {"host"}
    assert "num_workers=0" in a.verdicts[0].recommendation
    dump = tmp_path / "fast"
    (dump / "kineto").mkdir(parents=True)
    _loader_trace(dump / "kineto", "_MultiProcessingDataLoaderIter", 300.0, 200.0)
    a = pipeline.run(dump, pipeline.Options(workers=1))
    assert {v.cls for v in a.verdicts} == {"compute"}


def test_one_rank_never_reasons_about_every_rank(tmp_path: Path) -> None:
    """One rank of a 16-rank job waiting in NCCL: network only with low confidence, said to be
    undecidable from one rank, no 'every rank', and the 15 missing ranks named."""
    t = Trace()
    nccl = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
    for s in range(4):
        t0 = s * 50_000.0
        t.host(f"ProfilerStep#{s}", t0, 49_000, cat="user_annotation")
        t.kernel(GEMM, t0 + 100, 20_000, t0 + 10)
        t.kernel(nccl, t0 + 20_200, 25_000, t0 + 20, stream=20)
    dump = tmp_path / "one"
    (dump / "kineto").mkdir(parents=True)
    t.write(dump / "kineto" / "rank5.json", distributedInfo={"rank": 5, "world_size": 16})
    a = pipeline.run(dump, pipeline.Options(workers=1))
    assert a.world_size == 16 and a.missing_ranks == [r for r in range(16) if r != 5]
    assert {v.cls for v in a.verdicts} == {"network"}
    for v in a.verdicts:
        assert v.confidence <= 0.4 and "every rank" not in v.recommendation
        assert any("one rank" in u for u in v.undecided)


def test_bare_step_records_beside_traces_take_the_traces_breakdown(tmp_path: Path) -> None:
    """Step records without phases (a writer that logs step times only) and Kineto traces of the
    same job: the verdict reads the traces' per-rank breakdown — rank 2 computes 60 ms longer and
    the others wait for it in NCCL — and names rank 2 with its node from the records, instead of
    reasoning from the records' empty phases (which would pin the first rank)."""
    nccl = "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
    dump = tmp_path / "dump"
    (dump / "kineto").mkdir(parents=True)
    (dump / "steps").mkdir()
    for rank in range(4):
        t = Trace()
        lines = []
        for s in range(12):
            t0 = s * 200_000.0
            compute = 160_000.0 if rank == 2 else 100_000.0
            t.host(f"ProfilerStep#{s}", t0, 199_000, cat="user_annotation")
            t.kernel(GEMM, t0 + 100, compute, t0 + 10)
            t.kernel(nccl, t0 + 100 + compute + 10, 190_000 - compute, t0 + 20, stream=20)
            start_ns = 1_700_000_000_000_000_000 + int(t0 * 1000)
            where = {"rank": rank, "node": f"node-{rank // 2}", "local_rank": rank % 2}
            lines.append(
                json.dumps(
                    {
                        "v": 1,
                        "job": "j",
                        **where,
                        "step": s,
                        "start_ns": start_ns,
                        "end_ns": start_ns + 199_000_000,
                    }
                )
            )
        t.write(dump / "kineto" / f"rank{rank}.json", distributedInfo={"rank": rank, "world_size": 4})
        (dump / "steps" / f"rank{rank}.jsonl").write_text("\n".join(lines) + "\n")
    a = pipeline.run(dump, pipeline.Options(workers=1))
    assert any("with the step records' nodes" in w for w in a.warnings)
    late = [v for v in a.verdicts if v.cls == "straggler"]
    assert len(late) >= 10
    assert all(v.culprit and v.culprit["rank"] == 2 and v.culprit["node"] == "node-1" for v in late)
