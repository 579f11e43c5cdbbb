"""What-if attribution: per step, the time each cause cost — the step time it would give back.

The cost of a cause is the step's time minus the time a healthy step of the same run takes (the
median over steps with a ``compute`` verdict and no secondary cause, checkpoints left out): that
is "the step time if the cause were removed" when it is the step's only cause. Step records
cannot measure each cause's what-if directly — under FSDP a late rank's peers wait *inside*
their forward and backward (the all-gathers), so neither the late rank's compute excess nor
exposed communication shows the whole cost — so when several causes run at once the excess is
shared among them in proportion to how far each cause's own signal stands above its healthy
value: the late rank's compute over the median rank's (straggler), the least-waiting rank's
exposed communication (network), the median data wait (io, host). A stalled checkpoint costs
its time beyond a normal checkpoint's; a normal checkpoint costs nothing (it is work the job
asked for).

A pipeline stage imbalance (a ``compute`` verdict with cause ``stage_imbalance``) costs the share
of the step the other stages idle waiting for the longest one, ``1 - mean stage compute / longest``:
what an even partition would give back, an upper bound (``up to`` in the statements).

A cause is counted on a step only when its own test passed there (the verdict's class or one of
its ``secondary`` causes), so noise on healthy steps is not booked as loss. A run with fewer than
:data:`MIN_HEALTHY_STEPS` healthy steps (a fault from the first step) has no healthy step time to
compare with: each cause is then costed by its own signal alone, which is a lower bound, and
the document says so (``baseline.losses_are_lower_bounds``) — except a straggler when GPU
activity was scraped: its peers spend ``1 - activity(median GPU) / activity(straggler's GPU)``
of the step idle waiting for it (its own GPU never waits), which is the time its fix gives back
(``straggler_from_gpu_activity``) — and a network fault when Kineto traces cover some of its
steps: there the GPUs' exposed communication (communication kernels no compute kernel hides,
on the traced rank that waits least: the one on the critical path) is the time free
communication would give back, read on each
traced step and, as the share of the step it takes on the traced steps of the fault, on its
other steps (``network_from_traces``). Step records cannot give that: they time phases on the
host, and under FSDP the wait for a parameter all-gather is booked to ``forward``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmdiag.analyzers.diagnosis.verdicts import NETWORK_FLOOR_FRACTION, MetricView, StepFeatures, Verdict

CAUSES: tuple[str, ...] = ("straggler", "network", "io", "host", "checkpoint", "stage")
#: Healthy steps needed before their medians are trusted as the baseline.
MIN_HEALTHY_STEPS = 5
#: Columns of the per-step table, in order.
COLUMNS: tuple[str, ...] = (
    "step",
    "duration_s",
    "healthy_s",
    *(f"lost_{c}_s" for c in CAUSES),
    "lost_total_s",
)


@dataclass
class Baseline:
    """The healthy step the what-ifs compare with, and where its numbers came from."""

    source: str
    healthy_steps: int
    duration_s: float
    comm_min_s: float
    data_wait_s: float
    checkpoint_s: float
    #: False when the run had too few healthy steps: losses are then lower bounds.
    measured: bool = True
    #: GPU idle waiting for the host, the loader aside (Kineto traces; 0 from step records).
    host_wait_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "losses_are_lower_bounds": not self.measured,
            "healthy_steps": self.healthy_steps,
            "duration_s": round(self.duration_s, 6),
            "comm_exposed_min_s": round(self.comm_min_s, 6),
            "data_wait_s": round(self.data_wait_s, 6),
            "normal_checkpoint_s": round(self.checkpoint_s, 6),
        }


@dataclass
class Attribution:
    """Per-step losses (columns of :data:`COLUMNS`) and their sums over the run."""

    baseline: Baseline
    per_step: dict[str, np.ndarray]
    #: The cause each step's loss of each cause is booked to, for the aggregates (step index ->
    #: cause -> culprit dict or None for job-wide).
    culprits: list[dict[str, dict[str, Any] | None]] = field(default_factory=list)
    #: With no healthy steps, the straggler was costed by its peers' idle GPU time (metrics).
    straggler_from_activity: bool = False
    #: With no healthy steps, the network was costed by the traces' exposed communication.
    network_from_traces: bool = False

    @property
    def run_seconds(self) -> float:
        return float(np.sum(self.per_step["duration_s"]))

    def lost_s(self) -> dict[str, float]:
        return {c: float(np.sum(self.per_step[f"lost_{c}_s"])) for c in CAUSES}

    def bound(self, cause: str) -> str:
        """How a cause's cost reads: ``"at least "`` (its own signal, no healthy step to compare
        with), ``"up to "`` (an ideal fix: an even pipeline partition) or ``""`` (measured)."""
        if cause == "stage":
            return "up to "
        measured = self.baseline.measured or cause == "checkpoint"
        measured = measured or (cause == "straggler" and self.straggler_from_activity)
        measured = measured or (cause == "network" and self.network_from_traces)
        return "" if measured else "at least "

    def statements(self) -> list[str]:
        """ "fixing X gives back Y% of step time", for each cause that cost anything, biggest first."""
        total = self.run_seconds
        out = []
        for cause, lost in sorted(self.lost_s().items(), key=lambda kv: -kv[1]):
            if lost <= 0 or total <= 0:
                continue
            steps = int(np.count_nonzero(self.per_step[f"lost_{cause}_s"]))
            bound = self.bound(cause)
            out.append(
                f"fixing {_WHAT[cause]} gives back {bound}{lost / total:.1%} of step time "
                f"({lost:.1f} s over {steps} steps)"
            )
        return out

    def to_json(self, table: Any) -> dict[str, Any]:
        total = self.run_seconds
        lost = self.lost_s()
        return {
            "baseline": self.baseline.to_json(),
            "run": {
                "duration_s": round(total, 6),
                "lost_s": {c: round(v, 6) for c, v in lost.items()},
                "fraction": {c: round(v / total, 6) if total > 0 else 0.0 for c, v in lost.items()},
            },
            "statements": self.statements(),
            "straggler_from_gpu_activity": self.straggler_from_activity,
            "network_from_traces": self.network_from_traces,
            "per_step": table(self.per_step),
        }


_WHAT = {
    "straggler": "the straggling rank",
    "network": "the network",
    "io": "data loading from storage",
    "host": "the host side (a CPU-bound input pipeline or training loop)",
    "checkpoint": "the checkpoint stalls",
    "stage": "the pipeline partition (layers moved off the longest stage)",
}


def baseline(feats: list[StepFeatures], verdicts: list[Verdict]) -> Baseline:
    healthy = [
        f
        for f, v in zip(feats, verdicts, strict=True)
        if v.cls == "compute" and not v.secondary and not v.undecided
    ]
    ckpt = [
        f.checkpoint_s
        for f, v in zip(feats, verdicts, strict=True)
        if f.checkpoint_s > 0 and v.primary_cause != "checkpoint"
    ]
    normal_ckpt = float(np.median(ckpt)) if ckpt else 0.0
    if len(healthy) >= MIN_HEALTHY_STEPS:
        return Baseline(
            source="healthy steps",
            healthy_steps=len(healthy),
            duration_s=float(np.median([f.duration_s - f.checkpoint_s for f in healthy])),
            comm_min_s=float(np.median([f.comm_min for f in healthy])),
            data_wait_s=float(np.median([f.data_wait_median for f in healthy])),
            checkpoint_s=normal_ckpt,
            host_wait_s=float(np.median([f.host_wait_median for f in healthy])),
        )
    # no healthy stretch to learn from: the floors a healthy job stays under (the verdict rules'
    # thresholds at half), so a whole-run fault is still costed, conservatively
    work = float(np.min([f.duration_s - f.checkpoint_s for f in feats]))
    return Baseline(
        source="assumed (fewer than 5 healthy steps)",
        measured=False,
        healthy_steps=len(healthy),
        duration_s=work,
        comm_min_s=0.5 * NETWORK_FLOOR_FRACTION * work,
        data_wait_s=0.0,
        checkpoint_s=normal_ckpt,
    )


def _causes(v: Verdict) -> set[str]:
    named = {"stage"} if v.reason == "stage_imbalance" else set()
    return ({v.primary_cause, *v.secondary} | named) & set(CAUSES)


def _signal(cause: str, f: StepFeatures, base: Baseline) -> float:
    """How far the cause's own signal stands above its healthy value on this step (>= 0)."""
    if cause == "straggler":
        return max(f.compute_late - f.compute_median, 0.0)
    if cause == "network":
        return max(f.comm_min - base.comm_min_s, 0.0)
    if cause == "host":
        # a CPU-bound loader (data wait) or the training loop's own host side (host wait)
        loader = max(f.data_wait_median - base.data_wait_s, 0.0)
        return loader + max(f.host_wait_median - base.host_wait_s, 0.0)
    return max(f.data_wait_median - base.data_wait_s, 0.0)


def _booked(cause: str, f: StepFeatures, v: Verdict) -> dict[str, Any] | None:
    """The culprit a cause's loss on this step is booked to (None: the whole job)."""
    if cause == "stage":
        return v.culprit
    if cause == "straggler":
        own = v.culprit if v.cls == "straggler" and v.culprit else None
        return own or {"node": f.late_node, "rank": f.late_rank, "gpu": f.late_local_rank}
    return v.culprit if v.cls == cause else None


def _peers_idle(view: MetricView, culprit: dict[str, Any] | None, f: StepFeatures) -> float | None:
    """The share of the step a straggler's peers spend idle waiting for it: one minus the median
    GPU's activity over the straggler's own (its GPU never waits)."""
    if not culprit or "node" not in culprit or int(culprit.get("gpu", -1)) < 0:
        return None
    got = view.gpu_activity(str(culprit["node"]), int(culprit["gpu"]), f.end_s)
    if got is None or got[0] <= 0:
        return None
    own, peers = got
    return float(min(max(1.0 - peers / own, 0.0), 0.95))


def _exposed_comm(
    feats: list[StepFeatures], verdicts: list[Verdict], traced: Any
) -> tuple[dict[int, float], float | None]:
    """Per step index, the traced ranks' exposed communication (s); and the share of the step it
    takes on the traced steps with a network cause (None: no such step was traced)."""
    if traced is None or not len(traced["step"]):
        return {}, None
    row = {int(s): k for k, s in enumerate(traced["step"])}
    exposed: dict[int, float] = {}
    shares = []
    for i, (f, v) in enumerate(zip(feats, verdicts, strict=True)):
        k = row.get(f.step)
        if k is None:
            continue
        exposed[i] = float(traced["comm_exposed_min_s"][k])
        span = float(traced["span_s"][k])
        if "network" in _causes(v) and span > 0:
            shares.append(exposed[i] / span)
    return exposed, (float(np.median(shares)) if shares else None)


def attribute(
    feats: list[StepFeatures],
    verdicts: list[Verdict],
    view: MetricView | None = None,
    traced: Any = None,
) -> Attribution:
    """The losses of every step (see the module docstring for each cause's what-if); ``traced``:
    per-step columns of the Kineto traces (``kineto_steps.traced_steps``), when the dump has some."""
    base = baseline(feats, verdicts)
    n = len(feats)
    estimated = np.zeros(n, bool)
    exposed, exposed_share = _exposed_comm(feats, verdicts, traced) if not base.measured else ({}, None)
    from_traces = False
    cols: dict[str, np.ndarray] = {c: np.zeros(n) for c in COLUMNS}
    cols["step"] = np.array([f.step for f in feats], np.int64)
    cols["duration_s"] = np.array([f.duration_s for f in feats])
    cols["healthy_s"] = np.full(n, base.duration_s)
    culprits: list[dict[str, dict[str, Any] | None]] = []
    for i, (f, v) in enumerate(zip(feats, verdicts, strict=True)):
        causes = _causes(v)
        booked = {c: _booked(c, f, v) for c in causes}
        culprits.append(booked)
        if "checkpoint" in causes:
            cols["lost_checkpoint_s"][i] = max(f.checkpoint_s - base.checkpoint_s, 0.0)
        if "stage" in causes:
            # every stage at the mean stage's compute: the other stages stop idling for the
            # longest (1F1B's steady state), an upper bound (layers move whole; embeddings and
            # the loss head stay where they are)
            cols["lost_stage_s"][i] = f.stage_loss * max(f.duration_s - f.checkpoint_s, 0.0)
        running = sorted(causes - {"checkpoint", "stage"})
        if not running:
            continue
        signal = {c: _signal(c, f, base) for c in running}
        if not base.measured:
            # no healthy step to compare with: each cause's own signal, a lower bound; a
            # straggler's peers idle waiting for it, which their GPU activity measures
            for c in running:
                lost = signal[c]
                if c == "network" and (i in exposed or exposed_share is not None):
                    work = f.duration_s - f.checkpoint_s
                    lost = exposed[i] if i in exposed else exposed_share * work  # type: ignore[operator]
                    from_traces = True
                if c == "straggler" and view is not None:
                    idle = _peers_idle(view, booked[c], f)
                    if idle is not None:
                        # of the time the GPUs had work: a wait for input idles the straggler's
                        # GPU as well, and is the input's cost, not the straggler's
                        busy = f.duration_s - f.checkpoint_s - f.data_wait_median
                        lost = max(lost, idle * max(busy, 0.0))
                        estimated[i] = True
                cols[f"lost_{c}_s"][i] = min(lost, f.duration_s)
            continue
        # the step's excess over a healthy step, shared by the causes in proportion to their signals
        excess = max(f.duration_s - f.checkpoint_s - base.duration_s, 0.0)
        weight = sum(signal.values())
        for c in running:
            share = signal[c] / weight if weight > 0 else 1.0 / len(running)
            cols[f"lost_{c}_s"][i] = excess * share
    for c in CAUSES:
        cols[f"lost_{c}_s"] = np.round(cols[f"lost_{c}_s"], 9)
    cols["lost_total_s"] = np.round(np.sum([cols[f"lost_{c}_s"] for c in CAUSES], axis=0), 9)
    return Attribution(
        baseline=base,
        per_step=cols,
        culprits=culprits,
        straggler_from_activity=bool(estimated.any()),
        network_from_traces=from_traces,
    )
