"""How well fmdiag's verdicts match the real-process test bed's truth, beside the naive baseline.

The second judge (the simulator is the first, ``verdict_accuracy.py``): every test-bed scenario
is run for real (JAX ranks in network namespaces, real faults, Prometheus, ``fmdiag collect``)
over several seeds and node counts, each dump is analysed by ``fmdiag analyze --json`` (the
command a user runs), and each step's class is scored against ``truth.json``; where the truth
names a culprit, the culprit too (straggler: node and rank, or the pipeline stage; network:
node). Prints per-scenario hits, the confusion matrix with per-class precision and recall,
macro-F1, culprit accuracy, the naive baseline (torch-tb-profiler + NVRx rules,
``naive_baseline.py``) on the same steps, and the onset error of each run of a fault class.

Runs take minutes each (2 cores): ``--dumps DIR`` keeps them, and a later call with the same
DIR re-scores the dumps already there instead of running them again.

Run (as root): ``python benchmarks/testbed_accuracy.py --seeds 0,1 --nodes 2,4 --steps 40 --dumps /tmp/tb``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import naive_baseline
from verdict_accuracy import truth_runs

from fmdiag.testbed.scenarios import SCENARIOS


def culprit_ok(cls: str, truth: dict[str, Any] | None, got: dict[str, Any] | None) -> bool | None:
    """Whether the verdict names the truth's culprit on the keys that decide it; None: not scored.

    A pipeline stage is named by ``pp_rank``; a rank by node and rank; a node by its name."""
    if not truth:
        return None
    if "pp_rank" in truth:
        keys: tuple[str, ...] = ("pp_rank",)
    else:
        keys = tuple(
            k for k in {"straggler": ("node", "rank"), "network": ("node",)}.get(cls, ()) if k in truth
        )
    if not keys:
        return None
    return bool(got) and all(got.get(k) == truth[k] for k in keys)


def run_dump(scenario: str, out: Path, nodes: int, ranks: int, steps: int, seed: int) -> float:
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "fmdiag.testbed", "--scenario", scenario, "--out", str(out)]
    cmd += ["--nodes", str(nodes), "--ranks-per-node", str(ranks), "--steps", str(steps), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()[-800:]}")
    return time.monotonic() - t0


def analyze(out: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "fmdiag", "analyze", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fmdiag analyze {out}: {proc.stderr.strip()[-800:]}")
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--nodes", default="2,4", help="comma-separated node counts")
    parser.add_argument("--ranks-per-node", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated names")
    parser.add_argument("--dumps", type=Path, default=None, help="keep dumps here; reuse those present")
    args = parser.parse_args()
    root = args.dumps or Path(tempfile.mkdtemp(prefix="fmdiag-testbed-"))
    pairs: list[tuple[str, str]] = []
    naive: list[tuple[str, str]] = []
    culprits: Counter[bool] = Counter()
    per_scenario: dict[str, list[bool]] = {}
    onsets: list[int | None] = []
    took: dict[str, list[float]] = {}
    for name in args.scenarios.split(","):
        sc = SCENARIOS[name]
        for nodes in (int(n) for n in args.nodes.split(",")):
            if nodes < sc.min_nodes or nodes % sc.pp:
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                out = root / f"{name}-n{nodes}-s{seed}"
                if not (out / "truth.json").is_file():
                    if out.exists():
                        subprocess.run(["rm", "-rf", str(out)], check=True)
                    try:
                        took.setdefault(name, []).append(
                            run_dump(name, out, nodes, args.ranks_per_node, args.steps, seed)
                        )
                    except RuntimeError as exc:
                        print(f"FAILED {out.name}: {exc}", file=sys.stderr)
                        continue
                truth_doc = json.loads((out / "truth.json").read_text())
                truth = {s["step"]: s for s in truth_doc["steps"]}
                doc = analyze(out)
                verdicts = doc.get("verdicts", [])
                phases = doc.get("phases") or []
                for cls, first, _last in truth_runs(truth_doc["steps"]):
                    found = [p["onset"]["step"] for p in phases if p["class"] == cls and p.get("onset")]
                    onsets.append(min(abs(o - first) for o in found) if found else None)
                for v in verdicts:
                    t = truth.get(v["step"])
                    if t is None:
                        continue
                    pairs.append((t["class"], v["class"]))
                    per_scenario.setdefault(name, []).append(t["class"] == v["class"])
                    ok = culprit_ok(t["class"], t.get("culprit"), v.get("culprit"))
                    if ok is not None:
                        culprits[ok and v["class"] == t["class"]] += 1
                naive.extend((t, p) for t, p, _ in naive_baseline.score_dump(out))
                print(
                    f"{out.name}: {sum(t == p for t, p in pairs[-len(verdicts) :]) if verdicts else 0}"
                    f" / {len(verdicts)} steps right",
                    file=sys.stderr,
                )
    print(f"dumps in {root}")
    print("per scenario: steps where fmdiag's verdict matches the truth")
    for name, hits in per_scenario.items():
        print(f"  {name:<22} {sum(hits):>5} / {len(hits):<5} {sum(hits) / max(1, len(hits)):.1%}")
    print("\n== fmdiag verdicts (the matrix's columns are fmdiag's verdicts)")
    macro = naive_baseline.report(pairs)
    print("\n== naive baseline on the same dumps")
    naive_baseline.report(naive)
    scored = culprits[True] + culprits[False]
    print(
        f"\nculprit accuracy (steps whose truth names one) {culprits[True]} / {scored}"
        f" = {culprits[True] / max(1, scored):.3f}"
    )
    print(f"macro-F1: fmdiag {macro:.3f}   naive baseline {naive_baseline.macro_f1(naive):.3f}")
    found = [o for o in onsets if o is not None]
    median = statistics.median(found) if found else float("nan")
    print(
        f"onsets: {len(onsets)} runs of a fault class; found for {len(found)},"
        f" median error {median:.1f} steps, within 3 steps {sum(o <= 3 for o in found)}"
    )
    if took:
        print(
            "\nseconds per run (this machine): "
            + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in took.items())
        )


if __name__ == "__main__":
    main()
