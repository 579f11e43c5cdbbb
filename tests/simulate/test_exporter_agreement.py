"""The metric dump says what fmdiag's exporter says when it reads the rendered node trees.

Trees of one node are rendered at a scrape instant of the dump and read by the real EFA,
Lustre, host and GPU collectors (the GPU one through the fake NVML serving the tree's state);
every series they expose must be in metrics/ at that instant with the same value, and the
dump must hold nothing they would not expose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmdiag.exporters.collector import REGISTRY, CollectorContext, Paths
from fmdiag.exporters.collectors import discover
from fmdiag.simulate.cluster.model import NS
from fmdiag.simulate.cluster.signals import Signals
from fmdiag.simulate.dump import SimOptions, render_trees, write_dump

Key = tuple[str, tuple[tuple[str, str], ...]]
#: What the fake NVML cannot answer (no encoder/decoder calls) or needs XID events for.
GPU_ONLY_IN_DUMP = {"DCGM_FI_DEV_ENC_UTIL", "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS"}
#: What the exporter derives that the dump does not model: dcgm-exporter 4.x's health and
#: clock-event counts, and the ns clock-event fields (74, 76) every driver answers.
GPU_ONLY_EXPORTED = {
    "DCGM_EXP_GPU_HEALTH_STATUS",
    "DCGM_EXP_CLOCK_EVENTS_COUNT",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP_NS",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST_NS",
}


def _scrape(root: Path, host: str) -> dict[str, dict[Key, float]]:
    """One scrape of each collector on the tree, the GPU one first and open throughout (it
    tells the host collector which process uses which GPU); GPM ratios need two samples."""
    paths = Paths(
        sysfs=root / "sys", procfs=root / "proc", debugfs=root / "sys" / "kernel" / "debug", rootfs=root
    )
    # The dump spells the GPU node label as stored history does (Hostname): ask for that spelling.
    gpu_opts = {
        "simulated-state": str(root / "nvml" / "state.json"),
        "events": "off",
        "hostname-label": "Hostname",
    }
    shared = CollectorContext(paths=paths, hostname=host)  # as the CLI: one context, options per collector
    collectors = {
        name: REGISTRY[name](replace(shared, options=gpu_opts if name == "gpu" else {}))
        for name in ("gpu", "efa", "lustre", "host")
    }
    out: dict[str, dict[Key, float]] = {}
    try:
        collectors["gpu"].collect()
        for name, collector in collectors.items():
            # Prometheus stores a label with an empty value as no label at all; so does the dump.
            out[name] = {
                (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if v != ""))): s.value
                for f in collector.collect()
                for s in f.samples
            }
    finally:
        for collector in collectors.values():
            collector.close()
    return out


def _dump(out: Path, sub: str, host: str, ts: float) -> dict[Key, float]:
    df = pd.read_parquet(out / "metrics" / f"{sub}.parquet")
    df = df[(df["timestamp"] == ts) & (df["instance"] == host)]
    labels = [c for c in df.columns[3:] if c != "instance"]
    out_: dict[Key, float] = {}
    for row in df.to_dict("records"):
        key = (str(row["metric"]), tuple(sorted((c, str(row[c])) for c in labels if row[c] != "")))
        out_[key] = float(row["value"])
    return out_


@pytest.mark.parametrize(("scenario", "version"), [("straggler-thermal", "2.14"), ("io-lustre", "2.10")])
def test_dump_matches_the_exporter_on_the_trees(
    tmp_path: Path, small_opts: Callable[..., SimOptions], scenario: str, version: str
) -> None:
    discover()
    opts = small_opts(scenario, nodes=2, steps=10, lustre_version=version)
    res = write_dump(opts, tmp_path)
    t_rel = 10 * NS  # the third scrape of the dump
    render_trees(tmp_path / "trees", res.model, Signals(res.model, res.chunk), opts, t_rel)
    ts = (opts.start_ns + t_rel) / 1e9
    host = "node-001"
    root = tmp_path / "trees" / host
    got = _scrape(root, host)
    for sub, exported in got.items():
        mine = _dump(tmp_path, sub, host, ts)
        exp = dict(exported)
        if sub == "gpu":
            exp = {k: v for k, v in exp.items() if k[0] != "fmdiag_gpu_nvml_errors_total"}
            exp = {k: v for k, v in exp.items() if k[0] not in GPU_ONLY_EXPORTED}
            mine = {k: v for k, v in mine.items() if k[0] not in GPU_ONLY_IN_DUMP}
        assert sorted(set(exp) - set(mine)) == [], f"{sub}: exported but not in the dump"
        assert sorted(set(mine) - set(exp)) == [], f"{sub}: in the dump but not exported"
        bad = {k: (exp[k], mine[k]) for k in exp if not np.isclose(exp[k], mine[k], rtol=1e-6, atol=0.02)}
        assert bad == {}, f"{sub}: values differ"
