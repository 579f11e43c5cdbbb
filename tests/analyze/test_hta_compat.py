"""--hta-compatible: HTA's definitions, checked against numbers HTA 0.6.1 printed for the same files.

The expected values below were worked out by hand from the fixture and agree with what
``traceinsight`` 0.6.1 (``TraceAnalysis(trace_dir=...)``) prints for it: its
``get_temporal_breakdown``, ``get_comm_comp_overlap`` and ``get_idle_time_breakdown``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from analyze import kineto_builder as kb
from analyze.helpers import FIXTURES

from fmdiag.analyzers import pipeline
from fmdiag.analyzers.frames import hta_compat
from fmdiag.analyzers.readers.kineto_frame import KinetoTrace
from fmdiag.analyzers.readers.kineto_reader import read_trace


def test_handmade_trace_matches_hta() -> None:
    (r,) = hta_compat.analyze([read_trace(FIXTURES / "handmade_new.json")])
    # rounded [ceil(ts), floor(end)]; last ProfilerStep (#3, and the kernel at 305) dropped
    assert r["temporal"] == {
        "idle_time_us": 53.0,
        "compute_time_us": 59.0,
        "non_compute_time_us": 18.0,
        "kernel_time_us": 130.0,
        "idle_time_pctg": 40.77,
        "compute_time_pctg": 45.38,
        "non_compute_time_pctg": 13.85,
    }
    assert r["comm_comp_overlap_ratio"] == pytest.approx(5 / 19)
    assert r["comm_comp_overlap_pctg"] == 26.32
    idle = {
        (row["stream"], row["idle_category"]): (row["idle_time_us"], row["idle_time_ratio"])
        for row in r["idle"]
    }
    assert idle == {
        (7, "host_wait"): (56.0, 0.98),
        (7, "kernel_wait"): (1.0, 0.02),
        (7, "other"): (0.0, 0.0),
        (20, "host_wait"): (86.0, 1.0),
        (20, "other"): (0.0, 0.0),
    }


def test_one_step_traces_keep_every_kernel() -> None:
    """HTA skips its last-step filter when the traces hold a single ProfilerStep name."""
    t = read_trace(FIXTURES / "handmade_new.json")
    keep = t.steps["step"] == 1
    t.steps = {k: v[keep] for k, v in t.steps.items()}
    assert not hta_compat.drops_last_step([t])
    (r,) = hta_compat.analyze([t])
    assert r["temporal"]["kernel_time_us"] == 310 - 10  # through the kernel at [305, 310]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(x)", hta_compat.TYPE_COMM),
        ("void foo_ncclKernel_bar", hta_compat.TYPE_COMM),
        ("Memcpy DtoD (Device -> Device)", hta_compat.TYPE_MEMORY),
        ("cudaStreamSynchronize", hta_compat.TYPE_OTHER),
        ("sm90_xmma_gemm", hta_compat.TYPE_COMPUTE),
        ("nccl:all_reduce", hta_compat.TYPE_COMM),
    ],
)
def test_kernel_types_follow_htas_patterns(name: str, kind: int) -> None:
    assert hta_compat.kernel_type(name) == kind


def test_a_rank_without_steps_among_ranks_with_steps_keeps_nothing() -> None:
    """HTA's filter compares with the rank's earliest CPU event when it has no ProfilerStep."""
    t = read_trace(FIXTURES / "handmade_new.json")
    t.steps = {k: v[:0] for k, v in t.steps.items()}
    k = hta_compat.kept_kernels(t, filter_last_step=True)
    assert k["ts"].size == 0
    assert hta_compat.temporal(k)["kernel_time_us"] == 0.0


# -- small hand-built traces, one HTA behaviour each (numbers as HTA 0.6.1 prints them) ------------


def _x(cat: str, name: str, ts: float, dur: float, pid: int = 1, tid: int = 1, **args: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}
    if args:
        ev["args"] = args
    return ev


def _step(n: int, ts: float, dur: float) -> dict[str, Any]:
    return _x("user_annotation", f"ProfilerStep#{n}", ts, dur)


def _launch(ts: float, corr: int, name: str = "cudaLaunchKernel", **args: Any) -> dict[str, Any]:
    return _x("cuda_runtime", name, ts, 2.0, correlation=corr, **args)


def _kernel(
    ts: float, dur: float, corr: int, name: str = "sm90_xmma_gemm", stream: int = 7, cat: str = "kernel"
) -> dict[str, Any]:
    return _x(cat, name, ts, dur, pid=0, tid=stream, device=0, stream=stream, correlation=corr)


def _doc(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 1, "distributedInfo": {"rank": 0}, "traceEvents": events}


def _trace(tmp_path: Path, events: list[dict[str, Any]]) -> KinetoTrace:
    return read_trace(kb.write(tmp_path / "kineto" / "rank0.json", _doc(events)))


def _times(r: dict[str, Any]) -> tuple[float, float, float, float]:
    t = r["temporal"]
    return t["kernel_time_us"], t["idle_time_us"], t["compute_time_us"], t["non_compute_time_us"]


def _idle(r: dict[str, Any]) -> dict[tuple[int, str], float]:
    return {(row["stream"], row["idle_category"]): row["idle_time_us"] for row in r["idle"]}


#: A Triton kernel launched from Python: a host ``cpu_op`` that carries the stream it runs on.
TRITON = [
    _step(1, 0, 100),
    _launch(1, 1),
    _kernel(10, 10, 1),
    _x("cpu_op", "triton_poi_fused_add_cos_sin_0", 30, 5, stream=7),
]


def test_a_host_op_with_a_stream_counts_as_a_kernel(tmp_path: Path) -> None:
    """HTA takes every event with ``args.stream`` as GPU activity, a Triton ``cpu_op`` included
    (but not in the idle breakdown, which takes kernel/memcpy/memset categories only)."""
    (r,) = hta_compat.analyze([_trace(tmp_path, TRITON)])
    assert _times(r) == (25.0, 10.0, 15.0, 0.0)  # the kernel [10, 20] and the cpu_op [30, 35]
    assert _idle(r) == {(7, "other"): 0.0}


#: Two host ProfilerSteps and the GPU-side copy of the second (``gpu_user_annotation``, recent
#: PyTorch), which starts later on the GPU timeline.
GPU_STEP = [
    _step(1, 0, 100),
    _step(2, 100, 100),
    _x("gpu_user_annotation", "ProfilerStep#2", 150, 60, pid=0, tid=7),
    _launch(10, 1),
    _kernel(20, 10, 1),
    _launch(120, 2),
    _kernel(130, 10, 2),
    _launch(160, 3),
    _kernel(170, 10, 3),
]


def test_the_gpu_side_step_marker_moves_the_last_step_cut(tmp_path: Path) -> None:
    """HTA drops the CPU events from the last ProfilerStep's start on, the GPU-side marker
    included: launches before 150 keep their kernels (not only those before the host's 100)."""
    t = _trace(tmp_path, GPU_STEP)
    assert hta_compat.step_names(t) == {1, 2}
    (r,) = hta_compat.analyze([t])
    assert _times(r) == (120.0, 100.0, 20.0, 0.0)  # kernels [20, 30] and [130, 140]


#: A kernel shorter than a µs between two others: rounding makes it [11, 10].
SUB_US = [
    _step(1, 0, 100),
    _launch(0, 1),
    _launch(0.5, 2),
    _launch(1, 3),
    _kernel(0, 5, 1),
    _kernel(10.3, 0.4, 2),
    _kernel(20, 10, 3),
]


def test_a_kernel_rounded_to_a_negative_length_counts_as_in_hta(tmp_path: Path) -> None:
    """HTA's merge keeps an interval that rounding made negative; alone in its group it takes
    its length (-1 µs here) off the run time."""
    (r,) = hta_compat.analyze([_trace(tmp_path, SUB_US)])
    assert _times(r) == (30.0, 16.0, 14.0, 0.0)
    assert _idle(r) == {(7, "kernel_wait"): 16.0, (7, "other"): 0.0}
    starts, ends = hta_compat.hta_merge(np.array([0.0, 11, 20, 4]), np.array([5.0, 10, 30, 6]))
    assert starts.tolist() == [0, 11, 20] and ends.tolist() == [6, 10, 30]


#: MTIA's device events: ``mtia_ccp_events`` with a stream, one without a correlation.
MTIA = [
    _x("mtia_runtime", "runFunction", 0, 2, correlation=1),
    _kernel(10, 10, 1, name="job_exe_model", stream=5, cat="mtia_ccp_events"),
    _x("mtia_ccp_events", "event_wait", 25, 2, pid=0, tid=5, stream=5),
]


def test_events_with_a_stream_and_no_correlation_count_when_nothing_is_filtered(tmp_path: Path) -> None:
    """Without ProfilerSteps HTA takes every event whose stream is not -1, correlated or not;
    ``mtia_ccp_events`` are kernels to its idle breakdown."""
    (r,) = hta_compat.analyze([_trace(tmp_path, MTIA)])
    # job_exe_* is "not compute" by HTA's patterns, event_wait is compute
    assert _times(r) == (17.0, 5.0, 2.0, 10.0)
    assert _idle(r) == {(5, "kernel_wait"): 5.0, (5, "other"): 0.0}


#: HIP's runtime calls carry the stream they launch on (AMD traces).
HIP = [
    _step(1, 0, 100),
    _step(2, 100, 50),
    _launch(10, 1),
    _kernel(20, 10, 1),
    _launch(40, 2, name="hipLaunchKernel", stream=7),
    _kernel(50, 10, 2),
]


def test_a_runtime_call_with_a_stream_is_a_gpu_event_and_launches_nothing(tmp_path: Path) -> None:
    """A runtime call with ``args.stream`` and a correlation is a GPU kernel to HTA: its kernel
    has no CPU event left to be kept by, and the last-step filter drops both."""
    (r,) = hta_compat.analyze([_trace(tmp_path, HIP)])
    assert _times(r) == (10.0, 0.0, 10.0, 0.0)


def test_the_filter_follows_profiler_step_names_not_detected_steps(tmp_path: Path) -> None:
    """With no ProfilerStep in the traces HTA filters nothing, however many iterations fmdiag
    finds in them: the dump's HTA numbers are the unfiltered ones."""
    events = [_launch(10 + 100 * i, i + 1) for i in range(4)]
    events += [_kernel(20 + 100 * i, 30, i + 1) for i in range(4)]
    t = _trace(tmp_path, events)
    assert hta_compat.step_names(t) == set()
    analysis = pipeline.run(tmp_path, pipeline.Options(hta_compatible=True))
    assert analysis.hta == [hta_compat.rank_result(t, False)]
    assert _times(analysis.hta[0]) == (330.0, 210.0, 120.0, 0.0)


def test_a_rank_of_device_events_alone_is_not_filtered(tmp_path: Path) -> None:
    """HTA's filter leaves a rank with no CPU event at all (not even a runtime call) whole, while
    a rank with CPU events but no ProfilerStep keeps nothing."""
    steps = [_step(1, 0, 100), _step(2, 100, 50), _launch(10, 1), _kernel(20, 10, 1)]
    kb.write(tmp_path / "rank0.json", _doc(steps))
    alone = _doc([_kernel(20, 10, 1), _kernel(200, 10, 2)])
    alone["distributedInfo"] = {"rank": 1}
    kb.write(tmp_path / "rank1.json", alone)
    t0, t1 = read_trace(tmp_path / "rank0.json"), read_trace(tmp_path / "rank1.json")
    r0, r1 = hta_compat.analyze([t0, t1])
    assert _times(r0) == (10.0, 0.0, 10.0, 0.0)
    assert _times(r1) == (190.0, 170.0, 20.0, 0.0)
