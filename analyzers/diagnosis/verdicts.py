"""Per-step verdicts: which of compute | network | io | host | straggler made each step slow.

The rules follow the physics of synchronous data-parallel training (../shared/DOMAIN.md,
"Telling the bottlenecks apart"), not one sample's numbers:

* every rank waits for the slowest in each collective, so the *late* rank is the one with the
  least exposed communication. A **straggler** is defined by behaviour: the same rank late step
  after step while the median rank waits for it a fifth of the step or more, its own work
  explaining the wait (:data:`STRAGGLER_WAIT_FRACTION`); its cause is then hardware when its GPU
  shows HW slowdown / thermal / power clock-event bits (0x8, 0x40, 0x80), its input when its data
  wait makes the difference, else ``unknown`` with what to check. A consistently late rank that
  holds the job up less is a straggler only with a hardware bit; a slowest rank that changes from
  step to step is data-dependent imbalance: ``compute``;
* when *every* rank, including the least-waiting one, has long exposed communication and no
  late rank holds the job up, the fabric is the bottleneck: **network** (EFA errors named as
  evidence when metrics have them; a culprit device when one device carries the errors);
* long ``data_wait`` is input starvation: **io** when the node's CPUs sit in iowait (Lustre
  slow), **host** when they are saturated in user time with no iowait (a CPU-bound loader);
* a GPU idle waiting for the host while the loader is fast (``host_wait``, from Kineto traces:
  launches that came late for another reason than the DataLoader) is the CPU side of the
  training loop: **host**, naming the host ops that ran meanwhile
  (:data:`HOST_WAIT_FRACTION`); it comes before the network when it is the longer wait;
* with one rank in the data (a single-process trace, or one rank of a larger job) there is no
  "every rank" and no "late rank": no straggler is looked for, and exposed communication is
  network only with low confidence and the reason stated (late peers look the same);
* a checkpoint phase is normal unless it costs far more than a checkpoint does: **io** only
  when it exceeds :data:`CHECKPOINT_STALL_STEPS` healthy steps;
* otherwise ``compute``.

A continuity rule (:func:`smooth`) replaces a verdict that differs from both neighbours,
which agree with each other, so one noisy step does not flip a run of verdicts. Where the
data cannot decide (no GPU metrics to confirm a straggler's hardware cause, no host metrics to
tell io from host) the verdict keeps the step-record answer, lowers its confidence and says so in
``undecided``.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fmdiag.analyzers.diagnosis import rules
from fmdiag.dumpformat import VERDICT_CLASSES

if TYPE_CHECKING:
    import pandas as pd

# The thresholds: rules.toml, each with the verdict it decides, the evidence it reads and why it
# sits where it does (docs/verdict-rules.md). Read once, under the names the rules use.
HW_SLOWDOWN_BITS: int = rules.value("HW_SLOWDOWN_BITS")
LATE_RANK_CONSISTENCY: float = rules.value("LATE_RANK_CONSISTENCY")
WINDOW: int = rules.value("WINDOW")
STRAGGLER_WAIT_FRACTION: float = rules.value("STRAGGLER_WAIT_FRACTION")
STRAGGLER_OWN_SHARE: float = rules.value("STRAGGLER_OWN_SHARE")
NETWORK_FLOOR_FRACTION: float = rules.value("NETWORK_FLOOR_FRACTION")
COMM_SPIKE_RATIO: float = rules.value("COMM_SPIKE_RATIO")
COMM_GROWTH_RATIO: float = rules.value("COMM_GROWTH_RATIO")
FLAT_COMPUTE: float = rules.value("FLAT_COMPUTE")
COMM_DOMINANT_FRACTION: float = rules.value("COMM_DOMINANT_FRACTION")
EFA_ERROR_SHARE: float = rules.value("EFA_ERROR_SHARE")
EFA_PACKET_BYTES: int = rules.value("EFA_PACKET_BYTES")
EFA_SATURATED: float = rules.value("EFA_SATURATED")
EFA_CULPRIT_MIN_EVENTS: float = rules.value("EFA_CULPRIT_MIN_EVENTS")
STAGE_IMBALANCE_LOSS: float = rules.value("STAGE_IMBALANCE_LOSS")
DATA_WAIT_FRACTION: float = rules.value("DATA_WAIT_FRACTION")
IOWAIT_FRACTION: float = rules.value("IOWAIT_FRACTION")
CPU_BUSY_FRACTION: float = rules.value("CPU_BUSY_FRACTION")
HOST_MIN_BUSY: float = rules.value("HOST_MIN_BUSY")
PSI_STALL: float = rules.value("PSI_STALL")
CHECKPOINT_STALL_STEPS: float = rules.value("CHECKPOINT_STALL_STEPS")
CHECKPOINT_STALL_RATIO: float = rules.value("CHECKPOINT_STALL_RATIO")
CHECKPOINT_STALL_MIN_STEPS: float = rules.value("CHECKPOINT_STALL_MIN_STEPS")
HOST_WAIT_FRACTION: float = rules.value("HOST_WAIT_FRACTION")
NODE_PRESSURE_STALL: float = rules.value("NODE_PRESSURE_STALL")
LATE_NODE_CONSISTENCY: float = rules.value("LATE_NODE_CONSISTENCY")
NODE_PRESSURE_RATIO: float = rules.value("NODE_PRESSURE_RATIO")
#: EFA counters that count trouble on a device (retransmits, impaired and unresponsive peers, drops).
EFA_ERROR_COUNTERS = (
    "fmdiag_efa_retrans_packets_total",
    "fmdiag_efa_impaired_remote_conn_events_total",
    "fmdiag_efa_unresponsive_remote_events_total",
    "fmdiag_efa_rx_drops_total",
)
LOW_THROUGHPUT: float = rules.value("LOW_THROUGHPUT")
SAMPLE_TOLERANCE_S: float = rules.value("SAMPLE_TOLERANCE_S")

assert set(VERDICT_CLASSES) == {"compute", "network", "io", "host", "straggler"}


@dataclass
class Verdict:
    """One step's verdict, as written to the JSON document."""

    step: int
    cls: str
    confidence: float
    evidence: list[dict[str, Any]] = field(default_factory=list)
    culprit: dict[str, Any] | None = None
    recommendation: str = ""
    undecided: list[str] = field(default_factory=list)
    #: Other causes whose own test passed on this step (they cost time too: see attribution).
    secondary: list[str] = field(default_factory=list)
    #: The cause behind the class: ``checkpoint`` for an io verdict given for a stalled
    #: checkpoint, else the class itself (empty: the class).
    cause: str = ""
    #: What the evidence names behind the class (JSON ``cause``): for a straggler ``hardware``,
    #: ``host`` (CPU contention or memory pressure on its node), ``data`` (its input) or
    #: ``unknown``; for compute ``stage_imbalance`` or ``data_imbalance``; empty: nothing named.
    reason: str = ""
    #: The step lies outside the node metrics' time range: no culprit could be looked up, so its
    #: loss is not booked to "the whole job" as if the job were the culprit.
    outside_metrics: bool = False

    @property
    def primary_cause(self) -> str:
        return self.cause or self.cls

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "class": self.cls,
            "confidence": round(self.confidence, 3),
            "evidence": self.evidence,
            "culprit": self.culprit,
            "recommendation": self.recommendation,
            "undecided": self.undecided,
            "secondary": self.secondary,
            "cause": self.reason or None,
        }


def _ev(metric: str, value: float, baseline: float) -> dict[str, Any]:
    return {"metric": metric, "value": round(float(value), 6), "baseline": round(float(baseline), 6)}


@dataclass
class StepFeatures:
    """What the rules read per step, from the step records (one row per rank)."""

    step: int
    end_s: float
    duration_s: float
    checkpoint_s: float
    data_wait_median: float
    late_rank: int
    late_node: str
    late_local_rank: int
    comm_min: float
    comm_median: float
    compute_late: float
    compute_median: float
    #: The late rank's data wait (its own input may be what makes it late).
    data_wait_late: float = 0.0
    #: Ranks with a record of this step (one: no cross-rank reasoning).
    ranks: int = 2
    #: Median GPU idle waiting for the host, the loader's part excluded (Kineto traces only).
    host_wait_median: float = 0.0
    #: The host ops that ran while the median rank's GPU waited (Kineto traces only).
    host_ops: str = ""
    #: Pipeline stages (records with ``pp_rank``): the stage computing longest, how much of every
    #: stage's time its excess costs (1 - mean stage compute / the longest's), and its node when
    #: all its ranks share one; -1 / 0 without stages.
    stages: int = 0
    stage_late: int = -1
    stage_loss: float = 0.0
    stage_late_compute: float = 0.0
    stage_median_compute: float = 0.0
    stage_node: str = ""
    #: How long the other traced ranks' GPUs waited on communication beyond the late rank's, when
    #: the late rank and another were traced on this step (Kineto); NaN: not traced.
    trace_wait: float = float("nan")
    #: What the data says of the loader: ``records`` (step records' data wait), ``none`` (a trace
    #: without DataLoader spans: data wait unknown), ``in-process`` (``num_workers=0``), ``workers``.
    loader: str = "records"

    @property
    def wait_for_late(self) -> float:
        """How long the median rank waited for the late one in the collectives."""
        return max(0.0, self.comm_median - self.comm_min)

    @property
    def late_own_extra(self) -> float:
        """How much longer the late rank's own work (compute and data wait) took than the median's."""
        return (self.compute_late + self.data_wait_late) - (self.compute_median + self.data_wait_median)


def add_trace_waits(feats: list[StepFeatures], rows: Any) -> None:
    """Fill :attr:`StepFeatures.trace_wait` from traced (rank, step) rows: where the step's late
    rank and at least one other rank were traced, the others' median exposed communication minus
    the late rank's (as shares of their trace windows, in the records' step time); on steps not
    traced where the same rank is late, the median share its traced steps showed. The trace
    sees what host-timed phases hide: under FSDP a rank waiting for a late peer's all-gather
    waits inside its ``forward``, and only its GPU shows the NCCL kernel spinning."""
    rank, step = np.asarray(rows["rank"], np.int64), np.asarray(rows["step"], np.int64)
    share = np.asarray(rows["comm_exposed_s"], np.float64) / np.maximum(np.asarray(rows["span_s"]), 1e-9)
    by_step: dict[int, dict[int, float]] = {}
    for r, s, x in zip(rank.tolist(), step.tolist(), share.tolist(), strict=True):
        by_step.setdefault(s, {})[r] = x
    measured: dict[int, list[float]] = {}
    for f in feats:
        seen = by_step.get(f.step)
        if not seen or f.late_rank not in seen or len(seen) < 2:
            continue
        others = [x for r, x in seen.items() if r != f.late_rank]
        wait = max(0.0, float(np.median(others)) - seen[f.late_rank])
        measured.setdefault(f.late_rank, []).append(wait)
        f.trace_wait = wait * (f.duration_s - f.checkpoint_s)
    # the steps the profiler did not see: where the same rank is the late one, the share its
    # traced steps showed (the consistency rule still asks that it be late step after step)
    usual = {r: float(np.median(w)) for r, w in measured.items()}
    for f in feats:
        if np.isnan(f.trace_wait) and f.late_rank in usual:
            f.trace_wait = usual[f.late_rank] * (f.duration_s - f.checkpoint_s)


def step_features(steps: Any) -> list[StepFeatures]:
    """Per-step features from the merged step records (a pandas frame or numpy columns: the
    Kineto-only path builds the latter and never loads pandas); NaN phases count as 0 (a writer
    that did not record the phase)."""
    n = len(steps["step"])
    if n == 0:
        return []

    def col(name: str) -> np.ndarray:
        if name not in steps:
            return np.zeros(n)
        return np.nan_to_num(np.asarray(steps[name], dtype=np.float64), nan=0.0)

    data_wait, comm, ckpt = col("data_wait"), col("comm_exposed"), col("checkpoint")
    host_wait = col("host_wait")
    host_ops = np.asarray(steps["host_ops"], dtype=object) if "host_ops" in steps else None
    loader = np.asarray(steps["loader"], dtype=object) if "loader" in steps else None
    compute = col("forward") + col("backward")
    duration = np.asarray(steps["duration_s"], dtype=np.float64)
    end_ns = np.asarray(steps["end_ns"], dtype=np.int64)
    rank = np.asarray(steps["rank"], dtype=np.int64)
    # node names as codes into their distinct values: 4 M rows of names as strings cost ~160 MB
    node, node_names = _codes(steps["node"])
    local = (
        np.nan_to_num(np.asarray(steps["local_rank"], dtype=np.float64), nan=-1.0).astype(np.int64)
        if "local_rank" in steps
        else np.full(n, -1, np.int64)
    )
    step = np.asarray(steps["step"], dtype=np.int64)
    pp = (
        np.nan_to_num(np.asarray(steps["pp_rank"], dtype=np.float64), nan=-1.0).astype(np.int64)
        if "pp_rank" in steps
        else np.full(n, -1, np.int64)
    )
    order = np.argsort(step, kind="stable")  # within a step, rows keep their order (by rank)
    cuts = np.flatnonzero(np.diff(step[order])) + 1
    out = []
    for idx in np.split(order, cuts):
        late = int(idx[np.argmin(comm[idx])])
        stage = _stage_features(idx, pp, compute, node, node_names)
        # in a pipeline a rank is late against its own stage's ranks, not against other stages
        peers = idx[pp[idx] == pp[late]] if stage.get("stages", 0) >= 2 else idx
        hw_med = float(np.median(host_wait[idx]))
        typical_host = int(idx[np.argmin(np.abs(host_wait[idx] - hw_med))])
        out.append(
            StepFeatures(
                step=int(step[late]),
                end_s=float(np.median(end_ns[idx])) / 1e9,
                duration_s=float(np.median(duration[idx])),
                checkpoint_s=float(ckpt[idx].max()),
                data_wait_median=float(np.median(data_wait[idx])),
                late_rank=int(rank[late]),
                late_node=node_names[node[late]],
                late_local_rank=int(local[late]),
                comm_min=float(comm[late]),
                comm_median=float(np.median(comm[idx])),
                compute_late=float(compute[late]),
                compute_median=float(np.median(compute[peers])),
                data_wait_late=float(data_wait[late]),
                ranks=len(np.unique(rank[idx])),
                host_wait_median=hw_med,
                host_ops=str(host_ops[typical_host]) if host_ops is not None else "",
                loader=str(loader[typical_host]) if loader is not None else "records",
                **stage,
            )
        )
    return out


def _codes(values: Any) -> tuple[np.ndarray, list[str]]:
    """(code per row, the distinct values as strings): pandas categories as they are, else
    factorised once."""
    cat = getattr(values, "cat", None)
    if cat is not None:
        return np.asarray(cat.codes, dtype=np.int64), [str(x) for x in cat.categories]
    uniq, codes = np.unique(np.asarray(values).astype(str), return_inverse=True)
    return codes.astype(np.int64), [str(x) for x in uniq]


def _stage_features(
    idx: np.ndarray, pp: np.ndarray, compute: np.ndarray, node: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """The step's pipeline stages (see :class:`StepFeatures`' ``stage_*`` fields)."""
    stages = np.unique(pp[idx])
    stages = stages[stages >= 0]
    if stages.size < 2:
        return {}
    med = np.array([np.median(compute[idx[pp[idx] == s]]) for s in stages])
    top = int(np.argmax(med))
    nodes = {names[c] for c in node[idx[pp[idx] == stages[top]]].tolist()}
    return {
        "stages": int(stages.size),
        "stage_late": int(stages[top]),
        "stage_loss": float(1.0 - med.mean() / med[top]) if med[top] > 0 else 0.0,
        "stage_late_compute": float(med[top]),
        "stage_median_compute": float(np.median(np.delete(med, top))),
        "stage_node": next(iter(nodes)) if len(nodes) == 1 else "",
    }


def _samples(frame: pd.DataFrame, metric: str, **labels: str) -> pd.DataFrame:
    mask = frame["metric"] == metric
    for k, v in labels.items():
        if k not in frame:
            return frame.iloc[0:0]
        mask &= frame[k] == v
    return frame.loc[
        mask,
        ["timestamp", "value", *[c for c in ("instance", "gpu", "UUID", "mode", "ost", "fs") if c in frame]],
    ]


def _intervals(ts: np.ndarray, times: np.ndarray, until: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``times``, the samples (indexes ``lo``, ``hi``) bounding the scrape interval
    holding it, and whether that interval is usable. For the last steps, whose next sample comes
    after the job ended at ``until`` (and reads as idle), the interval before it."""
    hi = np.searchsorted(ts, times, side="right")
    lo, hi = np.maximum(0, hi - 1), np.minimum(len(ts) - 1, hi)
    back = (ts[hi] > until) & (lo > 0)
    lo, hi = np.where(back, lo - 1, lo), np.where(back, lo, hi)
    return lo, hi, (hi > lo) & (ts[hi] - ts[lo] <= SAMPLE_TOLERANCE_S)


def _bracket(ts: np.ndarray, t: float) -> tuple[int, int]:
    """The samples around ``t``: the last at or before it and the first after it (equal at the
    ends of the series: no interval there)."""
    hi = int(np.searchsorted(ts, t, side="right"))
    return max(0, hi - 1), min(len(ts) - 1, hi)


class MetricView:
    """Node metrics looked up at a step's time; every method returns None when there is no data."""

    def __init__(self, metrics: dict[str, pd.DataFrame]) -> None:
        spans = [
            (float(f["timestamp"].min()), float(f["timestamp"].max()))
            for f in metrics.values()
            if f is not None and len(f) and "timestamp" in f
        ]
        #: The metrics' time range (None: no metrics): steps outside it have no samples.
        self.time_range: tuple[float, float] | None = (
            (min(a for a, _ in spans), max(b for _, b in spans)) if spans else None
        )
        self.gpu = metrics.get("gpu")
        self.host = metrics.get("host")
        self.lustre = metrics.get("lustre")
        self._efa: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        efa = metrics.get("efa")
        if efa is not None and len(efa) and "device" in efa:
            errs = efa[efa["metric"].isin(EFA_ERROR_COUNTERS)]
            for (inst, dev), g in errs.groupby(["instance", "device"], observed=True):
                summed = g.groupby("timestamp")["value"].sum().sort_index()
                self._efa[(str(inst), str(dev))] = (summed.index.to_numpy(), summed.to_numpy())
        # where each EFA device sits: its NUMA node, and the GPUs on that NUMA node
        self._efa_numa: dict[tuple[str, str], str] = {}
        self._gpu_numa: dict[tuple[str, str], list[int]] = {}
        if efa is not None and len(efa) and "numa_node" in efa:
            info = efa[efa["metric"] == "fmdiag_efa_info"].drop_duplicates(["instance", "device"])
            for row in info[["instance", "device", "numa_node"]].itertuples(index=False):
                self._efa_numa[(str(row[0]), str(row[1]))] = str(row[2])
        gpus = metrics.get("gpu")
        if gpus is not None and len(gpus) and "numa_node" in gpus:
            info = gpus[gpus["metric"] == "fmdiag_gpu_info"].drop_duplicates(["instance", "gpu"])
            for row in info[["instance", "gpu", "numa_node"]].itertuples(index=False):
                if str(row[1]).isdigit():
                    self._gpu_numa.setdefault((str(row[0]), str(row[2])), []).append(int(row[1]))
        # per device: transmitted bytes over time, and its line rate
        self._tx: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, float]] = {}
        if efa is not None and len(efa) and "device" in efa:
            rate = efa[efa["metric"] == "fmdiag_efa_port_rate_bytes_per_second"]
            line = rate.groupby(["instance", "device"], observed=True)["value"].max().to_dict()
            tx = efa[efa["metric"] == "fmdiag_efa_tx_bytes_total"]
            for (inst, dev), group in tx.groupby(["instance", "device"], observed=True):
                cap = float(line.get((inst, dev), 0.0))
                g = group.sort_values("timestamp")
                if cap > 0 and len(g) > 1:
                    self._tx[(str(inst), str(dev))] = (g["timestamp"].to_numpy(), g["value"].to_numpy(), cap)
        self._reasons: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, str]] = {}
        if self.gpu is not None and len(self.gpu):
            r = _samples(self.gpu, "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")
            for (inst, gpu), g in r.groupby(["instance", "gpu"], observed=True):
                uuid = str(g["UUID"].iloc[0]) if "UUID" in g else ""
                self._reasons[(str(inst), str(gpu))] = (
                    g["timestamp"].to_numpy(),
                    g["value"].to_numpy(),
                    uuid,
                )
        self._cpu: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        if self.host is not None and len(self.host) and "mode" in self.host:
            c = _samples(self.host, "fmdiag_host_cpu_seconds_total")
            for (inst, mode), group in c.groupby(["instance", "mode"], observed=True):
                g = group.sort_values("timestamp")
                self._cpu.setdefault(str(inst), {})[str(mode)] = (
                    g["timestamp"].to_numpy(),
                    g["value"].to_numpy(),
                )

    @functools.cached_property
    def _activity(
        self,
    ) -> tuple[dict[tuple[str, str], tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
        """GPU activity per (node, GPU), and the median over all GPUs per sample time; built on
        first use (only the whole-run straggler costing reads it)."""
        per_gpu: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        a = _samples(self.gpu, "DCGM_FI_PROF_GR_ENGINE_ACTIVE") if self.gpu is not None else None
        if a is None or not len(a):
            return per_gpu, np.array([]), np.array([])
        for (inst, gpu), group in a.groupby(["instance", "gpu"], observed=True):
            g = group.sort_values("timestamp")
            per_gpu[(str(inst), str(gpu))] = (g["timestamp"].to_numpy(), g["value"].to_numpy())
        med = a.groupby("timestamp")["value"].median().sort_index()
        return per_gpu, med.index.to_numpy(), med.to_numpy()

    def gpu_activity(self, node: str, gpu: int, t: float) -> tuple[float, float] | None:
        """The GPU's graphics-engine activity near ``t`` and the median GPU's: a straggler's GPU
        is busy while its peers idle waiting for it."""
        per_gpu, ts, med = self._activity
        own = per_gpu.get((node, str(gpu)))
        if own is None or not len(ts):
            return None
        near_own = np.abs(own[0] - t) <= SAMPLE_TOLERANCE_S
        near_all = np.abs(ts - t) <= SAMPLE_TOLERANCE_S
        if not near_own.any() or not near_all.any():
            return None
        return float(np.mean(own[1][near_own])), float(np.mean(med[near_all]))

    def hw_slowdown(self, node: str, gpu: int, t: float) -> tuple[float, str] | None:
        """Fraction of samples near ``t`` with a hardware clock-event bit set, and the GPU's UUID."""
        got = self._reasons.get((node, str(gpu)))
        if got is None:
            return None
        ts, vals, uuid = got
        step = float(np.median(np.diff(ts))) if len(ts) > 1 else SAMPLE_TOLERANCE_S
        idx = np.flatnonzero(np.abs(ts - t) <= min(SAMPLE_TOLERANCE_S, 1.5 * step))
        if not len(idx):
            return None
        bits = vals[idx].astype(np.int64) & HW_SLOWDOWN_BITS
        return float(np.mean(bits != 0)), uuid

    @functools.cached_property
    def _pressure_by_node(self) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """PSI ``some`` stall seconds per resource and node; built on first use."""
        out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        if self.host is None or not len(self.host) or "resource" not in self.host:
            return out
        x = self.host[self.host["metric"] == "fmdiag_host_pressure_stall_seconds_total"]
        x = x[x["kind"] == "some"] if "kind" in x else x
        for (inst, res), group in x.groupby(["instance", "resource"], observed=True):
            g = group.sort_values("timestamp")
            out.setdefault(str(res), {})[str(inst)] = (g["timestamp"].to_numpy(), g["value"].to_numpy())
        return out

    def _shares_by_node(self, resource: str, times: np.ndarray, until: float) -> dict[str, np.ndarray]:
        """Per node, the PSI ``some`` share of ``resource`` in the scrape interval holding each of
        ``times`` (NaN where the node has no samples around it); one pass per series."""
        out: dict[str, np.ndarray] = {}
        for inst, (ts, vals) in self._pressure_by_node.get(resource, {}).items():
            lo, hi, ok = _intervals(ts, times, until)
            span = np.where(ok, ts[hi] - ts[lo], 1.0)
            out[inst] = np.where(ok, (vals[hi] - vals[lo]) / span, np.nan)
        return out

    def node_pressure_at(self, times: np.ndarray, until: float) -> dict[str, dict[str, np.ndarray]]:
        """:meth:`_shares_by_node` for cpu and memory, the resources a straggler's host stalls on."""
        return {res: got for res in ("cpu", "memory") if (got := self._shares_by_node(res, times, until))}

    def pressure_at(self, resource: str, times: np.ndarray, until: float) -> np.ndarray | None:
        """The mean node's PSI ``some`` stall share of ``resource`` (cpu, io, memory) in the scrape
        interval holding each of ``times``: how much of the time some task waited on it."""
        shares = self._shares_by_node(resource, times, until)
        if not shares:
            return None
        stacked = np.vstack(list(shares.values()))
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step no node has samples around
            mean: np.ndarray = np.nanmean(stacked, axis=0)
        return mean

    def cpu_fractions(self, t: float, until: float) -> dict[str, float] | None:
        """Cluster-wide share of CPU time per mode between the samples around ``t``; ``until``
        is the end of the last step (samples after it show the job gone, not its load)."""
        return self.cpu_fractions_at(np.array([t]), until)[0]

    def cpu_fractions_at(self, times: np.ndarray, until: float) -> list[dict[str, float] | None]:
        """:meth:`cpu_fractions` at each of ``times``, one pass over the series (a 512-node job
        has thousands of them: per-step lookups would cost seconds)."""
        totals: dict[str, np.ndarray] = {}
        for modes in self._cpu.values():
            for mode, (ts, vals) in modes.items():
                lo, hi, ok = _intervals(ts, times, until)
                delta = np.where(ok, vals[hi] - vals[lo], 0.0)
                totals[mode] = totals.get(mode, np.zeros(len(times))) + delta
        out: list[dict[str, float] | None] = []
        for i in range(len(times)):
            whole = sum(float(v[i]) for v in totals.values())
            out.append({m: float(v[i]) / whole for m, v in totals.items()} if whole > 0 else None)
        return out

    def efa_culprit(self, t: float) -> tuple[dict[str, Any], float, float] | None:
        """The EFA device whose error counters grew most in the scrape interval holding ``t``, when
        it stands out (over 3x the median device) and its errors are no stray few: culprit, its
        errors and the median's."""
        deltas: dict[tuple[str, str], float] = {}
        for key, (ts, vals) in self._efa.items():
            lo, hi = _bracket(ts, t)
            if hi > lo:
                deltas[key] = float(vals[hi] - vals[lo])
        if len(deltas) < 2:
            return None
        (node, dev), top = max(deltas.items(), key=lambda kv: kv[1])
        median = float(np.median(list(deltas.values())))
        if top <= 0 or top < 3 * median:
            return None
        # a few stray events on a quiet device are not trouble: the errors must be a real share of
        # what it sent (EFA_ERROR_SHARE of its packets), or, without its byte counter, many
        tx = self._tx.get((node, dev))
        if tx is not None:
            tlo, thi = _bracket(tx[0], t)
            if thi > tlo:
                packets = max(float(tx[1][thi] - tx[1][tlo]) / EFA_PACKET_BYTES, 1.0)
                if top < EFA_ERROR_SHARE * packets:
                    return None
        elif top < EFA_CULPRIT_MIN_EVENTS:
            return None
        return {"node": node, "efa_device": dev}, top, median

    def efa_error_share(self, t: float) -> float | None:
        """Error events over (estimated) packets sent on the median EFA device in the scrape
        interval holding ``t``: fabric-wide trouble, when no single device stands out."""
        shares: list[float] = []
        for key, (ts, vals) in self._efa.items():
            tx = self._tx.get(key)
            if tx is None:
                continue
            lo, hi = _bracket(ts, t)
            tlo, thi = _bracket(tx[0], t)
            if hi > lo and thi > tlo:
                packets = max(float(tx[1][thi] - tx[1][tlo]) / EFA_PACKET_BYTES, 1.0)
                shares.append(float(vals[hi] - vals[lo]) / packets)
        return float(np.median(shares)) if shares else None

    def efa_neighbours(self, node: str, device: str) -> dict[str, Any]:
        """The device's NUMA node and the GPUs on it (their collectives go through it first)."""
        numa = self._efa_numa.get((node, device), "")
        if not numa:
            return {}
        return {"numa_node": numa, "gpus_on_numa_node": sorted(self._gpu_numa.get((node, numa), []))}

    def efa_line_fraction(self, t: float, until: float | None = None) -> dict[tuple[str, str], float]:
        """Per (node, device), transmit throughput over line rate in the scrape interval holding
        ``t`` (for the last steps before ``until``, the job's end, the interval before: the next
        sample shows the job gone). Averaged over a scrape interval, a healthy FSDP job's bursts
        read far below 1; a sick link carries less than its peers."""
        out: dict[tuple[str, str], float] = {}
        for node, (ts, vals, cap) in self._tx.items():
            if until is None:
                lo, hi = _bracket(ts, t)
            else:
                los, his, _ = _intervals(ts, np.array([t]), until)
                lo, hi = int(los[0]), int(his[0])
            if hi > lo and ts[hi] > ts[lo]:
                out[node] = float(vals[hi] - vals[lo]) / (ts[hi] - ts[lo]) / cap
        return out

    def slowest_ost(self) -> dict[str, Any] | None:
        """The OST with the highest read latency seen by any client (the I/O culprit)."""
        if self.lustre is None or "ost" not in self.lustre:
            return None
        x = _samples(self.lustre, "fmdiag_lustre_osc_operation_latency_max_seconds", operation="ost_read")
        x = x[x["ost"] != ""]
        if not len(x):
            return None
        per = x.groupby("ost", observed=True)["value"].median()
        if len(per) < 2 or per.max() < 2 * per.median():
            return None
        ost = str(per.idxmax())
        fs = str(x.loc[x["ost"] == ost, "fs"].iloc[0]) if "fs" in x else ""
        # the osc labels the target by index; the fleet names it <fs>-OSTnnnn
        full = ost if not fs or ost.startswith(f"{fs}-") else f"{fs}-{ost}"
        return {"fs": fs, "ost": full} if fs else {"ost": full}


def classify(steps: pd.DataFrame, metrics: dict[str, pd.DataFrame] | None = None) -> list[Verdict]:
    """One verdict per step of the merged step records (see the module docstring for the rules)."""
    return classify_features(step_features(steps), MetricView(metrics or {}))


def classify_features(feats: list[StepFeatures], view: MetricView) -> list[Verdict]:
    """The rules on per-step features; every cause whose own test passes is recorded, the first
    in the order checkpoint stall, starvation, network, straggler is the verdict and the others
    are its ``secondary`` causes (the attribution counts the time each of them cost)."""
    if not feats:
        return []
    ost = view.slowest_ost()
    typical = float(np.median([f.duration_s for f in feats]))
    ends = np.array([f.end_s for f in feats])
    cpu_at = view.cpu_fractions_at(ends, feats[-1].end_s)
    psi = {r: view.pressure_at(r, ends, feats[-1].end_s) for r in ("io", "cpu")}
    node_psi: dict[str, dict[str, np.ndarray]] | None = None  # per node: only when a rule asks
    ref = CommReference.of(feats)
    # the run's normal checkpoints: their median, when most checkpoints are below the stall line
    ckpts = np.array([f.checkpoint_s for f in feats if f.checkpoint_s > 0])
    normal = ckpts[ckpts <= CHECKPOINT_STALL_STEPS * typical]
    usual_ckpt = float(np.median(normal)) if normal.size >= max(2, ckpts.size // 2) else 0.0
    out: list[Verdict] = []
    for i, f in enumerate(feats):
        work_s = max(f.duration_s - f.checkpoint_s, 1e-9)
        window = feats[max(0, i - WINDOW) : i + WINDOW + 1]
        same_late = sum(w.late_rank == f.late_rank for w in window) / len(window)
        same_node = sum(w.late_node == f.late_node for w in window) / len(window) if f.late_node else 0.0
        v = Verdict(step=f.step, cls="compute", confidence=0.6)
        causes: list[str] = []
        if f.checkpoint_s > CHECKPOINT_STALL_STEPS * typical or (
            usual_ckpt > 0
            and f.checkpoint_s > CHECKPOINT_STALL_RATIO * usual_ckpt
            and f.checkpoint_s > CHECKPOINT_STALL_MIN_STEPS * typical
        ):
            causes.append("checkpoint")
        cpu = None
        starved = f.data_wait_median > DATA_WAIT_FRACTION * work_s
        if starved:
            cpu = cpu_at[i]
            # a loader in the training process blocks the loop whatever makes it slow: the host's
            in_process = f.loader == "in-process" and cpu is None
            causes.append("host" if in_process else starvation_class(cpu, _pressure(psi, i)))
        alone = f.ranks < 2
        hw = None
        if not alone and same_late >= LATE_RANK_CONSISTENCY and f.late_local_rank >= 0:
            hw = view.hw_slowdown(f.late_node, f.late_local_rank, f.end_s)
        same_stage = sum(w.stage_late == f.stage_late for w in window) / len(window)
        stage_loss = float(np.median([w.stage_loss for w in window]))
        stage_late = (
            f.stages >= 2 and stage_loss >= STAGE_IMBALANCE_LOSS and same_stage >= LATE_RANK_CONSISTENCY
        )
        if stage_late:
            causes.append("straggler")
        late_by_behaviour = (
            not alone
            and not stage_late
            and same_late >= LATE_RANK_CONSISTENCY
            and late_rank_holds_the_job(f, work_s)
        )
        # A rank (or node: its ranks take turns) late step after step on a node whose tasks stall
        # on CPU or memory far more than the other nodes': a straggler by behaviour whose cause
        # the node names, however small the wait looks (under FSDP every rank's forward absorbs
        # the wait for the late rank's all-gathers, so the wait barely shows in the phases).
        late_host = None
        consistent = same_late >= LATE_RANK_CONSISTENCY or same_node >= LATE_NODE_CONSISTENCY
        if not alone and not stage_late and not late_by_behaviour and f.late_node and consistent:
            if node_psi is None:
                node_psi = view.node_pressure_at(ends, feats[-1].end_s)
            got = _node_pressure(node_psi, f.late_node, i)
            if got is not None and got[1] >= NODE_PRESSURE_STALL and got[1] >= NODE_PRESSURE_RATIO * got[2]:
                late_host = got
                causes.append("straggler")
        # A rank late because its own input arrives late: the job starves for input through that
        # rank (the same cause as starvation, localised), io or host by the same evidence.
        late_input = late_by_behaviour and (
            f.data_wait_late - f.data_wait_median >= STRAGGLER_OWN_SHARE * _late_extra(f, work_s)
        )
        if late_input and not starved:
            cpu = cpu_at[i]
            causes.append(starvation_class(cpu, _pressure(psi, i)))
        # Waiting for a late rank is not the fabric's doing: a straggler by behaviour is decided
        # before the network, which then needs the transfer itself to be long.
        elif late_by_behaviour:
            causes.append("straggler")
        host_loop = not starved and f.host_wait_median > HOST_WAIT_FRACTION * work_s
        if host_loop and f.host_wait_median >= f.comm_min:
            causes.append("host")
        evidence: list[dict[str, Any]] = []
        if f.comm_min > NETWORK_FLOOR_FRACTION * work_s:
            evidence = network_evidence(f, i, work_s, ref, view, feats[-1].end_s)
            if evidence:
                causes.append("network")
        if host_loop and "host" not in causes:
            causes.append("host")
        if not late_by_behaviour and hw is not None and hw[0] > 0:
            causes.append("straggler")
        first = causes[0] if causes else None
        if first == "checkpoint":
            v.cls, v.confidence = "io", 0.8
            v.evidence.append(_ev("checkpoint_s", f.checkpoint_s, CHECKPOINT_STALL_STEPS * typical))
            v.culprit = None
            v.recommendation = (
                f"checkpoint took {f.checkpoint_s:.1f} s ({f.checkpoint_s / typical:.0f} steps): "
                "check the checkpoint filesystem's write bandwidth or checkpoint less often"
            )
        elif first == "host" and host_loop:
            _host_loop(v, f, work_s)
        elif first in ("io", "host") and late_input and not starved:
            _late_input(v, f, work_s, same_late, cpu, ost, _pressure(psi, i))
        elif first in ("io", "host"):
            _starved(v, f, work_s, cpu, ost, _pressure(psi, i))
            for res, shares in psi.items():
                if shares is not None and np.isfinite(shares[i]):
                    v.evidence.append(_ev(f"psi_{res}_some_fraction", shares[i], float(np.nanmedian(shares))))
        elif first == "straggler" and stage_late:
            _late_stage(v, f, same_stage, view)
        elif first == "straggler" and late_host is not None:
            _late_host(v, f, same_late, same_node, late_host)
        elif first == "straggler" and late_by_behaviour:
            _late_rank(v, f, work_s, same_late, hw)
        elif first == "network":
            _network(v, f, work_s, view, evidence)
            if alone:
                _alone(v, f, work_s)
        elif alone:
            v.recommendation = "compute-bound: no input, host or communication wait stands out"
        elif same_late >= LATE_RANK_CONSISTENCY:
            _straggler(v, f, work_s, same_late, view, hw)
        else:
            v.evidence.append(_ev("late_rank_consistency", same_late, LATE_RANK_CONSISTENCY))
            v.recommendation = "compute-bound: no input, network or hardware cause stands out"
        v.cause = "checkpoint" if first == "checkpoint" else v.cls
        v.secondary = [c for c in causes[1:] if c != v.cls]
        rng = view.time_range
        if rng is not None and not (rng[0] <= f.end_s <= rng[1]):  # no samples on both sides
            v.outside_metrics = True
            if v.culprit is None:
                v.undecided.append(
                    f"step outside the node metrics' time range ({_clock(rng[0])} to {_clock(rng[1])}):"
                    " no metric evidence or culprit can be looked up"
                )
        out.append(v)
    return smooth(out)


def _clock(t: float) -> str:
    import datetime as dt  # noqa: PLC0415

    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@dataclass
class CommReference:
    """The run's own fast collectives, and its typical compute, for the network evidence."""

    comm_fast: float
    compute_typical: float
    #: Per step index: the window's median comm_min and median compute.
    comm_window: np.ndarray
    compute_window: np.ndarray

    @classmethod
    def of(cls, feats: list[StepFeatures]) -> CommReference:
        comm = np.array([f.comm_min for f in feats])
        compute = np.array([f.compute_median for f in feats])
        floor = 1e-3 * float(np.median([f.duration_s for f in feats]))
        n = len(feats)
        win_c = np.array([np.median(comm[max(0, i - WINDOW) : i + WINDOW + 1]) for i in range(n)])
        win_w = np.array([np.median(compute[max(0, i - WINDOW) : i + WINDOW + 1]) for i in range(n)])
        return cls(max(float(np.percentile(comm, 25)), floor), float(np.median(compute)), win_c, win_w)


def network_evidence(
    f: StepFeatures, i: int, work_s: float, ref: CommReference, view: MetricView, until: float | None = None
) -> list[dict[str, Any]]:
    """The positive evidence that the fabric, not the job's own shape, made this step wait in
    communication (see :data:`COMM_SPIKE_RATIO` and the constants after it); empty: none."""
    out: list[dict[str, Any]] = []
    if f.comm_min >= COMM_SPIKE_RATIO * ref.comm_fast:
        out.append(_ev("comm_exposed_vs_run_fast_s", f.comm_min, COMM_SPIKE_RATIO * ref.comm_fast))
    elif (
        ref.comm_window[i] >= COMM_GROWTH_RATIO * ref.comm_fast
        and f.comm_min >= COMM_GROWTH_RATIO * ref.comm_fast  # this step too, not only its neighbours
        and abs(ref.compute_window[i] - ref.compute_typical) <= FLAT_COMPUTE * ref.compute_typical
    ):
        out.append(
            _ev("comm_exposed_window_vs_run_fast_s", ref.comm_window[i], COMM_GROWTH_RATIO * ref.comm_fast)
        )
    if f.comm_min >= COMM_DOMINANT_FRACTION * work_s:
        out.append(_ev("comm_exposed_min_fraction", f.comm_min / work_s, COMM_DOMINANT_FRACTION))
    efa = view.efa_culprit(f.end_s)
    if efa is not None:
        out.append(_ev("efa_error_events", efa[1], efa[2]))
    else:
        share = view.efa_error_share(f.end_s)
        if share is not None and share >= EFA_ERROR_SHARE:
            out.append(_ev("efa_error_share_median_device", share, EFA_ERROR_SHARE))
    line = view.efa_line_fraction(f.end_s, until)
    if line:
        usual = float(np.median(list(line.values())))
        if usual >= EFA_SATURATED:
            out.append(_ev("efa_tx_fraction_of_line_rate", usual, EFA_SATURATED))
    return out


def late_rank_holds_the_job(f: StepFeatures, work_s: float) -> bool:
    """The median rank waits for the late rank a good share of the step, and the late rank's own
    work explains that wait (see :data:`STRAGGLER_WAIT_FRACTION`) — or, where the late rank and
    others were traced, their GPUs wait that share on communication while the late rank's does
    not (its lateness is its own, whatever its phases show)."""
    if f.trace_wait >= STRAGGLER_WAIT_FRACTION * work_s:
        return True
    wait = f.wait_for_late
    return wait >= STRAGGLER_WAIT_FRACTION * work_s and f.late_own_extra >= STRAGGLER_OWN_SHARE * wait


def _late_extra(f: StepFeatures, work_s: float) -> float:
    """How late the late rank is by its own doing: its work beyond the median rank's, or, where
    traces show the others waiting for it longer than that, their wait (never below a
    millisecond: a share of nothing is no evidence)."""
    traced = f.trace_wait if f.trace_wait >= STRAGGLER_WAIT_FRACTION * work_s else 0.0
    return max(f.late_own_extra, traced, 1e-3)


def _late_rank(
    v: Verdict, f: StepFeatures, work_s: float, same_late: float, hw: tuple[float, str] | None
) -> None:
    """A straggler found by behaviour; its cause from the evidence there is, else named unknown."""
    v.cls = "straggler"
    traced = f.trace_wait >= STRAGGLER_WAIT_FRACTION * work_s
    wait = f.trace_wait if traced else f.wait_for_late
    v.evidence.append(
        _ev(
            "traced_wait_for_late_rank_s" if traced else "wait_for_late_rank_s",
            wait,
            STRAGGLER_WAIT_FRACTION * work_s,
        )
    )
    v.evidence.append(_ev("late_rank_consistency", same_late, LATE_RANK_CONSISTENCY))
    v.evidence.append(
        _ev("late_rank_work_s", f.compute_late + f.data_wait_late, f.compute_median + f.data_wait_median)
    )
    culprit: dict[str, Any] = {"node": f.late_node, "rank": f.late_rank}
    if f.late_local_rank >= 0:
        culprit["gpu"] = f.late_local_rank
    v.culprit = culprit
    where = f"rank {f.late_rank}" + (f" on {f.late_node}" if f.late_node else "")
    behind = (
        f"{where} joins every collective last; the traced ranks' GPUs wait {wait * 1e3:.0f} ms for it in"
        f" communication ({wait / work_s:.0%} of the step) while its own barely waits"
        if traced
        else f"{where} works {f.late_own_extra * 1e3:.0f} ms longer than the median rank and joins every "
        f"collective last; the others wait {wait * 1e3:.0f} ms for it ({wait / work_s:.0%} of the step)"
    )
    data_part = f.data_wait_late - f.data_wait_median
    if hw is not None and hw[0] > 0:
        share, uuid = hw
        if uuid:
            culprit["gpu_uuid"] = uuid
        v.confidence, v.reason = min(0.95, 0.7 + 0.25 * share), "hardware"
        v.evidence.append(_ev("hw_slowdown_fraction", share, 0.0))
        v.recommendation = (
            f"drain {f.late_node}: GPU {f.late_local_rank} in HW slowdown {share:.0%} of the time; {behind}"
        )
    elif data_part >= STRAGGLER_OWN_SHARE * _late_extra(f, work_s):
        v.confidence, v.reason = 0.75, "data"
        v.recommendation = f"{behind}, mostly waiting for its input: check its node's data path and loader"
    else:
        v.confidence, v.reason = 0.7, "unknown"
        hw_note = "no hardware clock-event bit on its GPU" if hw is not None else "no GPU metrics to check"
        v.recommendation = (
            f"{behind}; cause unknown ({hw_note}): check its node for CPU contention or throttling "
            "(a noisy neighbour, a cgroup quota), memory pressure, a PCIe link at reduced width, "
            "and Python GC pauses"
        )


def _late_stage(v: Verdict, f: StepFeatures, same_stage: float, view: MetricView) -> None:
    """A pipeline stage that computes longer than the others step after step (layers split
    unevenly, the loss head on the last stage): every other stage waits for it in its p2p
    receives. Not the network, not one rank, and not a fault: a ``compute`` verdict with cause
    ``stage_imbalance`` (the fix is repartitioning) — unless the stage's GPU shows hardware
    slowdown bits, which make it a straggler stage with a hardware cause."""
    hw = view.hw_slowdown(f.stage_node, f.late_local_rank, f.end_s) if f.stage_node else None
    if hw is not None and hw[0] > 0 and f.stage_node == f.late_node:
        v.cls, v.confidence, v.reason = "straggler", 0.8, "hardware"
        v.evidence.append(_ev("hw_slowdown_fraction", hw[0], 0.0))
    else:
        v.cls, v.confidence, v.reason = "compute", 0.8, "stage_imbalance"
    v.evidence.append(_ev("stage_idle_share", f.stage_loss, STAGE_IMBALANCE_LOSS))
    v.evidence.append(_ev("late_stage_consistency", same_stage, LATE_RANK_CONSISTENCY))
    v.evidence.append(_ev("late_stage_compute_s", f.stage_late_compute, f.stage_median_compute))
    v.culprit = {"pp_rank": f.stage_late, **({"node": f.stage_node} if f.stage_node else {})}
    more = f.stage_late_compute / f.stage_median_compute - 1 if f.stage_median_compute > 0 else 0.0
    v.recommendation = (
        f"pipeline stage {f.stage_late} computes {more:.0%} more than the median stage; the other stages"
        f" idle {f.stage_loss:.0%} of their time waiting for it in their p2p receives: move layers off it"
        " (repartition the pipeline)"
    )


def _node_pressure(
    shares: dict[str, dict[str, np.ndarray]], node: str, i: int
) -> tuple[str, float, float] | None:
    """The resource (cpu, memory) on which ``node``'s tasks stall most beside the other nodes at
    step ``i``: (resource, the node's PSI ``some`` share, the median other node's); None without
    PSI for the node and at least one other."""
    best: tuple[str, float, float] | None = None
    for res, by_node in shares.items():
        mine = by_node.get(node)
        if mine is None or not np.isfinite(mine[i]):
            continue
        others = [float(v[i]) for n, v in by_node.items() if n != node and np.isfinite(v[i])]
        if not others:
            continue
        own, median = float(mine[i]), float(np.median(others))
        if best is None or own - median > best[1] - best[2]:
            best = (res, own, median)
    return best


def _late_host(
    v: Verdict, f: StepFeatures, same_late: float, same_node: float, pressure: tuple[str, float, float]
) -> None:
    """A late rank (or a node whose ranks take turns being late) on a node whose tasks stall on
    CPU or memory far more than the other nodes': a straggler whose cause is its host (a noisy
    neighbour, a cgroup quota, memory reclaim). A node-wide cause slows all its ranks, so when
    they take turns the culprit is the node, not one of them."""
    res, own, others = pressure
    v.cls, v.confidence, v.reason = "straggler", 0.75, "host"
    v.evidence.append(_ev(f"late_node_psi_{res}_some_fraction", own, others))
    one_rank = same_late >= LATE_RANK_CONSISTENCY
    if one_rank:
        v.evidence.append(_ev("late_rank_consistency", same_late, LATE_RANK_CONSISTENCY))
        culprit: dict[str, Any] = {"node": f.late_node, "rank": f.late_rank}
        if f.late_local_rank >= 0:
            culprit["gpu"] = f.late_local_rank
        who = f"its rank {f.late_rank} joins"
    else:
        v.evidence.append(_ev("late_node_consistency", same_node, LATE_NODE_CONSISTENCY))
        culprit = {"node": f.late_node}
        who = "its ranks take turns joining"
    v.culprit = culprit
    what = "CPU (a noisy neighbour, a cgroup quota, IRQs)" if res == "cpu" else "memory (reclaim)"
    v.recommendation = (
        f"{f.late_node}'s tasks stall on {what} {own:.0%} of the time (other nodes {others:.0%}) and"
        f" {who} the collectives last step after step: free the node or drain it"
    )


def _late_input(
    v: Verdict,
    f: StepFeatures,
    work_s: float,
    same_late: float,
    cpu: dict[str, float] | None,
    ost: dict[str, Any] | None,
    pressure: tuple[float, float] | None,
) -> None:
    """One rank joins late because its batches come late; everyone waits for it: input
    starvation through that rank, io or host by the node evidence (as for the whole job)."""
    v.cls = starvation_class(cpu, pressure)
    extra = f.data_wait_late - f.data_wait_median
    v.evidence.append(_ev("late_rank_data_wait_s", f.data_wait_late, f.data_wait_median))
    v.evidence.append(_ev("late_rank_consistency", same_late, LATE_RANK_CONSISTENCY))
    v.evidence.append(_ev("wait_for_late_rank_s", f.wait_for_late, STRAGGLER_WAIT_FRACTION * work_s))
    v.culprit = {"node": f.late_node, "rank": f.late_rank}
    v.confidence = 0.5 if cpu is None and pressure is None else 0.75
    where = f"rank {f.late_rank}" + (f" on {f.late_node}" if f.late_node else "")
    why = (
        "its storage reads (I/O)"
        if v.cls == "io"
        else "its loader's CPU (busy, or a CPU quota on its workers)"
        if cpu is not None or pressure is not None
        else "its loader (no host metrics to say whether storage or CPU)"
    )
    v.recommendation = (
        f"{where} waits {extra * 1e3:.0f} ms longer for its batches than the median rank and every other"
        f" rank waits for it ({f.wait_for_late / work_s:.0%} of the step): its input is the bottleneck —"
        f" check {why}"
    )
    if v.cls == "io" and ost:
        v.culprit.update(ost)


def _host_loop(v: Verdict, f: StepFeatures, work_s: float) -> None:
    """The GPU waits for the CPU side of the training loop, the DataLoader not being the reason."""
    v.cls, v.confidence = "host", 0.7
    v.evidence.append(_ev("gpu_idle_host_wait_s", f.host_wait_median, HOST_WAIT_FRACTION * work_s))
    v.evidence.append(_ev("data_wait_s", f.data_wait_median, DATA_WAIT_FRACTION * work_s))
    ops = f"; meanwhile the host ran {f.host_ops}" if f.host_ops else ""
    loader = (
        "no DataLoader in the trace"
        if f.loader == "none"
        else f"the data loader fast ({f.data_wait_median / work_s:.0%})"
    )
    v.recommendation = (
        f"the GPU waits for the host {f.host_wait_median / work_s:.0%} of the step with {loader}: the CPU"
        " side of the training loop (Python, kernel launches, synchronisation) holds it back"
        f"{ops}; consider CUDA graphs, fewer host syncs (.item(), .cpu()), larger kernels"
    )
    if f.loader == "none":
        v.undecided.append(
            "no DataLoader spans in the trace: a custom input pipeline may be part of this wait"
        )


def _alone(v: Verdict, f: StepFeatures, work_s: float) -> None:
    """A network verdict from one rank's data: late peers look the same, so say so."""
    v.confidence = 0.4
    v.recommendation = (
        f"rank {f.late_rank} waits {f.comm_min * 1e3:.0f} ms in collectives ({f.comm_min / work_s:.0%} of"
        " the step): a slow fabric or late peers, which one rank's data cannot tell apart; trace all"
        " ranks (or add their step records)"
    )
    v.undecided.append("one rank in the data: no cross-rank comparison (network or a late peer)")


def starvation_class(cpu: dict[str, float] | None, pressure: tuple[float, float] | None = None) -> str:
    """io or host for a step that starves for input: iowait says the filesystem, busy CPUs the
    loader. Both at once (a CPU-bound loader on a cluster whose reads also queue) is host when
    the busy share is the larger and at least :data:`HOST_MIN_BUSY`. With neither sign, the
    pressure stall shares ``(io, cpu)`` decide (:data:`PSI_STALL`: a throttled loader stalls on
    CPU with the node's CPUs idle); with none of these, io is assumed."""
    if cpu is not None:
        iowait = cpu.get("iowait", 0.0)
        busy = cpu.get("user", 0.0) + cpu.get("system", 0.0)
        if iowait >= IOWAIT_FRACTION:
            return "host" if busy > iowait and busy >= HOST_MIN_BUSY else "io"
        if busy >= CPU_BUSY_FRACTION:
            return "host"
    if pressure is not None:
        io, cpu_stall = pressure
        if cpu_stall >= PSI_STALL and cpu_stall > io:
            return "host"
    return "io"


def _pressure(psi: dict[str, np.ndarray | None], i: int) -> tuple[float, float] | None:
    """The (io, cpu) PSI ``some`` shares at step ``i``; None without both."""
    io, cpu = psi.get("io"), psi.get("cpu")
    if io is None or cpu is None or not (np.isfinite(io[i]) and np.isfinite(cpu[i])):
        return None
    return float(io[i]), float(cpu[i])


def _network(
    v: Verdict, f: StepFeatures, work_s: float, view: MetricView, evidence: list[dict[str, Any]]
) -> None:
    v.cls, v.confidence = "network", 0.8
    v.evidence.append(_ev("comm_exposed_min_s", f.comm_min, NETWORK_FLOOR_FRACTION * work_s))
    v.evidence.extend(
        e for e in evidence if e["metric"] not in ("efa_error_events", "efa_tx_fraction_of_line_rate")
    )
    where = "check EFA throughput, retransmits and port state"
    efa = view.efa_culprit(f.end_s)
    if efa is not None:
        v.culprit, errors, usual = efa
        v.culprit.update(view.efa_neighbours(v.culprit["node"], v.culprit["efa_device"]))
        v.evidence.append(_ev("efa_error_events", errors, usual))
        gpus = v.culprit.get("gpus_on_numa_node")
        shared = (
            f" (NUMA node {v.culprit['numa_node']}, with GPUs {', '.join(map(str, gpus))})" if gpus else ""
        )
        where = (
            f"{v.culprit['node']} {v.culprit['efa_device']}{shared} has {errors:.0f} error events in the "
            f"interval (median device {usual:.0f}): check its link and port state"
        )
    line = view.efa_line_fraction(f.end_s)
    if line:
        usual = float(np.median(list(line.values())))
        key = (str(v.culprit["node"]), str(v.culprit["efa_device"])) if v.culprit else None
        own = line.get(key, usual) if key else usual
        v.evidence.append(_ev("efa_tx_fraction_of_line_rate", own, usual))
        if key in line and own < LOW_THROUGHPUT * usual:
            where += f"; it sends at {own:.1%} of line rate against {usual:.1%} on the median device"
    v.recommendation = (
        f"every rank waits {f.comm_min * 1e3:.0f} ms or more in collectives with no late rank "
        f"({f.comm_min / work_s:.0%} of the step): {where}"
    )


def _starved(
    v: Verdict,
    f: StepFeatures,
    work_s: float,
    cpu: dict[str, float] | None,
    ost: dict[str, Any] | None,
    pressure: tuple[float, float] | None = None,
) -> None:
    v.evidence.append(_ev("data_wait_s", f.data_wait_median, DATA_WAIT_FRACTION * work_s))
    share = f.data_wait_median / work_s
    if f.loader == "in-process" and cpu is None:
        v.cls, v.confidence = "host", 0.75
        v.recommendation = (
            f"the DataLoader runs in the training process (num_workers=0) and takes {share:.0%} of the"
            " step, which the GPU spends idle: give it worker processes (num_workers > 0) so loading"
            " overlaps training"
        )
        return
    v.cls = starvation_class(cpu, pressure)
    iowait = cpu.get("iowait", 0.0) if cpu else 0.0
    busy = cpu.get("user", 0.0) + cpu.get("system", 0.0) if cpu else 0.0
    by_pressure = (iowait < IOWAIT_FRACTION and busy < CPU_BUSY_FRACTION) and pressure is not None
    if cpu is None and pressure is None:
        v.confidence = 0.4
        v.undecided.append("no host CPU metrics: io and host cannot be told apart; io assumed")
    elif by_pressure and pressure is not None:
        io_stall, cpu_stall = pressure
        v.evidence.append(_ev("psi_cpu_some_fraction" if v.cls == "host" else "psi_io_some_fraction",
                              cpu_stall if v.cls == "host" else io_stall, PSI_STALL))  # fmt: skip
        if v.cls == "io" and io_stall < PSI_STALL:
            v.confidence = 0.5
            v.undecided.append("data wait with neither iowait, busy CPUs nor a pressure stall; io assumed")
        else:
            v.confidence = 0.8
    else:
        if iowait >= IOWAIT_FRACTION:
            v.evidence.append(_ev("cpu_iowait_fraction", iowait, IOWAIT_FRACTION))
        if v.cls == "host":
            v.evidence.append(
                _ev("cpu_busy_fraction", busy, CPU_BUSY_FRACTION if iowait < IOWAIT_FRACTION else iowait)
            )
        if iowait < IOWAIT_FRACTION and v.cls == "io":
            v.confidence = 0.5
            v.undecided.append("data wait with neither iowait nor saturated CPUs; io assumed")
        else:
            v.confidence = 0.85
    if v.cls == "io":
        if ost:
            v.culprit = dict(ost)
        v.recommendation = (
            f"input starvation: data wait {share:.0%} of the step"
            + (f"; {ost['ost']} has the highest read latency" if ost else "")
            + ": check the data filesystem's OSTs"
        )
    elif by_pressure:
        v.recommendation = (
            f"CPU-starved input pipeline: data wait {share:.0%} of the step while the loader's tasks wait"
            f" for CPU with the node's CPUs {1 - busy - iowait:.0%} idle: a CPU quota (container or cgroup"
            " limit) or too few loader workers; raise the limit or add workers"
        )
    else:
        v.recommendation = (
            f"CPU-bound input pipeline: data wait {share:.0%} of the step with CPUs saturated: "
            "add dataloader workers or move decoding off the CPU"
        )


def _straggler(
    v: Verdict,
    f: StepFeatures,
    work_s: float,
    same_late: float,
    view: MetricView,
    hw: tuple[float, str] | None,
) -> None:
    v.evidence.append(_ev("late_rank_consistency", same_late, LATE_RANK_CONSISTENCY))
    culprit = {"node": f.late_node, "rank": f.late_rank, "gpu": f.late_local_rank}
    behind = f.compute_late - f.compute_median
    if hw is None:
        v.cls, v.confidence = "compute", 0.4
        v.undecided.append(
            f"rank {f.late_rank} joins last consistently but no GPU metrics confirm a hardware cause"
            if f.late_local_rank >= 0
            else f"rank {f.late_rank} joins last consistently, but its node and GPU are unknown (no step"
            " records): a hardware cause cannot be checked"
        )
        where = f" on {f.late_node}" if f.late_node else ""
        v.recommendation = f"check rank {f.late_rank}{where}: it joins every collective last"
        return
    share, uuid = hw
    v.evidence.append(_ev("hw_slowdown_fraction", share, 0.0))
    if share <= 0.0:
        where = f" on {f.late_node}" if f.late_node else ""
        v.recommendation = (
            f"rank {f.late_rank}{where} joins the collectives last in {same_late:.0%} of the steps around"
            f" this one, with no hardware clock-event bit, and the wait the step records show is under"
            f" {STRAGGLER_WAIT_FRACTION:.0%} of the step: a small, steady speed difference, or a wait the"
            " records cannot show (under FSDP it hides in every rank's forward) — profile this rank and"
            " one other for a few steps and fmdiag measures it from the traces"
        )
        return
    v.cls, v.confidence, v.reason = "straggler", min(0.95, 0.6 + 0.35 * share), "hardware"
    if uuid:
        culprit["gpu_uuid"] = uuid
    v.culprit = culprit
    v.evidence.append(_ev("late_rank_compute_s", f.compute_late, f.compute_median))
    v.recommendation = (
        f"drain {f.late_node}: GPU {f.late_local_rank} in HW slowdown {share:.0%} of the time; its rank "
        f"{f.late_rank} computes {behind * 1e3:.0f} ms longer than the median rank and joins every "
        f"collective last (step {f.duration_s:.2f} s)"
    )


#: A lone verdict whose deciding measurement is at least this many times its threshold is a
#: real event (one slow collective of an intermittent link), not noise: the continuity rule keeps it.
CLEAR_MARGIN = 1.5


def _clear(v: Verdict) -> bool:
    if not v.evidence:
        return False
    first = v.evidence[0]
    return bool(first["baseline"] > 0 and first["value"] >= CLEAR_MARGIN * first["baseline"])


def smooth(verdicts: list[Verdict]) -> list[Verdict]:
    """Continuity: a lone verdict between two neighbours that agree takes their class, unless
    the measurement that decided it is clearly past its threshold."""
    for i in range(1, len(verdicts) - 1):
        prev, cur, nxt = verdicts[i - 1], verdicts[i], verdicts[i + 1]
        if prev.cls == nxt.cls != cur.cls and cur.cls != "io" and not _clear(cur):
            cur.undecided.append(
                f"looked like {cur.cls} alone between two {prev.cls} steps (continuity rule)"
            )
            cur.cls, cur.confidence = prev.cls, min(prev.confidence, nxt.confidence) * 0.8
            cur.culprit, cur.recommendation, cur.cause = prev.culprit, prev.recommendation, prev.cause
            cur.reason = prev.reason
    return verdicts


def runs(verdicts: list[Verdict]) -> list[dict[str, Any]]:
    """Runs of one verdict (class and culprit): first and last step, class, culprit, recommendation."""
    out: list[dict[str, Any]] = []
    for v in verdicts:
        if out and out[-1]["class"] == v.cls and out[-1]["culprit"] == v.culprit:
            out[-1]["last_step"] = v.step
            out[-1]["steps"] += 1
        else:
            out.append(
                {
                    "first_step": v.step,
                    "last_step": v.step,
                    "steps": 1,
                    "class": v.cls,
                    "culprit": v.culprit,
                    "recommendation": v.recommendation,
                }
            )
    return out
