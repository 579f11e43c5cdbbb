"""Training job: step time per rank, percentiles, stragglers, phases and the live stall signal,
with the GPU, EFA and Lustre signals of the job's own nodes on the same time axis."""

from __future__ import annotations

from grafana_foundation_sdk.models.dashboard import Dashboard

from fmdiag.dashboards.boards import variables
from fmdiag.dashboards.config import Config
from fmdiag.dashboards.panels import RATE, Board, Q, graph, heat, link_to, listing, steps
from fmdiag.dashboards.queries import efa, gpu, lustre
from fmdiag.dashboards.queries import steps as st
from fmdiag.dashboards.queries.scope import Scope

KEY = "job"
TITLE = "fmdiag / Training job"


def build(c: Config) -> Dashboard:
    s = Scope(cluster="$cluster", job="$job", node="$node")
    t = c.thresholds
    b = Board(
        c,
        KEY,
        TITLE,
        "One training job: how long its steps take, where the time goes, and which rank or node is to blame.",
    )
    variables.cluster(b)
    variables.job(b)
    variables.job_nodes(b)
    sel = f"{c.selectors.fmdiag}," if c.selectors.fmdiag else ""
    buckets = (
        f'sum by (le) (rate(fmdiag_step_duration_seconds_bucket{{{sel}{c.cluster_label}=~"$cluster",'
        f'{c.job_label}=~"$job"}}[{RATE}]))'
    )
    b.row("Step time")
    b.add(
        graph(
            "Step time percentiles",
            "Median, p90 and p99 step time of the job (recorded series). All ranks of a synchronous job "
            "share one step time; p99 far above p50 means periodic slow steps (checkpoints, GC, evaluation).",
            [
                *(Q(st.recorded(c, s, st.quantile_record(q)), f"p{round(q * 100)}") for q in st.QUANTILES),
                Q(st.recorded(c, s, st.MEAN_RECORD), "mean"),
            ],
            "s",
            min_val=0,
        ),
        heat(
            "Step time distribution",
            "How many steps fell in each duration bucket per interval (fmdiag_step_duration_seconds). Two "
            "bands: a periodic slow step.",
            Q(buckets, "{{le}}"),
            "s",
            buckets=True,
        ),
        heat(
            "Step time per rank",
            "Mean step time of each rank (rows). Synchronous ranks share one step time; a rank that differs "
            "is waiting less or more than its peers.",
            Q(st.recorded(c, s, st.RANK_MEAN_RECORD), "{{rank}}"),
            "s",
            buckets=False,
        ),
        graph(
            "Tokens per second",
            "Job throughput: a drop with the same step count means slower steps.",
            [Q(st.tokens_rate(c, s, RATE), "tokens/s")],
            "short",
            min_val=0,
        ),
    )
    b.row("Where the time goes")
    b.add(
        graph(
            "Live bottleneck",
            "Fraction of wall time lost to each bottleneck class (fmdiag's stall signal). A class above "
            f"{t.stall_fraction:.0%} for 10 minutes raises FmdiagTrainingJobBottleneck.",
            [Q(st.recorded(c, s, st.STALL_RECORD), "{{stall}}")],
            "percentunit",
            min_val=0,
            thresholds=steps(("green", None), ("orange", t.stall_fraction)),
        ),
        graph(
            "Phase breakdown (median rank)",
            "Seconds per second the median rank spends in each step phase (from step records). data_wait: "
            "input pipeline; comm_exposed: collectives not hidden behind compute; checkpoint: saving.",
            [Q(st.recorded(c, s, st.JOB_PHASE_MEDIAN_RECORD), "{{phase}}")],
            "percentunit",
            min_val=0,
            stack=True,
        ),
        graph(
            "Data wait and exposed communication per rank",
            "Seconds per second each rank waits for input and in collectives. One node's ranks waiting for "
            "data: its storage or CPU; one rank waiting least in collectives: the straggler everyone else "
            "waits for.",
            [
                Q(
                    st.recorded(c, s, st.RANK_PHASE_RECORD, 'phase=~"data_wait|comm_exposed"'),
                    "{{phase}} rank {{rank}}",
                )
            ],
            "percentunit",
            min_val=0,
        ),
        listing(
            "Straggler ranking",
            "How long the median rank waits for each rank in collectives, per second of wall time, worst "
            f"first. Above {t.straggler_wait_fraction:.0%} the rank is a straggler (FmdiagStragglerRank): "
            "open the Node dashboard of its instance.",
            [Q(f"sort_desc(topk(10, {st.straggler_ranking(c, s)}))", instant=True)],
            "percentunit",
        ).links([link_to(c, "node", "Node dashboard")]),
        listing(
            "Silent ranks",
            f"Seconds each rank's last step ended before the job's newest. Above {t.rank_silent_seconds} s "
            "the rank stopped reporting (hung or crashed).",
            [Q(f"sort_desc(topk(10, {st.silent_ranks(c, s)}))", instant=True)],
            "s",
        ).links([link_to(c, "node", "Node dashboard")]),
    )
    b.row("The job's nodes")
    g = Scope(cluster="$cluster", node="$node")
    b.add(
        graph(
            "SM activity of the job's GPUs",
            "SM activity per GPU of the job's nodes, on the step-time axis: a dip shared by all GPUs is "
            "waiting (network, I/O); one GPU apart is the straggler.",
            [Q(gpu.per_gpu(c, g, "DCGM_FI_PROF_SM_ACTIVE"), f"{{{{{c.gpu_node_label}}}}} GPU {{{{gpu}}}}")],
            "percentunit",
            min_val=0,
            max_val=1,
            width=8,
        ),
        graph(
            "EFA throughput of the job's nodes",
            "Bytes per second each node sends over EFA.",
            [Q(efa.node_rate(c, g, "fmdiag_efa_tx_bytes_total", RATE), f"{{{{{c.node_label}}}}}")],
            "Bps",
            min_val=0,
            width=8,
        ),
        graph(
            "Lustre read latency from the job's nodes",
            "Mean ost_read latency per OST from the job's nodes.",
            [Q(lustre.ost_latency(c, g, RATE), "{{fs}} {{ost}}")],
            "s",
            min_val=0,
            thresholds=steps(("green", None), ("red", t.lustre_ost_read_latency_seconds)),
            width=8,
        ),
    )
    return b.build()
