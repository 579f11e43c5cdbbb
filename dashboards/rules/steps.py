"""Rule group ``fmdiag-steps``: the job's own step time — regressions, stragglers, silent ranks,
and the live bottleneck class — read from the recorded series of ``fmdiag-recording``."""

from __future__ import annotations

from fmdiag.dashboards.config import Config
from fmdiag.dashboards.queries import steps as q
from fmdiag.dashboards.queries.scope import RULES
from fmdiag.dashboards.rules import recording
from fmdiag.dashboards.rules.model import Alert, Case, Group, Series, series

FILE = "fmdiag-steps.yaml"


def _histogram(c: Config, le_1_5: str, le_2: str) -> tuple[Series, ...]:
    rank = {"job": "fmdiag", "cluster": "c1", c.job_label: "j1", "rank": "0", "instance": "node-1"}
    name = "fmdiag_step_duration_seconds_bucket"
    return (
        series(name, "0+0x60", **rank, le="1"),
        series(name, le_1_5, **rank, le="1.5"),
        series(name, le_2, **rank, le="2"),
        series(name, le_2, **rank, le="+Inf"),
    )


def _ranks(
    c: Config, metric: str, values: list[str], extra: dict[str, str] | None = None
) -> tuple[Series, ...]:
    return tuple(
        series(
            metric,
            v,
            job="fmdiag",
            cluster="c1",
            **{c.job_label: "j1"},
            rank=str(i),
            instance=f"node-{i}",
            **(extra or {}),
        )
        for i, v in enumerate(values)
    )


def group(c: Config) -> Group:
    t = c.thresholds
    job = {"cluster": "c1", c.job_label: "j1"}
    p50 = q.quantile_record(0.5)
    jl = f"{{{{ $labels.{c.job_label} }}}}"
    phase = "fmdiag_step_phase_seconds_total"
    return Group(
        name="fmdiag-steps",
        file=FILE,
        needs=(recording.FILE,),
        rules=(
            Alert(
                name="FmdiagStepTimeRegression",
                expr=f"{p50} > {t.step_regression_ratio:g} * min_over_time({p50}[1h])",
                for_="10m",
                severity="warning",
                summary=f"Training job {jl} steps are more than {t.step_regression_ratio - 1:.0%} slower "
                "than in the last hour.",
                description=(
                    f"The median step time of job {jl} has been more than {t.step_regression_ratio:g}x its "
                    "best median of "
                    "the last hour for 10 minutes. Open the Training job dashboard: the stall signal and the "
                    "phase "
                    "breakdown say whether compute, network, I/O, the host or one straggler rank took the "
                    "time."
                ),
                cases=(
                    Case(
                        "steps went from ~1.25 s to ~1.75 s",
                        _histogram(c, "0+50x30 1500+0x30", "0+50x60"),
                        "50m",
                        (job,),
                    ),
                    Case("steady", _histogram(c, "0+50x60", "0+50x60"), "50m"),
                ),
            ),
            Alert(
                name="FmdiagStragglerRank",
                expr=f"{q.straggler_ranking(c, RULES)} > {t.straggler_wait_fraction:g}",
                for_="5m",
                severity="warning",
                summary=f"Rank {{{{ $labels.rank }}}} of job {jl} on {{{{ $labels.instance }}}} is a "
                "straggler.",
                description=(
                    f"Rank {{{{ $labels.rank }}}} of job {jl} arrives last at the collectives: the median "
                    "rank waits for it "
                    f"more than {t.straggler_wait_fraction:.0%} of the wall time. Look at its GPU on "
                    "{{ $labels.instance }}: clock event reasons (thermal, power brake), clocks, XIDs."
                ),
                cases=(
                    Case(
                        "rank 2 waits far less than its peers",
                        _ranks(c, phase, ["0+30x20", "0+30x20", "0+15x20"], {"phase": "comm_exposed"}),
                        "15m",
                        ({**job, "rank": "2", "instance": "node-2"},),
                    ),
                    Case(
                        "even ranks",
                        _ranks(c, phase, ["0+30x20", "0+30.3x20", "0+30x20"], {"phase": "comm_exposed"}),
                        "15m",
                    ),
                ),
            ),
            Alert(
                name="FmdiagRankStoppedReporting",
                expr=f"{q.silent_ranks(c, RULES)} > {t.rank_silent_seconds}",
                for_="2m",
                severity="warning",
                summary=f"Rank {{{{ $labels.rank }}}} of job {jl} stopped reporting steps.",
                description=(
                    f"The last step of rank {{{{ $labels.rank }}}} (job {jl}, {{{{ $labels.instance }}}}) "
                    "ended more than "
                    f"{t.rank_silent_seconds} s before its job's newest step: the rank hung, crashed or its "
                    "steptrace "
                    "spool stopped (check fmdiag_step_records_dropped_total and the process)."
                ),
                cases=(
                    Case(
                        "rank 1 stuck",
                        _ranks(
                            c, "fmdiag_step_last_end_timestamp_seconds", ["1000+60x20", "1000+60x5 1300x15"]
                        ),
                        "20m",
                        ({**job, "rank": "1", "instance": "node-1"},),
                    ),
                    Case(
                        "both advancing",
                        _ranks(c, "fmdiag_step_last_end_timestamp_seconds", ["1000+60x20", "990+60x20"]),
                        "20m",
                    ),
                ),
            ),
            Alert(
                name="FmdiagTrainingJobBottleneck",
                # Phase counters move when a step ends, so one long checkpoint is one jump: the 10m
                # maximum keeps a job whose every other window holds such a jump above the line.
                expr=f'max_over_time({q.STALL_RECORD}{{stall!="compute"}}[10m]) > {t.stall_fraction:g}',
                for_="5m",
                severity="info",
                summary=(
                    f"Job {jl} loses more than {t.stall_fraction:.0%} of its time to {{{{ $labels.stall }}}}."
                ),
                description=(
                    f"For 5 minutes job {jl} has lost more than {t.stall_fraction:.0%} of its wall time (at "
                    "some point of every 10 minutes) to the "
                    "{{ $labels.stall }} bottleneck (fmdiag's live stall signal). Run `fmdiag analyze "
                    "--prometheus` "
                    "for the per-step verdict and the culprit."
                ),
                cases=(
                    Case(
                        "half the time waiting for data",
                        _ranks(c, phase, ["0+30x30", "0+30x30"], {"phase": "data_wait"}),
                        "25m",
                        ({**job, "stall": "host"},),
                    ),
                    Case(
                        "short data waits",
                        _ranks(c, phase, ["0+1.2x30", "0+1.2x30"], {"phase": "data_wait"}),
                        "25m",
                    ),
                ),
            ),
        ),
    )
