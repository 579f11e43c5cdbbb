"""Does the peer read the simulator's Kineto traces as it reads PyTorch's? HTA side by side.

Writes simulated dumps with a trace for every rank, loads each ``kineto/`` folder with Meta's
Holistic Trace Analysis (PyPI ``traceinsight`` 0.6.1, import name ``hta``) in its own
virtual environment, and prints per rank what HTA found — which ranks it recognised, its
rank warnings, its temporal breakdown and its communication/computation overlap — next to
the simulator's own numbers for the same steps (from the step records: compute is forward +
backward + optimizer, communication is the exposed all-reduce, both over the step time).

HTA drops each trace's last ``ProfilerStep`` and measures over the kernels' span, so the two
sides agree to within a few percentage points, not exactly.

Run: ``python benchmarks/hta_reads_simulator.py`` (``--hta-python PATH`` to use an
interpreter that already has traceinsight; otherwise one is made in ``--venv``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fmdiag.dumpformat import DumpLayout
from fmdiag.steprecord import read_file

HTA_VERSION = "0.6.1"
SCENARIOS = ("healthy", "network-node", "straggler-thermal")

#: Runs inside HTA's environment; prints one JSON document.
_PROBE = r"""
import json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("hta").addHandler(Keep())
from hta.trace_analysis import TraceAnalysis
a = TraceAnalysis(trace_dir=sys.argv[1])
tb = a.get_temporal_breakdown(visualize=False)
ov = a.get_comm_comp_overlap(visualize=False)
print(json.dumps({
    "ranks": sorted(int(r) for r in a.t.traces),
    "rank_warnings": sum("rank" in m and "default to rank" in m for m in records),
    "breakdown": tb.to_dict(orient="records"),
    "overlap": ov.to_dict(orient="records"),
}))
"""


def hta_python(venv: Path, given: str | None) -> str:
    if given:
        return given
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"making {venv} with traceinsight=={HTA_VERSION} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"traceinsight=={HTA_VERSION}"], check=True
        )
    return str(python)


def simulator_side(root: Path, traced: set[int]) -> dict[int, dict[str, float]]:
    """Per rank: compute and exposed-communication percentages over the steps HTA keeps."""
    out: dict[int, dict[str, float]] = {}
    for path in DumpLayout(root).step_files():
        recs = [r for r in read_file(path).records if r.step in traced]
        if not recs:
            continue
        total = sum(r.end_ns - r.start_ns for r in recs) / 1e9
        compute = sum(sum(r.phases.get(p, 0.0) for p in ("forward", "backward", "optimizer")) for r in recs)
        comm = sum(r.phases.get("comm_exposed", 0.0) for r in recs)
        out[recs[0].rank] = {"compute_pct": 100 * compute / total, "comm_pct": 100 * comm / total}
    return out


def main() -> None:
    from fmdiag.simulate.cluster.kineto import KinetoOptions
    from fmdiag.simulate.dump import SimOptions, write_dump

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hta-python", help="an interpreter with traceinsight installed")
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "fmdiag-hta-venv")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    python = hta_python(args.venv, args.hta_python)
    world = args.nodes * args.gpus
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in SCENARIOS:
            out = Path(tmp) / scenario
            last = args.steps - 1
            kineto = KinetoOptions(ranks=tuple(range(world)), first_step=2, last_step=last, gzip=True)
            opts = SimOptions(
                scenario=scenario, nodes=args.nodes, gpus=args.gpus, efa_devices=4, steps=args.steps,
                metrics=False, kineto=kineto,
            )  # fmt: skip
            write_dump(opts, out)
            probe = subprocess.run(
                [python, "-c", _PROBE, str(DumpLayout(out).kineto_dir)], capture_output=True, text=True
            )
            if probe.returncode != 0:
                print(f"{scenario}: HTA failed:\n{probe.stderr[-2000:]}")
                continue
            hta = json.loads(probe.stdout.strip().splitlines()[-1])
            ours = simulator_side(out, set(range(2, args.steps - 1)))  # HTA drops the cut last step
            print(f"== {scenario}: {world} traces; HTA recognised ranks {hta['ranks']}, "
                  f"{hta['rank_warnings']} rank warnings")  # fmt: skip
            overlap = {int(r["rank"]): r["comp_comm_overlap_pctg"] for r in hta["overlap"]}
            print(f"  {'rank':>4} {'HTA compute%':>13} {'sim compute%':>13} {'HTA non-compute%':>17} "
                  f"{'sim comm%':>10} {'HTA overlap%':>13}")  # fmt: skip
            for row in hta["breakdown"]:
                rank = int(row["rank"])
                sim = ours.get(rank, {"compute_pct": float("nan"), "comm_pct": float("nan")})
                print(f"  {rank:>4} {row['compute_time_pctg']:>13.2f} {sim['compute_pct']:>13.2f} "
                      f"{row['non_compute_time_pctg']:>17.2f} {sim['comm_pct']:>10.2f} "
                      f"{overlap.get(rank, float('nan')):>13.2f}")  # fmt: skip
            print(f"  ranks recognised: {len(hta['ranks'])} of {world}")


if __name__ == "__main__":
    main()
