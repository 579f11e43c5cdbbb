"""Stragglers with no hardware bit: a CPU co-tenant, host memory pressure, Python GC.

Each must slow its ranks by the host (their GPUs idle, their kernels take no longer), make
every other rank wait, carry truth ``straggler`` with its cause and culprit, and show only the
signals a real node would: CPU time and CPU pressure for the co-tenant, memory pressure for
reclaim, nothing at all for garbage collection.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmdiag import dumpformat
from fmdiag.simulate.cluster.kineto import KinetoOptions
from fmdiag.simulate.cluster.scenarios import HW_POWER_BRAKE, HW_SLOWDOWN, HW_THERMAL, FaultKind
from fmdiag.simulate.dump import DEFAULT_START_NS, DumpResult

DumpOf = Callable[..., tuple[Path, DumpResult]]
HW_BITS = HW_SLOWDOWN | HW_THERMAL | HW_POWER_BRAKE
CASES = {
    "straggler-cpu-neighbour": FaultKind.CPU_CONTENTION,
    "straggler-memory-pressure": FaultKind.MEMORY_PRESSURE,
    "straggler-python-gc": FaultKind.PYTHON_GC,
}


def _increase(out: Path, metric: str, **labels: str) -> dict[str, float]:
    """Per node, how much a host counter grew over the run."""
    t = pd.read_parquet(out / "metrics" / "host.parquet")
    t = t[t.metric == metric]
    for k, v in labels.items():
        t = t[t[k] == v]
    series = ["instance", "pid"] if "pid" in t.columns else ["instance"]
    grew = (
        t.sort_values("timestamp").groupby(series, observed=True).value.agg(lambda v: v.iloc[-1] - v.iloc[0])
    )
    per_node = grew.groupby(level="instance", observed=True).sum()
    return {str(k): float(v) for k, v in per_node.items()}


@pytest.mark.parametrize("scenario", list(CASES))
def test_truth_names_the_cause_and_its_culprit(dump_of: DumpOf, scenario: str) -> None:
    out, res = dump_of(scenario)
    truth = dumpformat.read_truth(out / dumpformat.TRUTH_FILE)
    fault = truth["faults"][0]
    assert fault["kind"] == CASES[scenario].value and fault["class"] == "straggler"
    t = res.model.targets[0]
    host = res.model.topo.hostnames[t.node]
    assert fault["culprit"]["node"] == host
    if CASES[scenario] is FaultKind.PYTHON_GC:
        assert fault["culprit"]["rank"] == res.model.topo.rank(t.node, t.gpu)
    else:
        assert "rank" not in fault["culprit"]  # a node-wide cause: every rank of it
    on = [s for s in truth["steps"] if s["step"] >= fault["first_step"] + 1]
    assert sum(s["class"] == "straggler" for s in on) >= 0.7 * len(on)
    assert all(s["culprit"] == fault["culprit"] for s in on if s["class"] == "straggler")


@pytest.mark.parametrize("scenario", list(CASES))
def test_the_gpus_idle_and_no_clock_bit_is_set(dump_of: DumpOf, scenario: str) -> None:
    _, res = dump_of(scenario)
    m, c = res.model, res.chunk
    t = m.targets[0]
    hit = (
        [m.topo.rank(t.node, t.gpu)]
        if CASES[scenario] is FaultKind.PYTHON_GC
        else [m.topo.rank(t.node, g) for g in range(m.hw.gpus_per_node)]
    )
    others = [r for r in range(m.hw.world_size) if r not in hit]
    late = slice(12, None)
    idle = (c.idle_fwd_ns + c.idle_bwd_ns)[late]
    # Their GPUs idle waiting for the host, their kernels take no longer than their peers'.
    assert np.all(idle[:, others] == 0) and np.median(idle[:, hit]) > 0.1 * np.median(c.compute_ns[late])
    compute = c.compute_ns[late]
    assert np.median(compute[:, hit]) == pytest.approx(np.median(compute[:, others]), rel=0.05)
    assert not np.any(c.reasons & HW_BITS)
    # Everyone else waits for them (in FSDP's gathers and the exposed reductions).
    ph = c.phases()
    waited = (
        c.end - c.start - ph["data_wait"] - ph["optimizer"] - c.compute_ns - c.idle_fwd_ns - c.idle_bwd_ns
    )[late]
    assert np.median(waited[:, others]) > np.median(waited[:, hit]) + 0.1e9


def test_a_cpu_co_tenant_shows_in_cpu_time_and_cpu_pressure_only(dump_of: DumpOf) -> None:
    out, res = dump_of("straggler-cpu-neighbour")
    host = res.model.topo.hostnames[res.model.targets[0].node]
    cpu = _increase(out, "fmdiag_host_pressure_stall_seconds_total", resource="cpu", kind="some")
    mem = _increase(out, "fmdiag_host_pressure_stall_seconds_total", resource="memory", kind="some")
    user = _increase(out, "fmdiag_host_cpu_seconds_total", mode="user")
    rest = [h for h in cpu if h != host]
    assert cpu[host] > 10 * max(cpu[h] for h in rest)
    assert user[host] > 5 * max(user[h] for h in rest)
    assert mem[host] == pytest.approx(np.median([mem[h] for h in rest]), rel=0.05)
    # The job's own processes spent no more CPU there: the co-tenant's time is not theirs.
    proc = _increase(out, "fmdiag_process_cpu_seconds_total")
    assert proc[host] < 1.2 * np.median([proc[h] for h in rest])
    # PSI "some" never exceeds the wall time it is measured over.
    span = (res.chunk.end.max() - res.chunk.start.min()) / 1e9
    assert cpu[host] < span


def test_memory_pressure_shows_in_memory_pressure_only(dump_of: DumpOf) -> None:
    out, res = dump_of("straggler-memory-pressure")
    host = res.model.topo.hostnames[res.model.targets[0].node]
    mem = _increase(out, "fmdiag_host_pressure_stall_seconds_total", resource="memory", kind="some")
    full = _increase(out, "fmdiag_host_pressure_stall_seconds_total", resource="memory", kind="full")
    cpu = _increase(out, "fmdiag_host_pressure_stall_seconds_total", resource="cpu", kind="some")
    rest = [h for h in mem if h != host]
    assert mem[host] > 10 * max(mem[h] for h in rest) and full[host] > 5 * max(full[h] for h in rest)
    assert full[host] < mem[host]
    assert cpu[host] == pytest.approx(np.median([cpu[h] for h in rest]), rel=0.1)


def test_garbage_collection_shows_nowhere_but_in_the_timing(dump_of: DumpOf) -> None:
    m_out, res = dump_of("straggler-python-gc")
    host = res.model.topo.hostnames[res.model.targets[0].node]
    for resource in ("cpu", "memory", "io"):
        psi = _increase(m_out, "fmdiag_host_pressure_stall_seconds_total", resource=resource, kind="some")
        rest = [psi[h] for h in psi if h != host]
        assert min(rest) * 0.9 <= psi[host] <= max(rest) * 1.1, resource


def test_the_collecting_rank_s_trace_shows_the_pause_before_its_forward(dump_of: DumpOf) -> None:
    _, probe = dump_of("straggler-python-gc")
    t = probe.model.targets[0]
    rank = probe.model.topo.rank(t.node, t.gpu)
    kin = KinetoOptions(ranks=(rank,), first_step=8, last_step=10, detail="compact", gzip=True)
    out, res = dump_of("straggler-python-gc", kineto=kin)
    doc = json.loads(gzip.decompress((out / "kineto" / f"rank{rank}.json.gz").read_bytes()))
    base = doc["baseTimeNanoseconds"]
    c = res.chunk
    dw1 = int(c.dw_end[8, rank]) + DEFAULT_START_NS
    f1 = int(c.fwd_end[8, rank]) + DEFAULT_START_NS
    starts = sorted(
        base + float(e["ts"]) * 1e3
        for e in doc["traceEvents"]
        if e.get("cat") == "kernel" and "nccl" not in e["name"] and dw1 <= base + float(e["ts"]) * 1e3 < f1
    )
    pause = float(c.idle_fwd_ns[8, rank])
    assert pause > 0.2e9
    assert starts[0] - dw1 == pytest.approx(pause, abs=1e4)
