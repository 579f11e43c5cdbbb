"""Does the peer read the simulator's Kineto traces as it reads PyTorch's? HTA side by side.

Writes simulated dumps with a trace for every rank, loads each ``kineto/`` folder with Meta's
Holistic Trace Analysis (PyPI ``traceinsight`` 0.6.1, import name ``hta``) in its own
virtual environment, and prints per rank what HTA found — which ranks it recognised, its
rank warnings, its temporal breakdown and its communication/computation overlap — next to
the simulator's own numbers for the same steps, over the same span (first to last GPU event):

- ``sim busy%``: the model's compute-stream time (:func:`~fmdiag.simulate.cluster.kineto.
  compute_windows`: forward, backward and optimizer less the waits of FSDP units for their
  all-gathers), what HTA's compute% measures;
- ``rec compute%``: forward + backward + optimizer of the step records, which count those
  waits as forward/backward (so under a slow network or a straggler they exceed HTA's);
- ``sim exposed%``: communication not hidden under compute, from ``kineto.comm_windows`` (the
  collectives, and a pipeline's sends and receives, a tensor- or expert-parallel job's
  all-reduces and all-to-alls), to set beside HTA's non-compute% (which also holds the memory
  copies);
- ``sim overlap%``: the share of communication time under compute, as HTA computes it.

HTA drops each trace's last ``ProfilerStep`` and the trace's launch gaps and memory copies are
not compute, so the two sides agree to within a few tenths of a point, not exactly.

Run: ``python benchmarks/hta_reads_simulator.py`` (``--hta-python PATH`` to use an
interpreter that already has traceinsight; otherwise one is made in ``--venv``; ``--scenarios``
picks others, e.g. ``--scenarios moe-expert-imbalance --nodes 1 --gpus 8``: an expert group is a
whole node).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from fmdiag.dumpformat import DumpLayout
from fmdiag.simulate.cluster.kineto import comm_windows, compute_windows
from fmdiag.simulate.dump import DumpResult
from fmdiag.steprecord import read_file

HTA_VERSION = "0.6.1"
#: Data parallel (healthy, network, hardware straggler), a 1F1B pipeline, a host-side straggler.
SCENARIOS = ("healthy", "network-node", "straggler-thermal", "pp-straggler", "straggler-python-gc")

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


def _union(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        elif b > a:
            out.append((a, b))
    return out


def _length(intervals: list[tuple[int, int]]) -> int:
    return sum(b - a for a, b in intervals)


def _intersection(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> int:
    total, j = 0, 0
    for a, b in x:
        while j < len(y) and y[j][1] <= a:
            j += 1
        k = j
        while k < len(y) and y[k][0] < b:
            total += max(0, min(b, y[k][1]) - max(a, y[k][0]))
            k += 1
    return total


def simulator_side(result: DumpResult, root: Path, traced: range) -> dict[int, dict[str, float]]:
    """Per rank, over the span HTA measures (the kept steps' first to last GPU event): the model's
    compute-stream busy time, the step records' compute phases, the communication left exposed
    and the overlap the collectives imply, as percentages."""
    model, chunk = result.model, result.chunk
    first = int(chunk.steps[0])
    out: dict[int, dict[str, float]] = {}
    for path in DumpLayout(root).step_files():
        recs = {r.step: r for r in read_file(path).records if r.step in traced}
        if not recs:
            continue
        rank = next(iter(recs.values())).rank
        compute: list[tuple[int, int]] = []
        comm: list[tuple[int, int]] = []
        for step in traced:
            i = step - first
            compute += compute_windows(model, chunk, i, rank)
            comm += comm_windows(model, chunk, i, rank)
        cu, mu = _union(compute), _union(comm)
        lo = int(chunk.start[traced[0] - first, rank])
        hi = max(b for _, b in cu + mu)
        span = hi - min(lo + (int(chunk.dw_end[traced[0] - first, rank]) - lo) // 2, cu[0][0])
        phases = sum(
            sum(r.phases.get(p, 0.0) for p in ("forward", "backward", "optimizer")) for r in recs.values()
        )
        overlap = _intersection(mu, cu)
        out[rank] = {
            "busy_pct": 100 * _length(cu) / span,
            "rec_compute_pct": 100 * phases * 1e9 / span,
            "exposed_pct": 100 * (_length(mu) - overlap) / span,
            "overlap_pct": 100 * overlap / max(_length(mu), 1),
        }
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
    parser.add_argument("--preset", default=None, help="the training job (fmdiag simulate --preset)")
    parser.add_argument("--detail", default="full", choices=("full", "compact"))
    parser.add_argument("--nccl", default="new", choices=("new", "old"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = parser.parse_args()
    python = hta_python(args.venv, args.hta_python)
    world = args.nodes * args.gpus
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios.split(","):
            out = Path(tmp) / scenario
            last = args.steps - 1
            kineto = KinetoOptions(
                ranks=tuple(range(world)), first_step=2, last_step=last, gzip=True,
                nccl_naming=args.nccl, detail=args.detail,
            )  # fmt: skip
            opts = SimOptions(
                scenario=scenario, nodes=args.nodes, gpus=args.gpus, efa_devices=4, steps=args.steps,
                metrics=False, kineto=kineto, job_preset=args.preset,
            )  # fmt: skip
            result = write_dump(opts, out)
            probe = subprocess.run(
                [python, "-c", _PROBE, str(DumpLayout(out).kineto_dir)], capture_output=True, text=True
            )
            if probe.returncode != 0:
                print(f"{scenario}: HTA failed:\n{probe.stderr[-2000:]}")
                continue
            hta = json.loads(probe.stdout.strip().splitlines()[-1])
            ours = simulator_side(result, out, range(2, last))  # HTA drops the cut last step
            print(f"== {scenario} ({result.model.wl.parallelism}): {world} traces; HTA recognised ranks "
                  f"{hta['ranks']}, {hta['rank_warnings']} rank warnings")  # fmt: skip
            overlap = {int(r["rank"]): r["comp_comm_overlap_pctg"] for r in hta["overlap"]}
            heads = ("HTA compute%", "sim busy%", "rec compute%", "HTA non-comp%", "sim exposed%",
                     "HTA overlap%", "sim overlap%")  # fmt: skip
            print(f"  {'rank':>4} " + " ".join(f"{h:>{max(9, len(h))}}" for h in heads))
            worst = 0.0
            nan = float("nan")
            for row in hta["breakdown"]:
                rank = int(row["rank"])
                sim = ours.get(
                    rank, {k: nan for k in ("busy_pct", "rec_compute_pct", "exposed_pct", "overlap_pct")}
                )
                hov = overlap.get(rank, nan)
                worst = max(
                    worst, abs(row["compute_time_pctg"] - sim["busy_pct"]), abs(hov - sim["overlap_pct"])
                )
                print(f"  {rank:>4} {row['compute_time_pctg']:>12.2f} {sim['busy_pct']:>9.2f} "
                      f"{sim['rec_compute_pct']:>12.2f} {row['non_compute_time_pctg']:>13.2f} "
                      f"{sim['exposed_pct']:>12.2f} {hov:>12.2f} {sim['overlap_pct']:>12.2f}")  # fmt: skip
            print(f"  ranks recognised: {len(hta['ranks'])} of {world}; largest HTA-vs-simulator gap "
                  f"(compute, overlap): {worst:.2f} points")  # fmt: skip


if __name__ == "__main__":
    main()
