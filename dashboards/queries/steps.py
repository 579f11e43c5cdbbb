"""Step-time queries: the raw expressions the recording rules evaluate, and the recorded series.

Per-job quantiles over thousands of ranks are expensive and wanted by every panel and several
alerts, so they are recorded once (``level:metric:operation``) and everything else reads the
recorded series. Recording rules here read only raw series (never another recorded one), so
``promtool tsdb create-blocks-from rules`` can backfill them in one pass.
"""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import lustre
from fmdiag.dashboards.queries.scope import RULES, Scope, by

RECORD_WINDOW = "5m"
QUANTILES = (0.5, 0.9, 0.99)
COMPUTE_PHASES = "forward|backward|optimizer"


def job_labels(c: Config) -> tuple[str, str]:
    return (c.cluster_label, c.job_label)


def rank_labels(c: Config) -> tuple[str, ...]:
    return (c.cluster_label, c.job_label, "rank", c.node_label)


# --- recorded series names -----------------------------------------------------------------
def quantile_record(q: float) -> str:
    return f"training_job:fmdiag_step_duration_seconds:p{round(q * 100)}_rate{RECORD_WINDOW}"


MEAN_RECORD = f"training_job:fmdiag_step_duration_seconds:mean_rate{RECORD_WINDOW}"
RANK_MEAN_RECORD = f"rank:fmdiag_step_duration_seconds:mean_rate{RECORD_WINDOW}"
RANK_PHASE_RECORD = f"rank:fmdiag_step_phase_seconds:rate{RECORD_WINDOW}"
RANK_WAIT_CAUSED_RECORD = f"rank:fmdiag_step_wait_caused_seconds:rate{RECORD_WINDOW}"
JOB_PHASE_MEDIAN_RECORD = f"training_job:fmdiag_step_phase_seconds:median_rate{RECORD_WINDOW}"
STALL_RECORD = f"training_job:fmdiag_step_stall_fraction:rate{RECORD_WINDOW}"


# --- raw expressions (what the recording rules evaluate; also usable without the rules) ------
def duration_quantile(c: Config, s: Scope, q: float, window: str) -> str:
    buckets = f"rate(fmdiag_step_duration_seconds_bucket{s.fmdiag(c, steps=True)}[{window}])"
    return f"histogram_quantile({q}, sum {by(*job_labels(c), 'le')} ({buckets}))"


def duration_mean(c: Config, s: Scope, window: str, *, per_rank: bool = False) -> str:
    labels = by(*(rank_labels(c) if per_rank else job_labels(c)))
    sel = s.fmdiag(c, steps=True)
    total = f"sum {labels} (rate(fmdiag_step_duration_seconds_sum{sel}[{window}]))"
    count = f"sum {labels} (rate(fmdiag_step_duration_seconds_count{sel}[{window}]))"
    return f"{total} / ({count} > 0)"


def phase_rate(c: Config, s: Scope, window: str, phases: str = ".+", *, per_phase: bool = True) -> str:
    """Seconds per second each rank spends in each phase (a fraction of its wall time)."""
    labels = by(*rank_labels(c), "phase" if per_phase else "")
    sel = s.fmdiag(c, f'phase=~"{phases}"', steps=True)
    return f"sum {labels} (rate(fmdiag_step_phase_seconds_total{sel}[{window}]))"


def phase_median(c: Config, s: Scope, window: str, phases: str = ".+", *, per_phase: bool = True) -> str:
    labels = by(*job_labels(c), "phase" if per_phase else "")
    return f"quantile {labels} (0.5, {phase_rate(c, s, window, phases, per_phase=per_phase)})"


def slow_storage_nodes(c: Config, window: str) -> str:
    """Nodes reading from an OST slower than the config's latency threshold: a data wait there
    is the storage's; anywhere else it is the host's (a CPU-starved dataloader, Python)."""
    latency = lustre.ost_latency(c, RULES, window, per_node=True)
    return (
        f"max by ({c.cluster_label}, {c.node_label}) ({latency}) > "
        f"{c.thresholds.lustre_ost_read_latency_seconds:g}"
    )


def wait_caused(c: Config, s: Scope, window: str) -> str:
    """Per rank: how much longer the job's median rank waits in collectives than this one, per second.

    In synchronous training every rank waits for the last to arrive, so a straggler is the rank
    that waits least (DOMAIN.md); the difference is the time it costs every other rank. Under
    FSDP the straggler also stretches its peers' compute (all-gathers inside forward and
    backward), so compute time alone does not single it out; exposed communication does.
    """
    jl = ", ".join(job_labels(c))
    comm = phase_rate(c, s, window, "comm_exposed", per_phase=False)
    return f"quantile by ({jl}) (0.5, {comm}) - on({jl}) group_right() {comm}"


def stall_expressions(c: Config, window: str) -> dict[str, str]:
    """The live stall signal: per job, the fraction of wall time lost to each bottleneck class.

    * ``io``: the slowest rank's data wait on nodes reading from a slow OST, plus checkpoint
      time beyond the config's checkpoint budget (planned checkpoints are not a stall);
    * ``host``: the slowest rank's data wait anywhere else (no storage pressure: the input
      pipeline's CPU work, DOMAIN.md);
    * ``straggler``: the time the median rank waits for the slowest one (:func:`wait_caused`);
    * ``network``: the median rank's exposed communication, less what the straggler explains;
    * ``compute``: the median rank's compute.
    The largest is the job's bottleneck class right now.
    """
    jl = by(*job_labels(c))
    on_node = f"on({c.cluster_label}, {c.node_label})"
    slow = slow_storage_nodes(c, window)
    wait = phase_rate(c, RULES, window, "data_wait", per_phase=False)
    io_wait = f"max {jl} ({wait} and {on_node} ({slow}))"
    ckpt = f"max {jl} ({phase_rate(c, RULES, window, 'checkpoint', per_phase=False)})"
    over_budget = f"clamp_min({ckpt} - {c.thresholds.checkpoint_budget_fraction:g}, 0)"
    compute = phase_rate(c, RULES, window, COMPUTE_PHASES, per_phase=False)
    comm = f"quantile {jl} (0.5, {phase_rate(c, RULES, window, 'comm_exposed', per_phase=False)})"
    straggle = f"max {jl} ({wait_caused(c, RULES, window)})"
    return {
        "io": f"({io_wait} or {over_budget} * 0) + ({over_budget} or {io_wait} * 0)",
        "host": f"max {jl} ({wait} unless {on_node} ({slow}))",
        "straggler": straggle,
        "network": f"clamp_min({comm} - {straggle}, 0)",
        "compute": f"quantile {jl} (0.5, {compute})",
    }


# --- recorded series, as dashboards and alerts read them -----------------------------------
def recorded(c: Config, s: Scope, name: str, extra: str = "") -> str:
    """A recorded series narrowed to the scope (recorded series carry no scrape ``job``)."""
    parts = []
    if s.cluster is not None:
        parts.append(f'{c.cluster_label}=~"{s.cluster}"')
    if s.job is not None:
        parts.append(f'{c.job_label}=~"{s.job}"')
    if s.node is not None and name.startswith("rank:"):
        parts.append(f'{c.node_label}=~"{s.node}"')
    if extra:
        parts.append(extra)
    return name + ("{" + ",".join(parts) + "}" if parts else "")


def silent_ranks(c: Config, s: Scope) -> str:
    """Seconds each rank's last step ended before its job's freshest rank's (0 for healthy ranks)."""
    last = f"max {by(*rank_labels(c))} (fmdiag_step_last_end_timestamp_seconds{s.fmdiag(c, steps=True)})"
    newest = f"max {by(*job_labels(c))} (fmdiag_step_last_end_timestamp_seconds{s.fmdiag(c, steps=True)})"
    return f"{newest} - on({', '.join(job_labels(c))}) group_right() {last}"


def tokens_rate(c: Config, s: Scope, window: str) -> str:
    return f"sum {by(*job_labels(c))} (rate(fmdiag_step_tokens_total{s.fmdiag(c, steps=True)}[{window}]))"


def running_jobs(c: Config, s: Scope) -> str:
    return f"count {by(*job_labels(c))} (fmdiag_step_last{s.fmdiag(c, steps=True)})"


def straggler_ranking(c: Config, s: Scope) -> str:
    """Ranks by the wait they cause their peers (recorded), as a fraction of wall time."""
    return recorded(c, s, RANK_WAIT_CAUSED_RECORD)
