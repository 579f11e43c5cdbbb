"""Where a query looks: the selectors of the config plus the filters of its consumer.

Rules see every cluster and node (their aggregations keep the cluster and node labels);
dashboards narrow each selector to the template variables. Keeping that difference in one
object is what lets the same query function serve both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fmdiag.dashboards.config import Config


@dataclass(frozen=True)
class Scope:
    """Regex values (usually ``$variable``) that narrow selectors; ``None`` leaves a label free."""

    cluster: str | None = None
    node: str | None = None
    job: str | None = None
    gpu_index: str | None = None

    def fmdiag(self, c: Config, extra: str = "", *, steps: bool = False) -> str:
        """Selector for a series from fmdiag's exporter (``steps``: also narrow to the job)."""
        parts = [c.selectors.fmdiag, *self._common(c, c.node_label)]
        if steps and self.job is not None:
            parts.append(f'{c.job_label}=~"{self.job}"')
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}"

    def gpu(self, c: Config, extra: str = "", *, node_label: str = "") -> str:
        """Selector for a DCGM-named GPU series (fmdiag's exporter or a stock dcgm-exporter).

        ``node_label`` is the spelling of the node label to narrow on (``gpu_node_label`` unless
        given): :func:`gpu_vector` asks once per spelling when a node filter is set.
        """
        parts = [c.selectors.gpu, *self._common(c, node_label or c.gpu_node_label)]
        if self.gpu_index is not None:
            parts.append(f'gpu=~"{self.gpu_index}"')
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}"

    def _common(self, c: Config, node_label: str) -> list[str]:
        parts = []
        if self.cluster is not None:
            parts.append(f'{c.cluster_label}=~"{self.cluster}"')
        if self.node is not None:
            parts.append(f'{node_label}=~"{self.node}"')
        return parts


#: Rules: no template filters.
RULES = Scope()


def gpu_vector(c: Config, s: Scope, build: Callable[[str], str], extra: str = "") -> str:
    """``build(selector)`` over GPU series, with the node under ``gpu_node_label`` whichever
    spelling the target used (dcgm-exporter renamed ``Hostname`` to ``hostname`` after 4.5.3).

    A series with the legacy spelling gets the label copied by ``label_replace`` (one with the
    current spelling has no legacy label, so the regex does not match and it passes unchanged);
    every GPU query then aggregates ``by`` the current spelling, which drops the legacy one. With
    a node filter the two spellings are selected apart and joined with ``or``, since one
    selector cannot match a value in either of two labels.
    """
    legacy = c.gpu_node_label_legacy
    if not legacy or legacy == c.gpu_node_label:
        return build(s.gpu(c, extra))
    copy = f'label_replace({{}}, "{c.gpu_node_label}", "$1", "{legacy}", "(.+)")'
    if s.node is None:
        return copy.format(build(s.gpu(c, extra)))
    current, old = build(s.gpu(c, extra)), build(s.gpu(c, extra, node_label=legacy))
    return f"({current} or {copy.format(old)})"


def by(*labels: str) -> str:
    """``by (a, b)`` with empty labels left out (a config may not use every label)."""
    return "by (" + ", ".join(label for label in labels if label) + ")"
