"""When did it start: change points in step time and in each per-step signal, and phase onsets.

A verdict run can start a few steps after its cause did: the straggler test needs the late rank
to be the same over a window, a ramping fault crosses the threshold after it began, and the
continuity rule holds back a lone step. The onset of a phase is therefore read from the signal
its cause moves (the late rank's compute excess for a straggler, the least-waiting rank's
exposed communication for the network, data wait for io and host, the step for a checkpoint
stall): the change point of that signal closest before the phase's first verdict.

Change points are found by binary segmentation on mean shifts, the method of ``ruptures``'
``Binseg`` with an L2 cost, small enough to own: a split is kept when it lowers the squared
error by more than ``PENALTY * sigma^2 * log(n)`` (a BIC-like penalty), sigma estimated from
the median absolute first difference so that the shifts themselves do not inflate it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fmdiag.analyzers.diagnosis.verdicts import StepFeatures

#: Penalty factor on sigma^2 log(n); 2 is BIC, higher keeps only clear shifts in noisy steps.
PENALTY = 8.0
#: Fewest steps on each side of a change point.
MIN_SIZE = 2
#: Steps before a phase's first verdict searched for its onset.
LOOKBACK = 8
#: A shift smaller than this fraction of the median step is not reported (sub-millisecond
#: wobble of a perfectly steady signal has sigma ~ 0 and would pass any penalty).
MIN_SHIFT_FRACTION = 0.01

SIGNALS: dict[str, str] = {
    "duration_s": "median step time across ranks",
    "straggler_excess_s": "late rank's compute minus the median rank's",
    "comm_exposed_min_s": "exposed communication of the least-waiting rank",
    "data_wait_s": "median rank's data wait",
    "checkpoint_s": "longest checkpoint phase",
}
#: The signal a cause moves.
SIGNAL_OF = {
    "straggler": "straggler_excess_s",
    "network": "comm_exposed_min_s",
    "io": "data_wait_s",
    "host": "data_wait_s",
    "checkpoint": "checkpoint_s",
}


def signals(feats: list[StepFeatures]) -> dict[str, np.ndarray]:
    return {
        "duration_s": np.array([f.duration_s for f in feats]),
        "straggler_excess_s": np.array([f.compute_late - f.compute_median for f in feats]),
        "comm_exposed_min_s": np.array([f.comm_min for f in feats]),
        "data_wait_s": np.array([f.data_wait_median for f in feats]),
        "checkpoint_s": np.array([f.checkpoint_s for f in feats]),
    }


def _sigma(x: np.ndarray) -> float:
    if len(x) < 3:
        return 0.0
    return float(np.median(np.abs(np.diff(x)))) / (math.sqrt(2) * 0.6745)


def change_points(x: np.ndarray, floor: float = 0.0) -> list[int]:
    """Indexes where the mean of ``x`` shifts (the first index of each new segment), sorted.

    ``floor`` is the smallest shift in mean worth reporting.
    """
    n = len(x)
    if n < 2 * MIN_SIZE:
        return []
    sigma = _sigma(x)
    penalty = PENALTY * max(sigma, 1e-12) ** 2 * math.log(n)
    cs = np.concatenate([[0.0], np.cumsum(x)])
    cs2 = np.concatenate([[0.0], np.cumsum(x * x)])

    def cost(a: int, b: int) -> float:
        s = cs[b] - cs[a]
        return float(cs2[b] - cs2[a] - s * s / (b - a))

    found: list[int] = []
    todo = [(0, n)]
    while todo:
        a, b = todo.pop()
        if b - a < 2 * MIN_SIZE:
            continue
        ks = np.arange(a + MIN_SIZE, b - MIN_SIZE + 1)
        left_n, right_n = ks - a, b - ks
        left_s, right_s = cs[ks] - cs[a], cs[b] - cs[ks]
        total_s = cs[b] - cs[a]
        # squared error saved by splitting at k (between-segment sum of squares)
        gain = left_s**2 / left_n + right_s**2 / right_n - total_s**2 / (b - a)
        best = int(np.argmax(gain))
        k = int(ks[best])
        shift = abs(right_s[best] / right_n[best] - left_s[best] / left_n[best])
        if gain[best] > penalty and shift > floor and cost(a, b) > 0:
            found.append(k)
            todo.extend([(a, k), (k, b)])
    return sorted(found)


def all_change_points(feats: list[StepFeatures]) -> dict[str, list[dict[str, Any]]]:
    """Per signal, each change point: the step it starts at and the mean before and after."""
    if not feats:
        return {}
    sig = signals(feats)
    floor = MIN_SHIFT_FRACTION * float(np.median(sig["duration_s"]))
    steps = [f.step for f in feats]
    out: dict[str, list[dict[str, Any]]] = {}
    for name, x in sig.items():
        cps = change_points(x, floor)
        bounds = [0, *cps, len(x)]
        out[name] = [
            {
                "step": steps[k],
                "before": round(float(np.mean(x[bounds[j] : k])), 6),
                "after": round(float(np.mean(x[k : bounds[j + 2]])), 6),
            }
            for j, k in enumerate(cps)
        ]
    return out


def phase_onset(
    feats: list[StepFeatures], first: int, last: int, cause: str, change: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The onset of the phase whose verdicts run over feature indexes ``first``..``last``."""
    signal = SIGNAL_OF.get(cause)
    start_step = feats[first].step
    onset = {"step": start_step, "signal": signal, "from": "first verdict"}
    if signal is None:
        return onset
    # the change point of the phase's signal nearest before its first verdict (or just after
    # it: the verdict can lead the mean shift by a step when the shift is gradual)
    near = [
        c
        for c in change.get(signal, [])
        if start_step - LOOKBACK <= c["step"] <= min(start_step + 2, feats[last].step)
        and c["after"] > c["before"]
    ]
    if near:
        best = min(near, key=lambda c: abs(c["step"] - start_step))
        onset.update(
            step=best["step"], before=best["before"], after=best["after"], **{"from": "change point"}
        )
    return onset
