"""How far the published rules of thumb get on the simulator's scenarios: the bar a classifier must clear.

The rules are the ones users apply today, read off step records only:

* torch-tb-profiler's recommendations, on rank 0 (the rank people profile): DataLoader time
  above 5% of the step -> ``io``; communication above 10% -> ``network``; GPU utilisation
  (forward + backward + optimizer over the step) below 50% -> ``host``;
* NVRx's straggler score: a rank whose compute is slower than 0.75 of the fastest rank's
  speed (fastest compute / its compute < 0.75) -> ``straggler``, checked first;
* otherwise ``compute``.

A second, stronger baseline is the rule of four thresholds that issue 8 found reproducing the
old simulator's truth on every step: a checkpoint phase -> ``io``; slowest rank's compute over
the median rank's -> ``straggler``; least exposed communication of any rank -> ``network``;
largest data wait -> ``io`` above one threshold, ``host`` above a lower one. Its thresholds
are fitted on seed 0 (grid search for the best accuracy) and scored on the other seeds, so it
measures how separable the scenarios are, not how well someone guessed the numbers.

Each scenario runs at several sizes and seeds; every step's rule verdict is compared with the
step's class in ``truth.json``. Prints the confusion matrix, per-class precision/recall/F1 and
the macro-F1. A simulator whose scenarios these rules solve perfectly cannot tell a real
classifier from a naive one (issue 8 asks for a macro-F1 well below 0.9).

Run: ``python benchmarks/naive_baseline.py`` (``--seeds 3 --nodes 2,4,8 --steps 50``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from fmdiag import dumpformat
from fmdiag.dumpformat import DumpLayout
from fmdiag.steprecord import StepRecord, read_file

CLASSES = dumpformat.VERDICT_CLASSES
DATALOADER_FRACTION = 0.05
COMM_FRACTION = 0.10
GPU_UTIL_FLOOR = 0.50
NVRX_THRESHOLD = 0.75


def verdict(records: list[StepRecord]) -> str:
    """One step's naive verdict from every rank's record of it."""
    compute = {r.rank: r.phases.get("forward", 0.0) + r.phases.get("backward", 0.0) for r in records}
    fastest = min(compute.values())
    if fastest > 0 and min(fastest / c for c in compute.values() if c > 0) < NVRX_THRESHOLD:
        return "straggler"
    rec = min(records, key=lambda r: r.rank)
    step_s = (rec.end_ns - rec.start_ns) / 1e9
    if step_s <= 0:
        return "compute"
    if rec.phases.get("data_wait", 0.0) / step_s > DATALOADER_FRACTION:
        return "io"
    if rec.phases.get("comm_exposed", 0.0) / step_s > COMM_FRACTION:
        return "network"
    busy = sum(rec.phases.get(p, 0.0) for p in ("forward", "backward", "optimizer"))
    if busy / step_s < GPU_UTIL_FLOOR:
        return "host"
    return "compute"


def features(records: list[StepRecord]) -> tuple[float, float, float, float]:
    """(checkpoint?, compute max/median, min comm_exposed, max data_wait), the last two over the step."""
    compute = sorted(r.phases.get("forward", 0.0) + r.phases.get("backward", 0.0) for r in records)
    step_s = statistics.median((r.end_ns - r.start_ns) / 1e9 for r in records) or 1.0
    ckpt = float(any(r.phases.get("checkpoint", 0.0) > 0 for r in records))
    imbalance = compute[-1] / statistics.median(compute) if compute[0] > 0 else 1.0
    comm = min(r.phases.get("comm_exposed", 0.0) for r in records) / step_s
    data = max(r.phases.get("data_wait", 0.0) for r in records) / step_s
    return ckpt, imbalance, comm, data


def threshold_rule(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """The four-threshold rule over a [steps, 4] feature array; class indices into CLASSES."""
    out = np.full(len(x), CLASSES.index("compute"))
    data = x[:, 3]
    out[data > c] = CLASSES.index("host")
    out[data > d] = CLASSES.index("io")
    out[x[:, 2] > b] = CLASSES.index("network")
    out[x[:, 1] > a] = CLASSES.index("straggler")
    out[x[:, 0] > 0] = CLASSES.index("io")
    return out


def fit_thresholds(x: np.ndarray, y: np.ndarray, grid: int = 25) -> tuple[float, float, float, float]:
    """The grid point with the best training accuracy (candidates: quantiles of each feature)."""
    grids = [np.unique(np.quantile(x[:, i], np.linspace(0.02, 0.98, grid))) for i in (1, 2, 3)]
    best, best_acc = (np.inf, np.inf, np.inf, np.inf), -1.0
    for a, b, c in itertools.product(*grids):
        for d in grids[2][grids[2] >= c]:
            acc = float(np.mean(threshold_rule(x, a, b, c, d) == y))
            if acc > best_acc:
                best, best_acc = (float(a), float(b), float(c), float(d)), acc
    return best


def score_dump(root: Path) -> list[tuple[str, str, tuple[float, float, float, float]]]:
    """(truth, naive verdict, threshold-rule features) per step of one dump."""
    layout = DumpLayout(root)
    by_step: dict[int, list[StepRecord]] = {}
    for path in layout.step_files():
        for rec in read_file(path).records:
            by_step.setdefault(rec.step, []).append(rec)
    truth = {s["step"]: s["class"] for s in dumpformat.read_truth(layout.truth_path)["steps"]}
    return [
        (truth[step], verdict(recs), features(recs))
        for step, recs in sorted(by_step.items())
        if step in truth
    ]


def macro_f1(pairs: list[tuple[str, str]]) -> float:
    """Mean F1 over the classes the truth contains."""
    counts = Counter(pairs)
    f1s = []
    for c in CLASSES:
        tp = counts[(c, c)]
        predicted = sum(v for (_, p), v in counts.items() if p == c)
        actual = sum(v for (t, _), v in counts.items() if t == c)
        if actual:
            precision = tp / predicted if predicted else 0.0
            recall = tp / actual
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return statistics.fmean(f1s) if f1s else 0.0


def report(pairs: list[tuple[str, str]]) -> float:
    counts = Counter(pairs)
    width = max(len(c) for c in CLASSES) + 2
    print("confusion matrix (rows: truth, columns: naive verdict)")
    print(" " * width + "".join(f"{c:>{width}}" for c in CLASSES))
    for t in CLASSES:
        print(f"{t:<{width}}" + "".join(f"{counts[(t, p)]:>{width}}" for p in CLASSES))
    f1s = []
    print(f"\n{'class':<{width}}{'precision':>11}{'recall':>9}{'F1':>7}{'steps':>8}")
    for c in CLASSES:
        tp = counts[(c, c)]
        predicted = sum(v for (_, p), v in counts.items() if p == c)
        actual = sum(v for (t, _), v in counts.items() if t == c)
        if actual == 0:
            continue
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        print(f"{c:<{width}}{precision:>11.3f}{recall:>9.3f}{f1:>7.3f}{actual:>8}")
    macro = statistics.fmean(f1s) if f1s else 0.0
    accuracy = sum(counts[(c, c)] for c in CLASSES) / max(1, len(pairs))
    print(f"\nsteps {len(pairs)}  accuracy {accuracy:.3f}  macro-F1 {macro:.3f}")
    return macro


def main() -> None:
    from fmdiag.simulate.cluster.scenarios import SCENARIOS
    from fmdiag.simulate.dump import SimOptions, write_dump

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--nodes", default="2,4,8", help="comma-separated node counts")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    pairs: list[tuple[str, str]] = []
    per_scenario: dict[str, list[tuple[str, str]]] = {}
    train: list[tuple[str, tuple[float, float, float, float]]] = []
    test: list[tuple[str, tuple[float, float, float, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCENARIOS:
            for nodes in (int(n) for n in args.nodes.split(",")):
                for seed in range(args.seeds):
                    out = Path(tmp) / f"{name}-{nodes}-{seed}"
                    opts = SimOptions(scenario=name, nodes=nodes, gpus=args.gpus, steps=args.steps, seed=seed)
                    write_dump(SimOptions(**{**opts.__dict__, "metrics": False}), out)
                    scored = score_dump(out)
                    got = [(t, p) for t, p, _ in scored]
                    pairs += got
                    per_scenario.setdefault(name, []).extend(got)
                    (train if seed == 0 else test).extend((t, f) for t, _, f in scored)
    print("== published rules (torch-tb-profiler on rank 0, NVRx 0.75)")
    print("per scenario: steps where the verdict matches the truth")
    for name, got in per_scenario.items():
        hits = sum(t == p for t, p in got)
        print(f"  {name:<20} {hits:>6} / {len(got):<6} {hits / max(1, len(got)):.1%}")
    print()
    report(pairs)
    if not test:
        return
    print("\n== four thresholds fitted on seed 0, scored on the other seeds")
    x_train = np.array([f for _, f in train])
    y_train = np.array([CLASSES.index(t) for t, _ in train])
    a, b, c, d = fit_thresholds(x_train, y_train)
    print(f"fitted: straggler compute ratio > {a:.3f}, network min comm > {b:.3f} of the step, ")
    print(f"        host data wait > {c:.3f}, io data wait > {d:.3f} of the step, any checkpoint -> io")
    predicted = threshold_rule(np.array([f for _, f in test]), a, b, c, d)
    report([(t, CLASSES[int(p)]) for (t, _), p in zip(test, predicted, strict=True)])


if __name__ == "__main__":
    main()
