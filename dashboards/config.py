"""The one config shared by every dashboard and rule file (kubernetes-mixin's config.libsonnet).

Selectors say which scrape jobs feed each subsystem, thresholds say what counts as bad, and
the cluster label, datasource and runbook address are deployment facts. Dashboards and rules
read only this object, so a site that relabels its targets changes one value and regenerates.
A required selector left empty fails at construction, naming the field, instead of producing
queries that silently match every series in the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from fmdiag.catalog import STEP_LABELS


def _training_job_label() -> str:
    """The label the training job id has in Prometheus.

    The steps collector exports the catalog's first step label; had it been ``job``,
    Prometheus would have renamed it ``exported_job`` on scrape (it owns ``job``)."""
    label = STEP_LABELS[0]
    return "exported_job" if label == "job" else label


@dataclass(frozen=True)
class Selectors:
    """Label matchers (PromQL, without braces) picking each subsystem's series."""

    #: fmdiag exporter targets (EFA, Lustre, host, steps, the exporter's own health).
    fmdiag: str = 'job=~"fmdiag.*"'
    #: GPU series: fmdiag's exporter or a stock dcgm-exporter (DCGM_FI_* names, same labels).
    gpu: str = 'job=~"fmdiag.*|.*dcgm.*"'


@dataclass(frozen=True)
class Thresholds:
    """What counts as bad; every alert and every coloured panel takes its number from here."""

    gpu_temp_celsius: float = 85.0
    pcie_replays_per_second: float = 1.0
    nvlink_errors_per_10m: float = 10.0
    efa_retransmit_ratio: float = 0.01
    efa_rx_drop_ratio: float = 0.001
    lustre_ost_read_latency_seconds: float = 0.05
    lustre_stuck_rpc_minutes: int = 10
    #: Step p50 over the last 10 minutes against the job's best p50 of the previous hour.
    step_regression_ratio: float = 1.25
    #: A rank that makes its job's median rank wait this fraction of wall time is a straggler.
    straggler_wait_fraction: float = 0.015
    #: A rank whose last step ended this long before its job's freshest rank stopped reporting.
    rank_silent_seconds: int = 300
    #: Fraction of wall time in one phase that names the job's live stall class.
    stall_fraction: float = 0.1
    #: Fraction of wall time checkpoints may take before the excess counts as an I/O stall.
    checkpoint_budget_fraction: float = 0.6


@dataclass(frozen=True)
class Config:
    """Everything the generated dashboards and rules depend on."""

    selectors: Selectors = field(default_factory=Selectors)
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: Label telling clusters apart (added by relabelling or external labels); kept in every
    #: aggregation so one Prometheus (or Thanos/Mimir) can hold several clusters.
    cluster_label: str = "cluster"
    #: Label naming the node on fmdiag's series (relabel ``instance`` to the host name).
    node_label: str = "instance"
    #: Label naming the node on GPU series: dcgm-exporter's ``hostname`` (after 4.5.3; fmdiag's
    #: default too). Every GPU query reads it under this name whichever spelling a target uses.
    gpu_node_label: str = "hostname"
    #: The other spelling of the GPU node label, also read (copied into ``gpu_node_label``):
    #: ``Hostname`` of dcgm-exporter up to 4.5.3, of fmdiag with
    #: ``--collector.gpu.hostname-label=Hostname``, and of history stored before. "" reads only
    #: ``gpu_node_label`` (queries get shorter once every target has moved).
    gpu_node_label_legacy: str = "Hostname"
    #: The training job id label (see ``_training_job_label``).
    job_label: str = field(default_factory=_training_job_label)
    #: Default datasource of the generated dashboards' ``datasource`` variable (a name).
    datasource: str = "Prometheus"
    #: Where docs/runbook.md is published; each alert links ``<runbook_url>#<alertname>``.
    runbook_url: str = "https://github.com/fmdiag/fmdiag/blob/main/docs/runbook.md"
    #: Prefix of every dashboard uid, so two installs can live in one Grafana.
    uid_prefix: str = "fmdiag"

    def __post_init__(self) -> None:
        for group in (self.selectors,):
            for f in fields(group):
                if not str(getattr(group, f.name)).strip():
                    raise ValueError(f"config: selector {f.name!r} is required (a PromQL label matcher)")
        for name in (
            "cluster_label",
            "node_label",
            "gpu_node_label",
            "job_label",
            "datasource",
            "uid_prefix",
        ):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"config: {name} is required")

    def with_selector(self, name: str, matcher: str) -> Config:
        """A copy with one selector replaced; an unknown selector name is an error."""
        if name not in {f.name for f in fields(Selectors)}:
            known = ", ".join(f.name for f in fields(Selectors))
            raise ValueError(f"config: unknown selector {name!r} (known: {known})")
        return replace(self, selectors=replace(self.selectors, **{name: matcher}))


DEFAULT = Config()
