"""The cluster model's physics: who waits for whom, what the fabric and storage carry.

FLOPs, memory and the presets have their own tests in test_physics.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmdiag.simulate.cluster.model import LOST_COMM, LOST_DATA, NS, ClusterModel
from fmdiag.simulate.cluster.physics import DEFAULT_JOB, get_job
from fmdiag.simulate.cluster.scenarios import SCENARIOS, FaultKind
from fmdiag.simulate.dump import SimOptions, build_model

#: Classes each scenario's truth shows; warm-up steps (slower compute hides more) may be compute.
EXPECTED_CLASS = {
    "healthy": {"compute"},
    "network-degraded": {"compute", "network"},
    "network-node": {"compute", "network"},
    "io-lustre": {"compute", "io"},
    "checkpoint-stall": {"compute", "io"},
    "host-dataloader": {"compute", "host"},
    "straggler-thermal": {"straggler"},
    "straggler-power": {"straggler"},
    "straggler-ramp": {"compute", "straggler"},
    "network-intermittent": {"compute", "network"},
    "network-volume": {"compute", "network"},
    "imbalance-data": {"compute"},
    "overlap": {"io", "straggler"},
    "mixed": {"compute", "io", "network", "straggler", "host"},
    "pp-stage-imbalance": {"compute"},  # the job's own split: lost time, named, but no fault class
    "pp-seq-imbalance": {"compute"},
    "pp-straggler": {"straggler"},
    "straggler-cpu-neighbour": {"compute", "straggler"},
    "straggler-memory-pressure": {"compute", "straggler"},
    "straggler-python-gc": {"straggler"},
    "moe-expert-imbalance": {"compute"},  # the router's doing: lost time, named, no fault class
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
    threshold = 0.1 * m.nominal_step_s()
    nf = len(m.scenario.faults)
    comm, data = nf + LOST_COMM, nf + LOST_DATA
    for i, (cls, fault) in enumerate(zip(c.truth_class, c.truth_fault.tolist(), strict=True)):
        faults = c.truth_lost[i, :nf]
        if fault >= 0:  # the named fault is the one whose removal gives back the most
            assert cls == m.scenario.faults[fault].verdict_class
            assert c.truth_lost[i, fault] == faults.max() >= threshold
        elif cls == "network":  # no fault: the collectives themselves outgrew the overlap
            assert (
                c.truth_lost[i, comm] >= max(threshold, c.truth_lost[i, data]) and (faults < threshold).all()
            )
        elif cls == "io":  # no fault: the reads outgrew the OSTs
            assert (
                c.truth_lost[i, data] >= max(threshold, c.truth_lost[i, comm]) and (faults < threshold).all()
            )
        else:
            assert cls == "compute" and (c.truth_lost[i] < threshold).all()


def test_overlapping_faults_name_the_dominant_and_list_the_other(
    small_opts: Callable[..., SimOptions],
) -> None:
    m = _model(small_opts, "overlap", steps=30)
    c = m.run(30)
    both = [i for i in range(30) if 10 <= i < 20]
    assert any(m.secondary(c, i) for i in both)
    for i in both:
        main = int(c.truth_fault[i])
        assert main in (0, 1) and all(j != main for j in m.secondary(c, i))


def test_a_normal_checkpoint_is_not_a_stall(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "healthy", steps=30)
    c = m.run(30)
    ckpt = (c.end - c.opt_end).max(axis=1) > 0
    assert ckpt.sum() == 1 and ckpt[24]  # every 25 steps by default
    assert set(c.truth_class) == {"compute"}


def test_same_seed_same_arrays_other_seed_differs(small_opts: Callable[..., SimOptions]) -> None:
    a = _model(small_opts, "mixed").run(24)
    b = _model(small_opts, "mixed").run(24)
    c = _model(small_opts, "mixed", seed=4).run(24)
    for name in ("end", "efa_bytes", "read_latency", "impaired_events"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.end, c.end)


def test_collectives_complete_for_everyone_once_the_last_rank_joins(
    small_opts: Callable[..., SimOptions],
) -> None:
    m = _model(small_opts, "straggler-thermal")
    c = m.run(24)
    # A collective starts when the last rank has joined (and the stream is free), for everyone.
    np.testing.assert_array_equal(c.coll_a, np.maximum(c.coll_issue.max(axis=1), c.coll_a))
    assert (c.coll_issue <= c.coll_a[:, None, :]).all()
    assert (np.diff(c.coll_b, axis=1) > 0).all()  # one stream, in order
    assert (c.coll_end == c.coll_end[:, :1]).all()
    # Each rank's step is its own path: previous end, data, forward, backward, wait, optimizer.
    np.testing.assert_array_equal(c.start[1:], c.end[:-1])
    total = sum(c.phases().values())
    np.testing.assert_array_equal(total, c.end - c.start)


def test_the_straggler_joins_last_and_its_peers_wait_for_it(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "straggler-thermal")
    c = m.run(24)
    t = m.targets[0]
    slow = m.topo.rank(t.node, t.gpu)
    ph = {k: v / NS for k, v in c.phases().items()}
    others = [r for r in range(m.hw.world_size) if r != slow]
    # Its compute sets the pace: every collective that waited for a rank waited for it...
    last = c.coll_issue.argmax(axis=1)
    waited = c.coll_issue.max(axis=1) > c.coll_issue.min(axis=1)
    assert waited.mean() > 0.5 and (last[waited] == slow).mean() > 0.95
    # ...it shows the least exposed communication, and its peers' steps are as long as its own.
    assert (ph["comm_exposed"].argmin(axis=1) == slow).all()
    step = c.end - c.start
    np.testing.assert_allclose(step[:, others], np.repeat(step[:, [slow]], len(others), axis=1), rtol=0.01)
    # Its clock hunts around the throttle target; healthy GPUs show only SW power/thermal bits.
    assert (np.abs(c.sm_clock[:, slow] - 1260) <= 45).all() and (c.reasons[:, slow] & 0x48 == 0x48).all()
    assert (c.sm_clock[:, others] == 1980).all() and not (c.reasons[:, others] & ~0x24).any()
    assert (c.reasons[:, others] & 0x4).any()


def test_efa_bytes_are_fsdp_collective_volume(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "healthy")
    c = m.run(24)
    n, wl = m.hw.world_size, m.wl
    unit = wl.grad_bytes / wl.units
    # FSDP moves about 3 x (n-1)/n x the parameters per step: gathers for forward and for
    # backward (the last unit is still gathered), reduce-scatters after backward.
    volume = (n - 1) / n * unit * (3 * wl.units - 1)
    per_node = c.efa_bytes.sum(axis=2)
    np.testing.assert_allclose(per_node, volume, rtol=0.01)
    # Each collective takes its share of the node's bytes over the efficiency-limited fabric.
    bw = m.hw.efa_node_gbps * 1e9 / 8 * m.hw.efa_efficiency
    busy = (c.coll_b - c.coll_a).sum(axis=1) / NS
    assert np.median(busy) == pytest.approx(volume / bw + m.nominal_comm_s() - volume / bw, rel=0.05)
    assert m.nominal_comm_s() > volume / bw


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
    busy = (c.coll_b - c.coll_a).sum(axis=1)
    ratio = np.median(busy[4:]) / np.median((healthy.coll_b - healthy.coll_a).sum(axis=1)[4:])
    assert 4 < ratio < 10  # 12% of the bandwidth on the slowest channel, latency unchanged
    mask = np.zeros(c.retrans_rate.shape[1:], bool)
    mask[t.node, list(t.efa)] = True
    peers = np.ones(c.retrans_rate.shape[1:], bool)
    peers[t.node] = False
    assert (c.retrans_rate[:, mask] > 0.01).all()
    # Its peers see retransmits toward it rise; the node's other devices stay clean.
    assert (c.retrans_rate[:, peers] > 1e-3).all() and (c.retrans_rate[:, peers] < 0.01).all()
    assert (c.retrans_rate[:, ~mask & ~peers] < 1e-4).all()
    assert c.impaired_events[:, mask].sum() > 0 and c.impaired_events[:, ~mask].sum() == 0
    # Same volume as healthy: only the time changes.
    np.testing.assert_allclose(c.efa_bytes.sum(axis=2), healthy.efa_bytes.sum(axis=2), rtol=0.01)


def test_slow_ost_stretches_data_wait_not_compute(small_opts: Callable[..., SimOptions]) -> None:
    m = _model(small_opts, "io-lustre")
    c = m.run(24)
    ph = {k: v / NS for k, v in c.phases().items()}
    assert np.median(ph["data_wait"][4:]) > 0.5
    # The ranks that waited longest for data compute as fast as ever (their peers, who wait
    # for them in the FSDP gathers, carry the stall in their forward instead).
    late = ph["data_wait"].argmax(axis=1)
    rows = np.arange(len(late))
    compute = (ph["forward"] + ph["backward"])[rows, late]
    assert np.median(compute[4:]) < 1.1 * (m.wl.forward_s + m.wl.backward_s)
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
    # An 8B model does not fit in fewer than four H100s: tiny clusters train the 1.3B job, and so
    # do clusters a pipeline preset cannot split into its stages.
    job = get_job(SCENARIOS[scenario].job or DEFAULT_JOB)
    small_job = "gpt-1.3b-ddp" if nodes * gpus < 4 or (nodes * gpus) % job.pp or gpus % job.ep else None
    opts = SimOptions(
        scenario=scenario, nodes=nodes, gpus=gpus, efa_devices=efa, osts=2, steps=steps, seed=seed,
        job_preset=small_job,
    )  # fmt: skip
    needs = {FaultKind.STAGE_IMBALANCE: "pipeline preset", FaultKind.EXPERT_IMBALANCE: "mixture-of-experts"}
    need = next((needs[f.kind] for f in SCENARIOS[scenario].faults if f.kind in needs), None)
    if small_job and need:
        with pytest.raises(ValueError, match=need):  # no pipeline to split, no experts to load
            build_model(opts)
        return
    m = build_model(opts)
    c = m.run(steps)
    for name, ns in c.phases().items():
        assert (ns >= 0).all(), name
    assert (c.load_b >= c.load_a).all() and (np.diff(c.load_b, axis=0) >= 0).all()
    assert (np.diff(c.coll_end[:, 0]) > 0).all()
    assert (c.coll_issue <= c.coll_a[:, None, :]).all()
    for r in range(nodes * gpus):  # each rank's collectives end in its stream's order
        assert (np.diff(c.coll_b[:, m.rank_slots(r)], axis=1) > 0).all()
    assert len(c.truth_class) == steps
    for f, t in zip(m.scenario.faults, m.targets, strict=True):
        if f.kind in (FaultKind.GPU_THERMAL, FaultKind.GPU_POWER):
            assert 0 <= t.node < nodes and 0 <= t.gpu < gpus
