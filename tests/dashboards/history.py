"""Simulated history in the real Prometheus: every scenario's dump backfilled under its own
``cluster`` label, the recording rules backfilled over it, and a live exporter scraped beside.

How the pieces go in, each the real tool:

1. ``fmdiag simulate`` writes each scenario's metric dump (long-form Parquet, a sample per
   scrape interval), starting an hour ago so everything falls inside the server's retention;
2. the dump becomes OpenMetrics text as Prometheus would have stored it from scraping: the
   scrape job's ``job="fmdiag"``, an ``up`` sample per node and scrape, and ``cluster`` (the
   scenario) as relabelling would add it; ``promtool tsdb create-blocks-from openmetrics``
   writes the blocks;
3. a server on those blocks answers ``promtool tsdb create-blocks-from rules`` for the recording
   rules; it restarts with those blocks too (and scrapes one real ``fmdiag exporter`` serving a
   simulated node tree, so the exporter's self-metrics exist as well).
Alerts are then evaluated from their expressions over the history (Prometheus evaluates rules
only at the present), with ``for`` emulated on the query_range answer.
"""

from __future__ import annotations

import itertools
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from support import prom
from support.exporter_proc import ExporterProcess

from fmdiag import catalog

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SCRAPE_S = 15
#: Scenario -> steps, for about 20 minutes of history each: long enough for 5m windows and 10m
#: ``for`` clauses (the checkpoint-stall scenario's checkpoints take minutes each).
SCENARIOS: dict[str, int] = {
    "healthy": 480,
    "network-degraded": 390,
    "network-node": 470,
    "io-lustre": 330,
    "checkpoint-stall": 30,
    "host-dataloader": 390,
    "straggler-thermal": 390,
    "straggler-power": 370,
}
#: A cluster whose GPU series come from a stock dcgm-exporter: the thermal straggler's GPUs, as
#: dcgm-exporter up to 4.5.3 labels them (``Hostname``) and as later ones do (``hostname``).
STOCK_DCGM_FROM, STOCK_DCGM_CLUSTER = "straggler-thermal", "dcgm-straggler-thermal"
STOCK_DCGM4_CLUSTER = "dcgm4-straggler-thermal"
#: How long ago the simulated jobs start: every history ends before now, inside the 1h retention.
START_AGO_S = 1500
SIM_ARGS = ("--nodes", "4", "--gpus", "2", "--efa-devices", "2", "--osts", "2", "--step-seconds", "1.2")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


#: The scrape job of a stock dcgm-exporter (GPU series only, DCGM names only).
DCGM_JOB = "dcgm-exporter"


def dump_to_openmetrics(
    dump: Path, cluster: str, out: Any, *, stock_dcgm: bool = False, host_label: str = "Hostname"
) -> tuple[float, float]:
    """Append the dump's metric samples to ``out`` as OpenMetrics lines; returns (first, last) time.

    ``stock_dcgm``: only the GPU series a stock dcgm-exporter serves (DCGM names, every field
    switched on in its CSV), scraped as its own job from its own pod address, so nothing of
    fmdiag's exporter is there and ``instance`` is not the node (``Hostname`` is, or under
    ``host_label`` the spelling of dcgm-exporter after 4.5.3)."""
    first, last = math.inf, -math.inf
    instances: dict[str, set[float]] = {}
    paths = [dump / "metrics" / "gpu.parquet"] if stock_dcgm else sorted((dump / "metrics").glob("*.parquet"))
    for path in paths:
        table = pq.read_table(path).to_pydict()
        names = table.pop("metric")
        values = table.pop("value")
        stamps = table.pop("timestamp")
        label_cols = sorted(table)
        for i, name in enumerate(names):
            if stock_dcgm and not (name in catalog.BY_NAME and catalog.BY_NAME[name].dcgm):
                continue
            labels = {"cluster": cluster, "job": DCGM_JOB if stock_dcgm else "fmdiag"}
            for col in label_cols:
                v = table[col][i]
                if v:
                    labels[col] = str(v)
            if stock_dcgm:
                labels["instance"] = f"10.0.{labels['Hostname'].rsplit('-', 1)[-1]}.9:9400"
                labels[host_label] = labels.pop("Hostname")
            ts = float(stamps[i])
            instances.setdefault(labels["instance"], set()).add(ts)
            first, last = min(first, ts), max(last, ts)
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            out.write(f"{name}{{{inner}}} {_fmt(values[i])} {ts:.3f}\n")
    job = DCGM_JOB if stock_dcgm else "fmdiag"
    for instance, stamps_seen in sorted(instances.items()):
        for ts in sorted(stamps_seen):
            out.write(f'up{{cluster="{cluster}",job="{job}",instance="{instance}"}} 1 {ts:.3f}\n')
    return first, last


@dataclass
class History:
    server: prom.Prometheus
    start: float
    end: float
    exporter: ExporterProcess
    #: Where the dumps are (``dumps/<scenario>``, each with its truth.json).
    work: Path

    def query_range(self, expr: str, step_s: int = 60) -> list[dict[str, Any]]:
        """``expr`` over the whole history up to now (the live exporter's samples are the newest:
        the range is aligned so that its last point is now)."""
        end = time.time()
        start = end - math.ceil((end - self.start) / step_s) * step_s
        return self.server.query_range(expr, start, end, f"{step_s}s")


def _run(args: list[str], cwd: Path | None = None) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def build(work: Path, rule_files: list[Path]) -> Iterator[History]:
    """Simulate, backfill and serve; yields the running History, stops everything after."""
    start_at = int(time.time()) - START_AGO_S
    om = work / "history.om"
    first, last = math.inf, -math.inf
    with om.open("w") as out:
        for scenario, steps in SCENARIOS.items():
            dump = work / "dumps" / scenario
            _run(
                [
                    sys.executable,
                    "-m",
                    "fmdiag",
                    "simulate",
                    "--scenario",
                    scenario,
                    "--out",
                    str(dump),
                    "--start",
                    str(start_at),
                    "--scrape-interval",
                    str(SCRAPE_S),
                    "--steps",
                    str(steps),
                    *SIM_ARGS,
                    *(["--node-trees"] if scenario == "healthy" else []),
                ]
            )
            a, b = dump_to_openmetrics(dump, scenario, out)
            if b > time.time():
                raise RuntimeError(
                    f"{scenario}: simulated history ends in the future ({b - time.time():.0f} s): fewer steps"
                )
            first, last = min(first, a), max(last, b)
            if scenario == STOCK_DCGM_FROM:
                dump_to_openmetrics(dump, STOCK_DCGM_CLUSTER, out, stock_dcgm=True)
                dump_to_openmetrics(dump, STOCK_DCGM4_CLUSTER, out, stock_dcgm=True, host_label="hostname")
        out.write("# EOF\n")
    data = work / "prom" / "data"
    data.mkdir(parents=True)
    _run([PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(om), str(data)])
    om.unlink()

    tree = work / "dumps" / "healthy" / "nodes" / "node-000"
    exporter = ExporterProcess(
        [f"--path.rootfs={tree}", f"--collector.gpu.simulated-state={tree}/nvml/state.json"]
    )
    relabel = "    relabel_configs:\n      - target_label: cluster\n        replacement: live\n"
    server = prom.Prometheus(
        work / "prom", [exporter.address], scrape_interval="2s", extra_scrape_config=relabel
    )
    try:
        recorded = work / "recorded"
        _run(
            [
                PROMTOOL,
                "tsdb",
                "create-blocks-from",
                "rules",
                "--url",
                server.url,
                "--start",
                str(int(first)),
                "--end",
                str(int(last)),
                "--eval-interval",
                f"{SCRAPE_S}s",
                "--output-dir",
                str(recorded),
                *map(str, rule_files),
            ]
        )
        server.stop()
        for block in recorded.iterdir():
            if block.is_dir():
                shutil.move(str(block), str(data / block.name))
        server = prom.Prometheus(
            work / "prom", [exporter.address], scrape_interval="2s", extra_scrape_config=relabel
        )
        # Rates need two samples in their window: wait for a few live scrapes.
        server.wait_for(
            'count_over_time(fmdiag_exporter_cpu_seconds_total{cluster="live"}[1m]) >= 3', timeout_s=60
        )
        yield History(server, first, last, exporter, work)
    finally:
        server.stop()
        exporter.stop()


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(text[:-1]) * units[text[-1]]


def firing(history: History, expr: str, for_: str, step_s: int = SCRAPE_S) -> dict[str, set[str]]:
    """cluster -> descriptions of the series for which ``expr`` held for ``for_`` at some point
    of the history, as Prometheus' rule evaluation every ``step_s`` would have seen it."""
    need = parse_duration(for_)
    out: dict[str, set[str]] = {}
    for series in history.server.query_range(expr, history.start, history.end + 300, f"{step_s}s"):
        stamps = [float(t) for t, _ in series["values"]]
        run_start = stamps[0]
        for prev, cur in itertools.pairwise(stamps):
            if cur - prev > step_s * 1.5:
                run_start = cur
            if cur - run_start >= need:
                break
        else:
            if not (len(stamps) == 1 and need == 0) and stamps[-1] - run_start < need:
                continue
        labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
        out.setdefault(labels.get("cluster", ""), set()).add(
            ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "cluster")
        )
    return out
