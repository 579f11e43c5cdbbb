"""How long `fmdiag simulate` takes for a large run: 64 nodes x 8 GPUs x 1,000 steps.

Target (issue 3): step records and metrics written in under a minute on a 2-core machine.
Prints the time of each stage (model, step records, metrics, truth), the total, the peak RSS
and the ratio to the target, then the same run through the CLI in a fresh process (what a
user waits for, imports included). Run: ``.venv/bin/python benchmarks/simulate_speed.py``
(``--nodes/--gpus/--steps/--scenario`` change the size; ``--repeat`` takes the best of N).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmdiag.simulate.cluster.metric_dump import write_metrics
from fmdiag.simulate.cluster.signals import Signals
from fmdiag.simulate.cluster.steps import write_steps
from fmdiag.simulate.cluster.truth import truth_doc, write_truth
from fmdiag.simulate.dump import SimOptions, build_model, prepare_out, run_parameters

TARGET_S = 60.0


def stages(opts: SimOptions, out: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    model = build_model(opts)
    prepare_out(out)
    chunk = model.run(opts.steps)
    t1 = time.perf_counter()
    times["model"] = t1 - t0
    write_steps(out / "steps", model, chunk, opts.start_ns, opts.job_name)
    t2 = time.perf_counter()
    times["step records"] = t2 - t1
    rows = write_metrics(
        out / "metrics",
        model,
        chunk,
        Signals(model, chunk),
        opts.start_ns,
        opts.scrape_interval_s,
        opts.job_name,
    )
    t3 = time.perf_counter()
    times["metrics"] = t3 - t2
    write_truth(
        out / "truth.json",
        truth_doc(model, chunk, start_ns=opts.start_ns, job=opts.job_name, extra=run_parameters(opts)),
    )
    times["truth"] = time.perf_counter() - t3
    times["total"] = time.perf_counter() - t0
    print(f"  metric rows: {sum(rows.values()):,} ({', '.join(f'{k} {v:,}' for k, v in rows.items())})")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--scenario", default="mixed")
    ap.add_argument("--scrape-interval", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    opts = SimOptions(
        scenario=args.scenario,
        nodes=args.nodes,
        gpus=args.gpus,
        steps=args.steps,
        scrape_interval_s=args.scrape_interval,
    )
    ranks = args.nodes * args.gpus
    print(
        f"{args.scenario}: {args.nodes} nodes x {args.gpus} GPUs x {args.steps} steps "
        f"= {ranks * args.steps:,} step records, 32 EFA devices/node, scrape every {args.scrape_interval} s"
    )
    tmp = Path(tempfile.mkdtemp(prefix="fmdiag-sim-bench-"))
    try:
        best: dict[str, float] | None = None
        for i in range(args.repeat):
            times = stages(opts, tmp / f"run{i}")
            if best is None or times["total"] < best["total"]:
                best = times
        assert best is not None
        for name, seconds in best.items():
            print(f"  {name:<13} {seconds:7.2f} s")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  peak RSS      {rss:7.0f} MiB")
        size = sum(p.stat().st_size for p in (tmp / "run0").rglob("*") if p.is_file()) / 2**20
        print(f"  dump size     {size:7.0f} MiB")
        ratio = best["total"] / TARGET_S
        print(f"in-process total {best['total']:.2f} s = {ratio:.2f} x the {TARGET_S:.0f} s target")
        cmd = [
            sys.executable,
            "-m",
            "fmdiag",
            "simulate",
            "--scenario",
            args.scenario,
            "--nodes",
            str(args.nodes),
            "--gpus",
            str(args.gpus),
            "--steps",
            str(args.steps),
            "--scrape-interval",
            str(args.scrape_interval),
            "--out",
            str(tmp / "cli"),
        ]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - t
        shown = " ".join(cmd[1:])
        print(
            f"CLI wall time   {wall:.2f} s = {wall / TARGET_S:.2f} x the {TARGET_S:.0f} s target  ({shown})"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
