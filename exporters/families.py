"""Builds one scrape's metric families with names, help, types and labels from the catalog.

Collectors never spell help text or label lists themselves: they say which catalogued
metric a value belongs to, and this module refuses uncatalogued names and wrong label sets,
so the catalog stays the single source of truth for what is exposed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from fmdiag import catalog
from fmdiag.catalog import MetricType

_PROM_TYPE = {
    MetricType.COUNTER: "counter",
    MetricType.GAUGE: "gauge",
    MetricType.HISTOGRAM: "histogram",
    MetricType.SUMMARY: "summary",
}


class CatalogChecks:
    """(name, label keys) pairs already checked against the catalog, with their catalog entry.

    A scrape adds thousands of samples with a handful of distinct label sets, so each set is
    validated once. The exporter keeps one for all its collectors (``CollectorContext``
    hands it out) instead of a module global, so what one exporter learnt never hides
    what a test checks in another.
    """

    #: Label key sets are few; the bound only guards against a misbehaving caller.
    LIMIT = 100_000

    def __init__(self) -> None:
        self._checked: dict[tuple[str, tuple[str, ...]], catalog.Metric] = {}

    def spec(self, name: str, keys: tuple[str, ...]) -> catalog.Metric:
        """The catalog entry of ``name``; ValueError when ``keys`` are not its label set."""
        spec = self._checked.get((name, keys))
        if spec is not None:
            return spec
        spec = catalog.get(name)
        allowed = spec.all_labels
        # A label an option may spell another way (hostname/Hostname) counts as the catalogued one.
        given = [catalog.CATALOGUED_LABEL.get(k, k) for k in keys]
        missing = [k for k in spec.labels if k not in given]
        extra = [k for k, g in zip(keys, given, strict=True) if g not in allowed]
        if missing or extra:
            raise ValueError(f"{name}: labels missing {missing}, not catalogued {extra}")
        if len(self._checked) < self.LIMIT:
            self._checked[(name, keys)] = spec
        return spec


class Families:
    """Accumulates samples for one scrape, grouped into catalogued families, in insertion order.

    ``checks`` is the memo of label sets already validated; collectors pass the exporter's
    (:meth:`Collector.families`), anything else gets one of its own.
    """

    def __init__(self, checks: CatalogChecks | None = None) -> None:
        self._families: dict[str, Metric] = {}
        self._checks = checks if checks is not None else CatalogChecks()

    def _family(self, name: str, labels: Mapping[str, str]) -> tuple[Metric, catalog.Metric]:
        spec = self._checks.spec(name, tuple(labels))
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
        # Integers stay integers, as in adder(): exact beyond 2**53 (u64 counters).
        fam.add_sample(name, labels, value if type(value) is int else float(value))

    def adder(self, name: str, label_names: Sequence[str]) -> Callable[[dict[str, str], float], None]:
        """A fast path for hot loops (thousands of sysfs counters per scrape).

        Checks ``name`` with exactly ``label_names`` against the catalog once and returns a
        function ``add(labels, value)`` that appends a sample without re-checking: every
        ``labels`` passed must have exactly those keys, and must not be changed afterwards
        (one dict may be shared by many samples, which also lets the exposition format it once).
        """
        fam, spec = self._family(name, dict.fromkeys(label_names, ""))
        if spec.type not in (MetricType.COUNTER, MetricType.GAUGE):
            raise ValueError(f"{name} is a {spec.type}; use add_histogram")
        append = fam.samples.append
        new = tuple.__new__  # Sample's own __new__ is a Python-level wrapper; skip it in the hot path

        def add(labels: dict[str, str], value: float) -> None:
            # Integers stay integers: exact in the exposition even beyond 2**53 (u64 counters).
            append(
                new(Sample, (name, labels, value if type(value) is int else float(value), None, None, None))
            )

        return add

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

    def histogram_adder(self, name: str, label_names: Sequence[str]) -> HistogramAdd:
        """:meth:`add_histogram` for hot loops: checked once, the same samples, no dicts built.

        The returned ``add(labels, bucket_labels, cumulative, count, total)`` takes the bucket
        label sets ready-made (:func:`bucket_labels`, kept by the caller from one scrape to
        the next) and the cumulative count per bound, +Inf excluded; the same rules as
        :meth:`adder` apply to the dicts.
        """
        fam, spec = self._family(name, dict.fromkeys(label_names, ""))
        if spec.type is not MetricType.HISTOGRAM:
            raise ValueError(f"{name} is a {spec.type}, not a histogram")
        append = fam.samples.append
        new = tuple.__new__
        bucket, count_name, sum_name = f"{name}_bucket", f"{name}_count", f"{name}_sum"

        def add(
            labels: dict[str, str],
            buckets: Sequence[dict[str, str]],
            cumulative: Sequence[float],
            count: float,
            total: float | None,
        ) -> None:
            if len(buckets) != len(cumulative) + 1:
                raise ValueError(f"{name}: {len(cumulative)} counts for {len(buckets) - 1} bounds")
            for lab, cum in zip(buckets, cumulative, strict=False):
                append(new(Sample, (bucket, lab, float(cum), None, None, None)))
            append(new(Sample, (bucket, buckets[-1], float(count), None, None, None)))
            append(new(Sample, (count_name, labels, float(count), None, None, None)))
            if total is not None:
                append(new(Sample, (sum_name, labels, float(total), None, None, None)))

        return add

    def __iter__(self) -> Iterator[Metric]:
        # A family made by adder() may have stayed empty; an empty family is not exposed.
        return (fam for fam in self._families.values() if fam.samples)


#: ``add(labels, bucket_labels, cumulative counts, count, sum or None)``, see Families.histogram_adder.
HistogramAdd = Callable[
    [dict[str, str], Sequence[dict[str, str]], Sequence[float], float, "float | None"], None
]


def bucket_labels(labels: Mapping[str, str], bounds: Sequence[float]) -> tuple[dict[str, str], ...]:
    """The ``le`` label sets of a histogram's buckets, +Inf last, as :meth:`Families.add_histogram`
    builds them: made once per series and kept, they leave only the counts to a scrape."""
    return (*({**labels, "le": _le(bound)} for bound in bounds), {**labels, "le": "+Inf"})


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))
