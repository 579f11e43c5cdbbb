"""Writes metric families as Prometheus text 0.0.4 or OpenMetrics 1.0, and picks one from Accept.

Hand-written instead of ``prometheus_client.generate_latest`` for two reasons. First,
prometheus_client prints a counter family's HELP/TYPE with ``_total`` appended, which renames
dcgm-exporter's counters (``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` has no ``_total``; dcgm-exporter
prints ``# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter``), and DCGM dashboards key on
the exact name. Here the text format names a family after its samples, so both
``fmdiag_efa_tx_bytes_total`` and ``DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION`` keep their catalog
names. OpenMetrics requires ``_total`` on counter samples, so a counter whose samples lack it
is typed ``unknown`` there (same name, same values; PromQL treats both alike). Second, a
per-scrape writer that caches header lines, and keeps each series' text (name and labels) from one
scrape to the next (:class:`SeriesTexts`), formats only values on a node's ~3,000 samples.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from enum import StrEnum
from operator import is_

from prometheus_client.core import Metric

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_OPENMETRICS_VERSIONS = ("", "1.0.0", "0.0.1")


class Format(StrEnum):
    TEXT = "text"
    OPENMETRICS = "openmetrics"

    @property
    def content_type(self) -> str:
        return OPENMETRICS_CONTENT_TYPE if self is Format.OPENMETRICS else TEXT_CONTENT_TYPE


def negotiate(accept: str | None) -> Format:
    """OpenMetrics when the Accept header ranks it at least as high as the text format.

    Prometheus sends ``application/openmetrics-text;version=1.0.0,...;q=0.75,
    text/plain;version=0.0.4;q=0.5,*/*;q=0.1``; curl and browsers send nothing or ``*/*``,
    which get the text format, as with every other exporter.
    """
    if not accept:
        return Format.TEXT
    best_om = -1.0
    best_text = -1.0
    for entry in accept.split(","):
        parts = [p.strip() for p in entry.split(";")]
        media = parts[0].lower()
        params: dict[str, str] = {}
        for p in parts[1:]:
            key, sep, value = p.partition("=")
            if sep:
                params[key.strip().lower()] = value.strip().strip('"')
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if not 0.0 < q <= 1.0 or math.isnan(q):
            continue
        if media == "application/openmetrics-text":
            if params.get("version", "") in _OPENMETRICS_VERSIONS:
                best_om = max(best_om, q)
        elif media in ("text/plain", "*/*", "text/*"):
            best_text = max(best_text, q)
    return Format.OPENMETRICS if best_om >= 0 and best_om >= best_text else Format.TEXT


def format_value(value: float) -> str:
    """Integers without a fraction (most counters), everything else as Go would print it."""
    if type(value) is int:
        return str(value)
    if value.is_integer() and -1e15 < value < 1e15:
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape_label(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help_text(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_help_om(doc: str) -> str:
    return doc.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_TEXT_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "unknown": "untyped",
}
_OM_TYPES = {
    "counter": "counter",
    "gauge": "gauge",
    "histogram": "histogram",
    "summary": "summary",
    "unknown": "unknown",
}

#: Header lines per (format, family name, type, help, first sample name); bounded below.
_header_cache: dict[tuple[Format, str, str, str, str], str] = {}
_HEADER_CACHE_MAX = 8192


def _header(fmt: Format, fam: Metric, first_sample: str) -> str:
    key = (fmt, fam.name, fam.type, fam.documentation, first_sample)
    cached = _header_cache.get(key)
    if cached is not None:
        return cached
    if fmt is Format.TEXT:
        # Name the family after its samples: `x_total` for fmdiag counters, the bare catalog
        # name for DCGM counters, the family name for histograms and summaries.
        name = first_sample if fam.type in ("counter", "gauge", "unknown") else fam.name
        mtype = _TEXT_TYPES.get(fam.type, "untyped")
        line = f"# HELP {name} {_escape_help_text(fam.documentation)}\n# TYPE {name} {mtype}\n"
    else:
        mtype = _OM_TYPES.get(fam.type, "unknown")
        if mtype == "counter" and first_sample != fam.name + "_total":
            mtype = "unknown"  # a counter without `_total` (DCGM naming) is not valid OpenMetrics
        line = f"# HELP {fam.name} {_escape_help_om(fam.documentation)}\n# TYPE {fam.name} {mtype}\n"
    if len(_header_cache) >= _HEADER_CACHE_MAX:
        _header_cache.clear()
    _header_cache[key] = line
    return line


def series_text(name: str, labels: Mapping[str, str]) -> str:
    """A sample line up to its value: ``name{k="v",...} `` (``name `` without labels)."""
    if not labels:
        return name + " "
    body = ",".join([f'{k}="{_escape_label(v)}"' for k, v in labels.items()])
    return f"{name}{{{body}}} "


#: Per family (name, type): its sample names, label dicts and series texts in the last render.
_FamilyTexts = tuple[list[str], list[Mapping[str, str]], list[str]]
_Texts = dict[tuple[str, str], _FamilyTexts]


class SeriesTexts:
    """The series texts of the last render, kept for the next: only values are formatted again.

    A node's label sets hardly change from one scrape to the next, and formatting them
    (quoting, escaping, joining) was most of a render. Per family, the last render's sample
    names and label dicts are kept with their texts; when a family comes back with the same
    names and the very same label dicts in the same order (as collectors that keep their dicts
    hand them out, e.g. through :class:`fmdiag.exporters.labelsets.LabelSets`), its texts are
    reused as they are, else made afresh. Holding the dicts keeps their ids from being reused.
    A labels dict is never changed once it is in a sample (``Families.add`` copies,
    ``Families.adder`` says so). Only what the last render had is kept, so memory follows the
    series count and a removed device's texts go with the next render.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kept: _Texts = {}

    def __len__(self) -> int:
        return sum(len(texts) for _, _, texts in self.kept.values())


def _value_line(value: float) -> str:
    """A sample's value and the line's end."""
    if type(value) is int:
        return str(value) + "\n"
    if value.is_integer() and -1e15 < value < 1e15:
        return str(int(value)) + "\n"
    return format_value(value) + "\n"


def _family_lines(fam: Metric, out: list[str], old: _Texts, new: _Texts) -> None:
    """Sample lines of one family, its series texts reused from ``old`` when they still hold."""
    samples = fam.samples
    names = [s[0] for s in samples]
    labels: list[Mapping[str, str]] = [s[1] for s in samples]
    key = (fam.name, fam.type)
    kept = old.get(key)
    # The very same dicts (not merely equal ones: equal dicts may order their keys otherwise).
    if kept is not None and kept[0] == names and all(map(is_, kept[1], labels)):
        texts = kept[2]
    else:
        made: dict[tuple[str, int], str] = {}  # a dict shared by several samples is done once
        texts = []
        for name, lab in zip(names, labels, strict=True):
            text = made.get((name, id(lab)))
            if text is None:
                text = made[(name, id(lab))] = series_text(name, lab)
            texts.append(text)
    new[key] = (names, labels, texts)
    out.extend(map(str.__add__, texts, [_value_line(s[2]) for s in samples]))


def render(families: Iterable[Metric], fmt: Format, texts: SeriesTexts | None = None) -> bytes:
    """The whole exposition; families without samples are left out, as client_golang does.

    ``texts`` carries series texts from one render to the next (the scraper keeps one); without
    it, a label set shared by several samples is still formatted only once.
    """
    out: list[str] = []
    append = out.append
    new: _Texts = {}
    with texts.lock if texts is not None else nullcontext():
        old = texts.kept if texts is not None else {}
        for fam in families:
            if not fam.samples:
                continue
            append(_header(fmt, fam, fam.samples[0].name))
            _family_lines(fam, out, old, new)
        if texts is not None:
            texts.kept = new
    if fmt is Format.OPENMETRICS:
        append("# EOF\n")
    # Lone surrogates (undecodable file names) become "?" rather than failing the scrape.
    return "".join(out).encode("utf-8", "replace")
