"""How well fmdiag's per-step verdicts match the simulator's truth, beside the naive baseline.

Runs every simulator scenario over several seeds and cluster sizes, analyses each dump with
``fmdiag.analyzers.pipeline`` (step records + node metrics), and scores each step's class and,
where truth names a culprit, the culprit (straggler: node and rank; io: ost; network: node).
Prints the confusion matrix, per-class precision/recall, macro-F1, culprit accuracy and the
naive baseline's (torch-tb-profiler + NVRx rules, ``benchmarks/naive_baseline.py``) macro-F1
on the same steps. The rules were tuned looking at seeds 0-1; report on held-out seeds 2-3.

Run: ``python benchmarks/verdict_accuracy.py --seeds 2,3 --nodes 2,4,8 --steps 40``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import naive_baseline

from fmdiag.analyzers import pipeline


def culprit_ok(cls: str, truth: dict[str, object] | None, got: dict[str, object] | None) -> bool | None:
    """Whether the named culprit matches the truth's on the keys that decide it; None: not scored."""
    if not truth:
        return None
    keys = {"straggler": ("node", "rank"), "io": ("ost",), "network": ("node",)}.get(cls)
    keys = tuple(k for k in keys or () if k in truth)
    if not keys:
        return None
    return bool(got) and all(got.get(k) == truth[k] for k in keys)  # type: ignore[union-attr]


def main() -> None:
    from fmdiag.simulate.cluster.scenarios import SCENARIOS
    from fmdiag.simulate.dump import SimOptions, write_dump

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="2,3", help="comma-separated seeds (tuned on 0,1)")
    parser.add_argument("--nodes", default="2,4,8", help="comma-separated node counts")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    pairs: list[tuple[str, str]] = []
    naive: list[tuple[str, str]] = []
    culprits: Counter[bool] = Counter()
    per_scenario: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCENARIOS:
            for nodes in (int(n) for n in args.nodes.split(",")):
                for seed in (int(s) for s in args.seeds.split(",")):
                    out = Path(tmp) / f"{name}-{nodes}-{seed}"
                    write_dump(
                        SimOptions(scenario=name, nodes=nodes, gpus=args.gpus, steps=args.steps, seed=seed),
                        out,
                    )
                    truth = {s["step"]: s for s in json.loads((out / "truth.json").read_text())["steps"]}
                    analysis = pipeline.run(out, pipeline.Options())
                    for v in analysis.verdicts:
                        t = truth.get(v.step)
                        if t is None:
                            continue
                        pairs.append((t["class"], v.cls))
                        per_scenario.setdefault(name, []).append(t["class"] == v.cls)
                        ok = culprit_ok(t["class"], t.get("culprit"), v.culprit)
                        if ok is not None and v.cls == t["class"]:
                            culprits[ok] += 1
                        elif ok is not None:
                            culprits[False] += 1
                    naive.extend((t, p) for t, p, _ in naive_baseline.score_dump(out))
    print("per scenario: steps where the verdict matches the truth")
    for name, hits in per_scenario.items():
        print(f"  {name:<22} {sum(hits):>6} / {len(hits):<6} {sum(hits) / max(1, len(hits)):.1%}")
    print("\n== fmdiag verdicts (the matrix's columns are fmdiag's verdicts; its header is the shared one)")
    macro = naive_baseline.report(pairs)
    scored = culprits[True] + culprits[False]
    print(
        f"culprit accuracy (steps whose truth names one) {culprits[True]} / {scored}"
        f" = {culprits[True] / max(1, scored):.3f}"
    )
    print(f"\nmacro-F1: fmdiag {macro:.3f}   naive baseline {naive_baseline.macro_f1(naive):.3f}")


if __name__ == "__main__":
    main()
