"""Read node metrics from a live Prometheus over its HTTP API, in bounded requests.

``query_range`` answers are capped by Prometheus (11,000 points per series) and a request that
matches every series of a big cluster can exhaust the server's memory, so every read here is
bounded twice: time is cut into chunks of at most ``max_points`` evaluation steps (aligned to
one grid, so chunks neither overlap nor leave holes), and the series of a metric are first listed
with ``/api/v1/series`` and fetched in batches of instances holding at most ``max_series`` series
(a single node's series are never split: the exporter bounds what one node serves).

Series are yielded as :class:`Series` (labels without ``__name__``, timestamps and values), which
:mod:`fmdiag.analyzers.collect` turns into the dump's long-form tables. Standard library only
(``urllib``): the analysis extra needs no HTTP client.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_SERIES = 500
DEFAULT_MAX_POINTS = 10_000


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a request; the message names the URL."""


@dataclass
class Series:
    name: str
    labels: dict[str, str]
    timestamps: list[float]
    values: list[float]


class Client:
    """The two API calls the analyzer needs: ``series`` and ``query_range``."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.requests = 0

    def _get(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        import urllib.error  # noqa: PLC0415 - http.client costs 15 ms on every analyze otherwise
        import urllib.parse  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        url = f"{self.url}/api/v1/{path}"
        body = urllib.parse.urlencode(list(params)).encode()
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Content-Type", "application/x-www-form-urlencoded")
        self.requests += 1
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise PrometheusError(f"{url}: HTTP {exc.code}: {detail}") from None
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"{url}: {exc}") from None
        if doc.get("status") != "success":
            raise PrometheusError(f"{url}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def series(self, selector: str, start: float, end: float) -> list[dict[str, str]]:
        data: list[dict[str, str]] = self._get(
            "series", [("match[]", selector), ("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
        )
        return data

    def names(self, start: float, end: float) -> set[str]:
        """Every metric name with samples in the range (one cheap request, to skip absent families)."""
        data: list[str] = self._get_query(
            "label/__name__/values", [("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
        )
        return set(data)

    def _get_query(self, path: str, params: Sequence[tuple[str, str]]) -> Any:
        """GET with a query string (the label-values endpoint takes no form body)."""
        import urllib.parse  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(list(params))
        self.requests += 1
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                doc = json.load(r)
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"{url}: {exc}") from None
        if doc.get("status") != "success":
            raise PrometheusError(f"{url}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self._get(
            "query_range",
            [("query", expr), ("start", f"{start:.3f}"), ("end", f"{end:.3f}"), ("step", f"{step:g}")],
        )
        result: list[dict[str, Any]] = data["result"]
        return result


def time_chunks(start: float, end: float, step: float, max_points: int) -> list[tuple[float, float]]:
    """``[start, end]`` cut into chunks of at most ``max_points`` evaluations on one grid."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    if step <= 0 or max_points < 1:
        raise ValueError("step must be > 0 and max_points >= 1")
    points = math.floor((end - start) / step + 1e-9) + 1
    chunks = []
    first = 0
    while first < points:
        last = min(first + max_points, points) - 1
        chunks.append((start + first * step, start + last * step))
        first = last + 1
    return chunks


def batches(series: Sequence[dict[str, str]], max_series: int) -> list[list[str]]:
    """Instances grouped so each group holds at most ``max_series`` series (one node is never split)."""
    per_instance: dict[str, int] = {}
    for s in series:
        inst = s.get("instance", "")
        per_instance[inst] = per_instance.get(inst, 0) + 1
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for inst, n in sorted(per_instance.items()):
        if current and size + n > max_series:
            groups.append(current)
            current, size = [], 0
        current.append(inst)
        size += n
    if current:
        groups.append(current)
    return groups


def regex_alternation(values: Sequence[str]) -> str:
    return "|".join(re.escape(v) for v in values)


def selector(name: str, matchers: str = "", instances: Sequence[str] | None = None) -> str:
    parts = [f'__name__="{name}"']
    if matchers:
        parts.append(matchers)
    if instances is not None:
        parts.append(f'instance=~"{label_escape(regex_alternation(instances))}"')
    return "{" + ", ".join(parts) + "}"


def label_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def fetch(
    client: Client,
    name: str,
    start: float,
    end: float,
    step: float,
    matchers: str = "",
    max_series: int = DEFAULT_MAX_SERIES,
    max_points: int = DEFAULT_MAX_POINTS,
) -> Iterator[Series]:
    """Every series of sample ``name`` matching ``matchers`` over ``[start, end]``, in bounded requests."""
    found = client.series(selector(name, matchers), start, end)
    if not found:
        return
    merged: dict[tuple[tuple[str, str], ...], Series] = {}
    for group in batches(found, max_series):
        expr = selector(name, matchers, group)
        for lo, hi in time_chunks(start, end, step, max_points):
            for item in client.query_range(expr, lo, hi, step):
                labels = {k: v for k, v in item["metric"].items() if k != "__name__"}
                key = tuple(sorted(labels.items()))
                s = merged.get(key)
                if s is None:
                    s = merged[key] = Series(name, labels, [], [])
                for t, v in item["values"]:
                    s.timestamps.append(float(t))
                    s.values.append(float(v))
    yield from merged.values()
