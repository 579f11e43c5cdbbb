"""fmdiag's per-step GPU breakdown: numbers worked out by hand, and invariants on built traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from analyze import kineto_builder as kb
from analyze.helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdiag.analyzers.frames import kineto_breakdown
from fmdiag.analyzers.readers.kineto_reader import read_trace

US = 1e-6


def test_handmade_trace_by_hand() -> None:
    """handmade_new.json, worked out on paper (µs):

    A window starts at the step's host start when the GPU is idle there (else at its first
    kernel): the idle time before a step's first kernel is split at the host boundary.
    step 1 window [0, 100): compute 20+9+10, nccl [35,45] under compute for 5, memcpy [60,64],
    gaps [0,10) host wait (launched at 1), (30,31) kernel wait, (45,50) host wait (launched at
    47), (64,100) host wait (the next kernel launched at 101);
    step 2 window [100, 200): gap [100,110) host wait (launched at 101), gemm [110,130], nccl
    [130.5,140], gap 0.5 kernel wait, (140,200) host wait;
    step 3 (10 µs of a 100 µs step: partial) [200, 206): host wait [200,205) (launched at 201),
    gemm 1; the kernel at 305 is outside every step.
    """
    f = pd.DataFrame(kineto_breakdown.breakdown(read_trace(FIXTURES / "handmade_new.json"))).set_index("step")
    expect = {
        1: dict(
            span_s=100,
            compute_s=39,
            comm_s=10,
            comm_overlapped_s=5,
            comm_exposed_s=5,
            memory_s=4,
            idle_s=52,
            idle_host_wait_s=51,
            idle_kernel_wait_s=1,
            idle_other_s=0,
            gpu_events=5,
        ),
        2: dict(
            span_s=100,
            compute_s=20,
            comm_s=9.5,
            comm_overlapped_s=0,
            comm_exposed_s=9.5,
            memory_s=0,
            idle_s=70.5,
            idle_host_wait_s=70,
            idle_kernel_wait_s=0.5,
            idle_other_s=0,
            gpu_events=2,
        ),
        3: dict(span_s=6, compute_s=1, comm_s=0, idle_s=5, idle_host_wait_s=5, gpu_events=1),
    }
    for step, values in expect.items():
        for col, value in values.items():
            scale = 1 if col == "gpu_events" else US
            assert f.loc[step, col] == pytest.approx(value * scale, abs=1e-12), (step, col)
    assert f["partial"].tolist() == [False, False, True]
    assert (f["rank"] == 5).all()


def test_old_categories_by_hand() -> None:
    f = pd.DataFrame(
        kineto_breakdown.breakdown(read_trace(FIXTURES / "rank2_old_categories.json"))
    ).set_index("step")
    # step 7 [1010, 1510): sgemm 100, nccl [1100,1150] over sgemm for 10, copies hidden under nccl
    assert f.loc[7, "compute_s"] == pytest.approx(100 * US)
    assert f.loc[7, "comm_exposed_s"] == pytest.approx(40 * US)
    assert f.loc[7, "memory_s"] == pytest.approx(0.0)
    assert f.loc[7, "idle_host_wait_s"] == pytest.approx(360 * US)


def test_cpu_only_trace_has_no_rows() -> None:
    f = kineto_breakdown.breakdown(read_trace(FIXTURES / "cpu_only.json"))
    assert list(f) == list(kineto_breakdown.COLUMNS) and all(len(v) == 0 for v in f.values())


def test_a_larger_kernel_wait_threshold_moves_other_time_to_kernel_wait() -> None:
    t = read_trace(FIXTURES / "handmade_new.json")
    low = pd.DataFrame(kineto_breakdown.breakdown(t, kernel_wait_us=0.1)).set_index("step")
    assert low.loc[1, "idle_kernel_wait_s"] == 0 and low.loc[1, "idle_other_s"] == pytest.approx(1 * US)


def _check_partition(frame: pd.DataFrame) -> None:
    parts = frame["compute_s"] + frame["comm_exposed_s"] + frame["memory_s"] + frame["idle_s"]
    assert np.allclose(parts, frame["span_s"], rtol=0, atol=1e-12)
    idle = frame["idle_host_wait_s"] + frame["idle_kernel_wait_s"] + frame["idle_other_s"]
    assert np.allclose(idle, frame["idle_s"], rtol=0, atol=1e-12)
    assert np.allclose(frame["comm_overlapped_s"] + frame["comm_exposed_s"], frame["comm_s"], atol=1e-12)
    assert (frame[list(kineto_breakdown.TIME_COLUMNS)] >= -1e-12).all().all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 10_000),
    steps=st.integers(1, 4),
    layers=st.integers(1, 5),
    graph=st.booleans(),
    devices=st.integers(1, 2),
    stall=st.floats(0, 300),
)
def test_every_step_window_is_partitioned(
    tmp_path: Path, seed: int, steps: int, layers: int, graph: bool, devices: int, stall: float
) -> None:
    opts = kb.Options(
        seed=seed, steps=steps, layers=layers, cuda_graph=graph, devices=devices, host_stall_us=stall
    )
    t = read_trace(kb.write(tmp_path / f"rank{seed}.json", kb.build(opts)))
    frame = pd.DataFrame(kineto_breakdown.breakdown(t))
    assert len(frame) == (steps + 1) * devices - (devices - 1)  # the partial last step runs on device 0
    _check_partition(frame)
    assert sorted(frame["device"].unique().tolist()) == list(range(devices))
