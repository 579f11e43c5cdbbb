"""The template variables the boards share, as Grafana ``label_values`` queries of the config."""

from __future__ import annotations

from fmdiag.dashboards.panels import Board


def cluster(b: Board) -> Board:
    c = b.c
    return b.variable("cluster", "Cluster", f"label_values(up{{{c.selectors.fmdiag}}}, {c.cluster_label})")


def node(b: Board, *, multi: bool = True) -> Board:
    c = b.c
    return b.variable(
        "node",
        "Node",
        f'label_values(up{{{c.selectors.fmdiag},{c.cluster_label}=~"$cluster"}}, {c.node_label})',
        multi=multi,
    )


def gpu(b: Board) -> Board:
    """GPU indexes of the cluster: not narrowed by node, since the node label has two spellings
    (hostname, Hostname) and label_values takes one selector; indexes repeat on every node."""
    c = b.c
    sel = f'{c.selectors.gpu},{c.cluster_label}=~"$cluster"'
    return b.variable("gpu", "GPU", f"label_values(DCGM_FI_DEV_GPU_TEMP{{{sel}}}, gpu)")


def job(b: Board) -> Board:
    c = b.c
    sel = f'{c.selectors.fmdiag},{c.cluster_label}=~"$cluster"'
    return b.variable(
        "job", "Training job", f"label_values(fmdiag_step_last{{{sel}}}, {c.job_label})", multi=False
    )


def job_nodes(b: Board) -> Board:
    """Nodes running ranks of ``$job`` (so the job board shows exactly the job's hardware)."""
    c = b.c
    sel = f'{c.selectors.fmdiag},{c.cluster_label}=~"$cluster",{c.job_label}=~"$job"'
    return b.variable("node", "Node", f"label_values(fmdiag_step_last{{{sel}}}, {c.node_label})")
