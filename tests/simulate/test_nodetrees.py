"""--node-trees: the rendered files, read back by a small reader written here, match the model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fmdiag.simulate.cluster.instruments import EFA_SRD_COUNTERS
from fmdiag.simulate.cluster.signals import Signals
from fmdiag.simulate.dump import DumpResult, SimOptions, render_trees

DumpOf = Callable[..., tuple[Path, DumpResult]]


def efa_counters(root: Path) -> dict[str, dict[str, int]]:
    """device -> port-1 hw_counters, for devices whose PCI vendor is Amazon's."""
    out = {}
    for dev in sorted((root / "sys" / "class" / "infiniband").iterdir()):
        if (dev / "device" / "vendor").read_text().strip() != "0x1d0f":
            continue
        hw = dev / "ports" / "1" / "hw_counters"
        out[dev.name] = {f.name: int(f.read_text()) for f in hw.iterdir() if f.name != "lifespan"}
    return out


def stats_file(path: Path) -> dict[str, list[int]]:
    """name -> [count, min, max, sum, ...] from a Lustre stats file (header lines skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "samples":
            out[parts[0]] = [int(parts[1])] + [int(x) for x in parts[4:]]
    return out


def osc_dirs(root: Path, version: str) -> list[Path]:
    base = root / ("proc/fs/lustre/osc" if version == "2.10" else "sys/kernel/debug/lustre/osc")
    return sorted(base.iterdir())


@pytest.mark.parametrize(("version", "srd"), [("2.14", True), ("2.10", False)])
def test_trees_hold_the_models_counters(dump_of: DumpOf, version: str, srd: bool) -> None:
    out, res = dump_of("network-node", node_trees=True, lustre_version=version, efa_srd=srd)
    m, c = res.model, res.chunk
    sig = Signals(m, c)
    t_end = int(c.end.max())
    snap = sig.at([t_end])
    for node, host in enumerate(m.topo.hostnames):
        root = out / "nodes" / host
        efa = efa_counters(root)
        assert list(efa) == sorted(d.name for d in m.topo.efa(node))
        for dev in m.topo.efa(node):
            files = efa[dev.name]
            assert files["tx_bytes"] == int(snap.efa["tx_bytes"][0, node, dev.index])
            assert all((name in files) == srd for name in EFA_SRD_COUNTERS)
        # Lustre: per-OST read bytes sum to what the node's llite read.
        osc = [stats_file(d / "stats") for d in osc_dirs(root, version)]
        assert len(osc) == m.hw.osts_per_fs
        total = sum(s["read_bytes"][3] for s in osc)
        assert total == pytest.approx(float(snap.llite[0]["read_bytes.sum"][0, node]), rel=1e-6)
        # GPUs: the NVML state the fake serves.
        state = json.loads((root / "nvml" / "state.json").read_text())
        assert [g["uuid"] for g in state["gpus"]] == [g.uuid for g in m.topo.gpus(node)]
        # Host: /proc/stat's cpu line adds up to uptime x CPUs.
        cpu = [int(x) for x in (root / "proc" / "stat").read_text().splitlines()[0].split()[1:]]
        uptime = float((root / "proc" / "uptime").read_text().split()[0])
        assert sum(cpu) / 100 == pytest.approx(uptime * m.hw.ncpus, rel=0.01)
        # The node's step spool holds its ranks' records.
        assert len(list((root / "spool").glob("*.jsonl"))) == m.hw.gpus_per_node


def test_impaired_node_shows_retransmits_in_its_tree(dump_of: DumpOf) -> None:
    out, res = dump_of("network-node", node_trees=True, lustre_version="2.14", efa_srd=True)
    t = res.model.targets[0]
    bad_host = res.model.topo.hostnames[t.node]
    bad_dev = res.model.topo.efa(t.node)[t.efa[0]].name
    retrans = {}
    for host in res.model.topo.hostnames:
        for dev, files in efa_counters(out / "nodes" / host).items():
            retrans[(host, dev)] = files["retrans_pkts"] / files["tx_pkts"]
    worst = max(retrans, key=retrans.__getitem__)
    assert worst == (bad_host, bad_dev)
    others = [v for k, v in retrans.items() if k != worst]
    # Counters include the node's history before the job, which dilutes the ratio; the bad
    # device still stands out, and its peers on other nodes show more than its node-mates.
    assert retrans[worst] > 4 * max(others)
    mates = [v for (h, d), v in retrans.items() if h == bad_host and d != bad_dev]
    peers = [v for (h, _), v in retrans.items() if h != bad_host]
    assert min(peers) > max(mates)


def test_throttled_gpu_in_nvml_state(dump_of: DumpOf, small_opts: Callable[..., SimOptions]) -> None:
    out, res = dump_of("straggler-power")
    m = res.model
    t = m.targets[0]
    # Render the trees mid-run, while the GPUs are busy (a dump renders the end of the run).
    sig = Signals(m, res.chunk)
    mid = int(res.chunk.end[12].max())
    render_trees(out / "mid", m, sig, small_opts("straggler-power"), mid)
    state = json.loads((out / "mid" / m.topo.hostnames[t.node] / "nvml" / "state.json").read_text())
    gpus = {g["index"]: g for g in state["gpus"]}
    hot = gpus[t.gpu]
    assert hot["clocks_event_reasons"] & 0x88 == 0x88 and hot["sm_clock_mhz"] == 1050
    assert hot["power_violation_us"] > 0
    for i, g in gpus.items():
        if i != t.gpu:
            assert g["clocks_event_reasons"] & 0x88 == 0 and g["power_violation_us"] == 0
    np.testing.assert_equal(state["hostname"], m.topo.hostnames[t.node])
