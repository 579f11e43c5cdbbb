"""A trace's place in the parallel layout, from the process groups its framework named."""

from __future__ import annotations

import numpy as np

from fmdiag.analyzers.frames import kineto_steps
from fmdiag.analyzers.readers.kineto_reader import layout_of


def _meta(groups: list[tuple[str, list[int]]]) -> dict[str, object]:
    return {
        "distributedInfo": {
            "backend": "nccl",
            "rank": 5,
            "world_size": 8,
            "pg_config": [
                {
                    "pg_name": str(i),
                    "pg_desc": desc,
                    "backend_config": "cuda:nccl",
                    "pg_size": len(r),
                    "ranks": r,
                }
                for i, (desc, r) in enumerate(groups)
            ],
        }
    }


def test_megatron_groups_give_each_coordinate() -> None:
    # tp=2, pp=2, dp=2 in Megatron's order (tp fastest, then dp, then pp): rank 5 = tp 1, dp 0, pp 1
    meta = _meta(
        [
            ("default_pg", list(range(8))),
            ("TENSOR_MODEL_PARALLEL_GROUP", [4, 5]),
            ("DATA_PARALLEL_GROUP", [5, 7]),
            ("DATA_PARALLEL_GROUP_WITH_CP", [5, 7]),
            ("PIPELINE_MODEL_PARALLEL_GROUP", [1, 5]),
            ("TENSOR_MODEL_PARALLEL_GROUP", [6, 7]),  # another group, without rank 5
            ("EMBEDDING_GROUP", [1, 5]),
        ]
    )
    assert layout_of(meta, 5) == {"tp_rank": 1, "dp_rank": 0, "pp_rank": 1}


def test_device_mesh_dimensions_and_hsdp() -> None:
    meta = _meta(
        [("mesh_pp", [1, 5]), ("mesh_tp", [5, 6]), ("mesh_dp_replicate", [5, 13]), ("mesh_dp_shard", [3, 5])]
    )
    # replicate index 0, shard index 1 of 2: dp_rank 1
    assert layout_of(meta, 5) == {"pp_rank": 1, "tp_rank": 0, "dp_rank": 1}
    assert layout_of(_meta([("mesh_dp", [1, 3, 5])]), 5) == {"dp_rank": 2}


def test_unnamed_groups_and_malformed_config_say_nothing() -> None:
    # PyTorch before 2.3 writes "undefined"; a trace without distributedInfo; a broken pg_config
    assert layout_of(_meta([("undefined", [4, 5]), ("default_pg", list(range(8)))]), 5) == {}
    assert layout_of({}, 0) == {}
    assert layout_of({"distributedInfo": {"pg_config": "x"}}, 0) == {}
    assert layout_of({"distributedInfo": {"pg_config": [7, {"pg_desc": "mesh_pp"}]}}, 0) == {}


def test_the_trace_frame_carries_the_layout_for_the_stage_rules() -> None:
    kb = {
        "rank": np.array([0, 1]),
        "step": np.array([3, 3]),
        "partial": np.array([False, False]),
        "start_us": np.array([0.0, 0.0]),
        "span_s": np.array([1.0, 1.0]),
        "compute_s": np.array([0.5, 0.9]),
        "comm_exposed_s": np.array([0.4, 0.05]),
        "idle_host_wait_s": np.array([0.0, 0.0]),
    }
    frame = kineto_steps.step_frame(kb, layouts={1: {"pp_rank": 1, "tp_rank": 0}})
    assert np.isnan(frame["pp_rank"][0]) and frame["pp_rank"][1] == 1.0
    assert frame["tp_rank"][1] == 0.0
    assert "pp_rank" not in kineto_steps.step_frame(kb)
