"""A written dump: step records in the documented format, metrics consistent with the model."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fmdiag import catalog, steprecord
from fmdiag.simulate.cluster.kineto import KinetoOptions
from fmdiag.simulate.cluster.model import NS
from fmdiag.simulate.cluster.scenarios import SCENARIOS
from fmdiag.simulate.dump import DumpResult, SimOptions, write_dump

DumpOf = Callable[..., tuple[Path, DumpResult]]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes(tmp_path: Path, small_opts: Callable[..., SimOptions]) -> None:
    kin = KinetoOptions(ranks=(0, 3), first_step=2, last_step=5, gzip=True, nccl_naming="old")
    opts = small_opts("mixed", kineto=kin, steps=30)
    write_dump(opts, tmp_path / "a")
    write_dump(opts, tmp_path / "b")
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert a[name] == b[name], name
    write_dump(small_opts("mixed", kineto=kin, steps=30, seed=4), tmp_path / "c")
    c = _tree_bytes(tmp_path / "c")
    assert c["truth.json"] != a["truth.json"]
    assert c["metrics/efa.parquet"] != a["metrics/efa.parquet"]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_step_records_are_valid_and_add_up(dump_of: DumpOf, scenario: str) -> None:
    out, res = dump_of(scenario)
    files = steprecord.step_files(out / "steps")
    assert len(files) == res.model.hw.world_size
    truth = json.loads((out / "truth.json").read_text())
    assert truth["scenario"] == scenario and truth["description"] == SCENARIOS[scenario].description
    assert [s["step"] for s in truth["steps"]] == list(range(24))
    for path in files:
        result = steprecord.read_file(path)
        assert result.errors == [] and not result.partial_tail
        recs = result.records
        assert [r.step for r in recs] == list(range(24))
        for r in recs:
            assert r.job == f"sim-{scenario}" and r.node.startswith("node-")
            wl = res.model.wl
            assert r.tokens == wl.samples_per_rank * wl.tokens_per_sample and r.samples == wl.samples_per_rank
            # Phases are printed from integer nanoseconds: they add up exactly.
            assert round(sum(r.phases.values()) * 1e9) == r.end_ns - r.start_ns
        assert all(a.end_ns == b.start_ns for a, b in itertools.pairwise(recs))


def test_all_ranks_share_the_collective_end(dump_of: DumpOf) -> None:
    out, _ = dump_of("straggler-power")
    recs = [steprecord.read_file(p).records for p in steprecord.step_files(out / "steps")]
    for step in range(24):
        ends = {r[step].end_ns - round(r[step].phases["optimizer"] * 1e9) for r in recs}
        assert len(ends) == 1  # end of the all-reduce, identical on every rank


def test_metrics_files_have_the_documented_shape(dump_of: DumpOf) -> None:
    out, _ = dump_of("healthy")
    for sub in ("gpu", "efa", "lustre", "host", "steps"):
        table = pq.read_table(out / "metrics" / f"{sub}.parquet")
        schema = table.schema
        assert schema.names[:3] == ["timestamp", "metric", "value"]
        assert str(schema.field("timestamp").type) == "double"
        assert str(schema.field("value").type) == "double"
        for name in schema.names[1:]:
            if name != "value":
                assert str(schema.field(name).type.value_type) == "string", name
        df = table.to_pandas()
        assert not df["value"].isna().any()
        assert "instance" in df.columns and set(df["instance"]) == {"node-000", "node-001", "node-002"}
        for metric in df["metric"].unique():
            spec = catalog.family_of(str(metric))
            assert spec is not None and spec.subsystem == sub, metric
            # Labels a series carries are the catalog's (+ instance, le for histograms).
            rows = df[df["metric"] == metric]
            used = {c for c in df.columns[3:] if (rows[c] != "").any()}
            assert used <= set(spec.all_labels) | {"instance", "le"}, (metric, used)
            # Required labels have a column; "" is an empty value, which Prometheus drops too.
            assert set(spec.labels) <= set(df.columns), (metric, used)


def _series(df: pd.DataFrame, metric: str, **labels: str) -> pd.Series:
    sel = df["metric"] == metric
    for k, v in labels.items():
        sel &= df[k] == v
    return df[sel].groupby("timestamp")["value"].sum()


def test_efa_bytes_match_the_collective_volume(dump_of: DumpOf) -> None:
    out, res = dump_of("healthy")
    df = pd.read_parquet(out / "metrics" / "efa.parquet")
    m, c = res.model, res.chunk
    tx = _series(df, "fmdiag_efa_tx_bytes_total", instance="node-001")
    n = m.hw.world_size
    per_step = m.wire_bytes_per_node
    assert per_step == pytest.approx((n - 1) / n * m.wl.grad_bytes / m.wl.units * (3 * m.wl.units - 1))
    # Between two scrapes the node sent one step's collective volume per step that finished.
    t = tx.index.to_numpy()
    ends = (c.coll_end[:, 0] + 1_748_822_400 * NS) / 1e9
    for a, b, va, vb in zip(t, t[1:], tx.to_numpy(), tx.to_numpy()[1:], strict=False):
        whole = ((ends > a) & (ends <= b)).sum()
        assert abs((vb - va) - whole * per_step) <= 1.01 * per_step  # one partial step at each edge
    total = tx.iloc[-1] - tx.iloc[0]
    assert total == pytest.approx(c.nsteps * per_step, rel=0.01)


def test_lustre_read_bytes_are_samples_times_sample_size(dump_of: DumpOf) -> None:
    out, res = dump_of("io-lustre")
    m, c = res.model, res.chunk
    df = pd.read_parquet(out / "metrics" / "lustre.parquet")
    per_node = m.hw.gpus_per_node * m.wl.samples_per_rank * m.wl.sample_bytes
    llite = _series(df, "fmdiag_lustre_llite_read_bytes_total", instance="node-002")
    osc = _series(df, "fmdiag_lustre_osc_read_bytes_total", instance="node-002")
    assert llite.iloc[-1] - llite.iloc[0] == pytest.approx(osc.iloc[-1] - osc.iloc[0], rel=1e-6)
    # The run consumed `steps` batches; up to `prefetch` of them were read before it started.
    read = llite.iloc[-1] - llite.iloc[0]
    assert (c.nsteps - m.wl.prefetch_batches) * per_node <= read + 1 <= (c.nsteps + 1) * per_node
    # The slow OST shows the latency: ost_read seconds per RPC far above the others'.
    lat = df[
        (df["metric"] == "fmdiag_lustre_osc_operation_latency_seconds_total")
        & (df["operation"] == "ost_read")
        & (df["instance"] == "node-002")
    ]
    per_ost = lat.groupby("ost", observed=True)["value"].agg(lambda s: s.iloc[-1] - s.iloc[0])
    slow = f"OST{m.targets[0].ost:04X}"
    assert per_ost.idxmax() == slow and per_ost.max() > 10 * per_ost.min()


def test_gpu_metrics_show_the_throttled_gpu(dump_of: DumpOf) -> None:
    out, res = dump_of("straggler-thermal")
    m = res.model
    t = m.targets[0]
    uuid = m.topo.gpus(t.node)[t.gpu].uuid
    df = pd.read_parquet(out / "metrics" / "gpu.parquet")
    reasons = df[df["metric"] == "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"]
    # Throttled from the first step to the end of the run (the last scrape is after it).
    hot = reasons[reasons["UUID"] == uuid]["value"].iloc[1:-1]
    assert ((hot.astype(int) & 0x48) == 0x48).all()
    others = reasons[reasons["UUID"] != uuid]["value"].astype(int)
    assert ((others & 0xC8) == 0).all()
    clock = df[(df["metric"] == "DCGM_FI_DEV_SM_CLOCK") & (df["Hostname"] == m.topo.hostnames[t.node])]
    busy = clock[
        (clock["timestamp"] > clock["timestamp"].min()) & (clock["timestamp"] < clock["timestamp"].max())
    ]
    # The throttle hunts around its 1260 MHz target.
    hot_clock = busy[busy["gpu"] == str(t.gpu)]["value"]
    assert len(hot_clock) and hot_clock.between(1215, 1305).all()
    viol = _series(df, "DCGM_FI_DEV_THERMAL_VIOLATION", UUID=uuid)
    span = viol.index[-2] - viol.index[0]
    assert (viol.iloc[-2] - viol.iloc[0]) / 1e9 == pytest.approx(
        span, rel=0.02
    )  # throttled all the time (ns)


def test_stalls_lower_gpu_activity(dump_of: DumpOf) -> None:
    healthy, _ = dump_of("healthy")
    io, _ = dump_of("io-lustre")

    def mean(out: Path, metric: str) -> float:
        df = pd.read_parquet(out / "metrics" / "gpu.parquet")
        inner = (df["timestamp"] > df["timestamp"].min() + 10) & (df["timestamp"] < df["timestamp"].max())
        rows = df[(df["metric"] == metric) & inner]
        return float(rows["value"].mean())

    assert mean(io, "DCGM_FI_PROF_SM_ACTIVE") < 0.75 * mean(healthy, "DCGM_FI_PROF_SM_ACTIVE")
    assert mean(io, "DCGM_FI_DEV_GPU_UTIL") < 0.75 * mean(healthy, "DCGM_FI_DEV_GPU_UTIL")
    assert mean(healthy, "DCGM_FI_DEV_GPU_UTIL") > 90


def test_host_signals_tell_cpu_from_storage(dump_of: DumpOf) -> None:
    def rates(scenario: str) -> dict[str, float]:
        out, _ = dump_of(scenario)
        df = pd.read_parquet(out / "metrics" / "host.parquet")
        res = {}
        for mode in ("user", "iowait"):
            s = _series(df, "fmdiag_host_cpu_seconds_total", instance="node-000", mode=mode)
            res[mode] = (s.iloc[-1] - s.iloc[1]) / (s.index[-1] - s.index[1])
        for resource in ("cpu", "io"):
            s = _series(
                df,
                "fmdiag_host_pressure_stall_seconds_total",
                instance="node-000",
                resource=resource,
                kind="some",
            )
            res[resource] = (s.iloc[-1] - s.iloc[1]) / (s.index[-1] - s.index[1])
        return res

    host, io, ok = rates("host-dataloader"), rates("io-lustre"), rates("healthy")
    assert host["user"] > 5 * ok["user"] and host["cpu"] > 10 * ok["cpu"]
    assert host["iowait"] < 2 * ok["iowait"] and host["io"] < 2 * ok["io"]
    assert io["iowait"] > 10 * ok["iowait"] and io["io"] > 10 * ok["io"]
    assert io["user"] < 2 * ok["user"]


def test_step_metrics_agree_with_the_records(dump_of: DumpOf) -> None:
    out, _ = dump_of("checkpoint-stall")
    df = pd.read_parquet(out / "metrics" / "steps.parquet")
    last_t = df["timestamp"].max()
    rows = df[(df["timestamp"] == last_t) & (df["rank"] == "4")]
    recs = steprecord.read_file(sorted((out / "steps").glob("*rank00004.jsonl"))[0]).records
    done = [r for r in recs if r.end_ns / 1e9 <= last_t]
    keys = rows["metric"].astype(str) + "/" + rows["phase"].astype(str) + "/" + rows["le"].astype(str)
    value = dict(zip(keys, rows["value"], strict=True))
    assert value["fmdiag_step_last//"] == done[-1].step
    assert value["fmdiag_step_duration_seconds_count//"] == len(done)
    ckpt = sum(r.phases.get("checkpoint", 0.0) for r in done)
    assert value["fmdiag_step_phase_seconds_total/checkpoint/"] == pytest.approx(ckpt, rel=1e-9)
    long = sum(1 for r in done if r.duration_s <= 2.0)
    assert value["fmdiag_step_duration_seconds_bucket//2.0"] == long


def test_existing_non_dump_folder_is_refused(tmp_path: Path, small_opts: Callable[..., SimOptions]) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an fmdiag simulate dump"):
        write_dump(small_opts("healthy", steps=2), tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_rewriting_a_dump_replaces_it(tmp_path: Path, small_opts: Callable[..., SimOptions]) -> None:
    write_dump(small_opts("healthy", nodes=3, steps=3), tmp_path)
    write_dump(small_opts("healthy", nodes=1, steps=3), tmp_path)
    assert len(list((tmp_path / "steps").iterdir())) == 2
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["parameters"]["hardware"]["nodes"] == 1
    assert np.isfinite(truth["nominal"]["step_s"])


@pytest.mark.parametrize("scenario", ["straggler-power", "straggler-thermal"])
def test_node_trees_show_the_throttled_gpu(dump_of: DumpOf, scenario: str) -> None:
    # The trees are a snapshot at the run's end; a hardware throttle does not stop with the
    # job, so the fake NVML state must still name the culprit GPU (reasons, lower clock).
    out, res = dump_of(scenario, node_trees=True)
    m = res.model
    fault, t = m.scenario.faults[0], m.targets[0]
    for node, host in enumerate(m.topo.hostnames):
        state = json.loads((out / "nodes" / host / "nvml" / "state.json").read_text())
        for gpu in state["gpus"]:
            if (node, gpu["index"]) == (t.node, t.gpu):
                assert gpu["clocks_event_reasons"] & fault.clocks_event_reasons == fault.clocks_event_reasons
                assert abs(gpu["sm_clock_mhz"] - fault.sm_clock_mhz) <= 45 or gpu["sm_clock_mhz"] == 345
            else:
                assert gpu["clocks_event_reasons"] & 0xC8 == 0
