"""The cluster model's physics: who waits for whom, what the fabric and storage carry."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.simulate.cluster.model import NS, ClusterModel
from fmdiag.simulate.cluster.scenarios import SCENARIOS, FaultKind
from fmdiag.simulate.dump import SimOptions, build_model

EXPECTED_CLASS = {
    "healthy": {"compute"},
    "network-degraded": {"network"},
    "network-node": {"network"},
    "io-lustre": {"io"},
    "checkpoint-stall": {"compute", "io"},
    "host-dataloader": {"host"},
    "straggler-thermal": {"straggler"},
    "straggler-power": {"straggler"},
    "mixed": {"compute", "io", "network", "straggler", "host"},
}


def _model(small_opts: Callable[..., SimOptions], scenario: str, **kw: object) -> ClusterModel:
    return build_model(small_opts(scenario, **kw))


def test_every_scenario_has_an_expected_class() -> None:
    assert set(EXPECTED_CLASS) == set(SCENARIOS)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_truth_classes_follow_the_injected_fault(
    small_opts: Callable[..., SimOptions], scenario: str
) -> None:
    steps = 60 if scenario == "mixed" else 24
    m = _model(small_opts, scenario, steps=steps)
    c = m.run(steps)
    assert set(c.truth_class) == EXPECTED_CLASS[scenario]
    if scenario == "checkpoint-stall":
        ckpt = [i for i, cls in enumerate(c.truth_class) if cls == "io"]
        assert ckpt == [9, 19]  # every 10th step
    for cls, fault in zip(c.truth_class, c.truth_fault.tolist(), strict=True):
        assert (cls == "compute") == (fault == -1)


def test_same_seed_same_arrays_other_seed_differs(small_opts: Callable[..., SimOptions]) -> None:
    a = _model(small_opts, "mixed").run(24)
    b = _model(small_opts, "mixed").run(24)
    c = _model(small_opts, "mixed", seed=4).run(24)
    for name in ("end", "efa_bytes", "read_latency", "impaired_events"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.end, c.end)


def test_step_time_is_the_slowest_ranks_path(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "straggler-thermal")
    c = m.run(24)
    # The collective starts when the last rank arrives and ends for everyone at once.
    np.testing.assert_array_equal(c.coll_start, c.arrive.max(axis=1))
    assert (c.coll_end == c.coll_end[:, :1]).all()
    # Each rank's step is its own path: previous end, data, forward, backward, wait, optimizer.
    np.testing.assert_array_equal(c.start[1:], c.end[:-1])
    total = sum(c.phases().values())
    np.testing.assert_array_equal(total, c.end - c.start)


def test_the_straggler_waits_least_and_its_peers_wait_for_it(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "straggler-thermal")
    c = m.run(24)
    t = m.targets[0]
    slow = m.topo.rank(t.node, t.gpu)
    ph = {k: v / NS for k, v in c.phases().items()}
    compute = ph["forward"] + ph["backward"]
    others = [r for r in range(m.hw.world_size) if r != slow]
    # The throttled rank computes 1980/1260 times longer than its peers...
    ratio = compute[:, slow] / np.median(compute[:, others], axis=1)
    assert np.allclose(ratio, 1980 / 1260, rtol=0.05)
    # ...arrives last every step, so it shows the least exposed communication...
    assert (ph["comm_exposed"].argmin(axis=1) == slow).all()
    # ...while every peer waits inside the collective for about its extra compute.
    extra = compute[:, slow] - np.median(compute[:, others], axis=1)
    waited = np.median(ph["comm_exposed"][:, others], axis=1) - ph["comm_exposed"][:, slow]
    np.testing.assert_allclose(waited, extra, rtol=0.1)
    assert (c.sm_clock[:, slow] == 1260).all() and (c.reasons[:, slow] == 0x48).all()
    assert (c.sm_clock[:, others] == 1980).all() and (c.reasons[:, others] == 0).all()


def test_efa_bytes_are_the_ring_allreduce_volume(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "healthy")
    c = m.run(24)
    n = m.hw.world_size
    volume = 2 * (n - 1) / n * m.wl.grad_bytes
    per_node = c.efa_bytes.sum(axis=2)
    np.testing.assert_allclose(per_node, volume, rtol=0.01)
    # The transfer takes its bytes over the node's (efficiency-limited) fabric bandwidth.
    bw = m.hw.efa_node_gbps * 1e9 / 8 * m.hw.efa_efficiency
    transfer = (c.coll_end[:, 0] - c.coll_start) / NS
    np.testing.assert_allclose(np.median(transfer), volume / bw, rtol=0.05)


def test_one_node_uses_no_fabric(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "network-node", nodes=1)
    c = m.run(8)
    assert c.efa_bytes.sum() == 0
    assert set(c.truth_class) == {"compute"}


def test_impaired_device_slows_everyone_and_shows_errors(small_opts: Callable[..., SimOptions]) -> None:
    healthy = _model(small_opts, "healthy").run(24)
    m = _model(small_opts, "network-node")
    c = m.run(24)
    t = m.targets[0]
    ratio = np.median(c.coll_end[:, 0] - c.coll_start) / np.median(
        healthy.coll_end[:, 0] - healthy.coll_start
    )
    assert 5 < ratio < 10  # 12% of the bandwidth on the slowest channel
    mask = np.zeros(c.retrans_rate.shape[1:], bool)
    mask[t.node, list(t.efa)] = True
    assert (c.retrans_rate[:, mask] > 0.01).all() and (c.retrans_rate[:, ~mask] < 1e-4).all()
    assert c.impaired_events[:, mask].sum() > 0 and c.impaired_events[:, ~mask].sum() == 0
    # Same volume as healthy: only the time changes.
    np.testing.assert_allclose(c.efa_bytes.sum(axis=2), healthy.efa_bytes.sum(axis=2), rtol=0.01)


def test_slow_ost_stretches_data_wait_not_compute(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "io-lustre")
    c = m.run(24)
    ph = {k: v / NS for k, v in c.phases().items()}
    assert np.median(ph["data_wait"][4:]) > 0.5
    assert np.median(ph["forward"] + ph["backward"]) < 1.05 * (m.wl.forward_s + m.wl.backward_s)
    assert (c.io_time > c.cpu_time).all()
    lat = c.read_latency.mean(axis=(0, 1))
    assert lat.argmax() == m.targets[0].ost and lat.max() > 20 * lat.min()
    # Every batch is read whole: samples x sample size per rank per step.
    per_node = m.hw.gpus_per_node * m.wl.samples_per_rank * m.wl.sample_bytes
    np.testing.assert_allclose(c.read_bytes.sum(axis=2), per_node)


def test_cpu_starved_loader_has_no_storage_cause(small_opts: Callable[..., SimOptions]) -> None:
    c = _model(small_opts, "host-dataloader").run(24)
    assert (c.cpu_time > 10 * c.io_time).all()
    assert np.median((c.dw_end - c.start)[4:]) / NS > 0.3


def test_chunks_continue_where_the_previous_ended(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "healthy")
    a = m.run(10)
    b = m.run(10)
    np.testing.assert_array_equal(b.start[0], a.end[-1])
    assert b.steps[0] == 10


@settings(max_examples=25)
@given(
    scenario=st.sampled_from(sorted(SCENARIOS)),
    nodes=st.integers(1, 3),
    gpus=st.integers(1, 3),
    efa=st.integers(1, 3),
    steps=st.integers(1, 12),
    seed=st.integers(0, 2**31),
)
def test_invariants_hold_for_any_small_cluster(
    scenario: str, nodes: int, gpus: int, efa: int, steps: int, seed: int
) -> None:
    opts = SimOptions(
        scenario=scenario, nodes=nodes, gpus=gpus, efa_devices=efa, osts=2, steps=steps, seed=seed
    )
    m = build_model(opts)
    c = m.run(steps)
    for name, ns in c.phases().items():
        assert (ns >= 0).all(), name
    assert (c.load_b >= c.load_a).all() and (np.diff(c.load_b, axis=0) >= 0).all()
    assert (np.diff(c.coll_end[:, 0]) > 0).all()
    assert len(c.truth_class) == steps
    for f, t in zip(m.scenario.faults, m.targets, strict=True):
        if f.kind in (FaultKind.GPU_THERMAL, FaultKind.GPU_POWER):
            assert 0 <= t.node < nodes and 0 <= t.gpu < gpus
