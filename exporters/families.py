"""Builds one scrape's metric families with names, help, types and labels from the catalog.

Collectors never spell help text or label lists themselves: they say which catalogued
metric a value belongs to, and this module refuses uncatalogued names and wrong label sets,
so the catalog stays the single source of truth for what is exposed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from prometheus_client.core import Metric

from fmdiag import catalog
from fmdiag.catalog import MetricType

_PROM_TYPE = {
    MetricType.COUNTER: "counter",
    MetricType.GAUGE: "gauge",
    MetricType.HISTOGRAM: "histogram",
    MetricType.SUMMARY: "summary",
}


class Families:
    """Accumulates samples for one scrape, grouped into catalogued families, in insertion order."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def _family(self, name: str, labels: Mapping[str, str]) -> tuple[Metric, catalog.Metric]:
        spec = catalog.get(name)
        allowed = spec.all_labels
        missing = [k for k in spec.labels if k not in labels]
        extra = [k for k in labels if k not in allowed]
        if missing or extra:
            raise ValueError(f"{name}: labels missing {missing}, not catalogued {extra}")
        fam = self._families.get(name)
        if fam is None:
            # prometheus_client strips `_total` from counter family names and re-adds it on
            # the sample, so the family is named without it; DCGM counters carry no `_total`.
            base = (
                name[: -len("_total")]
                if spec.type is MetricType.COUNTER and name.endswith("_total")
                else name
            )
            fam = Metric(base, spec.help, _PROM_TYPE[spec.type], unit="")
            self._families[name] = fam
        return fam, spec

    def add(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """One counter or gauge sample."""
        labels = dict(labels or {})
        fam, spec = self._family(name, labels)
        if spec.type not in (MetricType.COUNTER, MetricType.GAUGE):
            raise ValueError(f"{name} is a {spec.type}; use add_histogram")
        fam.add_sample(name, labels, float(value))

    def add_histogram(
        self,
        name: str,
        labels: Mapping[str, str],
        buckets: Sequence[tuple[float, float]],
        count: float,
        total: float | None,
    ) -> None:
        """One histogram: ``buckets`` are (upper bound, cumulative count) pairs; +Inf is added."""
        labels = dict(labels)
        fam, spec = self._family(name, labels)
        if spec.type is not MetricType.HISTOGRAM:
            raise ValueError(f"{name} is a {spec.type}, not a histogram")
        for bound, cum in buckets:
            fam.add_sample(f"{name}_bucket", {**labels, "le": _le(bound)}, float(cum))
        fam.add_sample(f"{name}_bucket", {**labels, "le": "+Inf"}, float(count))
        fam.add_sample(f"{name}_count", labels, float(count))
        if total is not None:
            fam.add_sample(f"{name}_sum", labels, float(total))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
