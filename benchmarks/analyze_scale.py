"""How long `fmdiag analyze` takes at scale: 4,096 ranks x 1,000 steps of step records.

Targets: the step-record stage alone (per-file read over the process pool, merge, per-rank
breakdown, spread across ranks, clock offsets: ``fmdiag.analyzers.pipeline._steps``) in under
30 s on a 2-core machine (issue 9), and the whole diagnosis, ``fmdiag analyze DUMP --json``, in
under 60 s (issue 12).

Without ``--dump`` it first writes the dump with the simulator (512 nodes x 8 GPUs x 1,000 steps
of the straggler-thermal scenario, about 1.3 GB and three minutes); ``--dump DIR`` reuses one.
Each measurement runs in a fresh process (imports and pool start-up included, as a user waits
for them) and reports wall time, the peak resident memory of the largest process (the kernel's
``maxrss``) and of the whole process tree (the pool's workers included, sampled every 50 ms),
and the ratio to its target. Run: ``.venv/bin/python benchmarks/analyze_scale.py [--dump DIR]``
(``--repeat N`` keeps the best of N; ``--detail`` also times the stage's parts one by one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

STAGE_TARGET_S = 30.0
FULL_TARGET_S = 60.0


def stage(dump: Path, workers: int | None, detail: bool) -> dict[str, Any]:
    """The step-record stage in this process (run in a child by :func:`measure`)."""
    from fmdiag import dumpformat
    from fmdiag.analyzers import executors, pipeline
    from fmdiag.analyzers.frames import spread, step_breakdown
    from fmdiag.analyzers.readers import steps_reader

    files = [str(p) for p in dumpformat.DumpLayout(dump).step_files()]
    options = pipeline.Options(workers=workers)
    t0 = time.perf_counter()
    result = pipeline._steps(files, options, [])
    times = {"stage": time.perf_counter() - t0}
    records = int(result["steps_coverage"].records)
    if detail:  # the same calls as _steps, one at a time
        del result
        workers = pipeline._workers(options, files, "steps")
        t = time.perf_counter()
        parts = executors.map_items(pipeline.read_steps_file, files, workers)
        times["read (pool map)"] = time.perf_counter() - t
        t = time.perf_counter()
        frame, _ = steps_reader.merge(parts)
        times["merge"] = time.perf_counter() - t
        del parts
        t = time.perf_counter()
        offsets = step_breakdown.clock_offsets(frame)
        times["clock offsets"] = time.perf_counter() - t
        t = time.perf_counter()
        sb = step_breakdown.breakdown(frame, offsets)
        times["breakdown"] = time.perf_counter() - t
        t = time.perf_counter()
        spread.spread(sb, step_breakdown.SPREAD_VALUES)
        times["spread"] = time.perf_counter() - t
    return {"files": len(files), "records": records, "times": times}


def measure(cmd: list[str], stdout: int | None = None) -> tuple[float, float, float, int]:
    """Run ``cmd``: (wall s, peak RSS of its largest process MiB, peak RSS of its tree MiB, rc)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout)
    peak_tree = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak_tree
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                return
            peak_tree = max(peak_tree, total)
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    # wait4: this child's own rusage, whose ru_maxrss (KiB on Linux) is the largest resident
    # size of it and of its waited-for descendants (the pool's workers): one process, not a sum.
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = rc = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    return wall, usage.ru_maxrss / 1024, peak_tree / 2**20, rc


def simulate(out: Path, nodes: int, steps: int, scenario: str) -> None:
    cmd = [
        sys.executable, "-m", "fmdiag", "simulate", "--scenario", scenario, "--nodes", str(nodes),
        "--steps", str(steps), "--efa-devices", "4", "--out", str(out),
    ]  # fmt: skip
    print("writing the dump:", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)


def dump_problem(dump: Path) -> str | None:
    """Why ``dump`` cannot be measured, or None.

    Checked before anything runs: a mistyped path would otherwise give an empty file list, a
    stage that times nothing in no time, and a "met" that means nothing.
    """
    if not dump.is_dir():
        return "no such directory" if not dump.exists() else "not a directory"
    from fmdiag import dumpformat

    if not dumpformat.DumpLayout(dump).step_files():
        return "no step records in it (neither steps/*.jsonl nor a steptrace spool): not a trace dump"
    return None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def report(name: str, wall: float, largest: float, tree: float, target: float) -> None:
    print(
        f"{name:<34} {wall:7.1f} s   peak RSS {largest:6.0f} MiB (largest process), "
        f"{tree:6.0f} MiB (process tree)   {wall / target:.2f}x of the {target:.0f} s target "
        f"({'met' if wall < target else 'MISSED'})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", type=Path, help="an existing dump to analyse (default: simulate one)")
    ap.add_argument("--nodes", type=int, default=512)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--scenario", default="straggler-thermal")
    ap.add_argument("--workers", type=int, help="pool size (default: the pipeline's choice, one per CPU)")
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs of each measurement")
    ap.add_argument("--detail", action="store_true", help="also time the stage's parts one by one")
    ap.add_argument("--skip-full", action="store_true", help="time the step-record stage only")
    ap.add_argument("--stage-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.stage_child:
        print(json.dumps(stage(args.dump, args.workers, args.detail)))
        return

    if args.dump is not None:
        problem = dump_problem(args.dump)
        if problem is not None:
            sys.exit(f"analyze_scale: --dump {args.dump}: {problem}; nothing was measured")

    tmp: Path | None = None
    dump = args.dump
    if dump is None:
        tmp = Path(tempfile.mkdtemp(prefix="fmdiag-scale-"))
        dump = tmp / "dump"
        simulate(dump, args.nodes, args.steps, args.scenario)
    try:
        steps_dir = dump / "steps"
        print(
            f"dump {dump}: {len(list(steps_dir.glob('*.jsonl')))} step files, "
            f"{_size(steps_dir) / 2**30:.2f} GiB; {os.cpu_count()} CPUs; workers: {args.workers or 'default'}"
        )
        child = [sys.executable, __file__, "--stage-child", "--dump", str(dump)]
        if args.workers:
            child += ["--workers", str(args.workers)]
        if args.detail:
            child.append("--detail")
        best: tuple[float, float, float] | None = None
        for _ in range(args.repeat):
            with tempfile.TemporaryFile() as out:
                wall, largest, tree, rc = measure(child, stdout=out.fileno())
                if rc:
                    sys.exit(f"the stage failed (exit status {rc})")
                out.seek(0)
                inner = json.loads(out.read())
            print(
                f"  stage run: {inner['records']:,} records from {inner['files']} files; "
                + ", ".join(f"{k} {v:.2f} s" for k, v in inner["times"].items())
                + f"; process {wall:.1f} s"
            )
            if best is None or inner["times"]["stage"] < best[0]:
                best = (inner["times"]["stage"], largest, tree)
        assert best is not None
        report("step records: load + breakdown", *best, STAGE_TARGET_S)
        if not args.skip_full:
            cmd = [sys.executable, "-m", "fmdiag", "analyze", str(dump), "--json"]
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            full: tuple[float, float, float] | None = None
            for _ in range(args.repeat):
                with open(os.devnull, "wb") as null:
                    wall, largest, tree, rc = measure(cmd, stdout=null.fileno())
                if rc:
                    sys.exit(f"fmdiag analyze failed (exit status {rc})")
                print(f"  full run: {wall:.1f} s")
                if full is None or wall < full[0]:
                    full = (wall, largest, tree)
            assert full is not None
            report("fmdiag analyze --json (full)", *full, FULL_TARGET_S)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
