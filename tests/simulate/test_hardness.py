"""The scenario set must be hard enough to tell a real classifier from a naive one.

Issue 8 found a rule of four fixed thresholds on step records reproducing the old simulator's
truth on every step. This runs that rule (thresholds fitted on one seed, scored on another)
and the published torch-tb-profiler / NVRx rules of ``benchmarks/naive_baseline.py`` on a
small version of the benchmark, and requires both to stay well below a useful classifier.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from fmdiag.simulate.cluster.physics import DEFAULT_JOB, get_job
from fmdiag.simulate.cluster.scenarios import SCENARIOS
from fmdiag.simulate.dump import SimOptions, write_dump

ROOT = Path(__file__).resolve().parents[2]


def _baseline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("naive_baseline", ROOT / "benchmarks" / "naive_baseline.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["naive_baseline"] = module
    spec.loader.exec_module(module)
    return module


def test_naive_rules_are_fooled_by_the_confounders(tmp_path: Path) -> None:
    nb = _baseline()
    published: list[tuple[str, str]] = []
    train: list[tuple[str, tuple[float, ...]]] = []
    test: list[tuple[str, tuple[float, ...]]] = []
    for name in SCENARIOS:
        for seed in (0, 1):
            out = tmp_path / f"{name}-{seed}"
            # An expert-parallel job needs its whole 8-GPU group in a node.
            gpus = max(4, get_job(SCENARIOS[name].job or DEFAULT_JOB).ep)
            opts = SimOptions(
                scenario=name, nodes=3, gpus=gpus, efa_devices=2, osts=3, steps=30, seed=seed, metrics=False
            )
            write_dump(opts, out)
            scored = nb.score_dump(out)
            published += [(t, p) for t, p, _ in scored]
            (train if seed == 0 else test).extend((t, f) for t, _, f in scored)
    assert nb.macro_f1(published) < 0.6, nb.macro_f1(published)
    classes = list(nb.CLASSES)
    x = np.array([f for _, f in train])
    y = np.array([classes.index(t) for t, _ in train])
    a, b, c, d = nb.fit_thresholds(x, y, grid=10)
    predicted = nb.threshold_rule(np.array([f for _, f in test]), a, b, c, d)
    fitted = nb.macro_f1([(t, classes[int(p)]) for (t, _), p in zip(test, predicted, strict=True)])
    assert fitted < 0.8, fitted
