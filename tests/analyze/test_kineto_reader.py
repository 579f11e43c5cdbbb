"""Kineto traces into frames: hand-written files in the real formats, and builder-made variations."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from analyze import kineto_builder as kb
from analyze.helpers import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmdiag.analyzers.errors import InputError
from fmdiag.analyzers.frames import kineto_breakdown
from fmdiag.analyzers.readers import kineto_frame as kf
from fmdiag.analyzers.readers.kineto_reader import RANK_ASSUMED, kind_of, read_trace


def test_new_format_keeps_gpu_launch_and_step_columns() -> None:
    t = read_trace(FIXTURES / "handmade_new.json")
    assert (t.rank, t.rank_from, t.base_ns) == (5, "distributedInfo", 1764000000000000000)
    assert t.warnings == []
    assert list(t.steps["step"]) == [1, 2, 3]
    # 9 kernels/copies + 1 GPU annotation; ac2g flows, instants and metadata are only counted
    assert t.counts["gpu"] == 10 and t.counts["not_complete"] == 7
    names = [t.names[i] for i in t.gpu["name"]]
    kinds = dict(zip(names, t.gpu["kind"].tolist(), strict=False))
    assert kinds["nccl:all_reduce"] == kf.KIND_NONE
    assert kinds["Memcpy HtoD (Pinned -> Device)"] == kf.KIND_MEMORY
    assert kinds[next(n for n in names if n.startswith("ncclDevKernel"))] == kf.KIND_COMM
    assert 130.5 in t.gpu["ts"].tolist()  # fractional µs kept
    assert set(t.launch["corr"].tolist()) >= {1, 2, 3, 4, 5, 6, 7, 8, 9, 100}
    assert not t.cpu_only


def test_old_categories_and_rank_from_file_name(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        t = read_trace(FIXTURES / "rank2_old_categories.json")
    assert (t.rank, t.rank_from, t.base_ns) == (2, "file name", None)
    assert "rank 2 taken from the file name" in caplog.text
    assert list(t.steps["step"]) == [7, 8]  # ProfilerStep as an old "Operator" event
    assert t.gpu["cat"].tolist() == [
        kf.CAT_KERNEL,
        kf.CAT_MEMCPY,
        kf.CAT_KERNEL,
        kf.CAT_MEMSET,
        kf.CAT_KERNEL,
    ]
    assert t.gpu["kind"].tolist() == [
        kf.KIND_COMPUTE,
        kf.KIND_MEMORY,
        kf.KIND_COMM,
        kf.KIND_MEMORY,
        kf.KIND_COMPUTE,
    ]


def test_cpu_only_trace_is_a_clear_message_not_a_crash() -> None:
    t = read_trace(FIXTURES / "cpu_only.json")
    assert t.cpu_only
    assert any("CPU-only trace" in w and "ProfilerActivity.CUDA" in w for w in t.warnings)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)", kf.KIND_COMM),
        ("ncclKernel_AllReduce_RING_LL_Sum_float(ncclWorkElem)", kf.KIND_COMM),
        ("void ncclKernel_SendRecv(ncclWorkElem)", kf.KIND_COMM),
        ("sm90_xmma_gemm_bf16bf16", kf.KIND_COMPUTE),
    ],
)
def test_communication_kernel_names_old_and_new(name: str, kind: int) -> None:
    assert kind_of(name, kf.CAT_KERNEL) == kind


def test_no_rank_anywhere_is_rank_0_with_a_note(tmp_path: Path) -> None:
    """A single-process trace (no distributedInfo, PyTorch's default file name) is rank 0, as
    HTA reads it, and says so; --rank-from maps file names to ranks."""
    p = tmp_path / "host-a_1234.1700000000000.pt.trace.json"
    p.write_text('{"traceEvents": []}')
    t = read_trace(p)
    assert (t.rank, t.rank_from) == (0, RANK_ASSUMED)
    assert any("read as rank 0" in w and "--rank-from" in w for w in t.warnings)
    t = read_trace(p, re.compile(r"_(\d+)\."))
    assert (t.rank, t.rank_from) == (1234, "--rank-from")


def test_world_size_from_distributed_info_or_process_groups(tmp_path: Path) -> None:
    p = tmp_path / "rank3.json"
    p.write_text('{"distributedInfo": {"rank": 3, "world_size": 16}, "traceEvents": []}')
    assert read_trace(p).world_size == 16
    p.write_text(
        '{"distributedInfo": {"rank": 3, "pg_config": [{"pg_name": "0", "ranks": [0, 1, 2, 3, 4, 5]},'
        ' {"pg_name": "1", "ranks": [2, 3]}]}, "traceEvents": []}'
    )
    assert read_trace(p).world_size == 6
    p.write_text('{"traceEvents": []}')
    assert read_trace(p).world_size is None


def test_rocm_runtime_calls_with_a_stream_string_are_launches(tmp_path: Path) -> None:
    """ROCm's hip* runtime events carry ``"stream": "0x0"``: still host launches, never GPU work
    (``hipMemcpyWithStream`` once counted as a device memory copy)."""
    p = tmp_path / "rank0.json"
    events = [
        {
            "ph": "X",
            "cat": "cuda_runtime",
            "name": "hipMemcpyWithStream",
            "ts": 10,
            "dur": 60,
            "args": {"correlation": 117, "stream": "0x0"},
        },
        {
            "ph": "X",
            "cat": "gpu_memcpy",
            "name": "Memcpy HtoD (Host -> Device)",
            "ts": 20,
            "dur": 22,
            "args": {"correlation": 117, "stream": 0, "device": 0},
        },
    ]
    p.write_text(json.dumps({"traceEvents": events}))
    t = read_trace(p)
    assert t.launch["corr"].tolist() == [117]
    assert t.gpu["kind"].tolist() == [kf.KIND_MEMORY] and t.counts["gpu"] == 1


def test_non_numeric_timestamps_name_the_event(tmp_path: Path) -> None:
    p = tmp_path / "rank0.json"
    p.write_text('{"traceEvents": [{"ph": "M"}, {"ph": "X", "cat": "kernel", "ts": "12", "dur": 1}]}')
    with pytest.raises(InputError, match=r"event 1: 'ts'/'dur' must be numbers"):
        read_trace(p)


@pytest.mark.parametrize("compact", [False, True])
def test_builder_variations_read_the_same_columns(tmp_path: Path, compact: bool) -> None:
    plain = read_trace(kb.write(tmp_path / "a" / "rank3.json", kb.build(kb.Options(rank=3)), compact=compact))
    old = read_trace(
        kb.write(
            tmp_path / "b" / "rank3.json.gz",
            kb.build(
                kb.Options(
                    rank=3,
                    old_categories=True,
                    distributed_info=False,
                    base_time=False,
                    nccl_name=kb.OLD_NCCL,
                )
            ),
        )
    )
    assert old.rank == plain.rank == 3 and old.rank_from == "file name" and old.base_ns is None
    for col in ("ts", "dur", "stream", "corr", "cat", "kind"):
        assert np.array_equal(old.gpu[col], plain.gpu[col]), col
    assert np.array_equal(old.steps["step"], plain.steps["step"])


def test_cuda_graph_kernels_share_their_launch(tmp_path: Path) -> None:
    t = read_trace(kb.write(tmp_path / "rank0.json", kb.build(kb.Options(cuda_graph=True, steps=2))))
    graph = t.launch["corr"][[t.names[i] == "cudaGraphLaunch" for i in t.launch["name"]]]
    assert graph.size > 0
    per_corr = np.array([(t.gpu["corr"] == c).sum() for c in graph])
    assert (per_corr == 4).all()


def test_two_gpus_in_one_file(tmp_path: Path) -> None:
    t = read_trace(kb.write(tmp_path / "rank0.json", kb.build(kb.Options(devices=2, steps=2))))
    assert sorted(set(t.gpu["device"].tolist())) == [0, 1]


_MUTANTS = [
    ("ts", "12"),
    ("dur", None),
    ("dur", [1]),
    ("args", [1, 2]),
    ("args", "x"),
    ("name", 7),
    ("cat", None),
    ("cat", 3),
    ("ph", None),
    ("args", {"correlation": "x", "stream": "7"}),
    ("pid", {}),
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(_MUTANTS)), min_size=1, max_size=5))
def test_mutated_event_fields_give_a_trace_or_a_clear_error(
    tmp_path: Path, picks: list[tuple[int, tuple[str, object]]]
) -> None:
    doc = json.loads((FIXTURES / "handmade_new.json").read_text())
    events = doc["traceEvents"]
    for i, (field, value) in picks:
        events[i % len(events)][field] = value
    p = tmp_path / "rank4.json"
    p.write_text(json.dumps(doc))
    try:
        t = read_trace(p)
    except InputError as exc:
        assert str(exc).startswith(str(p)) and ("event" in str(exc))
        return
    assert t.rank == 5
    frame = kineto_breakdown.breakdown(t)  # and the breakdown of whatever was kept still holds
    parts = frame["compute_s"] + frame["comm_exposed_s"] + frame["memory_s"] + frame["idle_s"]
    assert np.allclose(parts, frame["span_s"], atol=1e-12)
