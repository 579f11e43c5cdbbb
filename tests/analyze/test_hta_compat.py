"""--hta-compatible: HTA's definitions, checked against numbers HTA 0.6.1 printed for the same files.

The expected values below were worked out by hand from the fixture and agree with what
``traceinsight`` 0.6.1 (``TraceAnalysis(trace_dir=...)``) prints for it: its
``get_temporal_breakdown``, ``get_comm_comp_overlap`` and ``get_idle_time_breakdown``.
"""

from __future__ import annotations

import pytest
from analyze.helpers import FIXTURES

from fmdiag.analyzers import hta_compat
from fmdiag.analyzers.kineto_reader import read_trace


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
