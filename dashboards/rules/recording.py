"""Rule group ``fmdiag-recording``: what dashboards and alerts share, recorded once.

Per-job step-time quantiles and per-rank phase rates over thousands of ranks, and the live
stall signal (the fraction of wall time each bottleneck class costs a job right now). Every
expression reads raw series only, so one ``promtool tsdb create-blocks-from rules`` pass can
backfill them all.
"""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import steps as q
from fmdiag.dashboards.queries.scope import RULES
from fmdiag.dashboards.rules.model import ExprCase, Group, Record, series

FILE = "fmdiag-recording.yaml"
W = q.RECORD_WINDOW
STALL_CLASSES = ("compute", "network", "io", "host", "straggler")


def group(c: Config) -> Group:
    rank = {"job": "fmdiag", "cluster": "c1", c.job_label: "j1", "instance": "node-1"}
    phase = "fmdiag_step_phase_seconds_total"
    stall = q.stall_expressions(c, W)
    return Group(
        name="fmdiag-recording",
        file=FILE,
        rules=(
            *(Record(q.quantile_record(x), q.duration_quantile(c, RULES, x, W)) for x in q.QUANTILES),
            Record(q.MEAN_RECORD, q.duration_mean(c, RULES, W)),
            Record(q.RANK_MEAN_RECORD, q.duration_mean(c, RULES, W, per_rank=True)),
            Record(q.RANK_PHASE_RECORD, q.phase_rate(c, RULES, W)),
            Record(q.JOB_PHASE_MEDIAN_RECORD, q.phase_median(c, RULES, W)),
            Record(q.RANK_WAIT_CAUSED_RECORD, q.wait_caused(c, RULES, W)),
            *(Record(q.STALL_RECORD, stall[k], {"stall": k}) for k in STALL_CLASSES),
        ),
        expr_cases=(
            ExprCase(
                "a rank waiting half as long as the others in collectives is the job's straggler time",
                (
                    series(phase, "0+30x10", **rank, rank="0", phase="comm_exposed"),
                    series(phase, "0+30x10", **rank, rank="1", phase="comm_exposed"),
                    series(phase, "0+15x10", **rank, rank="2", phase="comm_exposed"),
                ),
                "10m",
                f'{q.STALL_RECORD}{{stall="straggler"}}',
                ((f'{q.STALL_RECORD}{{cluster="c1",{c.job_label}="j1",stall="straggler"}}', 0.25),),
            ),
            ExprCase(
                "step-time median from the histogram",
                (
                    series("fmdiag_step_duration_seconds_bucket", "0+0x10", **rank, rank="0", le="1"),
                    series("fmdiag_step_duration_seconds_bucket", "0+60x10", **rank, rank="0", le="1.5"),
                    series("fmdiag_step_duration_seconds_bucket", "0+60x10", **rank, rank="0", le="+Inf"),
                ),
                "10m",
                q.quantile_record(0.5),
                ((f'{q.quantile_record(0.5)}{{cluster="c1",{c.job_label}="j1"}}', 1.25),),
            ),
        ),
    )
